"""What the ``bench`` command's allocator settings (bench/allocator.py) buy on CPU (pytest-benchmark).

Skipped by normal runs (``--benchmark-skip`` in pyproject's addopts). Run with::

    .venv/bin/python -m pytest tests/test_bench_allocator.py --benchmark-only -s

Each round starts two fresh processes, one with glibc's defaults (``BENCH_MALLOC=system``) and one with
the settings, alternately, so drift in the machine's speed hits both alike. In each process: the quick
teacher's forward on one 1x3x256x256 image (torch's default threads) and the quick student's training
step on its 16 crops of 48x48 (one thread, as in a sweep worker); medians over the rounds are printed.
``ALLOC_BENCH_ROUNDS`` sets the rounds.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest

ROUNDS = int(os.environ.get("ALLOC_BENCH_ROUNDS", "4"))

SCRIPT = """
import json, resource, statistics, time, torch
from bench.allocator import keep_freed_memory
import bench.train
from bench.models import RestorationCNN
keep_freed_memory()
torch.manual_seed(0)
teacher, x = RestorationCNN(32, 4).eval(), torch.rand(1, 3, 256, 256)
times = []
with torch.no_grad():
    teacher(x)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        start = time.perf_counter()
        teacher(x)
        times.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 8
torch.set_num_threads(1)
xs, ys = torch.rand(16, 3, 48, 48), torch.rand(16, 3, 48, 48)
bench.train.train(RestorationCNN(16, 2), lambda g: (xs, ys), steps=2, lr=1e-3, seed=0, progress=False)
start = time.perf_counter()
bench.train.train(RestorationCNN(16, 2), lambda g: (xs, ys), steps=10, lr=1e-3, seed=0, progress=False)
step = (time.perf_counter() - start) / 10
print(json.dumps({"forward_ms": statistics.median(times) * 1e3, "faults": faults, "step_ms": step * 1e3}))
"""

MODES = {"glibc defaults": {"BENCH_MALLOC": "system"}, "bench settings": {}}


@pytest.mark.benchmark(group="allocator")
def test_allocator_settings(benchmark, bench_report, allocator_env):
    runs: dict[str, list[dict]] = {name: [] for name in MODES}

    def one_round():
        for name, env in MODES.items():
            out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True,
                                 env=allocator_env(**env)).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    for name, rows in runs.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        benchmark.extra_info.update({f"{name} {k}": round(v, 2) for k, v in med.items()})
        bench_report.append(f"{name:15s} teacher forward 1x3x256x256: {med['forward_ms']:6.1f} ms "
                            f"({med['faults']:7.0f} page faults); student training step: {med['step_ms']:5.1f} ms")
