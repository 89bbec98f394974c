"""ASVP's served-forward overhead on a GPU: the paper profile's teacher (64 channels, 8 blocks), random
weights (cost does not depend on them), one image of 256x256 and of 1024x1024, the defense at its
defaults, timed with CUDA events (median of 20 after 5 warm-ups). Prints one JSON line per size.

    python docs/results/gpu/overhead.py
"""

from __future__ import annotations

import json
import statistics

import torch

from bench.models import RestorationCNN
from bench.protect import protect


def timed(fn, reps: int = 20, warm: int = 5) -> float:
    for _ in range(warm):
        fn()
    times = []
    if not torch.cuda.is_available():  # a CPU run only checks the script
        import time
        for _ in range(2):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
        return statistics.median(times)
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@torch.no_grad()
def main() -> None:
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = RestorationCNN(64, 8).to(dev).eval()
    for side in (256, 1024) if dev == "cuda" else (64,):
        x = torch.rand(1, 3, side, side, device=dev)
        plain = timed(lambda x=x: teacher(x))
        name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
        row = {"gpu": name, "side": side, "teacher_ms": round(plain, 3)}
        for layout in ("channel", "spatial"):
            with protect(teacher, "asvp", layout=layout) as served:
                ms = timed(lambda x=x, served=served: served(x))
            row[f"asvp_{layout}_ms"] = round(ms, 3)
            row[f"asvp_{layout}_x"] = round(ms / plain, 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
