"""One cell of the grid, end to end (DESIGN section 2).

(task, defense + params, attack + params, seed, profile) -> teacher (cached), served model, paired
reference student (undefended, cached), attacked student and the ``gt_student`` (the attack trained on
the attacker pool's ground truth; cached per task, profile, attack and seed, shared by every defense),
scored on the test split, stored as one row. The cell seed drives the students' initialisation, the
data order and the defense's randomness; the teacher uses ``teacher_seed`` (0 by default), the owner's
fixed asset.

The cell's identity and construction live in :mod:`bench.cell`, its stages and their keys in
:mod:`bench.stages`, scoring in :mod:`bench.scoring`; this module runs them in order (:func:`_run`) and
re-exports their names, so ``from bench.pipeline import CellSpec, resolve, run_cell, reference_config``
keeps working.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.api import Attack, Defense
from bench.cache import Artifacts
from bench.calibrate import calibrated_cell, pool_digest
from bench.cell import (
    SHARE_THREADS,
    Cell,
    CellSpec,
    check_layers,
    code_digest,
    make_plugin,
    plugin_code,
    resolve,
    share_teacher,
    sharing_note,
    stale_code,
    versions,
)
from bench.numerics import job_device, on_device
from bench.query import GroundTruthUnsupported
from bench.row import new_row
from bench.scoring import (
    ATTACKER_QUERIES,
    SCORES_RECIPE,
    attacker_query_drop,
    evaluate,
    save_samples,
    scored,
    trace_metrics,
)
from bench.stages import (
    STUDENT_RECIPE,
    TEACHER_RECIPE,
    _attack_context,
    _seeded_build,
    check_deterministic,
    fit_defense,
    get_teacher,
    gt_config,
    gt_key,
    gt_student,
    reference_config,
    reference_key,
    reference_student,
    steal_student,
    teacher_config,
)
from bench.store import Store

__all__ = [
    "SCORES_RECIPE", "SHARE_THREADS", "STUDENT_RECIPE", "TEACHER_RECIPE", "Cell", "CellSpec", "_attack_context",
    "_seeded_build", "answers_unchanged", "check_deterministic", "check_layers", "code_digest", "evaluate",
    "failure_reason", "fit_defense", "get_teacher", "gt_config", "gt_key", "gt_student", "make_plugin",
    "plugin_code", "pool_digest", "reference_config", "reference_key", "reference_student", "resolve", "run_cell",
    "save_samples", "scored", "share_teacher", "sharing_note", "stale_code", "steal_student", "teacher_config",
    "versions",
]


def answers_unchanged(defense: Defense, attack: Attack) -> bool:
    """True when the attack cannot see anything the defense changes: the attacked student is then the
    reference student, bit for bit (training is deterministic), so it is not trained twice."""
    touched = set(defense.channels())
    if "answers" in touched:
        return False
    return not ("features" in touched and attack.access == "features")


# ----------------------------------------------------------------------------------------- a cell
def failure_reason(exc: BaseException, *, full: bool = False) -> str:
    """What went wrong, for a failed row or a sweep's report: the error's first line (``full``: all of
    it); running out of GPU memory says what to do about it."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return (f"out of GPU memory on {job_device()} ({str(exc).splitlines()[0][:100]}); run fewer jobs per GPU "
                "(--jobs-per-gpu) or a smaller profile")
    text = f"{type(exc).__name__}: {exc}"
    return text if full else text.splitlines()[0]


def run_cell(spec: CellSpec | Cell, *, home: Path | str | None = None, force: bool = False,
             progress: bool = True, store: Store | None = None, rerun: bool = False) -> dict[str, Any]:
    """Run one cell and store its row (``done``, or ``failed`` with the error, which is re-raised).

    ``force`` recomputes everything (teacher, defense fit, reference student, cell); ``rerun`` only
    ignores a stored row and reuses cached models (a sweep's ``--force`` recomputes those once, in
    their own stage)."""
    cell = spec if isinstance(spec, Cell) else resolve(spec)
    store = store or Store(home)
    artifacts = Artifacts(store.home)
    shared = cell if force else share_teacher(cell, artifacts)  # --force retrains the cell's own teacher
    if shared is not cell:
        print(sharing_note(shared), file=sys.stderr)
        cell = shared
    key = cell.key
    if not (force or rerun):
        row = store.get_cell(key)
        if row is not None and row["status"] == "done":
            changed = stale_code(row, cell)
            if not changed:
                row["cached"] = True
                return row
            print(f"warning: the code of {', '.join(changed)} changed since this cell's result; recomputing it",
                  file=sys.stderr)
    started = time.time()
    row = new_row(cell, started=started)  # every field documented in bench/row.py
    try:
        with on_device(cell.spec.device, precision=cell.profile.precision):
            metrics = _run(cell, artifacts, store, progress=progress, force=force)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        trace = traceback.format_exc(limit=8)
        row.update(status="failed", error=failure_reason(exc, full=True), finished=time.time(),
                   wall_s=time.time() - started, metrics={"traceback": trace})
        # a re-run (--force) that fails keeps the finished result; the attempt is kept apart
        store.put_failure(row, detail=trace)
        raise
    row.update(status="done", error=None, metrics=metrics, finished=time.time(),
               wall_s=time.time() - started)
    store.put_cell(row)
    row["cached"] = False
    return row


def _run(cell: Cell, artifacts: Artifacts, store: Store, *, progress: bool, force: bool) -> dict[str, Any]:
    task, profile, attack = cell.task, cell.profile, cell.attack
    timings: dict[str, float] = {}
    t = time.perf_counter()
    splits = task.splits()
    splits.check_disjoint()
    timings["data_s"] = time.perf_counter() - t

    t = time.perf_counter()
    teacher, teacher_key, trained = get_teacher(task, profile, cell.spec.teacher_seed, artifacts,
                                                progress=progress, force=force,
                                                user_model=cell.teacher_model, numerics_=cell.teacher_numerics)
    check_deterministic(teacher, splits.test.degraded[0][None], cell)
    timings["teacher_s"] = time.perf_counter() - t

    t = time.perf_counter()
    cell, calibration = calibrated_cell(cell, teacher, teacher_key, artifacts, store, progress=progress,
                                        force=force)
    defense = cell.defense
    timings["calibrate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    fit_defense(cell, teacher, teacher_key, artifacts, progress=progress, force=force)
    timings["defense_fit_s"] = time.perf_counter() - t

    t = time.perf_counter()
    ref_student, queries_ref = reference_student(cell, teacher, teacher_key, artifacts, progress=progress,
                                                 force=force)
    timings["reference_student_s"] = time.perf_counter() - t

    t = time.perf_counter()
    try:
        gt: nn.Module | None = gt_student(cell, artifacts, progress=progress, force=force)
    except GroundTruthUnsupported:
        print(f"warning: attack '{cell.spec.attack}' queries even in ground-truth mode; the cell has no "
              "gt_student row (take training pairs from bench.kd.collect to get one)", file=sys.stderr)
        gt = None
    timings["gt_student_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if answers_unchanged(defense, attack):
        student, queries = ref_student, queries_ref
        shortcut = True
    else:
        student, queries = steal_student(cell, teacher, defense, artifacts=artifacts, progress=progress)
        shortcut = False
    timings["student_s"] = time.perf_counter() - t

    t = time.perf_counter()
    test = splits.test
    ref_key = reference_key(cell, teacher_key)
    shared = {"force": force, "digest": pool_digest(test)}  # the test images are hashed once per cell
    bits = profile.answer_bits
    # the teacher is scored on the answers it serves undefended (8-bit by default), so the teacher drop
    # is the defense's alone, not the rounding's
    with defense.serve(teacher, answer_bits=bits) as served, \
            Defense(None).serve(teacher, answer_bits=bits) as undefended:
        # the teacher, the reference and ground-truth students are shared by many cells: scored once
        scores = {"input": scored(None, test, task, artifacts, teacher_key, "input", **shared),
                  "teacher": scored(undefended, test, task, artifacts, teacher_key, f"teacher-{bits}bit", **shared),
                  "student_ref": scored(ref_student, test, task, artifacts, ref_key, "student", **shared)}
        # a defense that touches no answers serves the teacher's own forward pass (the same numbers)
        touches_answers = "answers" in defense.channels()
        if touches_answers:
            scores["served"] = evaluate(served, test, task, against=undefended)
            served_fidelity = scores["served"]["fidelity_per_image"]
        else:
            scores["served"], served_fidelity = scores["teacher"], [100.0] * len(test)
        # what the attacker's queries pay (crops of its pool, against their clean crops), beside the test cost
        attacker_drop = (attacker_query_drop(served, undefended, splits.attacker, task, profile.query_size)
                         if touches_answers else [0.0] * ATTACKER_QUERIES)
        scores["student"] = scores["student_ref"] if shortcut else evaluate(student, test, task)
        models = {"teacher": undefended, "served": served, "student_ref": ref_student, "student": student}
        if gt is not None:
            scores["student_gt"] = scored(gt, test, task, artifacts, gt_key(cell), "student", **shared)
            models["student_gt"] = gt
        save_samples(artifacts.dir(cell.key) / "samples", test, task, models)
        traces: dict[str, Any] = {}
        if defense.traces:  # a watermark: is the owner's mark in the stolen student (and, a check, in clean ones)?
            traces = trace_metrics(defense, test, undefended, {"": student, "_ref": ref_student, "_gt": gt})
    timings["score_s"] = time.perf_counter() - t

    metrics: dict[str, Any] = {}
    for who, s in scores.items():
        metrics[f"{who}_psnr"] = s["psnr"]
        metrics[f"{who}_ssim"] = s["ssim"]
    metrics["teacher_psnr_per_image"] = scores["teacher"]["psnr_per_image"]
    metrics["served_psnr_per_image"] = scores["served"]["psnr_per_image"]
    metrics["teacher_drop_db"] = scores["teacher"]["psnr"] - scores["served"]["psnr"]
    # a mean hides per-image damage (gains on some images cancel losses on others): keep every image's
    per_image = [t - s for t, s in zip(scores["teacher"]["psnr_per_image"], scores["served"]["psnr_per_image"])]
    metrics["teacher_drop_db_per_image"] = per_image
    metrics["worst_teacher_drop_db"] = max(per_image)
    metrics["attacker_query_drop_db"] = float(np.mean(attacker_drop))
    metrics["attacker_query_drop_db_per_image"] = attacker_drop
    metrics["served_fidelity_db"] = float(np.mean(served_fidelity))
    metrics["served_fidelity_db_per_image"] = served_fidelity
    metrics["answer_bits"] = bits
    metrics["student_drop_db"] = scores["student_ref"]["psnr"] - scores["student"]["psnr"]
    ref_ssim = scores["student_ref"]["ssim"]
    metrics["student_ssim_drop_pct"] = 100.0 * (ref_ssim - scores["student"]["ssim"]) / max(ref_ssim, 1e-12)
    metrics["queries_used"] = int(queries)
    metrics["channels"] = ",".join(defense.channels()) or "none"
    metrics["student_shortcut"] = shortcut
    metrics["teacher_cached"] = not trained
    metrics["teacher_key"] = teacher_key
    if calibration is not None:
        metrics["strength_param"] = calibration.parameter
        metrics["strength"] = calibration.value
        metrics["calib_drop_db"] = calibration.achieved_db
        metrics["calibration_key"] = calibration.key
    metrics.update(traces)  # only for a defense that traces: the report shows none, not zero, for the others
    metrics.update(timings)
    return metrics
