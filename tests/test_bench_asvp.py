"""Speed of ASVP's served forward against the undefended teacher (pytest-benchmark).

Skipped by normal runs (``--benchmark-skip`` in pyproject's addopts). Run with::

    .venv/bin/python -m pytest tests/test_bench_asvp.py --benchmark-only

One 1x3x256x256 image through RestorationCNN(32, 4) (ASVP's default layers: body.1 and body.2), with
torch's default thread count (tests/conftest.py pins one thread; this module restores the default for
its duration) and the ``bench`` command's allocator settings (bench/allocator.py; with glibc's defaults
every variant pays page faults that depend on its allocation pattern, which blurs the ratios). The
target (DESIGN section 5, "speed matters"): ASVP at defaults costs at most 1.25x the undefended
teacher's forward.

``test_served_forward[...]`` times each variant on its own (pytest-benchmark's table).
``test_paired_rounds`` runs every variant once per round, interleaved, so that drift in the machine's
speed (other processes, frequency) hits all variants alike; its per-variant medians give the ratios
printed at the end of the run and stored in its ``extra_info``. ``ASVP_BENCH_ROUNDS`` sets the rounds.
"""

from __future__ import annotations

import os

import pytest
import torch

import bench.params
from bench.models import RestorationCNN
from bench.registry import DEFENSES

VARIANTS = {
    "teacher": None,
    "asvp-channel": {},
    "asvp-spatial": {"layout": "spatial"},
    "asvp-spatial-1iter": {"layout": "spatial", "power_iters": 1},  # the faster approximation (8-14 % off)
    "asvp-reference": {"use_reference": True},
}
ROUNDS = int(os.environ.get("ASVP_BENCH_ROUNDS", "15"))


@pytest.fixture(scope="module", autouse=True)
def _default_threads(bench_report):
    """Every benchmark of this module runs at torch's default thread count."""


@pytest.fixture(scope="module")
def served():
    """Name -> callable on the 1x3x256x256 input, all sharing one teacher."""
    torch.manual_seed(0)
    model = RestorationCNN(32, 4).eval()
    x = torch.rand(1, 3, 256, 256)
    cls = DEFENSES.get("asvp")
    fns, wrappers = {}, []
    for name, overrides in VARIANTS.items():
        if overrides is None:
            fns[name] = model
        else:
            defense = cls(bench.params.build(cls.Params, overrides, owner="defense 'asvp'"), seed=0)
            wrappers.append(defense.serve(model))
            fns[name] = wrappers[-1]
    yield fns, x
    for w in wrappers:
        w.close()


@pytest.mark.benchmark(group="asvp-256")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_served_forward(benchmark, served, variant):
    fns, x = served
    with torch.no_grad():
        benchmark.pedantic(fns[variant], args=(x,), rounds=ROUNDS, iterations=1, warmup_rounds=2)


@pytest.mark.benchmark(group="asvp-256-paired")
def test_paired_rounds(benchmark, served, paired_rounds):
    fns, x = served
    paired_rounds(benchmark, fns, x, ROUNDS, "ASVP served forward, 1x3x256x256, RestorationCNN(32, 4)")
