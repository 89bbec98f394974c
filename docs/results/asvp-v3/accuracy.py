"""ASVP as its text says: how far the fast paths' answer perturbation is from the full-SVD one, and how the
adaptive k spreads, on a trained reference teacher's features (issue "Verdict v2", item 3).

    python docs/results/asvp-v3/accuracy.py --home runs/verdict --task derain --teacher-seeds 0,1

Per layout and ``power_iters``: the relative L2 distance between the served answer's perturbation
(served - teacher) with the fast path and with ``use_reference`` (a full float64 SVD per matrix), over
the test images at h = 1.5. Then the distribution of the energy-rule k at the middle body blocks for
several (tau, k_max).
"""

from __future__ import annotations

import argparse
import collections

import torch

from bench.api import Defense
from bench.cache import Artifacts
from bench.pipeline import CellSpec, get_teacher, resolve
from defenses.asvp import energy_k


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", required=True)
    ap.add_argument("--task", default="derain")
    ap.add_argument("--teacher-seeds", default="0")
    args = ap.parse_args()
    artifacts = Artifacts(args.home)
    torch.set_num_threads(1)
    for t in (int(s) for s in args.teacher_seeds.split(",")):
        cell = resolve(CellSpec(task=args.task, defense="asvp", teacher_seed=t))
        teacher, _, _ = get_teacher(cell.task, cell.profile, t, artifacts, progress=False)
        xs = [x[None] for x in cell.task.splits().test.degraded]
        with Defense(None).serve(teacher) as plain:
            base = [plain(x) for x in xs]

        def delta(teacher=teacher, xs=xs, base=base, **params):
            d = resolve(CellSpec(task=args.task, defense="asvp", defense_params=params)).defense
            with d.serve(teacher) as served:
                return [served(x) - b for x, b in zip(xs, base)]

        for layout in ("channel", "spatial"):
            ref = delta(layout=layout, use_reference="true")
            for iters in ((1,) if layout == "channel" else (0, 1, 2, 3, 4, 6, 8)):
                fast = delta(layout=layout, power_iters=str(iters))
                rel = [float((f - r).norm() / r.norm()) for f, r in zip(fast, ref)]
                print(f"teacher {t} · {layout} · power_iters {iters}: relative L2 to full SVD mean "
                      f"{100 * sum(rel) / len(rel):.1f} % (max {100 * max(rel):.1f} %) over {len(rel)} images")
        # the adaptive k at the perturbed layers
        feats: dict[str, list[torch.Tensor]] = collections.defaultdict(list)
        layers = cell.defense.feature_layers(teacher)
        hooks = [dict(teacher.named_modules())[n].register_forward_hook(
            lambda m, a, o, n=n, feats=feats: feats[n].append(o.detach())) for n in layers]
        for x in xs:
            teacher(x)
        for h in hooks:
            h.remove()
        for layout in ("channel", "spatial"):
            for tau, k_max in ((0.9, 8), (0.5, 8), (0.7, 16), (0.8, 16), (0.9, 32)):
                ks = torch.cat([energy_k(f, tau, k_max, layout, power_iters=4).flatten()
                                for fs in feats.values() for f in fs])
                counts = collections.Counter(ks.tolist())
                print(f"teacher {t} · {layout} · tau {tau} k_max {k_max}: k over {len(ks)} matrices: "
                      + ", ".join(f"{k}:{n}" for k, n in sorted(counts.items())))


if __name__ == "__main__":
    main()
