from __future__ import annotations

import os

import pytest
import torch

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
