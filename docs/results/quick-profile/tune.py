"""How many steps does the quick profile need? A tuning probe, run once on a GPU machine (issue 15).

Trains each bundled task's reference teacher at several step counts (two teacher seeds), then the
reference (undefended, vanilla-KD) student against it at several (steps, lr, crop) settings over five
seeds, exactly as the pipeline does (same seeding, same 8-bit answers, same crops), but on a GPU and
outside the store: it only chooses the settings. The chosen profile's figures that the README and the
claims report quote were measured on CPU by the suite itself. Output: one JSON line per trained model.

    PYTHONPATH=. python docs/results/quick-profile/tune.py --task derain --device cuda --out tune-derain.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import torch
import torch.nn.functional as F

from bench.data import sample_pair_crops, stable_seed
from bench.metrics import psnr
from bench.models import RestorationCNN
from bench.profiles import PROFILES


def task_class(name: str):
    try:  # installed: the registry names the class, so the pools are the pipeline's own draws
        from bench.registry import TASKS
        return TASKS.get(name)
    except Exception:  # a bare checkout (the GPU machine): same classes, draws keyed by another name
        import tasks.dehaze
        import tasks.derain
        import tasks.lowlight
        import tasks.sr
        import tasks.underwater

        return {"sr": tasks.sr.SuperResolution, "lowlight": tasks.lowlight.LowLight,
                "underwater": tasks.underwater.Underwater, "dehaze": tasks.dehaze.Dehaze,
                "derain": tasks.derain.Derain}[name]


def fit(model, next_batch, *, steps, lr, seed, device, floor=0.05):
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * s / max(1, steps))))
    gen = torch.Generator().manual_seed(int(seed))
    for _ in range(steps):
        x, y = next_batch(gen)
        loss = F.l1_loss(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    return float(loss)


@torch.no_grad()
def score(model, pool, task, device):
    out = []
    for x, y in zip(pool.degraded, pool.clean):
        pred = task.baseline(x[None]) if model is None else model(x[None].to(device)).cpu()
        out.append(psnr(pred.clamp(0, 1), y[None], y_channel=task.y_channel, shave=task.shave))
    return sum(out) / len(out)


def seeded(build, seed):
    torch.manual_seed(seed)
    return build()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", required=True)
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True)
    ap.add_argument("--teacher-steps", default="800,2000,4000")
    ap.add_argument("--teacher", default="32x4", help="channels x blocks")
    ap.add_argument("--image-size", type=int, default=PROFILES["quick"].image_size)
    ap.add_argument("--variants", type=int, default=PROFILES["quick"].variants)
    ap.add_argument("--batch", type=int, default=PROFILES["quick"].batch)
    ap.add_argument("--teacher-lr", type=float, default=PROFILES["quick"].teacher_lr)
    ap.add_argument("--students", default="1200:2e-3:48,2400:2e-3:32,1200:2e-3:32,600:2e-3:48,2400:2e-3:48,"
                                          "1200:5e-3:48,600:5e-3:48,1200:2e-3:48:0,600:2e-3:32,300:2e-3:48",
                    help="steps:lr:crop[:final lr fraction], comma-separated; teacher seed 1 gets the first only")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.set_num_threads(1)
    base = dataclasses.replace(PROFILES["quick"], image_size=args.image_size, variants=args.variants,
                               batch=args.batch)
    cls = task_class(args.task)
    params = cls.Params(**({"scale": args.scale} if args.task == "sr" else {}))
    tc, tb = (int(v) for v in args.teacher.split("x"))
    out = open(args.out, "a")

    def log(rec):
        rec = {"task": args.task, "scale": args.scale, "teacher": args.teacher, "teacher_lr": args.teacher_lr,
               "image_size": args.image_size, "variants": args.variants, "batch": args.batch, **rec}
        out.write(json.dumps(rec) + "\n")
        out.flush()
        print(json.dumps(rec), flush=True)

    prof = dataclasses.replace(base, teacher_channels=tc, teacher_blocks=tb)
    task = cls(params, prof)
    splits = task.splits()
    log({"kind": "input", "psnr": score(None, splits.test, task, dev), "test_images": len(splits.test)})
    teachers = {}
    for steps in [int(s) for s in args.teacher_steps.split(",")]:
        for tseed in (0, 1):
            t0 = time.perf_counter()
            m = seeded(lambda: RestorationCNN(tc, tb, scale=task.scale), stable_seed("teacher-init", tseed)).to(dev)
            loss = fit(m, lambda g: splits.owner.sample_crops(prof.batch, prof.crop, g), steps=steps,
                       lr=args.teacher_lr, seed=stable_seed("teacher-data", tseed), device=dev)
            teachers[(steps, tseed)] = m
            log({"kind": "teacher", "steps": steps, "seed": tseed, "psnr": score(m, splits.test, task, dev),
                 "owner_psnr": score(m, splits.owner, task, dev), "loss": loss, "s": time.perf_counter() - t0})
    best_steps = max(s for s, _ in teachers)
    for tseed in (0, 1):
        teacher = teachers[(best_steps, tseed)]
        for spec in args.students.split(","):
            parts = spec.split(":")
            steps, lr, crop = int(parts[0]), float(parts[1]), int(parts[2])
            floor = float(parts[3]) if len(parts) > 3 else 0.05
            if tseed == 1 and spec != args.students.split(",")[0]:
                continue
            for seed in range(5):
                t0 = time.perf_counter()
                gen = torch.Generator().manual_seed(seed)
                q, _ = sample_pair_crops(splits.attacker.degraded, splits.attacker.clean, base.query_budget,
                                         base.query_size, gen, scale=task.scale, augment=False)
                with torch.no_grad():
                    ans = torch.cat([teacher(q[i:i + 64].to(dev)).clamp(0, 1) for i in range(0, len(q), 64)])
                    ans = (ans * 255).round() / 255
                ans = ans.cpu()
                s = seeded(lambda: RestorationCNN(base.student_channels, base.student_blocks, scale=task.scale),
                           stable_seed("student-init", seed)).to(dev)
                fit(s, lambda g, q=q, ans=ans, crop=crop: sample_pair_crops(
                        q, ans, base.batch, crop, g, scale=task.scale, augment=task.augment_transforms),
                    steps=steps, lr=lr, seed=seed, device=dev, floor=floor)
                log({"kind": "student", "teacher_seed": tseed, "teacher_steps": best_steps, "steps": steps,
                     "lr": lr, "crop": crop, "floor": floor, "seed": seed,
                     "psnr": score(s, splits.test, task, dev), "s": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
