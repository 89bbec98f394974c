"""The README's example: a defense in its own package, installed with pip, found and run by `bench`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "bench-blur-defense"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(EXAMPLE)],
        check=True, capture_output=True, text=True,
    )
    env = dict(os.environ, PYTHONPATH=str(target), BENCH_PROGRESS="0")
    return env


def _bench(env, *args, home):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args, "--home", str(home)] if args[0] == "run"
                          else [sys.executable, "-m", "bench.cli", *args],
                          env=env, capture_output=True, text=True, timeout=300)


def test_external_defense_is_listed_with_origin_and_params(installed, tmp_path):
    out = _bench(installed, "list", "defenses", home=tmp_path)
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.strip().startswith("blur"))
    assert "bench-blur-defense" in line and "strength: sigma" in line
    assert "sigma" in out.stdout and "standard deviation" in out.stdout


def test_external_defense_runs_a_cell(installed, tmp_path):
    out = _bench(installed, "run", "--task", "derain", "--defense", "blur", "--profile", "smoke",
                 "--set", "defense.sigma=1.5", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "derain · blur · vanilla_kd" in out.stdout
    assert "student_drop_db" in out.stdout
    bad = _bench(installed, "run", "--task", "derain", "--defense", "blur", "--profile", "smoke",
                 "--set", "defense.sigmaa=1", home=tmp_path)
    assert bad.returncode == 2 and "Did you mean 'sigma'" in bad.stderr and "Traceback" not in bad.stderr
