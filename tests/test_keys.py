"""Key stability: the keys of a smoke grid's teachers, defense fits, calibrations, reference and
ground-truth students and cells equal those committed in ``tests/fixtures/keys-smoke.json``. Every store and
committed report is indexed by these keys: a refactor that moves key building must leave them byte-identical,
and a change that means to re-key says so by regenerating the fixture (``python tests/test_keys.py > FILE``).
History: computed from commit 4c736c5's code; unchanged by the identity work and the stage split (82755d8);
regenerated when ASVP's spatial defaults changed (power_iters 6 -> 3, oversample 8 -> 16: its parameters are in
its identity, so every asvp cell, both layouts, and the fits downstream of asvp cells were re-keyed; its code
digest changed anyway, so those cells were recomputed in any store)."""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from bench.grid import make_grid
from bench.params import parse_sets
from bench.scheduler import plan
from bench.store import Store

FIXTURE = Path(__file__).parent / "fixtures" / "keys-smoke.json"


def grid_specs():
    """Two tasks (one SR), every built-in defense (two that train), three attacks (one with an attack asset),
    2 x 2 seeds, plus calibrated cells and an adaptive attack parameter; one thread, CPU."""
    specs = make_grid(tasks="derain,sr", defenses="none,noise_floor,asvp,mad,nasty_teacher,output_noise",
                      attacks="vanilla_kd,feature_kd,finetune", seeds="0-1", teacher_seeds="0-1",
                      profile="smoke").specs()
    specs += make_grid(tasks="derain", defenses="asvp,output_noise", attacks="vanilla_kd", seeds="0",
                       budgets="0.1,0.5", profile="smoke", sets=parse_sets(["attack.tta_average=true"])).specs()
    return [dataclasses.replace(s, threads=1, device="cpu") for s in specs]


def planned_keys() -> dict[str, list[str]]:
    with tempfile.TemporaryDirectory() as home:
        p = plan(grid_specs(), Store(home))
    out = {stage: sorted(j.key for j in jobs) for stage, jobs in p.jobs.items()}
    out["cell keys"] = sorted(p.cells)
    return out


def test_keys_are_those_committed():
    expected = json.loads(FIXTURE.read_text())
    got = planned_keys()
    for stage in expected:
        assert got[stage] == expected[stage], f"the keys of the {stage} changed"


if __name__ == "__main__":
    json.dump(planned_keys(), sys.stdout, indent=1, sort_keys=True)
