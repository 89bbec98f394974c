from __future__ import annotations

import pytest
import torch

from bench import BenchError
from bench.cache import Artifacts, config_key
from bench.store import Store


def test_config_key_is_canonical():
    assert config_key({"a": 1, "b": [1, 2]}) == config_key({"b": [1, 2], "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})


def test_cell_rows_round_trip_and_replace(tmp_path):
    store = Store(tmp_path)
    row = {"key": "k1", "task": "derain", "defense": "asvp", "attack": "vanilla_kd", "seed": 0,
           "profile": "smoke", "status": "failed", "error": "boom", "config": {"x": 1},
           "metrics": None, "versions": {"torch": "x"}, "started": 1.0, "finished": 2.0, "wall_s": 1.0}
    store.put_cell(row)
    store.put_cell({**row, "status": "done", "error": None, "metrics": {"student_drop_db": 1.5}})
    rows = store.cells()
    assert len(rows) == 1 and rows[0]["status"] == "done" and rows[0]["metrics"]["student_drop_db"] == 1.5
    df = store.dataframe()
    assert df.loc[0, "student_drop_db"] == 1.5


def test_a_file_that_is_not_a_store_is_a_clear_error(tmp_path):
    (tmp_path / "results.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(BenchError, match="not a results store"):
        Store(tmp_path)


def test_cached_model_trains_once_and_survives_a_damaged_checkpoint(tmp_path):
    arts = Artifacts(tmp_path)
    calls = []

    def build():
        return torch.nn.Linear(2, 2)

    def train(m):
        calls.append(1)
        with torch.no_grad():
            m.weight.fill_(3.0)

    m1, key, trained = arts.cached_model({"kind": "t"}, build, train)
    m2, key2, trained2 = arts.cached_model({"kind": "t"}, build, train)
    assert key == key2 and trained and not trained2 and len(calls) == 1
    assert torch.equal(m1.weight, m2.weight)
    (arts.dir(key) / "model.pt").write_bytes(b"garbage")
    m3, _, trained3 = arts.cached_model({"kind": "t"}, build, train)
    assert trained3 and len(calls) == 2 and float(m3.weight.detach()[0, 0]) == 3.0
