"""Nothing lost, nothing stale, nothing silent (issue 17): one test per item of its catalogue.

1 a failed re-run keeps the finished result; 2 cached files are checked against their digests;
3 numerics in every key (tests/test_pipeline.py, tests/test_device.py); 4 workers end with their sweep,
SIGTERM stops like Ctrl-C; 5 size and count guards; 6 Markdown escaping (tests/test_reports.py);
7 read-only, damaged and empty stores; 8 edge values; 9 plugin authors' mistakes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bench import BenchError
from bench.cache import DIGEST_FILE, Artifacts
from bench.cli import main
from bench.pipeline import CellSpec, resolve, run_cell
from bench.store import Store

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--profile", "smoke", "--set", "profile.teacher_steps=4", "--set", "profile.student_steps=4"]


def _spec(**kw) -> CellSpec:
    return CellSpec(task="derain", defense="asvp", profile="smoke",
                    profile_params={"teacher_steps": 4, "student_steps": 4}, **kw)


# ------------------------------------------------------------------------------------- 1 lost results
def test_a_failed_rerun_keeps_the_finished_row_and_records_the_attempt(tmp_path, monkeypatch):
    import bench.pipeline as pipeline

    done = run_cell(_spec(), home=tmp_path, progress=False)
    assert done["status"] == "done"

    def boom(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(pipeline, "_run", boom)
    with pytest.raises(RuntimeError):
        run_cell(_spec(), home=tmp_path, progress=False, force=True)
    store = Store(tmp_path)
    row = store.get_cell(done["key"])
    assert row["status"] == "done" and row["metrics"] == done["metrics"]
    (attempt,) = store.attempts(done["key"])
    assert attempt["error"].startswith("RuntimeError: injected failure") and "Traceback" in attempt["detail"]


# ------------------------------------------------------------------------------------- 2 stale caches
def test_a_garbled_checkpoint_is_recomputed_not_trusted(tmp_path, capsys):
    first = run_cell(_spec(), home=tmp_path, progress=False)
    art = Artifacts(tmp_path)
    key = first["metrics"]["teacher_key"]
    path = art.dir(key) / "model.pt"
    state = torch.load(path, weights_only=True)
    state = {k: v + 0.01 for k, v in state.items()}  # finite, loadable, wrong
    torch.save(state, path)
    model = resolve(_spec()).task.teacher_arch()
    assert not art.load_model(key, model)
    assert "do not match the digest" in capsys.readouterr().err
    # a checkpoint from before digests were kept is trusted once, and its digest recorded
    (art.dir(key) / DIGEST_FILE).unlink()
    assert art.load_model(key, model) and art.weights_digest(key) is not None


def test_edited_scores_are_recomputed(tmp_path, capsys):
    first = run_cell(_spec(), home=tmp_path, progress=False)
    art = Artifacts(tmp_path)
    for path in art.dir(first["metrics"]["teacher_key"]).glob("scores-*.json"):
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, "psnr": 99.0}))
    again = run_cell(_spec(seed=1), home=tmp_path, progress=False)  # another cell reads the teacher's scores
    assert again["metrics"]["teacher_psnr"] == first["metrics"]["teacher_psnr"]
    assert "do not match their digest" in capsys.readouterr().err


def test_a_damaged_config_beside_a_valid_model_is_retrained_not_fatal(tmp_path):
    from bench.cache import config_key
    from bench.pipeline import reference_config

    first = run_cell(_spec(), home=tmp_path, progress=False)
    cell = resolve(_spec())
    ref_key = config_key(reference_config(cell, first["metrics"]["teacher_key"]))
    (Artifacts(tmp_path).dir(ref_key) / "config.json").write_text("{not json")
    again = run_cell(_spec(), home=tmp_path, progress=False, force=True)
    assert again["status"] == "done"
    assert json.loads((Artifacts(tmp_path).dir(ref_key) / "config.json").read_text())["config"]


# -------------------------------------------------------------------------------- 4 workers and signals
def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="ignore")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_workers_end_with_their_sweep(tmp_path, how):
    """A sweep with two workers stopped by SIGTERM (exits like Ctrl-C, 143, with its message) or SIGKILL:
    its worker processes are gone within seconds, not minutes."""
    cmd = [sys.executable, "-m", "bench.cli", "sweep", "--tasks", "derain", "--defenses", "none,asvp",
           "--seeds", "0-3", "--profile", "smoke", "--set", "profile.teacher_steps=3000", "--n-jobs", "2",
           "--home", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, BENCH_PROGRESS="0"))
    deadline = time.time() + 120
    workers: list[int] = []
    while time.time() < deadline and len(workers) < 2:  # the two loky workers (and loky's helpers)
        time.sleep(0.5)
        workers = [p for p in _children(proc.pid) if "LokyProcess" in _cmdline(p)]
    assert len(workers) >= 2, "the sweep started no workers"
    time.sleep(2)  # the workers are computing (teachers of 3000 steps)
    proc.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
    proc.wait(timeout=60)
    gone = time.time() + 15
    while time.time() < gone and any(_alive(p) for p in workers):
        time.sleep(0.5)
    assert not any(_alive(p) for p in workers), "workers outlived their sweep"
    _, err = proc.communicate(timeout=60)  # the workers held the pipes: read them once they are gone
    if how == "SIGTERM":
        assert proc.returncode == 143 and "terminated after" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------- 5 guards
def test_absurd_sizes_are_refused_before_anything_runs(tmp_path, capsys):
    assert main(["sweep", "--tasks", "derain", "--seeds", "0-100000000", "--home", str(tmp_path)]) == 2
    assert "100000001 seeds" in capsys.readouterr().err
    assert main(["sweep", "--tasks", "all", "--defenses", "all", "--seeds", "0-5000", "--home", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cells, over the limit of 20000" in err and "--max-cells" in err
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert main(["sweep", str(empty), "--home", str(tmp_path)]) == 2
    assert "is empty" in capsys.readouterr().err
    assert not (tmp_path / "results.sqlite").exists() or not Store(tmp_path).cells()


def test_an_image_too_large_for_the_folder_task_is_refused(pairs_dir, tmp_path, capsys):
    code = main(["run", "--task", "folder", "--data", str(pairs_dir), *SMOKE, "--set", "task.max_megapixels=0.001",
                 "--home", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "over the folder task's limit of 0.001 MP" in err and "task.max_megapixels" in err


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    import bench.cli as cli

    def oom(args):
        raise MemoryError()

    monkeypatch.setattr(cli, "cmd_list", oom)
    assert main(["list"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out of memory;") and "\n" not in err


# ----------------------------------------------------------------------------------------- 7 stores
def test_a_read_only_store_is_reported(tmp_path):
    run_cell(_spec(), home=tmp_path, progress=False)
    ro = Store(tmp_path, readonly=True)
    assert len(ro.cells()) == 1
    with pytest.raises(BenchError, match="read-only"):
        ro.put_cell({"key": "x", "task": "t", "defense": "d", "attack": "a", "seed": 0, "profile": "p",
                     "status": "done", "config": {}})


def test_damaged_and_empty_stores_say_how_to_recover_keeping_the_models(tmp_path, capsys):
    run_cell(_spec(), home=tmp_path, progress=False)
    db = tmp_path / "results.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    page = 4096
    data[page + 100: 2 * page] = b"\xff" * (page - 100)  # garble the second page
    db.write_bytes(bytes(data))
    code = main(["report", "--home", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "damaged" in err and "are kept and reused" in err and "mv " in err
    empty = tmp_path / "e"
    empty.mkdir()
    (empty / "results.sqlite").write_bytes(b"")
    with pytest.raises(BenchError, match=r"empty \(0 bytes\).*kept and reused"):
        Store(empty)


# ------------------------------------------------------------------------------------- 8 edge values
@pytest.mark.parametrize(("group", "value", "words"), [
    ("defense.h", "5000", "h must be in [0, 1000]"), ("defense.h", "1e19", "magnitude at most"),
    ("defense.h", "1e308", "magnitude at most"),
    ("defense.h", "nan", "finite"), ("attack.queries", "1e20", "attack 'vanilla_kd' parameter 'queries'"),
])
def test_edge_values_are_one_line_errors(tmp_path, capsys, group, value, words):
    code = main(["run", "--task", "derain", "--defense", "asvp", *SMOKE, "--set", f"{group}={value}",
                 "--home", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and "\n" not in err


# -------------------------------------------------------------------------------------- 9 plugins
def _package(root: Path, name: str, entries: dict[str, str], code: str) -> Path:
    """A package on ``root`` with entry points in group bench.defenses (what pip install would leave)."""
    (root / f"{name}.py").write_text(textwrap.dedent(code))
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bench.defenses]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
    return root


PLUGIN_CODE = """
    from dataclasses import dataclass
    from bench.api import Defense
    from bench.params import param

    @dataclass(frozen=True)
    class NoDefault:
        sigma: float

    class Missing(Defense):
        Params = NoDefault

    @dataclass(frozen=True)
    class P:
        sigma: float = param(0.1, "noise")

    class Clash(Defense):
        Params = P
"""


def _bench(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
               BENCH_PROGRESS="0")
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_plugin_packaging_mistakes_are_named_and_do_not_hide_the_others(tmp_path):
    root = _package(tmp_path, "evil_plugins", {"asvp": "evil_plugins:Clash", "nodefault": "evil_plugins:Missing",
                                               "broken": "evil_plugins_missing:Nope"}, PLUGIN_CODE)
    listing = _bench(root, "list", "defenses")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert any(ln.strip().startswith("output_noise") for ln in lines)  # the others still listed
    broken = {ln.split()[0]: ln for ln in lines if "[BROKEN]" in ln}
    assert set(broken) == {"asvp", "nodefault", "broken"}
    assert "antidistill-bench" in broken["asvp"] and "evil_plugins" in broken["asvp"]
    assert "parameter 'sigma' has no default" in broken["nodefault"]
    assert "failed to import" in broken["broken"]
    run = _bench(root, "run", "--task", "derain", "--defense", "asvp", *SMOKE, "--home", str(tmp_path / "h"))
    assert run.returncode == 2 and "provided by two packages" in run.stderr and "Traceback" not in run.stderr


@dataclass(frozen=True)
class _NoParams:
    pass


@pytest.mark.parametrize(("answer", "words"), [
    (lambda y: y[..., :-1], "of shape"), (lambda y: None, "returned NoneType, not a tensor"),
    (lambda y: y * float("nan"), "non-finite"), (lambda y: y.double(), "torch.float64"),
])
def test_a_defense_returning_a_bad_answer_is_named(answer, words):
    from bench.api import Defense
    from bench.models import RestorationCNN
    from bench.protect import protect

    class Bad(Defense):
        Params = _NoParams
        name = "bad_answers"

        def channels(self):
            return ("answers",)

        def perturb_answers(self, answers, query):
            return answer(answers)

    model = RestorationCNN(4, 1).eval()
    with protect(model, Bad(_NoParams())) as served, pytest.raises(BenchError) as info, torch.no_grad():
        served(torch.rand(1, 3, 16, 16))
    assert "defense 'bad_answers': perturb_answers" in str(info.value) and words in str(info.value)


def test_a_changed_plugin_is_not_credited_with_old_results(tmp_path, monkeypatch, capsys):
    import bench.cell
    import bench.pipeline as pipeline

    first = run_cell(_spec(), home=tmp_path, progress=False)
    assert first["versions"]["code"]["defense"] == pipeline.code_digest(type(resolve(_spec()).defense))
    assert run_cell(_spec(), home=tmp_path, progress=False)["cached"]
    monkeypatch.setattr(bench.cell, "plugin_code", lambda cell: {"task": "t", "defense": "edited", "attack": "a"})
    again = run_cell(_spec(), home=tmp_path, progress=False)
    assert not again["cached"] and "the code of task 'derain', defense 'asvp', attack 'vanilla_kd' changed" \
        in capsys.readouterr().err
