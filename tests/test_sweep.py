"""`bench sweep`: grid expansion, shared stages, resume after Ctrl-C, failures, concurrent sweeps, dask.

The sweeps run the smoke profile with a few training steps on one task, so that a cell takes about a
second; every comparison is on the metrics that training determines (not on timings).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import BenchError
from bench.grid import load_file, make_grid
from bench.params import parse_sets
from bench.scheduler import claim_slot, format_summary, gpu_for, plan, run_sweep
from bench.store import Store

ROOT = Path(__file__).resolve().parents[1]
FAULT_PLUGINS = ROOT / "tests" / "sweep_plugins"

# One task, the undefended teacher and ASVP, three seeds: 6 cells sharing 1 teacher and 3 reference students.
FLAGS = ["--tasks", "derain", "--defenses", "none,asvp", "--seeds", "0-2", "--profile", "smoke",
         "--set", "profile.teacher_steps=4", "--set", "profile.student_steps=4"]
DETERMINED = ("input_psnr", "teacher_psnr", "served_psnr", "student_ref_psnr", "student_psnr", "student_ssim",
              "teacher_drop_db", "student_drop_db", "student_ssim_drop_pct", "queries_used", "teacher_key")


def specs_from(flags: list[str]):
    args = dict(zip(flags[::2], flags[1::2]))
    sets = [v for k, v in zip(flags[::2], flags[1::2]) if k == "--set"]
    return make_grid(tasks=args.get("--tasks"), defenses=args.get("--defenses"), seeds=args.get("--seeds"),
                     profile=args.get("--profile"), sets=parse_sets(sets)).specs()


def results(rows):
    """key -> the metrics training determines, for every row (failing rows included)."""
    return {r["key"]: (r["status"], {k: (r["metrics"] or {}).get(k) for k in DETERMINED}) for r in rows}


def bench_cmd(*args: str, home: Path) -> list[str]:
    return [sys.executable, "-m", "bench.cli", "sweep", *args, "--home", str(home)]


def env(**extra: str) -> dict[str, str]:
    return dict(os.environ, BENCH_PROGRESS="0", **extra)


# ---------------------------------------------------------------------------------------- the grid
def test_flags_expand_every_axis_and_all():
    g = make_grid(tasks="all", defenses="none,asvp", seeds="0-2,5", profile="smoke")
    assert [t.name for t in g.tasks] == ["dehaze", "derain", "lowlight", "sr", "underwater"]  # folder: no data
    specs = g.specs()
    assert len(specs) == 5 * 2 * 1 * 4
    assert {s.seed for s in specs} == {0, 1, 2, 5} and {s.attack for s in specs} == {"vanilla_kd"}
    assert make_grid(seeds="all", tasks="derain").seeds == [0, 1, 2]
    assert "none" in [d.name for d in make_grid(tasks="derain").defenses]  # defenses default to all


def test_budgets_axis_passes_budget_db_and_skips_defenses_without_strength():
    g = make_grid(tasks="derain", defenses="none,asvp", budgets="none,0.5,1")
    by_defense = {}
    for s in g.specs():
        by_defense.setdefault(s.defense, []).append(s.budget_db)
    assert by_defense == {"none": [None], "asvp": [None, 0.5, 1.0]}
    assert make_grid(tasks="derain", defenses="asvp", budgets="all").budgets == [0.1, 0.5, 1.0]


def test_grid_file_entries_with_params_sweeps_and_own_budgets(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("""
profile: {name: smoke, student_steps: 7}
tasks: [derain]
defenses:
  - none
  - {name: asvp, params: {h: 1.5}}
  - {asvp: {h: 2}}
  - {name: asvp, sweep: {h: [3, 4]}, params: {k_mode: fixed}}
  - {name: asvp, budgets: [0.1, 0.5]}
seeds: [0, 1]
""")
    g = make_grid(load_file(f))
    specs = g.specs()
    asvp = [(s.defense_params, s.budget_db) for s in specs if s.defense == "asvp" and s.seed == 0]
    assert asvp == [({"h": 1.5}, None), ({"h": 2}, None), ({"k_mode": "fixed", "h": 3}, None),
                    ({"k_mode": "fixed", "h": 4}, None), ({}, 0.1), ({}, 0.5)]
    assert len(specs) == 2 * 7 and all(s.profile_params == {"student_steps": 7} for s in specs)
    # flags replace the file's axes; --set reaches every plugin on the axis that declares the key
    g2 = make_grid(load_file(f), seeds="3", sets=parse_sets(["defense.h=9", "profile.batch=4"]))
    assert {s.seed for s in g2.specs()} == {3}
    assert {s.defense_params.get("h") for s in g2.specs() if s.defense == "asvp"} == {"9"}
    assert all("h" not in s.defense_params for s in g2.specs() if s.defense == "none")
    assert g2.profile_params == {"student_steps": 7, "batch": "4"}


def test_a_defense_entry_can_run_against_some_attacks_only(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("""
tasks: [derain]
defenses: [none, {name: output_noise, attacks: [vanilla_kd]}, {name: asvp, strengths: [1.1, 1.5]}]
attacks: [vanilla_kd, feature_kd]
""")
    pairs = [(s.defense, s.attack) for s in make_grid(load_file(f)).specs()]
    assert pairs == [("none", "vanilla_kd"), ("none", "feature_kd"), ("output_noise", "vanilla_kd"),
                     ("asvp", "vanilla_kd"), ("asvp", "feature_kd"), ("asvp", "vanilla_kd"), ("asvp", "feature_kd")]


@pytest.mark.parametrize("kwargs, text, words", [
    ({"tasks": "derian"}, None, ["unknown task 'derian'", "derain"]),
    ({"tasks": "derain", "seeds": "x"}, None, ["--seeds", "'x'"]),
    ({"tasks": "derain", "budgets": "-1"}, None, ["--budgets"]),
    ({"tasks": "derain", "sets": {"defense": {"hh": "2"}}}, None, ["defense.hh", "Did you mean 'h'"]),
    ({}, "tasks: [derain]\ndefences: [none]\n", ["unknown key(s) defences", "defenses"]),
    ({}, "tasks: [derain]\ndefenses: [{name: asvp, parms: {h: 2}}]\n", ["unknown key(s) parms"]),
    ({}, "tasks: [derain\n", ["not valid YAML", "line"]),
    ({}, "tasks: [derain]\nattacks: [{name: vanilla_kd, budgets: [1]}]\n", ["defense entries only"]),
    ({}, "tasks: [derain]\ndefenses: [{name: asvp, attacks: [feature_kd]}]\n", ["feature_kd", "attacks axis"]),
    ({}, "tasks: [derain]\ndefenses: [{name: asvp, attacks: [featur_kd]}]\n", ["unknown attack", "feature_kd"]),
])
def test_bad_grids_are_one_line_errors(tmp_path, kwargs, text, words):
    file = None
    if text is not None:
        (tmp_path / "g.yaml").write_text(text)
        file = tmp_path / "g.yaml"
    with pytest.raises(BenchError) as info:
        make_grid(load_file(file) if file else None, **kwargs)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("path", sorted((ROOT / "grids").glob("*.yaml")), ids=lambda p: p.name)
def test_example_grid_files_expand(path):
    specs = make_grid(load_file(path)).specs()
    assert specs and len({repr(s) for s in specs}) == len(specs)


def test_cli_sweep_bad_input_exits_2(capsys, tmp_path):
    from bench.cli import main

    code = main(["sweep", "--tasks", "derain", "--defenses", "asvq", "--home", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Did you mean 'asvp'" in err


# ---------------------------------------------------------------------------------------- workers
def test_workers_take_distinct_slots_and_gpus(tmp_path):
    a, fd_a = claim_slot(str(tmp_path))
    b, fd_b = claim_slot(str(tmp_path))
    assert (a, b) == (0, 1)
    os.close(fd_a)  # a worker that exits frees its slot for the next one
    c, fd_c = claim_slot(str(tmp_path))
    assert c == 0
    os.close(fd_b)
    os.close(fd_c)
    assert [gpu_for(i, 2) for i in range(4)] == [0, 1, 0, 1] and gpu_for(3, 0) is None


def test_loky_workers_take_distinct_indices(tmp_path):
    """The index that picks a worker's GPU, wired as a sweep wires it: two loky workers, two indices."""
    from joblib import Parallel, delayed

    def probe(rendezvous: str, slot_dir: str):
        import os
        import time

        from bench import scheduler

        scheduler._setup_worker(1, slot_dir)
        open(os.path.join(rendezvous, str(os.getpid())), "w").close()
        deadline = time.time() + 120
        while len(os.listdir(rendezvous)) < 2 and time.time() < deadline:  # hold this worker until both run
            time.sleep(0.05)
        return os.getpid(), scheduler._WORKER["slot"]

    # a slot folder of its own: an in-process sweep (n_jobs=1) earlier in this process holds slot 0 of
    # the module's folder for the process's lifetime
    (tmp_path / "meet").mkdir()
    out = Parallel(n_jobs=2, backend="loky")(delayed(probe)(str(tmp_path / "meet"), str(tmp_path / "slots"))
                                             for _ in range(2))
    assert len({pid for pid, _ in out}) == 2
    assert sorted(slot for _, slot in out) == [0, 1]


HAMMER = """
import sys
from bench.store import Store
store, w = Store(sys.argv[1]), sys.argv[2]
for i in range(30):
    store.put_cell({"key": f"{w}-{i}", "task": "t", "defense": "d", "attack": "a", "seed": i, "profile": "p",
                    "status": "done", "config": {"i": i}, "metrics": {"x": i}})
    assert store.get_cell(f"{w}-{i}")["metrics"] == {"x": i}
    store.cells()
"""


def test_store_survives_many_writers_at_once(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", HAMMER, str(tmp_path), str(w)], stderr=subprocess.PIPE,
                              text=True) for w in range(6)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    assert len(Store(tmp_path).cells()) == 6 * 30
    with sqlite3.connect(tmp_path / "results.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# --------------------------------------------------------------------------------------- sweeping
@pytest.fixture(scope="module")
def loky_sweep(tmp_path_factory):
    """The reference: the grid of FLAGS, uninterrupted, on two loky workers."""
    home = tmp_path_factory.mktemp("loky")
    result = run_sweep(specs_from(FLAGS), home=home, n_jobs=2, backend="loky", progress=False)
    return home, result


def test_sweep_runs_shared_stages_once_and_resumes_from_the_store(loky_sweep):
    home, result = loky_sweep
    assert result.ok and result.ran == 6 and len(result.rows) == 6
    assert all(r["status"] == "done" for r in result.rows)
    summary = format_summary(result)
    assert "6 cells: 6 run, 0 cached, 0 failed" in summary and "student_drop_db" in summary
    store = Store(home)
    specs = specs_from(FLAGS)
    assert plan(specs, store).n_jobs == 0  # everything is done: nothing to run
    forced = plan(specs, store, force=True).jobs
    # one teacher, one reference and one ground-truth student per seed, 6 cells
    assert [len(forced[s]) for s in forced] == [1, 0, 3, 3, 6]
    # one more defense: only its own cells are new work
    more = plan(specs + specs_from(FLAGS + ["--defenses", "asvp", "--set", "defense.h=3"]), store).jobs
    assert [len(more[s]) for s in more] == [0, 0, 0, 0, 3]
    again = run_sweep(specs, home=home, n_jobs=1, progress=False)
    assert again.ran == 0 and again.cached == 6 and results(again.rows) == results(result.rows)


def _done_cells(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1) as db:
            return db.execute("SELECT count(*) FROM cells WHERE status = 'done'").fetchone()[0]
    except sqlite3.Error:  # not created yet, or busy: ask again
        return 0


def test_interrupted_sweep_resumes_to_the_same_rows(loky_sweep, tmp_path):
    _, reference = loky_sweep
    home = tmp_path / "runs"
    # Ctrl-C reaches a foreground sweep; where these tests themselves run in the background of a script
    # (`.ci/run &`), the shell has them ignore SIGINT and every child inherits that. A handler here (not an
    # "ignore") makes the child start with SIGINT's default, as a terminal's foreground job does.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(bench_cmd(*FLAGS, "--n-jobs", "2", home=home), env=env(), start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            # a bare read-only query: cheaper than opening a Store 50 times a second
            if _done_cells(home / "results.sqlite"):
                break
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the sweep and its workers
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "Traceback" not in err
    before = {r["key"]: r for r in Store(home).cells()}
    assert 1 <= len(before) < 6
    resumed = run_sweep(specs_from(FLAGS), home=home, n_jobs=1, progress=False)
    assert resumed.ok and resumed.cached == len(before) and resumed.ran == 6 - len(before)
    assert results(resumed.rows) == results(reference.rows)
    for row in resumed.rows:  # finished rows were kept as they were, not recomputed
        if row["key"] in before:
            assert row["finished"] == before[row["key"]]["finished"]


def test_dask_local_cluster_gives_the_same_rows_as_loky(loky_sweep, tmp_path):
    _, reference = loky_sweep
    result = run_sweep(specs_from(FLAGS), home=tmp_path, n_jobs=2, backend="dask", progress=False)
    assert result.ok and result.ran == 6
    assert results(result.rows) == results(reference.rows)


def test_two_sweeps_at_once_on_one_store_and_failing_cells(tmp_path):
    """Two sweeps write one store at the same time (sharing the teacher, a reference student and one cell);
    both complete with all their rows. The first runs, in two loky workers, three defenses that fail on
    purpose (plugins in their own module, found by entry points as a third party's would be): one raises
    at query time, one diverges (NaN loss) in its training stage, one kills its worker process (as the
    out-of-memory killer would). Their cells are stored as failed, the others done, and the sweep ends
    with exit code 1, listing them."""
    common = ["--tasks", "derain", "--profile", "smoke", "--set", "profile.teacher_steps=4",
              "--set", "profile.student_steps=4"]
    plugins = os.pathsep.join([str(FAULT_PLUGINS), os.environ.get("PYTHONPATH", "")])
    a = subprocess.Popen(bench_cmd(*common, "--defenses", "none,explode,asvp,diverge,crash", "--n-jobs", "2",
                                   home=tmp_path), env=env(PYTHONPATH=plugins),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # both with one torch thread per job (--n-jobs 2), so the cell they share has one key (threads are keyed)
    b = subprocess.Popen(bench_cmd(*common, "--defenses", "none,asvp", "--seeds", "0,1", "--set", "defense.h=2",
                                   "--n-jobs", "2", home=tmp_path), env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    (out_a, err_a), (out_b, err_b) = (p.communicate(timeout=300) for p in (a, b))
    assert b.returncode == 0, err_b
    assert a.returncode == 1, err_a
    assert "3 failed" in out_a and "explode: injected failure" in out_a.split("failed cells")[1]
    rows = Store(tmp_path).cells()
    assert len(rows) == 5 + 3  # the cell both sweeps hold (none, seed 0) once
    failed = {r["defense"]: r["error"] for r in rows if r["status"] != "done"}
    assert set(failed) == {"explode", "diverge", "crash"}
    assert "explode: injected failure" in failed["explode"] and "TrainingDiverged" in failed["diverge"]
    assert "worker process died" in failed["crash"]
    with sqlite3.connect(tmp_path / "results.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_job_that_hangs_fails_its_cell_at_the_time_limit(tmp_path):
    """A plugin that never returns held the sweep forever; with --job-timeout its cell fails with that reason
    (in a loky worker) and the other cells finish."""
    common = ["--tasks", "derain", "--profile", "smoke", "--set", "profile.teacher_steps=4",
              "--set", "profile.student_steps=4"]
    plugins = os.pathsep.join([str(FAULT_PLUGINS), os.environ.get("PYTHONPATH", "")])
    started = time.monotonic()
    proc = subprocess.run(bench_cmd(*common, "--defenses", "none,hang", "--n-jobs", "2", "--job-timeout", "30",
                                    home=tmp_path), env=env(PYTHONPATH=plugins), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started < 240
    rows = {r["defense"]: r for r in Store(tmp_path).cells()}
    assert rows["none"]["status"] == "done"
    assert rows["hang"]["status"] == "failed" and "JobTimeout" in rows["hang"]["error"]
    assert "30 s" in rows["hang"]["error"] and "--job-timeout" in rows["hang"]["error"]


def test_job_timeout_is_validated(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("tasks: [derain]\njob_timeout: -3\n")
    proc = subprocess.run(bench_cmd(str(grid), "--profile", "smoke", home=tmp_path), env=env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "job_timeout must be a number of seconds >= 0" in proc.stderr


def test_budgeted_cells_share_one_calibration_job_per_defense_and_budget(tmp_path, monkeypatch):
    """Seeds and attacks share a calibration: it runs once, in the defense-fit stage, never in the cells.
    Independent stages run as one parallel map each (three waves), their longest jobs first."""
    from bench import scheduler

    waves: list[list[tuple[str, str]]] = []
    real_execute = scheduler._execute

    def recording_execute(jobs, *args, **kwargs):
        waves.append([(j.stage, j.spec.defense) for j in jobs])
        yield from real_execute(jobs, *args, **kwargs)

    monkeypatch.setattr(scheduler, "_execute", recording_execute)
    specs = make_grid(tasks="derain", defenses="none,output_noise,nasty_teacher", seeds="0-1", budgets="0.5",
                      profile="smoke", sets=parse_sets(["profile.teacher_steps=4", "profile.student_steps=4",
                                                        "defense.steps=30", "defense.lr=0.003"])).specs()
    jobs = plan(specs, Store(tmp_path)).jobs
    assert len(jobs["defense fits"]) == 2  # output_noise@0.5 and nasty_teacher@0.5, whatever the seed
    result = run_sweep(specs, home=tmp_path, n_jobs=1, progress=False)
    assert result.ok, result.failures
    budgeted = [r for r in result.rows if r["budget"] == 0.5]
    assert len(budgeted) == 4
    by_defense: dict[str, set] = {}
    for r in budgeted:
        by_defense.setdefault(r["defense"], set()).add(r["metrics"]["strength"])
        assert abs(r["metrics"]["calib_drop_db"] - 0.5) <= 0.02
    assert all(len(v) == 1 for v in by_defense.values())  # one calibrated strength for both seeds
    assert [sorted({stage for stage, _ in w}) for w in waves] == [
        ["ground-truth students", "teachers"], ["defense fits", "reference students"], ["cells"]]
    assert waves[0][0][0] == "teachers" and waves[1][0][0] == "defense fits"  # the long jobs first
    assert {d for _, d in waves[2][-2:]} == {"none"}  # cells that only score go last
