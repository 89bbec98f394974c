from __future__ import annotations

import pytest

from bench import BenchError
from bench.api import Defense
from bench.registry import ATTACKS, DEFENSES, TASKS


def test_builtins_come_through_entry_points():
    assert {"none", "asvp"} <= set(DEFENSES.names())
    assert {"sr", "lowlight", "underwater", "dehaze", "derain", "folder"} <= set(TASKS.names())
    assert "vanilla_kd" in ATTACKS.names()
    info = DEFENSES.info("asvp")
    assert info.origin == "antidistill-bench"
    assert info.cls.name == "asvp"


def test_unknown_name_lists_known_names_and_closest_match():
    with pytest.raises(BenchError) as err:
        DEFENSES.get("asvq")
    msg = str(err.value)
    assert "unknown defense 'asvq'" in msg and "Did you mean 'asvp'" in msg and "none" in msg


def test_decorator_registers_a_plugin_defined_anywhere():
    @DEFENSES.register("test_identity")
    class Identity(Defense):
        pass

    try:
        assert DEFENSES.get("test_identity") is Identity
        assert Identity.name == "test_identity"
    finally:
        DEFENSES.unregister("test_identity")
