from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from bench import BenchError
from bench.params import as_dict, build, param, parse_sets


@dataclass(frozen=True)
class P:
    h: float = param(1.5, "amplification")
    k: int = param(4, "rank")
    mode: Literal["inline", "exposed"] = param("inline", "where")
    layers: tuple[str, ...] = param(("middle",), "layers")
    on: bool = param(True, "switch")

    def __post_init__(self):
        if self.h < 1:
            raise ValueError("h must be >= 1")


def test_build_converts_strings_to_declared_types():
    p = build(P, {"h": "2.5", "k": "3", "mode": "exposed", "layers": "body.0,body.1", "on": "false"},
              owner="defense 'x'")
    assert p == P(h=2.5, k=3, mode="exposed", layers=("body.0", "body.1"), on=False)
    assert as_dict(p)["layers"] == ["body.0", "body.1"]


@pytest.mark.parametrize("overrides, words", [
    ({"hh": "1"}, ["no parameter 'hh'", "Did you mean 'h'", "Valid parameters: h, k, mode, layers, on"]),
    ({"k": "1.5"}, ["'k' must be int", "'1.5'"]),
    ({"mode": "both"}, ["'mode' must be", "inline|exposed"]),
    ({"on": "maybe"}, ["'on' must be bool"]),
    ({"h": "0.5"}, ["h must be >= 1"]),
])
def test_bad_parameters_are_one_line_errors_naming_valid_values(overrides, words):
    with pytest.raises(BenchError) as err:
        build(P, overrides, owner="defense 'x'")
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_parse_sets_groups_and_rejects_malformed():
    assert parse_sets(["defense.h=1.5", "attack.steps=200", "defense.k=2"]) == {
        "defense": {"h": "1.5", "k": "2"}, "attack": {"steps": "200"}}
    for bad in ["h=1.5", "defense.h", "weird.h=1"]:
        with pytest.raises(BenchError):
            parse_sets([bad])
