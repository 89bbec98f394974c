"""Remarks on results that puzzle a first reader (issue 18): one line each, saying what the result means
and why it is not an error. ``bench run`` prints them under one cell's table; the report writes the same
words as notes under a leaderboard table (:func:`reports.leaderboard.remarks`).

Two results look like bugs and are not:

- the *ground-truth student* (the attack trained on the clean images of its queries) scores below the
  reference student distilled from the teacher's answers: a small student at a small budget learns the
  teacher's smooth answers more easily than the clean images, which hold detail it cannot fit;
- the *defended student beats the reference* (a negative student drop): for one cell that is usually the
  chaos of training (two students that differ by a few perturbed answers end apart by tenths of a dB);
  only repeated over seeds, beyond the noise floor, is it a finding (the defense helps the attacker).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: differences smaller than this (dB) are rounding, not results, and get no remark
MIN_DB = 0.01
#: the spread of one student over seeds (docs/design.md, section 7: issue 15's probe on the quick profile)
SEED_SPREAD = "student seeds differ by 0.2-0.4 dB SD on the quick profile"
#: why a ground-truth student can score below the distilled one
GT_BELOW_WHY = ("the teacher's answers are smoother, easier targets than the clean images for a small student at "
                "this query budget; common for small students, not an error")
#: why a defended student that beats the reference over seeds, beyond the noise, is a finding
GAIN_WHY = ("the defense makes the answers easier to learn from at this cost (it helps the attacker); a finding to "
            "report, not an error")


def gt_gap(metrics: Mapping[str, Any]) -> float | None:
    """How far (dB) the ground-truth student scored below the distilled reference; None where it did not
    (or the cell has no ground-truth row)."""
    gt, ref = metrics.get("student_gt_psnr"), metrics.get("student_ref_psnr")
    if not isinstance(gt, (int, float)) or not isinstance(ref, (int, float)):
        return None
    gap = float(ref) - float(gt)
    return gap if gap >= MIN_DB else None


def gt_below_text(gap_db: float) -> str:
    return f"the ground-truth student scored {gap_db:.2f} dB below the distilled reference: {GT_BELOW_WHY}."


def sweep_hint(task: str, defense: str, profile: str, *, has_sets: bool = False) -> str:
    """The sweep that tells a one-cell gain from training noise (five seeds, the noise floor beside it)."""
    command = f"bench sweep --tasks {task} --defenses none,noise_floor,{defense} --seeds 0-4"
    if profile != "quick":
        command += f" --profile {profile}"
    return command + (" with this run's --set flags" if has_sets else "")


def cell_remarks(metrics: Mapping[str, Any], *, task: str, defense: str, profile: str = "quick",
                 has_sets: bool = False) -> list[str]:
    """The remarks for one finished cell's metrics (empty when nothing in it needs explaining)."""
    out = []
    gap = gt_gap(metrics)
    if gap is not None:
        out.append(gt_below_text(gap))
    drop = metrics.get("student_drop_db")
    if isinstance(drop, (int, float)) and drop <= -MIN_DB:
        out.append(f"the defended student beat the undefended reference by {-float(drop):.2f} dB: one seed, inside "
                   f"the noise of training ({SEED_SPREAD}) unless it holds over seeds; "
                   f"{sweep_hint(task, defense, profile, has_sets=has_sets)}, then bench report, shows whether it "
                   "does.")
    return out
