"""The data parameters every task takes (``--data DIR`` and friends), and attaching the data they name to a task."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench import BenchError
from bench.layouts.known import LAYOUTS
from bench.layouts.source import DataSource
from bench.params import build, describe, param

if TYPE_CHECKING:
    from bench.api import Task


@dataclass(frozen=True)
class DataParams:
    """The data parameters every task takes (``--data``, ``--layout``, ... or ``--set task.KEY=VALUE``)."""

    data: str = param("", "dataset folder in a standard layout (bench list layouts), read instead of the bundled "
                          "photographs")
    layout: str = param("", "layout of --data (bench list layouts); empty: recognised from the tree")
    input: str = param("", "folder of degraded images paired by file name with --target (the general form)")
    target: str = param("", "folder of clean images paired by file name with --input")
    split_file: str = param("", "text file of NAME POOL lines (POOL: train, test, owner, attacker, calib) "
                                "choosing pools")
    scene_pattern: str = param("", "regular expression on a pair's name: its group 'scene' (or first group, or "
                                   "match) names the scene kept in one pool")
    test_set: str = param("", "the test set to score on where the tree holds several (e.g. Set14, SOTS/outdoor)")
    max_megapixels: float = param(16.0, "largest clean image accepted, in megapixels (every image is scored "
                                        "whole: a model's features of a 36 MP image take gigabytes)")
    allow_leakage: bool = param(False, "score even where a test image is also (a copy of, or near-identical "
                                       "to) an owner, attacker or calib image; else that is an error")

    def __post_init__(self) -> None:
        if not 0 < self.max_megapixels <= 1000:
            raise ValueError(f"parameter 'max_megapixels' must lie in (0, 1000], got {self.max_megapixels}")
        if self.layout and self.layout not in LAYOUTS:
            raise ValueError(f"parameter 'layout' must be one of {', '.join(LAYOUTS)} (or empty: recognised from "
                             f"the tree), got {self.layout!r}")
        if self.scene_pattern:
            try:
                re.compile(self.scene_pattern)
            except re.error as exc:
                raise ValueError(f"parameter 'scene_pattern' is not a regular expression ({exc})") from None


DATA_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DataParams))
#: the fields that name data (any of them turns the bundled photographs off)
_SOURCES = ("data", "input", "target")


def task_fields(cls: type) -> set[str]:
    """Every parameter name a task class accepts: its own and the data parameters."""
    return {f.name for f in describe(cls.Params)} | set(DATA_FIELDS)


def split_overrides(cls: type, overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``overrides`` -> (the task's own, the data parameters): a key the task declares itself stays its own."""
    own_names = {f.name for f in describe(cls.Params)}
    data = {k: v for k, v in overrides.items() if k in DATA_FIELDS and k not in own_names}
    return {k: v for k, v in overrides.items() if k not in data}, data


def attach_data(task: Task, overrides: dict[str, Any]) -> None:
    """Give ``task`` the data that ``overrides`` (data parameters) name; none: it keeps its bundled photos."""
    from bench.api import Task

    params = build(DataParams, overrides, owner=f"task '{task.name}'")
    if not any(getattr(params, k) for k in _SOURCES):
        given = sorted(k for k in overrides if k not in ("max_megapixels", "allow_leakage"))
        if given:
            raise BenchError(f"task '{task.name}': {given[0]} applies to data read from disk; give the data too "
                             "(--data DIR, or --input DIR --target DIR).")
        return  # the bundled photographs (a task that reads pairs only says so when asked for them)
    if type(task).splits is not Task.splits:
        raise BenchError(f"task '{task.name}' builds its own pools (its class overrides splits()), so it cannot read "
                         "--data; drop --data or use a built-in task.")
    task.source = DataSource(params, task)


def describe_data_params() -> list[str]:
    """The data parameters, for ``bench list tasks``."""
    from tabulate import tabulate

    from bench.params import type_name

    rows = [(f.name, type_name(f.type), repr(f.default), f.doc) for f in describe(DataParams)]
    return ["  data parameters of every task (--data DIR and friends; bench list layouts):",
            *("      " + line for line in tabulate(rows, tablefmt="plain").splitlines())]
