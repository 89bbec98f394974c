"""Does a teacher budget set on the calib split hold on the test split? (issue "Verdicts that hold", item 2)

For each calib pool, defense, budget and teacher seed: calibrate on calib (as ``bench calibrate`` does),
then measure the calibrated strength's teacher cost on test, and print test cost / budget. Teachers and
MAD's surrogates come from an existing store's artifacts (train them first, e.g. with the verdict grid);
calibrations go to a scratch store, so the run leaves the given store as it was.

    python docs/results/verdict-derain/calib_transfer.py --home runs/verdict --task derain --teacher-seeds 0,1
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile

from bench.api import Defense
from bench.cache import Artifacts
from bench.calibrate import calibrate, transfer_warning
from bench.pipeline import CellSpec, evaluate, fit_defense, get_teacher, resolve
from bench.store import Store

POOLS = {"calib (2 photos x 2 draws)": {"calib_pool": "calib"},
         "calib (2 photos x 8 draws)": {"calib_pool": "calib", "calib_draws": 8},
         "calib+owner (9 photos x 2 draws)": {"calib_pool": "calib+owner"}}


def test_cost(cell, teacher, teacher_key, artifacts) -> float:
    fit_defense(cell, teacher, teacher_key, artifacts, progress=False)
    test, bits = cell.task.splits().test, cell.profile.answer_bits
    with Defense(None).serve(teacher, answer_bits=bits) as plain, cell.defense.serve(teacher, answer_bits=bits) as s:
        return evaluate(plain, test, cell.task)["psnr"] - evaluate(s, test, cell.task)["psnr"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", required=True)
    ap.add_argument("--task", default="derain")
    ap.add_argument("--teacher-seeds", default="0")
    ap.add_argument("--defenses", default="asvp,output_noise,mad")
    ap.add_argument("--budgets", default="0.1,0.5,1.0")
    args = ap.parse_args()
    artifacts = Artifacts(args.home)
    scratch = Store(tempfile.mkdtemp(prefix="calib-transfer-"))
    ratios: dict[str, list[float]] = {p: [] for p in POOLS}
    held: dict[str, list[bool]] = {}
    print("pool | defense | budget dB | teacher seed | strength | calib cost | test cost | test/budget")
    for pool, params in POOLS.items():
        for defense in args.defenses.split(","):
            for budget in (float(b) for b in args.budgets.split(",")):
                for t in (int(s) for s in args.teacher_seeds.split(",")):
                    cell = resolve(CellSpec(task=args.task, defense=defense, budget_db=budget, teacher_seed=t,
                                            profile_params=dict(params)))
                    teacher, key, _ = get_teacher(cell.task, cell.profile, t, artifacts, progress=False)
                    try:
                        cal = calibrate(cell, teacher, key, artifacts, scratch, progress=False)
                    except Exception as exc:  # noqa: BLE001 - a budget a defense cannot reach is a finding too
                        print(f"{pool} | {defense} | {budget:g} | {t} | failed: {str(exc).splitlines()[0]}")
                        continue
                    calibrated = dataclasses.replace(cell, defense=cell.defense.with_strength(cal.value))
                    cost = test_cost(calibrated, teacher, key, artifacts)
                    held.setdefault(pool, []).append(transfer_warning(budget, cost) is None)
                    ratios[pool].append(cost / budget)
                    print(f"{pool} | {defense} | {budget:g} | {t} | {cal.value:.4g} | {cal.achieved_db:.3f} | "
                          f"{cost:.3f} | {cost / budget:.2f}", flush=True)
    print("\npool | calibrations | test/budget median | min | max | held (within 2x and 0.1 dB)")
    for pool, r in ratios.items():
        if r:
            print(f"{pool} | {len(r)} | {statistics.median(r):.2f} | {min(r):.2f} | {max(r):.2f} | "
                  f"{sum(held[pool])}/{len(r)}")


if __name__ == "__main__":
    sys.exit(main())
