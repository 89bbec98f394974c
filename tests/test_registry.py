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


def test_register_refuses_a_name_taken_unless_it_is_the_same_class():
    class One(Defense):
        pass

    class Two(Defense):
        pass

    DEFENSES.register("test_dup")(One)
    try:
        DEFENSES.register("test_dup")(One)  # the same class again (a module reload): fine
        with pytest.raises(BenchError, match="'test_dup' is already registered"):
            DEFENSES.register("test_dup")(Two)
        assert DEFENSES.get("test_dup") is One
    finally:
        DEFENSES.unregister("test_dup")
    with pytest.raises(BenchError, match="defense 'asvp' is already"):
        DEFENSES.register("asvp")(Two)  # an installed plugin's name


def test_register_checks_params_as_entry_points_do():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class NeedsValue:
        x: int

    class Bad(Defense):
        Params = NeedsValue

    with pytest.raises(BenchError, match="parameter 'x' has no default"):
        DEFENSES.register("test_bad_params")(Bad)
    assert "test_bad_params" not in DEFENSES.names()


def test_a_plugin_missing_an_abstract_method_is_refused_when_it_loads(tmp_path, monkeypatch):
    from importlib import metadata

    from bench.api import Attack

    class NoSteal(Attack):
        pass

    with pytest.raises(BenchError, match="does not implement steal"):
        ATTACKS.register("test_no_steal")(NoSteal)
    assert "test_no_steal" not in ATTACKS.names()

    # the entry-point path: a package's attack without steal is one line naming it, at load
    (tmp_path / "nosteal_plugin.py").write_text("from bench.api import Attack\n\nclass NoSteal(Attack):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = metadata.EntryPoint("test_ep_no_steal", "nosteal_plugin:NoSteal", "bench.attacks")
    monkeypatch.setattr(ATTACKS, "_entry_points", {**ATTACKS._eps(), "test_ep_no_steal": ep})
    with pytest.raises(BenchError) as err:
        ATTACKS.get("test_ep_no_steal")
    msg = str(err.value)
    assert "attack 'test_ep_no_steal'" in msg and "does not implement steal" in msg and "\n" not in msg


def test_every_builtin_plugin_loads():
    for registry in (TASKS, DEFENSES, ATTACKS):
        for name in registry.names():
            registry.get(name)
