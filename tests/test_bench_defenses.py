"""Per-query cost of every runtime defense against the undefended teacher (pytest-benchmark).

Skipped by normal runs (``--benchmark-skip`` in pyproject's addopts). Run with::

    .venv/bin/python -m pytest tests/test_bench_defenses.py --benchmark-only

One attacker request of the quick profile (16 queries of 64x64, ``profile.query_batch`` x
``profile.query_size``) through the quick teacher, RestorationCNN(32, 4), with torch's default thread
count. Every defense runs once per round, interleaved, so that drift in the machine's speed hits all
alike; the per-defense medians and their ratios to the teacher are printed at the end of the run and
stored in the benchmark's ``extra_info``. MAD's surrogate is the quick student, RestorationCNN(16, 2)
(untrained: its cost does not depend on its weights). The nasty teacher is left out: it serves a
changed teacher of the same architecture, at the teacher's cost. ``DEFENSE_BENCH_ROUNDS`` sets the rounds.
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
    "output_noise": ("output_noise", {}),
    "mad": ("mad", {}),
    "asvp-channel": ("asvp", {}),
    "asvp-spatial": ("asvp", {"layout": "spatial"}),
}
ROUNDS = int(os.environ.get("DEFENSE_BENCH_ROUNDS", "10"))


@pytest.fixture(scope="module", autouse=True)
def _default_threads(bench_report):
    """Every benchmark of this module runs at torch's default thread count."""


@pytest.mark.benchmark(group="defenses-request")
def test_paired_rounds(benchmark, paired_rounds):
    torch.manual_seed(0)
    model = RestorationCNN(32, 4).eval()
    x = torch.rand(16, 3, 64, 64)
    fns, wrappers = {}, []
    for name, spec in VARIANTS.items():
        if spec is None:
            fns[name] = model
            continue
        cls = DEFENSES.get(spec[0])
        defense = cls(bench.params.build(cls.Params, spec[1], owner=f"defense '{spec[0]}'"), seed=0)
        if spec[0] == "mad":
            defense.surrogate = RestorationCNN(16, 2).eval().requires_grad_(False)
        wrappers.append(defense.serve(model))
        fns[name] = wrappers[-1]
    try:
        paired_rounds(benchmark, fns, x, ROUNDS, "one request of 16 x 3x64x64 queries, RestorationCNN(32, 4)")
    finally:
        for w in wrappers:
            w.close()
