from __future__ import annotations

import contextlib
import os

import pytest
import torch

from bench.allocator import keep_freed_memory

# The same allocator settings as the ``bench`` command, so tests and benchmarks run as it does.
keep_freed_memory()
# Tests are tiny; one thread keeps them stable on a 2-core CI machine and leaves a core for pytest.
torch.set_num_threads(1)
os.environ.setdefault("BENCH_PROGRESS", "0")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh results store for one test."""
    path = tmp_path / "runs"
    monkeypatch.setenv("BENCH_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def shared_home(tmp_path_factory):
    """A store shared by the tests of a session, so smoke teachers are trained once."""
    return tmp_path_factory.mktemp("shared_runs")


@pytest.fixture
def allocator_env():
    """``allocator_env(**overrides)``: this process's environment for a child process, without anything
    that would switch bench/allocator.py off (BENCH_MALLOC, glibc's own settings), plus ``overrides``."""
    from bench.allocator import USER_SETTINGS

    def env(**overrides: str) -> dict[str, str]:
        kept = {k: v for k, v in os.environ.items() if k != "BENCH_MALLOC" and k not in USER_SETTINGS}
        return {**kept, **overrides}

    return env


@pytest.fixture(scope="module")
def bench_report(request):
    """For benchmark modules: torch's default thread count (the tests pin one thread) while the module
    runs, and a list of lines printed after the module's benchmarks (paired ratios)."""
    lines: list[str] = []
    before = torch.get_num_threads()
    # torch's default: one thread per CPU (OMP_NUM_THREADS if set)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1)
    yield lines
    torch.set_num_threads(before)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if lines and reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)


@pytest.fixture
def paired_rounds(bench_report):
    """``paired_rounds(benchmark, fns, x, rounds, title)``: see :func:`time_paired_rounds`; the lines go to
    the module's ``bench_report``."""
    return lambda benchmark, fns, x, rounds, title: time_paired_rounds(benchmark, fns, x, rounds, title,
                                                                       bench_report)


def time_paired_rounds(benchmark, fns: dict, x, rounds: int, title: str, report: list[str]) -> dict[str, float]:
    """Time every callable of ``fns`` on ``x`` once per round, interleaved, so that drift in the machine's
    speed hits all alike; report median and fastest ms with their ratios to ``fns``' first entry (the
    undefended teacher). The fastest round is each variant's cost with the least interference."""
    import statistics
    import time

    times: dict[str, list[float]] = {name: [] for name in fns}

    def one_round():
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - start)

    with torch.no_grad():
        for fn in fns.values():  # warm up
            fn(x)
        benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    medians = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    fastest = {name: min(ts) * 1e3 for name, ts in times.items()}
    base, base_min = next(iter(medians.values())), next(iter(fastest.values()))
    ratios = {n: ms / base for n, ms in medians.items()}
    benchmark.extra_info.update({f"{n}_median_ms": round(ms, 2) for n, ms in medians.items()})
    benchmark.extra_info.update({f"{n}_ratio": round(r, 3) for n, r in ratios.items()})
    benchmark.extra_info.update({f"{n}_min_ratio": round(ms / base_min, 3) for n, ms in fastest.items()})
    # each round's own ratio to the teacher's time in that round: drift slower than a round cancels
    base_times = next(iter(times.values()))
    paired = {n: statistics.median(t / b for t, b in zip(ts, base_times)) for n, ts in times.items()}
    benchmark.extra_info.update({f"{n}_paired_ratio": round(r, 3) for n, r in paired.items()})
    report.append(f"{title}, {torch.get_num_threads()} torch threads, {rounds} interleaved rounds: "
                  "median and fastest ms (ratio to the teacher), median of the rounds' own ratios")
    report.extend(f"  {n:15s} {ms:8.1f} ms ({ms / base:.2f}x)   {fast:8.1f} ms ({fast / base_min:.2f}x)"
                  f"   {paired[n]:.2f}x" for (n, ms), fast in zip(medians.items(), fastest.values()))
    return ratios


def write_noisy_pairs(root, n: int = 5, size: tuple[int, int] = (40, 48)):
    """A folder task's data: ``root/input`` and ``root/target`` with ``n`` noisy/clean PNG pairs."""
    import numpy as np
    from skimage.io import imsave

    rng = np.random.default_rng(0)
    for sub in ("input", "target"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        clean = (rng.random((*size, 3)) * 255).astype(np.uint8)
        noisy = np.clip(clean.astype(int) + rng.integers(-20, 20, clean.shape), 0, 255).astype(np.uint8)
        imsave(root / "target" / f"im{i}.png", clean, check_contrast=False)
        imsave(root / "input" / f"im{i}.png", noisy, check_contrast=False)
    return root


@pytest.fixture
def pairs_dir(tmp_path):
    return write_noisy_pairs(tmp_path / "data")


def save_png(path, img):
    """``img`` (uint8 H x W x 3) written to ``path`` as PNG, its folder made; returns the path."""
    from skimage.io import imsave

    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(str(path), img, check_contrast=False)
    return path


def noisy(img, seed: int):
    """``img`` plus uniform integer noise in [-25, 25), clipped: a degraded partner for a clean image."""
    import numpy as np

    noise = np.random.default_rng(seed).integers(-25, 25, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


@contextlib.contextmanager
def user_module(root, prefix: str, source: str):
    """A module of the user's written into ``root`` and put on sys.path (as PYTHONPATH would); yields its name and
    the imported module, and takes both away after."""
    import importlib
    import sys
    import uuid

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    (root / f"{name}.py").write_text(source)
    sys.path.insert(0, str(root))
    try:
        yield name, importlib.import_module(name)
    finally:
        sys.path.remove(str(root))
        sys.modules.pop(name, None)
