"""The result row: what one cell's record in the store holds, every field documented once.

The pipeline builds it (:func:`new_row`, then :func:`bench.pipeline.run_cell` fills status and metrics), the
store writes it (:meth:`bench.store.Store.put_cell`: one SQLite row, ``config``, ``metrics`` and ``versions``
as JSON), and the CLI, the remarks and the reports read it by these names. A metric the pipeline writes that
is not documented here fails ``tests/test_row.py``, so this page stays the whole schema (as RobustBench
documents every field of an entry in one place).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.cell import Cell

#: the row's own fields (the store's columns)
ROW_FIELDS: dict[str, str] = {
    "key": "the cell's key: the hash of its config (bench.cache.config_key)",
    "task": "task name", "defense": "defense name", "attack": "attack name",
    "seed": "the cell (student) seed", "profile": "profile name",
    "budget": "the teacher cost (dB) the defense was calibrated to on calib; None: run at its set strength",
    "status": "'done' or 'failed'",
    "error": "the failure's reason (None when done)",
    "config": "what the key hashes: task, defense, attack identities (name, version, params), seed, teacher_seed, "
              "budget_db, profile fields, numerics, teacher_threads where the teacher was shared, user models",
    "metrics": "the scores and drops below (a failed row: {'traceback': ...})",
    "versions": "bench, torch, numpy and python versions, and 'code': the task, defense and attack modules' digests "
                "(a row is recomputed when they change)",
    "started": "start time (Unix seconds)", "finished": "end time (Unix seconds)", "wall_s": "wall time (s)",
}

_WHO = {"input": "the degraded input itself (SR: bicubic)", "teacher": "the undefended teacher, served as 8-bit "
        "answers (profile.answer_bits)", "served": "the served (defended) teacher",
        "student_ref": "the reference student, stolen from the undefended teacher",
        "student": "the student stolen from the served model",
        "student_gt": "the attack trained on the clean images of its queries (absent for attacks that query even "
                      "then)"}

#: every metric of a done row (all on the test split; PSNR in dB, SSIM in [0, 1])
METRIC_FIELDS: dict[str, str] = {
    **{f"{who}_{m}": f"mean {m.upper()} of {text}" for who, text in _WHO.items() for m in ("psnr", "ssim")},
    "teacher_psnr_per_image": "the undefended teacher's PSNR per test image, in pool order",
    "served_psnr_per_image": "the served teacher's PSNR per test image",
    "teacher_drop_db": "teacher_psnr - served_psnr: what honest users lose",
    "teacher_drop_db_per_image": "the teacher's drop per test image",
    "worst_teacher_drop_db": "the largest per-image teacher drop",
    "attacker_query_drop_db": "what the attacker's queries pay, beside teacher_drop_db for the test split's honest "
                              "users: mean over 8 crops of the attacker pool (profile.query_size, fixed seed, "
                              "bench.scoring.attacker_queries) of the undefended teacher's PSNR minus the served "
                              "model's, both against the crops' clean targets (0 where no answer is touched)",
    "attacker_query_drop_db_per_image": "that drop per attacker query crop",
    "served_fidelity_db": "mean PSNR of the served answers against the undefended teacher's (100 where equal)",
    "served_fidelity_db_per_image": "that fidelity per test image",
    "answer_bits": "bits of the served answers (8: images; 0: float)",
    "student_drop_db": "student_ref_psnr - student_psnr: what the thief loses, against the reference alone",
    "student_ssim_drop_pct": "relative SSIM loss of the stolen student against the reference, in %",
    "queries_used": "queries the attack made",
    "channels": "what the defense touches: 'answers', 'features', both (comma-separated) or 'none'",
    "student_shortcut": "True when the attack cannot see what the defense changes: the student is the reference",
    "teacher_cached": "False when this cell trained its teacher",
    "teacher_key": "the key of the teacher the students learned from (its weights digest is beside it)",
    "strength_param": "a calibrated cell's strength parameter", "strength": "its calibrated value",
    "calib_drop_db": "the teacher cost the calibration reached on calib",
    "calibration_key": "the stored calibration's key",
    # a defense that traces (bench.api.Defense.traces, a watermark) only; absent from every other row
    **{f"trace_{m}{suffix}": f"{text} on {who}, over the test images (Defense.trace)"
       for suffix, who in (("", "the stolen student"), ("_ref", "the reference student (never saw the mark)"),
                           ("_gt", "the ground-truth student (never saw the mark)"))
       for m, text in (("stat", "the tracing defense's detection statistic"),
                       ("z", "that statistic's z-score against its null"),
                       ("p", "the one-sided p-value of that z"))},
    "traced": "the stolen student carries the defense's mark: trace_p < bench.api.TRACE_ALPHA (1 % false positives)",
    **{f"{stage}_s": f"seconds spent on {text}" for stage, text in (
        ("data", "the data"), ("teacher", "the teacher (training or loading)"), ("calibrate", "calibration"),
        ("defense_fit", "the defense's fit"), ("reference_student", "the reference student"),
        ("gt_student", "the ground-truth student"), ("student", "the attacked student"), ("score", "scoring"))},
}


def new_row(cell: Cell, *, started: float | None = None) -> dict[str, Any]:
    """A cell's row before it has a result: its identity, config and versions (bench.cell.versions, with the
    plugins' code digests), the same for a row that finishes and one that fails before it ran."""
    from bench.cell import plugin_code, versions

    return {"key": cell.key, "task": cell.spec.task, "defense": cell.spec.defense, "attack": cell.spec.attack,
            "seed": cell.spec.seed, "profile": cell.profile.name, "config": cell.config(),
            "versions": {**versions(), "code": plugin_code(cell)},
            "started": time.time() if started is None else started, "budget": cell.spec.budget_db}


def undocumented(metrics: dict[str, Any]) -> list[str]:
    """The metric names of a row that this module does not document."""
    return sorted(k for k in metrics if k not in METRIC_FIELDS)
