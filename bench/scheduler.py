"""Many cells: ``bench sweep`` runs a grid in stages so that shared work is done once (DESIGN section 7).

Stages of unique jobs (found by cache key):

1. ``teachers``: one job per teacher key (task, profile's teacher fields, teacher seed) not yet cached;
2. ``defense fits``: one job per (teacher, defense + params, seed, profile) whose defense trains
   something (``Defense.fit`` overridden); runtime defenses skip this stage. A cell with a budget
   (``budget_db``) instead gets one job per calibration (teacher, defense without its strength, budget,
   profile: shared by its seeds and attacks), which calibrates (:mod:`bench.calibrate`) and fits the
   defense at the calibrated strength, so that cells never calibrate the same defense side by side;
3. ``reference students``: one job per reference-student key not yet cached (cells that differ only in
   their defense share it); ``ground-truth students`` likewise (they need no teacher);
4. ``cells``: every cell without a ``done`` row in the store, by :func:`bench.pipeline.run_cell`, which
   finds the models of stages 1-3 in the artifacts cache and writes its row as soon as it finishes.

Stages run in three waves (``WAVES``), each one parallel map finished before the next: teachers with
ground-truth students, then defense fits with reference students, then cells. A wave starts its longest
jobs first (``_expected_cost``), so workers do not idle at its tail.

Workers get :class:`bench.pipeline.CellSpec` (plain data) and return small dicts; models travel only
as files in ``$BENCH_HOME/artifacts``, so the store folder must be one every worker reaches. A job
that raises (an exception, :class:`bench.train.TrainingDiverged`, out of memory) is recorded, the
sweep goes on, and the cells that needed it are stored as ``failed`` with the upstream error. A worker
process that dies (killed for memory) fails only its own job: the jobs that were running when it died
are retried one at a time, the rest together (:func:`_execute`). Ctrl-C stops the sweep; every row
written so far stays, and a re-run continues from the store. ``force`` recomputes every stage's job
once. The progress bar counts jobs of all stages (with the stage, the cells done and an estimate).

Backends through joblib's ``parallel_config``: ``loky`` (processes on this machine, ``n_jobs`` of them;
with more than one, torch uses one thread per worker) and ``dask`` (a ``distributed`` cluster at
``address``, or a local one with ``n_jobs`` single-threaded worker processes). A dask worker process
runs one job at a time with as many torch threads as it has threads (start remote workers with
``dask worker ADDRESS --nworkers N --nthreads 1`` to run N jobs per machine). Where CUDA exists each
worker process takes one GPU, by its worker index (the lowest free slot among this sweep's workers on
its machine, held by a file lock), modulo the number of GPUs.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import itertools
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import BenchError
from bench.allocator import keep_freed_memory, release_freed_memory
from bench.api import Defense
from bench.cache import Artifacts
from bench.calibrate import calibrated_cell
from bench.cell import Cell, CellSpec, resolve, share_teacher, sharing_note, stale_code
from bench.numerics import on_device, resolve_device
from bench.params import label as plugin_label
from bench.pipeline import answers_unchanged, failure_reason, run_cell
from bench.progress import bar
from bench.query import GroundTruthUnsupported
from bench.row import new_row
from bench.scoring import evaluate
from bench.stages import (
    calibration_job_key,
    defense_fits,
    fit_defense,
    fit_key,
    get_teacher,
    gt_key,
    gt_student,
    reference_key,
    reference_student,
    teacher_key,
)
from bench.store import Store

STAGES = ("teachers", "defense fits", "reference students", "ground-truth students", "cells")
# Stages whose jobs do not depend on each other run as one parallel map (a wave), longest jobs first, so
# that no worker idles at a stage's tail while another finishes its last long job: ground-truth students
# need no teacher, defense fits and reference students need only the teachers.
WAVES = (("teachers", "ground-truth students"), ("defense fits", "reference students"), ("cells",))
BACKENDS = ("loky", "dask")

# Workers of this process's sweeps claim their index (and so their GPU) in this folder, on their machine;
# the name is made here, in the parent, and handed to every job.
_SLOT_DIR = os.path.join(tempfile.gettempdir(), f"bench-slots-{os.getpid()}-{uuid.uuid4().hex[:8]}")
atexit.register(shutil.rmtree, _SLOT_DIR, ignore_errors=True)
_WORKER: dict[str, Any] = {}
_JOB_LOCK = threading.Lock()


@dataclass
class Job:
    stage: str
    key: str
    spec: CellSpec
    cell: str  # key of the first cell that needs it (for messages)
    needs: tuple[str, ...] = ()  # keys of earlier-stage jobs this one depends on


@dataclass
class Plan:
    cells: dict[str, Cell]  # every cell of the grid by key, in grid order
    cached: dict[str, dict[str, Any]]  # key -> stored done row
    jobs: dict[str, list[Job]] = field(default_factory=lambda: {s: [] for s in STAGES})
    #: keys done in a committed cells.csv (--skip-done), not in this store: not run again
    committed: set[str] = field(default_factory=set)

    @property
    def n_jobs(self) -> int:
        return sum(len(v) for v in self.jobs.values())


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]  # the store's row of every cell of the grid, in grid order
    ran: int
    cached: int
    failures: dict[str, str]  # cell key -> error
    wall_s: float
    labels: dict[str, str]
    #: cell key -> the spec as the sweep ran it (threads and a shared teacher filled in)
    specs: dict[str, CellSpec] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


# ------------------------------------------------------------------------------------------ planning
def committed_rows(paths: Sequence[Path | str]) -> dict[str, dict[str, Any]]:
    """Done cells of committed reports' cells.csv, by key, as much of a store row as :func:`plan` needs (status
    and the code digests), read by the report's own reader. Rows without digests (cells.csv from before they
    were written) are left out: whether their code is the current one cannot be told, so they run again."""
    import json

    from reports.cells import csv_rows

    return {row["key"]: {"status": "done", "versions": {"code": json.loads(row["code"])}, "file": str(path),
                         "teacher_key": row.get("teacher_key"), "teacher_psnr": row.get("teacher_psnr")}
            for path in paths for row in csv_rows(path)
            if row["status"] == "done" and isinstance(row.get("code"), str)}


#: how far this store's teacher may score from a committed file's teacher of the same key before they are two
#: teachers (thread counts move a score by ~1e-5 dB; claims v3's two derain teachers differed by 0.53 dB)
TEACHER_TOLERANCE_DB = 1e-3


def check_committed_teachers(the_plan: Plan, committed: dict[str, dict[str, Any]], artifacts: Artifacts) -> None:
    """A one-line error where a teacher this sweep trained (or found) scores on test other than the teacher the
    skipped committed cells were computed on, under one key (measured: claims v3's derain teacher seed 0 scored
    28.1586 dB in one session's slices and 27.6251 dB on another machine). Their cells would not pair by seed with
    this sweep's, so it stops after the teachers, before any cell runs; what it trained stays in the store."""
    recorded: dict[str, dict[str, Any]] = {}
    for key in the_plan.committed:
        row = committed[key]
        if isinstance(row.get("teacher_key"), str) and row.get("teacher_psnr") is not None:
            recorded.setdefault(row["teacher_key"], row)
    checked: set[str] = set()
    for cell in the_plan.cells.values():
        t_key = teacher_key(cell)
        if t_key in checked or t_key not in recorded:  # cached cells too: their teacher is this store's
            continue
        checked.add(t_key)
        if not (artifacts.dir(t_key) / "model.pt").exists():  # its teacher job failed: its cells fail anyway
            continue
        # scored as the cell scores it (served undefended, at the profile's answer bits), not cached: the cells
        # score it again in their own numerics
        with on_device(cell.spec.device, precision=cell.profile.precision):
            teacher, _, _ = get_teacher(cell.task, cell.profile, cell.spec.teacher_seed, artifacts, progress=False,
                                        numerics_=cell.teacher_numerics, user_model=cell.teacher_model)
            with Defense(None).serve(teacher, answer_bits=cell.profile.answer_bits) as undefended:
                here = evaluate(undefended, cell.task.splits().test, cell.task)["psnr"]
        there = float(recorded[t_key]["teacher_psnr"])
        if abs(here - there) > TEACHER_TOLERANCE_DB:
            raise BenchError(
                f"{cell.spec.task} teacher seed {cell.spec.teacher_seed}: this store's teacher scores {here:.4f} dB "
                f"on test, the cells skipped from {recorded[t_key]['file']} were computed on one that scores "
                f"{there:.4f} dB under the same key (another machine's CPU or libraries), so they would not pair "
                "with this sweep's cells: drop that file from --skip-done to run its cells here (the teachers "
                "trained so far are kept), or run this sweep on that file's store.")


def plan(specs: Sequence[CellSpec], store: Store, *, force: bool = False,
         committed: dict[str, dict[str, Any]] | None = None) -> Plan:
    """Resolve every cell (bad input fails here, before anything runs), look up finished rows and list
    the unique jobs of each stage. ``committed``: done rows of committed reports' cells.csv by key
    (:func:`committed_rows`), skipped like the store's own where their code is the cells' current code."""
    cells: dict[str, Cell] = {}
    artifacts = Artifacts(store.home)
    notes: set[str] = set()
    for spec in specs:
        cell = resolve(spec)
        cell = cell if force else share_teacher(cell, artifacts)  # the runner keys its cells by the same rule
        if cell.shares_teacher:
            notes.add(sharing_note(cell))
        cells.setdefault(cell.key, cell)
    for note in sorted(notes):
        print(note, file=sys.stderr)
    cached: dict[str, dict[str, Any]] = {}
    out_of_store: set[str] = set()
    if not force:
        for key in cells:
            row = store.get_cell(key)
            if row is not None and row["status"] == "done" and not stale_code(row, cells[key]):
                cached[key] = row
            elif key in (committed or {}) and not stale_code(committed[key], cells[key]):
                out_of_store.add(key)
    out = Plan(cells=cells, cached=cached, committed=out_of_store)
    seen: set[tuple[str, str]] = set()

    def add(stage: str, key: str, cell_key: str, needs: tuple[str, ...] = ()) -> None:
        if (stage, key) not in seen:
            seen.add((stage, key))
            out.jobs[stage].append(Job(stage, key, cells[cell_key].spec, cell_key, needs))

    def have(key: str) -> bool:
        return not force and (artifacts.dir(key) / "model.pt").exists()

    for key, cell in cells.items():
        if key in cached or key in out.committed:
            continue
        # every key comes from bench.stages, the functions the runner keys its artifacts with
        t_key = teacher_key(cell)
        needs: list[str] = []
        if not have(t_key):
            add("teachers", t_key, key)
            needs.append(t_key)
        if cell.spec.budget_db is not None:
            f_key = calibration_job_key(cell, t_key)
            add("defense fits", f_key, key, tuple(needs))
            needs.append(f_key)
        elif defense_fits(cell):
            f_key = fit_key(cell, t_key)
            add("defense fits", f_key, key, tuple(needs))
            needs.append(f_key)
        r_key = reference_key(cell, t_key)
        if not have(r_key):
            add("reference students", r_key, key, tuple(k for k in needs if k == t_key))
            needs.append(r_key)
        g_key = gt_key(cell)
        if not have(g_key):  # needs no teacher: shared by every defense of (task, attack, seed)
            add("ground-truth students", g_key, key)
            needs.append(g_key)
        add("cells", key, key, tuple(needs))
    return out


def _expected_cost(job: Job, cell: Cell) -> float:
    """A rough relative duration, to start long jobs first (a worse guess only costs idle time):
    a teacher trains longest, then calibrations (several evaluations; a training-time defense trains a
    model at each, a runtime one only serves the calib images), fits, students; a cell whose attacked
    student is its reference student only scores. ``cell``: the planned cell the job belongs to."""
    if job.stage == "teachers":
        return 100.0
    if job.stage == "defense fits":
        if job.spec.budget_db is not None:
            return 80.0 if defense_fits(cell) else 15.0
        return 20.0
    if job.stage == "cells" and answers_unchanged(cell.defense, cell.attack):
        return 1.0
    return 10.0 + (cell.attack.access == "features")  # feature-level attacks train regressors too


# ------------------------------------------------------------------------------------------- workers
def claim_slot(folder: str) -> tuple[int, int | None]:
    """The lowest worker index free in ``folder``, held (by a file lock) for this process's lifetime.

    Returns (index, file descriptor to keep open). Without ``fcntl`` (Windows) the index comes from the
    process id."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        return os.getpid(), None
    os.makedirs(folder, exist_ok=True)
    for i in itertools.count():
        fd = os.open(os.path.join(folder, f"slot-{i}.lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return i, fd
    raise AssertionError("unreachable")


#: the GPUs a sweep's workers are pinned to (comma-separated physical ids), inherited by its workers
GPUS_ENV = "BENCH_GPUS"
#: workers per GPU in a GPU sweep (--jobs-per-gpu): the reference models are small, so one job leaves
#: most of a GPU idle between its kernel launches
DEFAULT_JOBS_PER_GPU = 4


def gpu_for(index: int, count: int) -> int | None:
    """The GPU a worker with this index takes (None without GPUs)."""
    return index % count if count > 0 else None


#: the pid of the process running the sweep, inherited by its workers (see :func:`_watch_sweep`)
SWEEP_PID_ENV = "BENCH_SWEEP_PID"


def _watch_sweep(interval: float = 1.0) -> None:
    """In a worker process: end this process within ``interval`` seconds of the sweep that started it
    (killed with -9, or gone after SIGTERM), instead of computing on for minutes for no one. Nothing in
    the sweep's own process (a one-job sweep runs there) or where the sweep is not known (a remote dask
    worker)."""
    try:
        sweep = int(os.environ.get(SWEEP_PID_ENV, "0"))
    except ValueError:
        return
    if sweep <= 0 or sweep == os.getpid():
        return
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if parent == sweep and os.getppid() != parent:  # orphaned: the sweep died (even if not yet reaped)
                os._exit(1)
            try:
                os.kill(sweep, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # alive, owned by another user
                pass

    threading.Thread(target=watch, name="bench-watch-sweep", daemon=True).start()


def _dask_worker_threads() -> int | None:
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def gpu_set(device: str) -> list[str]:
    """The physical GPU ids a sweep on ``device`` spreads its workers over ([] on the CPU): every visible
    GPU for ``cuda``, one for ``cuda:N`` (ids as the machine numbers them, through CUDA_VISIBLE_DEVICES)."""
    if not str(device).startswith("cuda"):
        return []
    visible = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    ids = visible or [str(i) for i in range(torch.cuda.device_count())]
    if ":" in str(device):
        return [ids[int(str(device)[5:])]]
    return ids


def _setup_worker(threads: int | None, slot_dir: str) -> None:
    """Once per worker process: torch threads, and its GPU by worker index in a GPU sweep.

    ``threads`` -1 (dask) means the worker's own thread count: jobs run one at a time per process.
    The GPU is pinned through CUDA_VISIBLE_DEVICES before CUDA starts in this process (``BENCH_GPUS``,
    set by the sweep, lists the GPUs; several workers may share one), so the job's ``cuda`` is its GPU.
    A dask worker started by hand on a GPU machine is pinned by starting it with CUDA_VISIBLE_DEVICES."""
    if _WORKER.get("ready"):
        return
    keep_freed_memory()
    if threads == -1:
        threads = _dask_worker_threads()
    if threads:
        torch.set_num_threads(threads)
    index, fd = claim_slot(slot_dir)
    _WORKER.update(slot=index, slot_fd=fd)
    _watch_sweep()
    gpus = [g for g in os.environ.get(GPUS_ENV, "").split(",") if g]
    if gpus:
        gpu = gpus[gpu_for(index, len(gpus))]
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        _WORKER["gpu"] = gpu
    _WORKER["ready"] = True


def work(stage: str, spec: CellSpec, home: str, force: bool, threads: int | None,
         slot_dir: str, timeout_s: float | None = None) -> dict[str, Any]:
    """One job, in a worker: a stage's model into the artifacts cache, or a cell's row into the store.

    Returns ``{"ok": bool, "error": str | None, "cached": bool}``; an error is returned, not raised, so
    one failing job never stops the others (a cell's failed row is stored by ``run_cell``).
    Ctrl-C (KeyboardInterrupt) propagates. Jobs run one at a time per process: model building seeds
    torch's process-wide generator, so two jobs in threads of one process (a dask worker with several
    threads) would not be reproducible."""
    with _JOB_LOCK:
        _setup_worker(threads, slot_dir)
        if spec.threads:  # the numerics the job is keyed with (bench.numerics), whatever the worker's default
            torch.set_num_threads(spec.threads)
        try:
            with time_limit(timeout_s):
                return _work(stage, spec, home, force)
        except JobTimeout as exc:  # raised outside _work's own handler (while it was recording the failure)
            return {"ok": False, "error": failure_reason(exc), "cached": False}
        finally:
            release_freed_memory()  # a worker's memory between jobs stays what it holds, not its last peak


def _work(stage: str, spec: CellSpec, home: str, force: bool) -> dict[str, Any]:
    if _WORKER.get("gpu") is not None and spec.device.startswith("cuda"):
        spec = dataclasses.replace(spec, device="cuda")  # the one GPU this worker sees: the same key
    try:
        cell = resolve(spec)
        with on_device(cell.spec.device, precision=cell.profile.precision):
            return _stage(stage, cell, home, force)
    except (Exception, JobTimeout) as exc:  # noqa: BLE001 - every failure of a job is recorded, never fatal
        return {"ok": False, "error": failure_reason(exc), "cached": False}


#: a job's time limit unless the grid file (job_timeout) or --job-timeout says otherwise: generous, since a
#: paper-profile teacher may train for hours; it exists so that a plugin that hangs fails its cell instead of
#: holding the sweep forever
DEFAULT_JOB_TIMEOUT_S = 12 * 3600.0


class JobTimeout(BaseException):
    """A job ran past its time limit. A BaseException, so that a plugin's ``except Exception`` cannot swallow
    it; the job's cell is stored as failed with this reason and the sweep goes on."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`JobTimeout` in this thread after ``seconds`` (None or 0: no limit). A job runs in its worker
    process's main thread (loky; the sweep's own process with --n-jobs 1), where SIGALRM can interrupt Python
    code, sleeps and waits; a dask worker runs jobs in threads, where no signal can reach them: there the limit
    is not enforced (said in docs/design.md)."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise JobTimeout(f"the job ran past its limit of {seconds:g} s (a plugin that hangs?); raise it "
                         "with --job-timeout SECONDS or job_timeout in the grid file (0: no limit)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _stage(stage: str, cell: Cell, home: str, force: bool) -> dict[str, Any]:
    """One stage's job for ``cell``, on the job's device."""
    if stage == "cells":
        row = run_cell(cell, home=home, rerun=force, progress=False)
        return {"ok": True, "error": None, "cached": bool(row.get("cached"))}
    artifacts = Artifacts(home)
    if stage == "ground-truth students":
        try:
            gt_student(cell, artifacts, progress=False, force=force)
        except GroundTruthUnsupported:  # the cell then runs without a gt row, as run_cell does
            pass
        return {"ok": True, "error": None, "cached": False}
    teacher, t_key, _ = get_teacher(cell.task, cell.profile, cell.spec.teacher_seed, artifacts, progress=False,
                                    numerics_=cell.teacher_numerics, force=force and stage == "teachers",
                                    user_model=cell.teacher_model)
    if stage == "defense fits":
        cell, _ = calibrated_cell(cell, teacher, t_key, artifacts, Store(home), progress=False, force=force)
        if defense_fits(cell):
            fit_defense(cell, teacher, t_key, artifacts, progress=False, force=force)
    elif stage == "reference students":
        reference_student(cell, teacher, t_key, artifacts, progress=False, force=force)
    return {"ok": True, "error": None, "cached": False}


# ------------------------------------------------------------------------------------------ backends
def threads_per_job(backend: str, n_jobs: int) -> int:
    """Torch threads each job runs with: one where several jobs share the machine (processes in
    parallel pay, threads in one process do not: DESIGN section 7) and on dask workers (whose thread
    count the planner cannot see), else this process's count."""
    from joblib import cpu_count

    if backend == "dask":
        return 1
    n = cpu_count() if n_jobs == -1 else n_jobs
    return 1 if n > 1 else torch.get_num_threads()


@contextmanager
def backend_config(backend: str, n_jobs: int, address: str | None) -> Iterator[tuple[int, int | None]]:
    """joblib's ``parallel_config`` for the backend; yields (n_jobs for Parallel, torch threads per job)."""
    from joblib import cpu_count, parallel_config

    if backend not in BACKENDS:
        raise BenchError(f"unknown backend '{backend}'; choose loky or dask.")
    if n_jobs == 0 or n_jobs < -1:
        raise BenchError(f"--n-jobs must be >= 1 (or -1 for every core), got {n_jobs}.")
    if address and backend != "dask":
        raise BenchError("--address names a dask scheduler; add --backend dask.")
    if backend == "loky":
        n = cpu_count() if n_jobs == -1 else n_jobs
        with parallel_config(backend="loky", n_jobs=n):
            yield n, (1 if n > 1 else None)
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise BenchError("the dask backend needs dask[distributed]: pip install 'antidistill-bench[dask]'.") \
            from None
    import logging

    cluster = None
    try:
        if address:
            client = Client(address, timeout="20s")
        else:
            n = cpu_count() if n_jobs == -1 else n_jobs
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=logging.ERROR)
            client = Client(cluster)
    except OSError as exc:
        raise BenchError(f"cannot reach the dask scheduler at {address}: {exc}; check the address "
                         "(tcp://HOST:PORT) and that the scheduler runs.") from None
    try:
        with parallel_config(backend="dask", client=client, n_jobs=-1):
            yield -1, -1
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ------------------------------------------------------------------------------------------- the run
def label(cell: Cell) -> str:
    """``task · defense(params) · attack · seed N [· budget B dB]`` from the cell's own overrides."""
    def named(name: str, params: dict[str, Any]) -> str:
        return plugin_label(name, sorted(params.items()))

    s = cell.spec
    parts = [named(s.task, {k: v for k, v in s.task_params.items() if k != "data"}),
             named(s.defense, s.defense_params), named(s.attack, s.attack_params), f"seed {s.seed}"]
    if s.teacher_seed:
        parts.append(f"teacher seed {s.teacher_seed}")
    if s.budget_db is not None:
        parts.append(f"budget {s.budget_db:g} dB")
    return " · ".join(parts)


def _failed_row(cell: Cell, error: str) -> dict[str, Any]:
    """The row of a cell that failed before it ran (an upstream job failed, or its worker died)."""
    row = new_row(cell)
    return {**row, "status": "failed", "error": error, "metrics": None, "finished": row["started"], "wall_s": 0.0}


def run_sweep(specs: Sequence[CellSpec], *, home: Path | str | None = None, n_jobs: int = 1,
              backend: str = "loky", address: str | None = None, force: bool = False,
              progress: bool = True, jobs_per_gpu: int | None = None,
              job_timeout_s: float | None = DEFAULT_JOB_TIMEOUT_S,
              skip_done: Sequence[Path | str] = ()) -> SweepResult:
    """Run every cell of ``specs`` in stages; returns the store's rows and what failed. ``skip_done``: committed
    reports' cells.csv whose done cells (of the current code) are not run again (a grid committed in slices).

    On a CUDA device the sweep runs ``jobs_per_gpu`` workers on each GPU of the device (all visible
    GPUs for ``cuda``), each pinned to its GPU, instead of ``n_jobs``.
    Failures do not raise: they are stored and listed in the result. Bad input raises
    :class:`bench.BenchError` before anything runs; Ctrl-C raises KeyboardInterrupt after the rows
    written so far are safely in the store."""
    start = time.time()
    store = Store(home)
    specs = [dataclasses.replace(s, device=resolve_device(s.device)) for s in specs]
    devices = sorted({s.device for s in specs})
    if len(devices) > 1:
        raise BenchError(f"a sweep runs on one device, this one asks for {', '.join(devices)}; run one sweep per "
                         "device (the results are not comparable across devices anyway).")
    gpus = gpu_set(devices[0]) if devices else []
    if jobs_per_gpu is not None and (jobs_per_gpu < 1 or not gpus):
        raise BenchError("--jobs-per-gpu must be >= 1 and applies to a CUDA device (--device cuda) only.")
    if gpus:
        n_jobs = len(gpus) * (jobs_per_gpu or DEFAULT_JOBS_PER_GPU)
    # every key holds the thread count its job runs with, so it is fixed here, before planning
    per_job = threads_per_job(backend, n_jobs)
    specs = [s if s.threads else dataclasses.replace(s, threads=per_job) for s in specs]
    with _gpus_for_workers(gpus):
        return _sweep(specs, store, start, n_jobs=n_jobs, backend=backend, address=address, force=force,
                      progress=progress, job_timeout_s=job_timeout_s,
                      committed=committed_rows(skip_done) if skip_done and not force else None)


@contextmanager
def _gpus_for_workers(gpus: list[str]) -> Iterator[None]:
    """What the workers this sweep starts inherit: ``BENCH_GPUS`` (see :func:`_setup_worker`) and this
    process's pid (they end when it does: :func:`_watch_sweep`)."""
    values = {GPUS_ENV: ",".join(gpus), SWEEP_PID_ENV: str(os.getpid())}
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _sweep(specs: list[CellSpec], store: Store, start: float, *, n_jobs: int, backend: str,
           address: str | None, force: bool, progress: bool, job_timeout_s: float | None = None,
           committed: dict[str, dict[str, Any]] | None = None) -> SweepResult:
    the_plan = plan(specs, store, force=force, committed=committed)
    if the_plan.committed:
        print(f"{len(the_plan.committed)} cell(s) done in the committed cells.csv given with --skip-done: not run "
              "here (report them with bench report --cells)", file=sys.stderr)
        for key in the_plan.committed:
            del the_plan.cells[key]
    cells = the_plan.cells
    labels = {k: label(c) for k, c in cells.items()}
    failed_jobs: dict[str, str] = {}  # job key -> error (any stage)
    failures: dict[str, str] = {}  # cell key -> error
    ran = cached = 0
    n_cells = len(cells)
    home_s = str(store.home.resolve())  # workers may run elsewhere (another cwd, another machine)

    with backend_config(backend, n_jobs, address) as (par_jobs, threads), \
            bar(total=the_plan.n_jobs, desc="sweep", show=progress, unit="job", leave=True) as pbar:
        def status() -> None:
            done = len(the_plan.cached) + ran + cached
            pbar.set_postfix_str(f"cells {done}/{n_cells} done, {len(failures)} failed", refresh=True)

        def fail_cell(key: str, error: str) -> None:
            failures[key] = error
            pbar.write(f"failed: {labels[key]}: {error}", file=sys.stderr)

        status()
        for wave in WAVES:
            todo = []
            for job in sorted((j for stage in wave for j in the_plan.jobs[stage]),
                              key=lambda j: _expected_cost(j, cells[j.cell]), reverse=True):
                upstream = next((failed_jobs[k] for k in job.needs if k in failed_jobs), None)
                if upstream is None:
                    todo.append(job)
                    continue
                failed_jobs[job.key] = upstream
                pbar.update(1)
                if job.stage == "cells":
                    fail_cell(job.key, upstream)
                    store.put_failure(_failed_row(cells[job.key], upstream))  # never replaces a done row
            name = " & ".join(stage for stage in wave if the_plan.jobs[stage]) or wave[0]
            n_done = 0
            pbar.set_description(f"{name} 0/{len(todo)}")
            for job, res in _execute(todo, par_jobs, home_s, force, threads, warn=pbar.write,
                                     timeout_s=job_timeout_s):
                n_done += 1
                pbar.set_description(f"{name} {n_done}/{len(todo)}")
                pbar.update(1)
                if job.stage == "cells":
                    if res["ok"]:
                        cached += res["cached"]
                        ran += not res["cached"]
                    else:
                        fail_cell(job.key, res["error"])
                        if res.get("died"):
                            store.put_failure(_failed_row(cells[job.key], res["error"]))
                elif not res["ok"]:
                    failed_jobs[job.key] = f"{job.stage[:-1]} failed: {res['error']}"
                    pbar.write(f"failed: {job.stage[:-1]} for {labels[job.cell]}: {res['error']}", file=sys.stderr)
                status()
            if wave is WAVES[0] and the_plan.committed and committed:
                check_committed_teachers(the_plan, committed, Artifacts(store.home))
        pbar.set_description("sweep done")
        status()

    rows = []
    for key in cells:
        row = store.get_cell(key)
        if row is not None:
            rows.append(row)
    return SweepResult(rows=rows, ran=ran, cached=cached + len(the_plan.cached), failures=failures,
                       wall_s=time.time() - start, labels=labels, specs={k: c.spec for k, c in cells.items()})


def _execute(jobs: list[Job], n_jobs: int, home: str, force: bool, threads: int | None, *,
             warn: Any = print, timeout_s: float | None = None) -> Iterator[tuple[Job, dict[str, Any]]]:
    """Run ``jobs`` on the configured backend; yields (job, result) as each finishes.

    A worker process that dies (killed for memory, crashed) takes the whole parallel call down with it.
    Each job marks itself running (a file under ``<home>/.running/``) until it returns, so after a death
    the jobs that were running are known: they are retried one at a time (a second death is then pinned
    on its own job, reported failed with ``died``), the jobs that had not started are retried together."""
    from joblib import Parallel, delayed

    pending, alone = list(jobs), []
    while pending or alone:
        if alone:
            batch, isolated = [alone.pop(0)], True
        else:
            batch, pending, isolated = pending, [], False
        marks = Path(home) / ".running" / uuid.uuid4().hex
        finished: set[int] = set()
        try:
            results = Parallel(n_jobs=n_jobs, return_as="generator_unordered", batch_size=1)(
                delayed(_tagged)(i, job.stage, job.spec, home, force, threads, str(marks / str(i)), _SLOT_DIR,
                                 timeout_s)
                for i, job in enumerate(batch))
            for i, res in results:
                finished.add(i)
                yield batch[i], res
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - the backend lost a worker, or could not run the job
            error = _backend_error(exc)
            if isolated:
                yield batch[0], {"ok": False, "error": error, "cached": False, "died": True}
            else:
                unfinished = [i for i in range(len(batch)) if i not in finished]
                running = [i for i in unfinished if (marks / str(i)).exists()] or unfinished
                alone += [batch[i] for i in running]
                pending = [batch[i] for i in unfinished if i not in running]
                warn(f"{error}; {batch[0].stage}: retrying the {len(running)} job(s) that were running one at a time, "
                     f"{len(pending)} more together", file=sys.stderr)
        finally:
            shutil.rmtree(marks, ignore_errors=True)
            with contextlib.suppress(OSError):
                marks.parent.rmdir()  # only if no other sweep on this store has jobs running


def _backend_error(exc: Exception) -> str:
    name = type(exc).__name__
    if name in ("TerminatedWorkerError", "BrokenProcessPool", "KilledWorker"):  # loky, dask
        return f"worker process died ({name}; out of memory?)"
    return f"the backend could not run the job: {name}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _tagged(i: int, stage: str, spec: CellSpec, home: str, force: bool, threads: int | None,
            mark: str, slot_dir: str, timeout_s: float | None = None) -> tuple[int, dict]:
    path = Path(mark)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    try:
        return i, work(stage, spec, home, force, threads, slot_dir, timeout_s)
    finally:
        path.unlink(missing_ok=True)



# ------------------------------------------------------------------------------------------- summary
def format_summary(result: SweepResult) -> str:
    """Counts, wall time, a compact per-cell table of the drops, and the failures."""
    from tabulate import tabulate

    table = []
    for row in result.rows:
        m = row.get("metrics") or {}
        key = row["key"]
        status = "failed" if key in result.failures else row["status"]
        table.append((result.labels.get(key, key), status, _num(m.get("teacher_drop_db")),
                      _num(m.get("student_drop_db"))))
    head = (f"{len(result.rows)} cells: {result.ran} run, {result.cached} cached, {len(result.failures)} failed "
            f"· wall {result.wall_s:.1f} s")
    out = [head, "", tabulate(table, headers=("cell", "status", "teacher_drop_db", "student_drop_db"),
                              disable_numparse=True)]
    from bench.calibrate import transfer_warning

    drifted = []
    for row in result.rows:
        m = row.get("metrics") or {}
        if row["status"] == "done" and row.get("budget") is not None and "teacher_drop_db" in m:
            warning = transfer_warning(float(row["budget"]), float(m["teacher_drop_db"]))
            if warning:
                drifted.append(f"  {result.labels.get(row['key'], row['key'])}: {warning}")
    if drifted:
        out += ["", "warning: calibrated cells whose test cost departs from their budget (> 2x or 0.1 dB):", *drifted]
    if result.failures:
        out += ["", "failed cells (a re-run retries them):"]
        out += [f"  {result.labels.get(k, k)}: {err}" for k, err in result.failures.items()]
    return "\n".join(out)


def _num(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "-"
