"""One identity from key to report (issue 27, items 1 and 5, 7 and the report's file names of 8): cells
that differ in numerics or data version are never pooled as seeds, a sweep after ``bench run`` shares the
run's teacher instead of training a second one, a teacher whose eval forward is random is refused, and
``cells.csv`` never holds a formula."""

from __future__ import annotations

import sys
import textwrap
import uuid

import numpy as np
import pandas as pd
import pytest
from conftest import write_noisy_pairs

from bench import BenchError
from bench.cache import Artifacts, config_key
from bench.pipeline import CellSpec, reference_config, resolve, run_cell, share_teacher
from bench.scheduler import plan, run_sweep
from bench.store import Store
from reports import build as build_mod
from reports import cells as cells_mod
from reports.leaderboard import build_tables


def _spec(**kw) -> CellSpec:
    return CellSpec(**{"task": "derain", "defense": "asvp", "profile": "smoke", **kw})


def _tables(home):
    return [t for t in build_tables(cells_mod.load(home)) if not t.derived]


def _pairs(table) -> list[tuple[int, int]]:
    return [p for r in table.rows if r.defense.startswith("asvp") for p in r.pairs]


def test_run_then_parallel_sweep_shares_the_teacher_and_reports_them_apart(home):
    """The README's path: bench run (every thread), then a sweep whose jobs run with one thread each. The
    sweep trains no second teacher, keys its students by their own numerics, and the report shows two
    tables (1 pair at 2 threads, 2 pairs at 1 thread), never one table of 3 pairs with seed 0 twice."""
    first = run_cell(_spec(threads=2), home=home, progress=False)
    specs = [_spec(threads=1, seed=s) for s in (0, 1)]
    planned = plan(specs, Store(home))
    assert planned.jobs["teachers"] == []  # the run's teacher is reused, not trained again
    assert all(c.spec.teacher_threads == 2 for c in planned.cells.values())
    cell = next(iter(planned.cells.values()))
    assert config_key(reference_config(cell, first["metrics"]["teacher_key"])) != \
        config_key(reference_config(resolve(_spec(threads=2)), first["metrics"]["teacher_key"]))
    result = run_sweep(specs, home=home, n_jobs=1, progress=False)
    assert result.ok
    rows = [r for r in Store(home).cells() if r["config"]["numerics"]["threads"] == 1]
    assert len(rows) == 2
    assert {r["metrics"]["teacher_key"] for r in rows} == {first["metrics"]["teacher_key"]}
    assert all(r["metrics"]["teacher_cached"] for r in rows)
    assert set(planned.cells) == {r["key"] for r in rows}  # what was planned is what ran

    tables = _tables(home)
    assert sorted(len(_pairs(t)) for t in tables) == [1, 2]
    for t in tables:
        assert len(_pairs(t)) == len(set(_pairs(t)))  # no seed counted twice
    labels = sorted(t.task for t in tables)
    assert labels == ["derain (threads=1)", "derain (threads=2)"]
    cells = cells_mod.load(home)
    notes = build_mod.apart(cells[cells["status"] == "done"])
    assert len(notes) == 1 and "2 numerics or data versions" in notes[0]


def test_force_does_not_share(home):
    run_cell(_spec(threads=2, defense="none"), home=home, progress=False)
    cell = resolve(_spec(threads=1, defense="none"))
    assert share_teacher(cell, Artifacts(home)).spec.teacher_threads == 2
    assert plan([cell.spec], Store(home), force=True).jobs["teachers"]  # --force retrains its own teacher


def test_two_data_versions_are_never_pooled(home, tmp_path):
    """Editing a dataset and re-running seed 0 gives a second cell; the report shows each version on its own
    (it blended a 21.80 dB and a 7.15 dB teacher into 18.14 dB, '4 (3x1)')."""
    data = write_noisy_pairs(tmp_path / "ds", n=6, size=(40, 48))
    spec = CellSpec(task="folder", defense="none", profile="smoke", task_params={"data": str(data)})
    run_cell(spec, home=home, progress=False)
    target = data / "target" / "im0.png"
    from skimage.io import imsave

    imsave(target, np.zeros((40, 48, 3), np.uint8), check_contrast=False)  # a new version of one image
    run_cell(spec, home=home, progress=False)
    tables = _tables(home)
    assert len(tables) == 2
    assert all(len(r.pairs) == 1 for t in tables for r in t.rows)
    assert all("data_version=" in t.task for t in tables)


def test_a_duplicate_pair_in_one_table_is_impossible(home):
    """Every table's rows list each (teacher seed, student seed) pair once, whatever the store holds."""
    for threads in (1, 2):
        for seed in (0, 1):
            run_cell(_spec(threads=threads, seed=seed, defense="none"), home=home, progress=False)
    for t in _tables(home):
        for r in t.rows:
            assert len(r.pairs) == len(set(r.pairs)), (t.task, r.defense, r.pairs)


RANDOM_TEACHER = textwrap.dedent('''
    import torch.nn.functional as F
    from torch import nn


    class Leaky(nn.Module):
        """Dropout left on in eval mode: its answers are random."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return x + F.dropout(self.conv(x), 0.5, training=True)


    def make():
        return Leaky()


    class CropBig(nn.Module):
        """Right at small sizes (the probes), one pixel short on each side above 32 px (a test image)."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            y = x + self.conv(x)
            return y[..., :-1, :-1] if min(x.shape[-2:]) > 32 else y


    class NanBig(CropBig):
        def forward(self, x):
            y = x + self.conv(x)
            return y * float("nan") if min(x.shape[-2:]) > 32 else y


    def crop_big():
        return CropBig()


    def nan_big():
        return NanBig()
''')


@pytest.mark.parametrize(("factory", "words"), [
    ("make", "not deterministic.*model.eval"),
    ("crop_big", "answers the first test image .* not its target's"),  # failed after training, in the metrics
    ("nan_big", "answers the first test image with NaN or inf"),  # was called "not deterministic ... nan"
])
def test_a_teacher_wrong_on_test_images_is_refused_naming_why(home, tmp_path, factory, words):
    name = f"leaky_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(RANDOM_TEACHER)
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(BenchError, match=words):
            run_cell(CellSpec(task="derain", defense="noise_floor", profile="smoke", teacher=f"{name}:{factory}"),
                     home=home, progress=False)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)",
                                  "\tx", "\r=1"])
def test_csv_cells_never_hold_a_formula(text):
    frame = pd.DataFrame([{"key": "k", "status": "done", "profile": "smoke", "task": "folder", "attack": "a",
                           "defense": "none", "teacher_seed": 0, "seed": 0, "defense_label": text,
                           "teacher_model": text, "student_drop_db": -1.5}])
    out = cells_mod.csv_frame(frame)
    assert out["defense_label"].iloc[0] == "'" + text
    assert out["teacher_model"].iloc[0] == "'" + text
    assert out["student_drop_db"].iloc[0] == -1.5  # numbers stay numbers
    assert cells_mod.spreadsheet_safe("-0.25") == "-0.25"  # and numbers written as text stay as they are


def test_figure_names_stay_short_and_unique():
    """A task label naming a 333-character --data path made a figure name over the 255-byte limit."""
    long_a, long_b = "folder (data=/" + "a" * 330 + ")", "folder (data=/" + "a" * 329 + "b)"
    a, b = build_mod._slug("tradeoff", long_a, "quick"), build_mod._slug("tradeoff", long_b, "quick")
    assert len(a) <= build_mod.SLUG_MAX and len(b) <= build_mod.SLUG_MAX and a != b
    assert build_mod._slug("tradeoff", "derain", "quick") == "tradeoff-derain-quick"
