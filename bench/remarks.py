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


#: a teacher that gains less than this over its input (dB) has nothing worth stealing: its drops mean little
MIN_TEACHER_GAIN_DB = 1.0
#: the paper's claim for ASVP's cost to honest users (dB): a cost above it at a set strength gets a remark
CLAIMED_COST_DB = 0.1
#: what the smoke profile is, wherever its numbers are shown
SMOKE_WHY = ("profile smoke exists for the tests (tiny models, a few steps, a cell in seconds): its numbers show "
             "that the machinery runs, not how a defense does; use the quick (CPU) or paper (GPU) profile for results")


def teacher_remarks(metrics: Mapping[str, Any]) -> list[str]:
    """A teacher that barely beats its input, and students that beat their teacher: both say the drops of this
    cell (or table) cannot say much about a defense. ``metrics``: a cell's, or a table's means."""
    out = []
    inp, teacher, ref = (metrics.get(k) for k in ("input_psnr", "teacher_psnr", "student_ref_psnr"))
    if all(isinstance(v, (int, float)) for v in (inp, teacher)) and teacher - inp < MIN_TEACHER_GAIN_DB:
        gain = teacher - inp
        out.append(f"the teacher scores {teacher:.2f} dB against its input's {inp:.2f} dB (a gain of {gain:+.2f} "
                   f"dB, under {MIN_TEACHER_GAIN_DB:g} dB): it has little worth stealing, so its students' drops say "
                   "little about the defense; train it longer (profile.teacher_steps) or use a larger profile.")
    if all(isinstance(v, (int, float)) for v in (teacher, ref)) and ref - teacher >= MIN_DB:
        out.append(f"the undefended student ({ref:.2f} dB) beats its teacher ({teacher:.2f} dB): the students learn "
                   "more than the teacher knows (a teacher short of converged, or a student as strong as it), so a "
                   "defense cannot take from them what the teacher does not have; train the teacher longer.")
    return out


def cell_remarks(metrics: Mapping[str, Any], *, task: str, defense: str, profile: str = "quick",
                 has_sets: bool = False) -> list[str]:
    """The remarks for one finished cell's metrics (empty when nothing in it needs explaining)."""
    out = [SMOKE_WHY + "."] if profile == "smoke" else []
    out += teacher_remarks(metrics)
    cost, worst = metrics.get("teacher_drop_db"), metrics.get("worst_teacher_drop_db")
    if isinstance(cost, (int, float)) and cost > CLAIMED_COST_DB:
        worst_text = f" (worst test image {worst:.2f} dB)" if isinstance(worst, (int, float)) else ""
        out.append(f"at this strength the defense costs honest users {cost:.2f} dB{worst_text}, above the "
                   f"{CLAIMED_COST_DB:g} dB that defenses are usually claimed to cost: compare defenses at a stated "
                   f"cost with --budget {CLAIMED_COST_DB:g} (calibrated on calib), or sweep strengths and read the "
                   "report's matched test costs.")
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
