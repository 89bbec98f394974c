"""bench.allocator: freed activations stay in the process, so repeated forwards stop page-faulting."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from bench.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "apply" else False
from bench.models import RestorationCNN
torch.manual_seed(0)
model, x = RestorationCNN(32, 4).eval(), torch.rand(1, 3, 256, 256)  # 8 MB activations
with torch.no_grad():
    for _ in range(2):
        model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        model(x)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(script: str, env: dict[str, str], *args: str) -> list[str]:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True,
                          env={**env, "OMP_NUM_THREADS": "1"}).stdout.split()


def _faults(env: dict[str, str], mode: str) -> tuple[bool, int]:
    out = _run(SCRIPT, env, mode)
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_activations_are_reused_without_page_faults(allocator_env):
    applied, faults = _faults(allocator_env(), "apply")
    assert applied
    _, system_faults = _faults(allocator_env(), "system")
    # glibc's defaults hand most 8 MB activations back to the kernel and fault them in again on the next
    # call (~2048 faults each; about 30,000 a forward measured); kept in the heap: almost none
    assert system_faults > 5 * 2048
    assert faults < system_faults / 10


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_user_allocator_settings_are_respected(allocator_env):
    assert _faults(allocator_env(BENCH_MALLOC="system"), "apply")[0] is False
    assert _faults(allocator_env(MALLOC_TRIM_THRESHOLD_="131072"), "apply")[0] is False


TRIM_SCRIPT = """
import torch
from bench.allocator import keep_freed_memory, release_freed_memory
assert keep_freed_memory()
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
blocks = [torch.ones(2**20) for _ in range(100)]  # 100 blocks of 4 MB, kept in the heap when freed
del blocks
held = rss_mb()
release_freed_memory()
print(held, rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_hands_freed_memory_back(allocator_env):
    held, released = map(float, _run(TRIM_SCRIPT, allocator_env()))
    assert held - released > 300  # the 400 MB freed but held, then returned
