"""Bad inputs caught before anything runs, each with a one-line error that blames the right thing:
damaged or oversized weights files, stores with a missing column or a full disk, cells that cannot fit
in memory, and user models that answer NaN, have nothing to train or only work at some input sizes."""

from __future__ import annotations

import sqlite3
import textwrap
import time
import zipfile

import pytest
import torch
from conftest import user_module

from bench import BenchError
from bench.cli import main
from bench.pipeline import CellSpec, resolve
from bench.store import Store

MODELS = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Conv(nn.Module):
        def __init__(self, scale=1, nan=False):
            super().__init__()
            self.scale, self.nan = scale, nan
            self.conv = nn.Conv2d(3, 3 * scale * scale, 3, padding=1)

        def forward(self, x):
            y = F.pixel_shuffle(self.conv(x), self.scale) if self.scale > 1 else x + self.conv(x)
            return y * float("nan") if self.nan else y


    class DownUp(nn.Module):
        """Right at sides divisible by 2 (the probe's 32x24), one pixel too large at odd sides."""

        def __init__(self, multiple=None):
            super().__init__()
            if multiple:
                self.size_multiple = multiple
            self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.up = nn.ConvTranspose2d(4, 3, 2, stride=2)

        def forward(self, x):
            return self.up(self.down(x))


    def make(scale=1):
        return Conv(scale)


    def make_nan():
        return Conv(nan=True)


    def make_downup():
        return DownUp()


    def make_downup_padded():
        return DownUp(multiple=2)


    def make_frozen():
        m = Conv()
        m.requires_grad_(False)
        return m
''')


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A module of the user's on sys.path; returns its name and the module."""
    with user_module(tmp_path_factory.mktemp("guard_models"), "guard_models", MODELS) as found:
        yield found


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------------- 1 weights files
def test_a_weights_file_with_a_flipped_byte_is_refused_as_damaged(models, tmp_path, capsys):
    name, mod = models
    model = mod.make()
    with torch.no_grad():
        model.conv.weight.fill_(0.123)
    path = tmp_path / "teacher.pt"
    torch.save(model.state_dict(), path)
    data = bytearray(path.read_bytes())
    at = data.find(torch.tensor([0.123] * 4).numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 0x40  # one bit of one weight: torch.load itself would load it silently
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["conv.weight"].flatten()[1] != torch.tensor(0.123)
    err = _one_line_error(capsys, ["run", "--task", "derain", "--profile", "smoke", "--teacher", f"{name}:make",
                                   "--weights", str(path), "--home", str(tmp_path / "runs")])
    assert str(path) in err and "damaged" in err and "CRC" in err


def test_a_weights_zip_bomb_is_refused_before_anything_is_inflated(models, tmp_path, monkeypatch):
    from bench.usermodel import load_weights

    name, mod = models
    path = tmp_path / "bomb.pt"
    torch.save(mod.make().state_dict(), path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:  # 50 MiB of zeros: ~50 KB on disk
        with zf.open("bomb/data/junk", "w", force_zip64=True) as fh:
            for _ in range(50):
                fh.write(bytes(1 << 20))
    assert path.stat().st_size < 1_000_000
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or real_open(self, *a, **k))
    start = time.perf_counter()
    with pytest.raises(BenchError) as info:
        load_weights(mod.make(), path)
    msg = str(info.value)
    assert time.perf_counter() - start < 2 and not opened  # refused from the central directory alone
    assert "declares 52.4 MB" in msg and "bomb/data/junk" in msg and "(1.0 MB:" in msg and str(path) in msg


def test_a_legacy_weights_file_still_loads(models, tmp_path):
    from bench.usermodel import load_weights

    _, mod = models
    src = mod.make()
    path = tmp_path / "legacy.pt"
    torch.save(src.state_dict(), path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    model = mod.make()
    load_weights(model, path)
    assert torch.equal(model.conv.weight, src.conv.weight)


# ------------------------------------------------------------------------------------------ 2 stores
def _row(key: str) -> dict:
    return {"key": key, "task": "derain", "defense": "none", "attack": "vanilla_kd", "seed": 0, "profile": "smoke",
            "status": "done", "config": {"x": 1}, "metrics": {"student_drop_db": 1.0}, "started": 1.0,
            "finished": 2.0, "wall_s": 1.0}


def test_a_store_missing_a_column_is_refused_on_opening(tmp_path, capsys):
    Store(tmp_path).put_cell(_row("k1"))
    db = tmp_path / "results.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("ALTER TABLE cells DROP COLUMN metrics")
    for readonly in (False, True):
        with pytest.raises(BenchError) as info:
            Store(tmp_path, readonly=readonly)
        msg = str(info.value)
        assert str(db) in msg and "metrics" in msg and "cells" in msg and f"mv {db}" in msg and "\n" not in msg
    err = _one_line_error(capsys, ["report", "--home", str(tmp_path)])
    assert "lacks the column metrics" in err


class _FailingConnection:
    """A connection whose statements starting with ``trigger`` fail as SQLite does on a full disk."""

    def __init__(self, con: sqlite3.Connection, trigger: str, message: str) -> None:
        object.__setattr__(self, "_con", con)
        object.__setattr__(self, "_fail", (trigger, message))

    def execute(self, sql: str, *args):
        trigger, message = self._fail
        if " ".join(sql.split()).upper().startswith(trigger):
            raise sqlite3.OperationalError(message)
        return self._con.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._con, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._con, name, value)


@pytest.mark.parametrize(("trigger", "message"), [
    ("INSERT", "database or disk is full"), ("COMMIT", "disk I/O error"), ("PRAGMA JOURNAL_MODE", "disk I/O error"),
])
def test_a_full_disk_names_the_store_and_keeps_the_results(tmp_path, monkeypatch, trigger, message):
    store = Store(tmp_path)
    store.put_cell(_row("k1"))
    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: _FailingConnection(real_connect(*a, **k), trigger, message))
    with pytest.raises(BenchError) as info:
        store.put_cell(_row("k2"))
    msg = str(info.value)
    assert str(store.path) in msg and "disk may be full" in msg and "results are kept" in msg and message in msg
    monkeypatch.setattr(sqlite3, "connect", real_connect)
    assert [r["key"] for r in store.cells()] == ["k1"]  # the failed write was one transaction: not applied
    store.check()


# ------------------------------------------------------------------------------------------ 3 memory
def test_a_cell_too_large_for_memory_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("bench.guards.available_memory", lambda device: (8 * 2**30, "this machine's memory"))
    home = str(tmp_path / "runs")
    for field, value in (("batch", "100000"), ("image_size", "100000")):
        # resolve() refuses first: without the check the CLI below would start training (15 GB)
        with pytest.raises(BenchError, match=f"profile.{field}"):
            resolve(CellSpec(task="derain", profile="smoke", profile_params={field: value}))
        for argv in (["run", "--task", "derain"], ["sweep", "--tasks", "derain"]):
            err = _one_line_error(capsys, [*argv, "--profile", "smoke", "--set", f"profile.{field}={value}",
                                           "--home", home])
            assert f"profile.{field}" in err and "(8.0 GiB)" in err and "BENCH_NO_MEMORY_CHECK=1" in err, err
    assert not (tmp_path / "runs" / "artifacts").exists()
    monkeypatch.setenv("BENCH_NO_MEMORY_CHECK", "1")  # resolved (not run) when the check is switched off
    assert resolve(CellSpec(task="derain", profile="smoke", profile_params={"batch": "100000"}))


def test_the_built_in_profiles_fit_a_24_gib_machine(monkeypatch):
    from bench import guards

    monkeypatch.setattr(guards, "available_memory", lambda device: (24 * 2**30, "this machine's memory"))
    for profile in ("smoke", "quick", "paper"):
        for task in ("derain", "sr"):
            cell = resolve(CellSpec(task=task, profile=profile))
            need = sum(guards.estimate(cell).values())
            assert need < {"smoke": 2**28, "quick": 2**31, "paper": 12 * 2**30}[profile], (profile, task, need)
    # the paper profile's feature-level attack keeps two 64-channel feature maps of 4000 queries (33 GB)
    with pytest.raises(BenchError, match="profile.query_budget"):
        resolve(CellSpec(task="derain", profile="paper", attack="feature_kd"))


# ----------------------------------------------------------------------------------- 4 user models
def test_a_teacher_answering_nan_is_blamed_not_the_defense(models, tmp_path):
    name, mod = models
    with pytest.raises(BenchError, match=rf"--teacher model {name}:make_nan answers the probe input .* NaN.*not a "
                                         "defense"):
        resolve(CellSpec(task="derain", profile="smoke", teacher=f"{name}:make_nan"))
    state = mod.make().state_dict()
    state["conv.bias"][0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    with pytest.raises(BenchError, match=rf"{path} holds NaN or inf values .*conv\.bias"):
        resolve(CellSpec(task="derain", profile="smoke", teacher=f"{name}:make", weights=str(path)))


def test_a_non_finite_answer_before_the_defense_blames_the_teacher():
    from bench.api import Defense
    from bench.serving import checked

    y = torch.full((1, 3, 4, 4), float("nan"))
    with pytest.raises(BenchError, match="teacher's own output holds NaN .* not the defense"):
        checked(y.clone(), y, Defense(None), "perturb_answers")
    with pytest.raises(BenchError, match="perturb_answers returned non-finite"):  # the defense's own doing
        checked(y.clone(), torch.zeros_like(y), Defense(None), "perturb_answers")


@pytest.mark.parametrize(("role", "factory"), [("teacher", "torch.nn:Identity"), ("student", "torch.nn:Identity"),
                                               ("teacher", "{m}:make_frozen")])
def test_a_model_with_nothing_to_train_is_refused(models, capsys, tmp_path, role, factory):
    factory = factory.format(m=models[0])
    err = _one_line_error(capsys, ["run", "--task", "derain", "--profile", "smoke", f"--{role}", factory,
                                   "--home", str(tmp_path)])
    assert f"--{role} model {factory} has no trainable parameters" in err


def test_a_model_right_only_at_the_probe_size_is_refused_early(models, capsys, tmp_path):
    name, _ = models
    err = _one_line_error(capsys, ["run", "--task", "derain", "--profile", "smoke", "--teacher",
                                   f"{name}:make_downup", "--home", str(tmp_path)])
    assert f"--teacher model {name}:make_downup" in err and "27x21 -> 28x22 (not 27x21)" in err
    assert "size_multiple" in err
    # declaring the multiple makes it work (the suite pads and crops), and so do SR models at odd sizes
    assert resolve(CellSpec(task="derain", profile="smoke", teacher=f"{name}:make_downup_padded"))
    assert resolve(CellSpec(task="sr", profile="smoke", teacher=f"{name}:make", student=f"{name}:make"))


def test_probe_sides_cover_the_profiles_crop_and_query():
    from bench.profiles import get_profile
    from bench.usermodel import ODD_PROBE_SIZE, probe_sides

    assert probe_sides(get_profile("paper"), 2) == [ODD_PROBE_SIZE, (48, 48), (64, 64)]
    assert probe_sides(get_profile("smoke", {"query_size": "100000"}), 1) == [ODD_PROBE_SIZE, (24, 24)]


def test_reference_model_is_measured_for_the_estimate():
    from bench import guards
    from bench.models import RestorationCNN

    fp = guards.footprint(RestorationCNN(8, 2))
    assert fp.total == pytest.approx(8 * 5 + 3) and fp.layers["body.1"] == 8 and fp.widest == 8
