"""Cost of a training step of the one training loop, default layout against channels-last (pytest-benchmark).

Skipped by normal runs (``--benchmark-skip`` in pyproject's addopts). Run with::

    .venv/bin/python -m pytest tests/test_bench_training.py --benchmark-only -s

The quick profile's student, RestorationCNN(16, 2), and teacher, RestorationCNN(32, 4), on its batches
(16 crops of 48x48), with one torch thread (what each worker of ``bench sweep --n-jobs 2`` gets). Each
round trains a few steps in both layouts, interleaved, so drift in the machine's speed hits both alike;
the median ms per step and the ratio are printed and stored in ``extra_info``.
``TRAIN_BENCH_ROUNDS`` sets the rounds.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time

import pytest
import torch

import bench.train
from bench.models import RestorationCNN

ROUNDS = int(os.environ.get("TRAIN_BENCH_ROUNDS", "6"))
STEPS = 5


@pytest.mark.benchmark(group="training-step")
@pytest.mark.parametrize("arch", [(16, 2), (32, 4)], ids=["student", "teacher"])
def test_channels_last_step(benchmark, bench_report, monkeypatch, arch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x, y = torch.rand(16, 3, 48, 48), torch.rand(16, 3, 48, 48)
    real = bench.train._channels_last
    layouts = {"default": lambda model: contextlib.nullcontext(), "channels_last": real}
    times: dict[str, list[float]] = {name: [] for name in layouts}

    def one_round():
        for name, ctx in layouts.items():
            monkeypatch.setattr(bench.train, "_channels_last", ctx)
            model = RestorationCNN(*arch)
            start = time.perf_counter()
            bench.train.train(model, lambda g: (x, y), steps=STEPS, lr=1e-3, seed=0, progress=False)
            times[name].append((time.perf_counter() - start) / STEPS)

    try:
        one_round()  # warm up
        times = {name: [] for name in layouts}
        benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    finally:
        torch.set_num_threads(threads)
    ms = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    ratio = ms["default"] / ms["channels_last"]
    benchmark.extra_info.update({f"{n}_ms_per_step": round(v, 2) for n, v in ms.items()}, speedup=round(ratio, 3))
    bench_report.append(f"RestorationCNN{arch} training step, 16x3x48x48, 1 thread, {ROUNDS} rounds: default "
                        f"{ms['default']:.1f} ms, channels-last {ms['channels_last']:.1f} ms ({ratio:.2f}x faster)")
