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
