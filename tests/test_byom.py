"""Bring your own model: an external model (written into tmp_path, not part of the package) protected
through the Python API and run through `bench run --teacher`, and every way of getting it wrong."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from conftest import user_module, write_noisy_pairs
from torch import nn

from bench import BenchError
from bench.cli import main
from bench.pipeline import CellSpec, resolve
from bench.protect import fit, make_defense, protect
from bench.store import Store

MODEL_SOURCE = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn


    class ExtNet(nn.Module):
        """Internal normalisation (a mean buffer, batch norm), input sides divisible by 4, any scale."""

        size_multiple = 4
        feature_layers = ("enc", "mid", "dec")

        def __init__(self, c=4, scale=1):
            super().__init__()
            self.scale = scale
            self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
            self.head = nn.Conv2d(3, c, 3, padding=1)
            self.enc = nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU())
            self.mid = nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.ReLU())
            self.dec = nn.Sequential(nn.Conv2d(2 * c, 4 * c, 3, padding=1), nn.PixelShuffle(2))
            self.up = nn.Sequential(nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2))
            self.tail = nn.Conv2d(c, 3 * scale * scale, 3, padding=1)

        def forward(self, x):
            f0 = self.head(x - self.mean)
            f1 = self.enc(f0)
            f = self.up(self.dec(self.mid(f1)) + f1) + f0
            out = self.tail(f)
            if self.scale > 1:
                out = F.pixel_shuffle(out, self.scale)
                x = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
            return x + 0.1 * out


    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return x + self.conv(x)


    def make(scale=1):
        return ExtNet(4, scale)


    def make_wide():
        return ExtNet(6)


    def make_x2():
        return ExtNet(4, 2)


    def make_plain():
        return Plain()


    def not_a_model():
        return 42


    number = 7
''')


@pytest.fixture(scope="module")
def ext(tmp_path_factory):
    """A module of the user's, on sys.path (as PYTHONPATH would put it), plus weights files for it."""
    root = tmp_path_factory.mktemp("user_code")
    with user_module(root, "ext_models", MODEL_SOURCE) as (name, mod):
        weights = {}
        for key, factory in (("x1", lambda: mod.make()), ("x2", lambda: mod.make(2)), ("wide", mod.make_wide)):
            torch.manual_seed(1)
            weights[key] = root / f"{key}.pt"
            torch.save(factory().state_dict(), weights[key])
        yield name, mod, weights


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """A folder of 5 PNG pairs whose sides are not multiples of the model's size_multiple (4)."""
    return write_noisy_pairs(tmp_path_factory.mktemp("pairs"), size=(42, 50))


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------- the API
def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_served_then_closed_model_is_bit_identical(ext):
    _, mod, _ = ext
    torch.manual_seed(0)
    model = mod.make().eval()
    x = torch.rand(2, 3, 16, 20)
    before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with protect(model, "asvp", h=3.0, expose=("mid",)) as served:
        y, feats = served.forward_with_features(x)
        assert y.shape == before.shape and not torch.equal(y, before)  # defended (ASVP inline)
        assert torch.equal(served(x), y)                                # deterministic
        assert set(feats) == {"mid"} and feats["mid"].shape[:2] == (2, 8)
        assert torch.equal(model(x), before)                            # direct calls are not defended
    assert _hooks(model) == 0 and not model.training
    assert torch.equal(model(x), before)
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    # two steps, and close() without a context manager
    served = make_defense("asvp", h=3.0, layers="enc,dec").serve(model)
    assert served.perturbed_layers == ("enc", "dec")
    served(x)
    served.close()
    assert _hooks(model) == 0 and torch.equal(model(x), before)
    with pytest.raises(BenchError, match="closed"):
        served(x)


def test_declared_size_multiple_pads_and_crops_scale_aware(ext):
    _, mod, _ = ext
    from bench.sizing import pad_to_multiple

    for scale in (1, 2):
        torch.manual_seed(0)
        model = mod.make(scale).eval()
        x = torch.rand(1, 3, 13, 18)
        with pytest.raises(RuntimeError):
            model(x)  # the model itself cannot take these sides
        with torch.no_grad(), protect(model, "none") as served:
            y = served(x)
            want = model(pad_to_multiple(x, 4))[..., : 13 * scale, : 18 * scale]
        assert y.shape == (1, 3, 13 * scale, 18 * scale) and torch.equal(y, want)
        assert _hooks(model) == 0


def test_readme_example_model_is_protected(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples" / "byom"))
    from my_model import make_teacher

    model = make_teacher().eval()
    x = torch.rand(1, 3, 30, 34)
    with torch.no_grad(), protect(model, "asvp", h=2.0) as served:
        assert served.perturbed_layers == ("down2", "up2")  # the middle of its declared feature_layers
        assert served(x).shape == x.shape


def test_api_errors_are_bench_errors(ext):
    _, mod, _ = ext
    model = mod.make().eval()
    with pytest.raises(BenchError, match="no layer 'mdi'.*mid"):
        protect(model, "asvp", layers=("mdi",))
    with pytest.raises(BenchError, match="no parameter 'hh'"):
        protect(model, "asvp", hh=2)
    with pytest.raises(BenchError, match="feature_layers"):
        protect(mod.make_plain(), "asvp")  # layers=middle on a model that declares no blocks
    assert _hooks(model) == 0


def test_defense_that_trains_needs_owner_data(ext):
    from bench.api import Defense
    from bench.registry import DEFENSES

    _, mod, _ = ext

    @DEFENSES.register("test_fitted_shift")
    class FittedShift(Defense):
        """Adds the owner's mean residual to every answer (learned in fit)."""

        shift = None

        def channels(self):
            return ("answers",)

        def fit(self, teacher, splits, ctx):
            self.shift = torch.stack([c - d for d, c in zip(splits.owner.degraded, splits.owner.clean)]).mean()
            assert len(splits.attacker) == 0 and len(splits.test) == 0  # fit never sees those

        def perturb_answers(self, answers, query):
            return answers + self.shift

    try:
        model = mod.make().eval()
        with pytest.raises(BenchError, match="owner=\\(inputs, targets\\)"):
            protect(model, "test_fitted_shift")
        inputs = [torch.zeros(3, 8, 8)] * 2
        targets = [torch.full((3, 8, 8), 0.25)] * 2
        x = torch.rand(1, 3, 8, 8)
        with torch.no_grad(), protect(model, "test_fitted_shift", owner=(inputs, targets)) as served:
            assert torch.allclose(served(x), model(x) + 0.25)
        defense = fit(make_defense("test_fitted_shift"), model, (inputs, targets))
        assert float(defense.shift) == pytest.approx(0.25)
    finally:
        DEFENSES.unregister("test_fitted_shift")


# ------------------------------------------------------------------------------------------- the CLI
def test_external_teacher_with_weights_on_folder_data(capsys, ext, pairs, tmp_path):
    name, _, weights = ext
    home = tmp_path / "runs"
    code, out, err = run(capsys, "run", "--task", "folder", "--data", str(pairs), "--teacher", f"{name}:make",
                         "--weights", str(weights["x1"]), "--defense", "asvp", "--set", "defense.h=3",
                         "--profile", "smoke", "--home", str(home))
    assert code == 0, err
    assert "folder · asvp" in out and f"teacher {name}:make" in out and "teacher from --weights" in out
    row = Store(home).cells()[0]
    config = row["config"] if isinstance(row["config"], dict) else json.loads(row["config"])
    assert config["teacher_model"]["factory"] == f"{name}:make"
    assert config["teacher_model"]["weights"] and config["teacher_model"]["arch"]
    m = row["metrics"] if isinstance(row["metrics"], dict) else json.loads(row["metrics"])
    assert m["teacher_drop_db"] != 0.0  # the served model is the user's, defended at its middle blocks


def test_external_teacher_and_student_on_builtin_sr(capsys, ext, shared_home):
    name, _, weights = ext
    code, out, err = run(capsys, "run", "--task", "sr", "--teacher", f"{name}:make", "--weights",
                         str(weights["x2"]), "--student", f"{name}:make", "--defense", "asvp",
                         "--set", "defense.layers=enc,dec", "--profile", "smoke", "--home", str(shared_home))
    assert code == 0, err
    assert "sr · asvp" in out and f"student {name}:make" in out


def test_a_sweep_runs_a_grid_on_your_own_models(capsys, ext, tmp_path):
    name, _, weights = ext
    code, out, err = run(capsys, "sweep", "--tasks", "sr", "--defenses", "none,asvp", "--seeds", "0,1",
                         "--teacher", f"{name}:make", "--weights", str(weights["x2"]), "--student", f"{name}:make",
                         "--set", "defense.layers=enc,dec", "--profile", "smoke", "--home", str(tmp_path))
    assert code == 0, err
    rows = Store(tmp_path).cells()
    assert len(rows) == 4 and all(r["config"]["teacher_model"]["factory"] == f"{name}:make" and
                                  r["config"]["student_model"]["factory"] == f"{name}:make" for r in rows)


def test_a_grid_file_names_its_models_and_its_report_finds_their_cells(capsys, ext, tmp_path):
    """The models live in the grid file, so `bench report --grid FILE` plans the same cells the sweep ran (with
    the models only on the command line it planned reference-model cells and found none of them)."""
    name, _, weights = ext
    axes = ("profile: smoke\ntasks: [sr]\ndefenses: [none, noise_floor]\n"
            "seeds: [0]\n")
    grid = tmp_path / "own.yaml"
    grid.write_text(axes + f"teacher: '{name}:make'\nweights: '{weights['x2']}'\nstudent: '{name}:make'\n")
    home = tmp_path / "store"
    code, _, err = run(capsys, "sweep", str(grid), "--home", str(home))
    assert code == 0, err
    rows = Store(home).cells()
    assert len(rows) == 2 and all(r["config"]["teacher_model"]["factory"] == f"{name}:make" and
                                  r["config"]["student_model"]["factory"] == f"{name}:make" for r in rows)
    # the same cells as the flags give: a second sweep with the models as flags finds every cell done
    code, out, err = run(capsys, "sweep", str(grid), "--teacher", f"{name}:make", "--weights", str(weights["x2"]),
                         "--student", f"{name}:make", "--home", str(home))
    assert code == 0 and len(Store(home).cells()) == 2, err
    code, out, err = run(capsys, "report", "--home", str(home), "--grid", str(grid), "--format", "csv",
                         "--out", str(tmp_path / "rep"))
    assert code == 0, err
    assert len((tmp_path / "rep" / "cells.csv").read_text().strip().splitlines()) == 3
    bare = tmp_path / "bare.yaml"
    bare.write_text(axes)
    code, out, err = run(capsys, "report", "--home", str(home), "--grid", str(bare), "--out", str(tmp_path / "r2"))
    assert code == 2 and "none of its 2 cells is in this store" in err


def test_a_grid_file_model_must_be_a_name(capsys, tmp_path):
    grid = tmp_path / "bad.yaml"
    grid.write_text("profile: smoke\ntasks: [derain]\ndefenses: [none]\nteacher: [nafnet]\n")
    code, out, err = run(capsys, "sweep", str(grid), "--home", str(tmp_path))
    assert code == 2 and "grid file key 'teacher' must be a name as --teacher takes it" in err
    assert len(err.strip().splitlines()) == 1


def test_external_teacher_without_weights_is_trained_and_cached(ext, shared_home):
    from bench.pipeline import run_cell

    name, _, _ = ext
    spec = CellSpec(task="derain", defense="none", profile="smoke", teacher=f"{name}:make")
    row = run_cell(spec, home=shared_home, progress=False)
    assert not row["metrics"]["teacher_cached"]
    other = run_cell(CellSpec(task="derain", defense="asvp", profile="smoke", teacher=f"{name}:make"),
                     home=shared_home, progress=False)
    assert other["metrics"]["teacher_cached"]
    assert other["metrics"]["teacher_key"] == row["metrics"]["teacher_key"]


def test_cell_key_includes_factory_weights_and_student(ext, pairs, tmp_path):
    name, _, weights = ext

    def key(**kw):
        return resolve(CellSpec(task="folder", task_params={"data": str(pairs)}, profile="smoke", **kw)).key

    base = key(teacher=f"{name}:make", weights=str(weights["x1"]))
    assert base == key(teacher=f"{name}:make", weights=str(weights["x1"]))
    copy = tmp_path / "copy.pt"
    copy.write_bytes(weights["x1"].read_bytes())
    assert key(teacher=f"{name}:make", weights=str(copy)) == base          # the content counts, not the path
    other = tmp_path / "other.pt"
    torch.manual_seed(5)
    import importlib

    torch.save(importlib.import_module(name).make().state_dict(), other)
    import pickle

    cell = resolve(CellSpec(task="folder", task_params={"data": str(pairs)}, profile="smoke",
                            teacher=f"{name}:make", weights=str(weights["x1"])))
    clone = pickle.loads(pickle.dumps(cell.teacher_model))  # crosses processes by path, not as a live object
    assert clone.identity() == cell.teacher_model.identity() and isinstance(clone.build(), nn.Module)
    keys = {base, key(teacher=f"{name}:make", weights=str(other)), key(teacher=f"{name}:make"),
            key(teacher=f"{name}:make", weights=str(weights["x1"]), student=f"{name}:make"), key()}
    assert len(keys) == 5


@pytest.mark.parametrize("args, words", [
    (["--teacher", "no_such_module_xyz:make"], ["no module named 'no_such_module_xyz'", "PYTHONPATH"]),
    (["--teacher", "{m}:mkae"], ["has no attribute 'mkae'", "make"]),
    (["--teacher", "{m}:not_a_model"], ["returned an object of type int, not a torch.nn.Module"]),
    (["--teacher", "{m}:number"], ["not a callable"]),
    (["--teacher", "{m}"], ["PACKAGE.MODULE:FACTORY"]),
    (["--student", "{m}:nope"], ["--student", "has no attribute 'nope'"]),
    (["--teacher", "{m}:make", "--weights", "{w_wide}"],
     ["does not match", "shape mismatch", "head.weight (6, 3, 3, 3) in file vs (4, 3, 3, 3) in model"]),
    (["--teacher", "{m}:make_plain", "--weights", "{w_x1}"], ["missing keys: conv.weight", "unexpected keys"]),
    (["--teacher", "{m}:make", "--weights", "/nonexistent.pt"], ["/nonexistent.pt does not exist"]),
    (["--weights", "{w_x1}"], ["--weights", "--teacher PACKAGE.MODULE:FACTORY"]),
    (["--teacher", "{m}:make_x2"], ["has scale 2", "task 'derain' has scale 1"]),
    (["--teacher", "{m}:make", "--defense", "asvp", "--set", "defense.layers=enc,mdi"],
     ["defense 'asvp'", "no layer 'mdi'", "mid", "--set defense.layers="]),
    (["--defense", "asvp", "--set", "defense.layers=body.9"], ["no layer 'body.9'", "body.0"]),
    (["--teacher", "{m}:make_plain", "--defense", "asvp"], ["layers=middle", "--set defense.layers="]),
])
def test_bad_model_input_is_one_line_and_exit_2(capsys, ext, tmp_path, args, words):
    name, _, weights = ext
    fmt = {"m": name, "w_x1": weights["x1"], "w_wide": weights["wide"]}
    args = [a.format(**fmt) for a in args]
    code, out, err = run(capsys, "run", "--task", "derain", "--profile", "smoke", *args, "--home", str(tmp_path))
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: ")
    for w in words:
        assert w.format(**fmt) in err, err


def test_padding_reflects_and_falls_back_to_replication_on_tiny_inputs():
    from bench.sizing import crop_output, pad_to_multiple

    x = torch.arange(12.0).view(1, 1, 3, 4)
    p = pad_to_multiple(x, 4)
    assert p.shape == (1, 1, 4, 4) and torch.equal(p[..., :3, :], x) and torch.equal(p[..., 3, :], x[..., 1, :])
    tiny = pad_to_multiple(torch.ones(1, 3, 2, 2), 8)                  # too small to reflect
    assert tiny.shape == (1, 3, 8, 8) and torch.equal(tiny, torch.ones(1, 3, 8, 8))
    assert pad_to_multiple(x[..., :, :4], 2) is not x                   # 3 rows -> padded
    assert crop_output(torch.zeros(1, 3, 8, 8), (3, 4), (4, 4)).shape == (1, 3, 6, 8)  # scale 2
    with pytest.raises(BenchError, match="integer scale"):
        crop_output(torch.zeros(1, 3, 6, 6), (3, 3), (4, 4))
