"""Calibration: the strength at which a defense costs the teacher a given number of dB (DESIGN section 2,
"Equal cost").

``bench calibrate --task T --defense D --budget B`` finds the value of the defense's strength parameter
(``Defense.strength``) at which the *served* teacher's mean PSNR on the ``calib`` split (never ``test``)
is B dB below the undefended teacher's, prints it and stores it; ``bench run ... --budget B`` (a cell
with ``CellSpec.budget_db``) runs the defense at the stored value, calibrating first when none is stored.

The search (:func:`find_strength`): the cost is taken to be 0 at the first value of
``Defense.strength_range`` (where the defense is the identity), but it need not grow monotonically with
the strength (MAD's cost is below 0 at small strengths and rises later). (A plugin that declares no
range gets (0, the parameter's default); its cost at 0 is then measured first, and a clear error asks
for ``strength_range`` when it is not 0.) A coarse scan evaluates the cost at the range's second value,
then doubles the distance from the identity value each step, until the cost first reaches B. When it
cannot, that is a clear error: after 12 doublings, or when four doublings in a row each close less than
a tenth of the remaining gap (the cost saturates below B). The scan's first point at or above B and the
point before it (the identity, at cost 0, when that first point is the range's second value) bracket
the first crossing the scan saw, and only that bracket is refined: false-position steps with the
Illinois modification (a bracketing bisection that interpolates instead of halving, so a smooth cost
converges in a few evaluations) make an evaluated value at or above B the bracket's upper end (so the
search moves towards the lowest strength that reaches B) and one below B its lower end, until the cost
is within ``tol_db`` of B (default: 0.02 dB or a tenth of B, whichever is smaller) or ``max_evals``
evaluations (default 12, the scan's included, though the scan itself is not cut short) are spent. The
evaluated value closest to B at or below the bracket's upper end (never one beyond the first crossing)
is kept and its cost is stored beside it (``achieved_db``). When the evaluated costs, the identity's 0
included, fall by more than ``tol_db`` anywhere as the strength grows, the search says so in one line
(``find_strength``'s ``on_nonmonotone``; :func:`is_monotone` tells it from the trace): the answer is
still the first crossing seen, but a crossing between two scan points can go unseen.

One evaluation serves the teacher through the defense at that strength and scores the calib images:
runtime defenses take a fraction of a second each. A training-time defense (nasty teacher) trains its
changed teacher for each strength tried; every one is cached by its own config, so a repeated or
neighbouring calibration (another budget) retrains only strengths not tried before.

The calibration key holds the teacher's key, the defense's identity without its strength parameter,
the budget, the calib data (the task's name and a digest of the calib images), the search's starting
bracket, the profile and the seed. A stored calibration is used when it lies within the requested
tolerance of the budget (so one made with a tighter ``--tol`` serves every later run); otherwise it is
recomputed and replaced.

Calibrations run the defense with seed 0 (``CALIBRATION_SEED``), whatever the cell seed: a strength
is a property of the defense, shared by every seed of a grid; the cost of a stochastic defense at a
given strength differs between seeds only by its noise realisation on the calib images.

Budgets for defenses that cannot be calibrated are errors, never silently ignored: a defense without a
strength parameter (``none``), or one that touches no answers (``asvp`` with ``mode=exposed``: its
teacher cost is 0 at every strength).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from bench import BenchError
from bench.api import Defense
from bench.cache import Artifacts, config_key
from bench.progress import bar
from bench.scoring import evaluate, pool_digest
from bench.stages import fit_defense

if TYPE_CHECKING:
    from bench.cell import Cell
    from bench.store import Store

CALIBRATION_RECIPE = "2"  # bump when the search or the cost measurement changes
CALIBRATION_SEED = 0
DEFAULT_TOL_DB = 0.02
DEFAULT_MAX_EVALS = 12
MAX_DOUBLINGS = 12
STALLED_DOUBLINGS = 4  # a cost can be flat at first and then rise (nasty teacher): give it room


@dataclass
class Calibration:
    key: str
    parameter: str
    value: float
    budget_db: float
    achieved_db: float
    evaluations: int
    cached: bool
    trace: list[tuple[float, float]] = dataclasses.field(default_factory=list)

    def describe(self, defense: str) -> str:
        how = "from the store" if self.cached else f"{self.evaluations} evaluations"
        return (f"{defense}: {self.parameter} = {self.value:.6g} costs the teacher {self.achieved_db:.3f} dB "
                f"PSNR on calib (budget {self.budget_db:g} dB; {how}; key {self.key})")


#: a calibrated cell whose teacher cost on test departs from its budget by more than this factor, or by more
#: than TRANSFER_ABS_DB, is flagged wherever it is shown (run, sweep, report)
TRANSFER_FACTOR = 2.0
TRANSFER_ABS_DB = 0.1


def transfer_warning(budget_db: float, test_cost_db: float) -> str | None:
    """One line when a budget set on calib did not hold on test (None when it did)."""
    ratio = test_cost_db / budget_db
    if abs(test_cost_db - budget_db) <= TRANSFER_ABS_DB and 1 / TRANSFER_FACTOR <= ratio <= TRANSFER_FACTOR:
        return None
    return (f"calibrated to {budget_db:g} dB on calib, the defense costs {test_cost_db:.3f} dB on test "
            f"({ratio:.2g}x): the budget did not transfer; compare at matched test cost instead")


# ---------------------------------------------------------------------------------------- checks
def check_budget(defense: Defense, budget_db: float | None, overrides: dict[str, Any]) -> None:
    """Fail fast (before any training) when a budget cannot be calibrated for ``defense``."""
    if budget_db is None:
        return
    name = defense.name
    if not (math.isfinite(budget_db) and budget_db > 0):
        raise BenchError(f"--budget must be a positive number of dB, got {budget_db}.")
    if not defense.strength:
        raise BenchError(f"defense '{name}' has no strength parameter, so a budget cannot be calibrated "
                         "for it; run it without --budget.")
    if defense.strength not in {f.name for f in dataclasses.fields(defense.params)}:
        raise BenchError(f"defense '{name}' names strength '{defense.strength}', which is not one of its "
                         "parameters; fix the plugin's `strength`.")
    if defense.strength in overrides:
        raise BenchError(f"--budget sets defense.{defense.strength} by calibration; drop "
                         f"--set defense.{defense.strength}=... or drop --budget.")
    if "answers" not in defense.channels():
        raise BenchError(f"defense '{name}' with these parameters touches no answers, so it costs the teacher "
                         "nothing at any strength and a budget cannot be met; run it without --budget.")


def strength_bracket(defense: Defense) -> tuple[float, float, bool]:
    """(identity value, first upper guess, whether the plugin declared them) of the strength: the
    plugin's ``strength_range``, else (0, the parameter's default, or 1 if that is not positive)."""
    rng = getattr(defense, "strength_range", None)
    if rng is not None:
        lo, hi = float(rng[0]), float(rng[1])
    else:
        default = next(f.default for f in dataclasses.fields(defense.params) if f.name == defense.strength)
        lo = 0.0
        hi = float(default) if isinstance(default, (int, float)) and default > 0 else 1.0
    if not hi > lo:
        raise BenchError(f"defense '{defense.name}': strength_range must be (identity, larger guess), "
                         f"got {(lo, hi)}.")
    return lo, hi, rng is not None


# ---------------------------------------------------------------------------------------- search
def default_tol(budget_db: float) -> float:
    """0.02 dB, or a tenth of the budget where that is smaller (0.01 dB at B = 0.1)."""
    return min(DEFAULT_TOL_DB, 0.1 * budget_db)


def _largest_fall(points: list[tuple[float, float]], tol: float,
                  ) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The two points (earlier, later in strength order) between which the cost falls the most, when
    that fall is more than ``tol``; None when the cost never falls by more than ``tol``."""
    peak = fall = None
    for s, c in sorted(points):  # a strength tried twice: its lower cost sorts first, so it is no fall
        if peak is not None and peak[1] - c > tol and (fall is None or peak[1] - c > fall[0][1] - fall[1][1]):
            fall = (peak, (s, c))
        if peak is None or c > peak[1]:
            peak = (s, c)
    return fall


def is_monotone(trace: list[tuple[float, float]], tol: float, *, identity: float | None = None) -> bool:
    """Whether the costs of ``trace`` ((strength, cost) pairs, in any order) never fall by more than ``tol``
    as the strength grows. With ``identity``, the point (identity, 0), the cost :func:`find_strength`
    assumes there, counts too (as it does for ``on_nonmonotone``): a cost below 0 by more than ``tol``
    at a small strength (MAD) is then a fall."""
    points = list(trace) + ([(identity, 0.0)] if identity is not None else [])
    return _largest_fall(points, tol) is None


def find_strength(cost: Callable[[float], float], budget: float, lo: float, hi: float, *,
                  tol: float = DEFAULT_TOL_DB, max_evals: int = DEFAULT_MAX_EVALS,
                  what: str = "the defense", hint: str = Defense.saturation_hint,
                  on_nonmonotone: Callable[[str], None] | None = None,
                  ) -> tuple[float, float, list[tuple[float, float]]]:
    """The lowest strength s whose cost reaches ``budget``, within ``tol``: (s, cost(s), [(s_i, cost_i)
    tried, in order]).

    ``cost(lo)`` is taken as 0 (not evaluated). A scan doubles the distance from ``lo`` (starting at
    ``hi``) until the cost first reaches the budget; Illinois false-position steps then narrow the
    bracket (previous scan point, that point), an evaluated point at or above the budget becoming its
    upper end. The kept point is the one closest to the budget at or below that upper end. When the
    evaluated costs (``lo``'s 0 included) fall by more than ``tol`` somewhere as the strength grows,
    ``on_nonmonotone`` is called once with a one-line message (see :func:`is_monotone`)."""
    trace: list[tuple[float, float]] = []

    def f(s: float) -> float:
        c = float(cost(s))
        if not math.isfinite(c):
            raise BenchError(f"{what} gave a non-finite teacher cost ({c}) at strength {s:g}.")
        trace.append((s, c))
        return c

    def best(upper: float) -> tuple[float, float]:  # never a point beyond the first crossing
        return min((t for t in trace if t[0] <= upper), key=lambda t: abs(t[1] - budget))

    # 1. the coarse scan, away from the identity, to the first point whose cost reaches the budget
    identity = lo
    f_lo, f_hi = 0.0, f(hi)
    doublings = stalled = 0
    while f_hi < budget:
        if doublings >= MAX_DOUBLINGS or stalled >= STALLED_DOUBLINGS:
            why = "saturated" if stalled >= STALLED_DOUBLINGS else "the largest tried"
            raise BenchError(f"{what} costs the teacher only {f_hi:.3f} dB on calib at strength {hi:g} "
                             f"({why}), less than the budget {budget:g} dB; use a smaller budget or {hint}.")
        lo, f_lo = hi, f_hi
        hi = identity + 2 * (hi - identity)
        f_hi = f(hi)
        doublings += 1
        # a doubling that closes under a tenth of the remaining gap: the cost is levelling off
        stalled = stalled + 1 if f_hi - f_lo < 0.1 * (budget - f_lo) else 0
    # 2. refinement inside that first bracket: cost(lo) < budget <= cost(hi) throughout
    side = 0  # which end was kept last time (Illinois: halve the stale end's value when kept twice)
    g_lo, g_hi = f_lo - budget, f_hi - budget
    while abs(best(hi)[1] - budget) > tol and len(trace) < max_evals:
        s = hi - g_hi * (hi - lo) / (g_hi - g_lo) if g_hi != g_lo else 0.5 * (lo + hi)
        if not lo < s < hi:
            s = 0.5 * (lo + hi)
        g = f(s) - budget
        if g < 0:
            lo, g_lo = s, g
            if side == -1:
                g_hi *= 0.5
            side = -1
        else:  # already at or over the budget: the first crossing is at s or below
            hi, g_hi = s, g
            if side == 1:
                g_lo *= 0.5
            side = 1
        if hi - lo <= 1e-9 * max(1.0, abs(hi)):
            break
    s, c = best(hi)
    # 3. a cost that falls somewhere: the answer stands (the first crossing seen), but say so
    fall = _largest_fall(trace + [(identity, 0.0)], tol)
    if fall is not None and on_nonmonotone is not None:
        (s0, c0), (s1, c1) = fall
        at = f"the identity {s0:g} (taken as 0 dB)" if s0 == identity else f"{s0:.4g}"
        tried = ", ".join(f"{x:.4g} -> {y:.2f} dB" for x, y in sorted(trace))
        on_nonmonotone(f"{what}: teacher cost is not monotone in strength on calib (it falls from {c0:.2f} dB "
                       f"at {at} to {c1:.2f} dB at {s1:.4g}; tried {tried}); kept the first crossing at "
                       f"{s:.4g} ({c:.3f} dB)")
    return s, c, trace


# ------------------------------------------------------------------------------------ measurement
def calibration_config(cell: Cell, teacher_key: str) -> dict[str, Any]:
    # precision is keyed with the numerics (through the teacher's key)
    profile = {k: v for k, v in dataclasses.asdict(cell.profile).items() if k not in ("name", "precision")}
    return {"kind": "calibration", "recipe": CALIBRATION_RECIPE, "teacher": teacher_key,
            "defense": cell.defense.calibration_identity(), "budget_db": float(cell.spec.budget_db),
            "calib": {"task": cell.task.name, "digest": pool_digest(cell.task.splits().calib)},
            "bracket": list(strength_bracket(cell.defense)[:2]), "profile": profile, "seed": CALIBRATION_SEED,
            **cell.student_numerics()}


def calibrate(cell: Cell, teacher: nn.Module, teacher_key: str, artifacts: Artifacts, store: Store, *,
              progress: bool = True, force: bool = False, tol: float | None = None,
              max_evals: int = DEFAULT_MAX_EVALS) -> Calibration:
    """The stored calibration of ``cell``'s defense at ``cell.spec.budget_db``, computed now if there is
    none (or ``force``)."""
    defense, task = cell.defense, cell.task
    budget = cell.spec.budget_db
    check_budget(defense, budget, {})
    tol = default_tol(budget) if tol is None else float(tol)
    config = calibration_config(cell, teacher_key)
    key = config_key(config)
    if not force:
        row = store.get_calibration(key)
        if row is not None and abs(float(row["achieved_db"]) - budget) <= tol:
            return Calibration(key, row["parameter"], float(row["value"]), float(row["budget_db"]),
                               float(row["achieved_db"]), int(row["config"].get("evaluations", 0)), True,
                               [tuple(t) for t in row["config"].get("trace", [])])
    calib = task.splits().calib
    bits = cell.profile.answer_bits  # costs are measured on the answers as served (8-bit by default)
    with Defense(None).serve(teacher, answer_bits=bits) as undefended:
        reference = evaluate(undefended, calib, task)["psnr"]
    lo, hi, declared = strength_bracket(defense)
    label = f"calibrating {defense.name}.{defense.strength} to {budget:g} dB"
    with bar(total=max_evals, desc=label, show=progress, unit="eval") as pbar:
        def cost(s: float) -> float:
            trial = defense.with_strength(s, seed=CALIBRATION_SEED)
            fit_defense(dataclasses.replace(cell, defense=trial), teacher, teacher_key, artifacts,
                        progress=progress)
            with trial.serve(teacher, answer_bits=bits) as served:
                c = reference - evaluate(served, calib, task)["psnr"]
            pbar.set_postfix({defense.strength: f"{s:.4g}", "cost_db": f"{c:.3f}"}, refresh=False)
            pbar.update(1)
            return c

        if not declared:  # a guessed identity value: check it costs nothing before trusting it
            c0 = cost(lo)
            if abs(c0) > tol:
                raise BenchError(f"defense '{defense.name}' costs the teacher {c0:.3f} dB at {defense.strength}="
                                 f"{lo:g}, so that is not its no-cost value; declare strength_range = (no-cost "
                                 "value, first upper guess) on the plugin.")
        def say(message: str) -> None:  # a non-monotone cost is reported, never silently bisected
            pbar.write(f"warning: {task.name} · {message}", file=sys.stderr)

        value, achieved, trace = find_strength(cost, budget, lo, hi, tol=tol, max_evals=max_evals,
                                               what=f"defense '{defense.name}'", hint=defense.saturation_hint,
                                               on_nonmonotone=say)
    result = Calibration(key, defense.strength, value, float(budget), achieved, len(trace), False, trace)
    store.put_calibration({
        "key": key, "task": task.name, "defense": defense.name, "budget_db": float(budget),
        "parameter": defense.strength, "value": value, "achieved_db": achieved, "created": time.time(),
        "config": {**config, "tol_db": tol, "teacher_calib_psnr": reference, "evaluations": len(trace),
                   "trace": trace, "monotone": is_monotone(trace, tol, identity=lo)},
    })
    return result


def calibrated_cell(cell: Cell, teacher: nn.Module, teacher_key: str, artifacts: Artifacts, store: Store, *,
                    progress: bool = True, force: bool = False) -> tuple[Cell, Calibration | None]:
    """The pipeline's calibration stage: ``cell`` with its defense at the calibrated strength (the cell
    itself when it has no budget). Its key is unchanged: a budgeted cell's key holds the budget, not the
    strength."""
    if cell.spec.budget_db is None:
        return cell, None
    cal = calibrate(cell, teacher, teacher_key, artifacts, store, progress=progress, force=force)
    return dataclasses.replace(cell, defense=cell.defense.with_strength(cal.value)), cal
