"""Plugin registries: a decorator for built-ins, entry points for everything, loaded lazily.

Built-in plugins are declared in this distribution's own entry-point groups (``bench.tasks``,
``bench.defenses``, ``bench.attacks``), exactly as a third-party package declares its own, so the core
never imports a plugin module by name. ``@DEFENSES.register("name")`` registers a class directly (for
plugins defined in a notebook or test) and names the class. Both paths check a plugin the same way when
it arrives (:func:`_check_plugin`: parameters with defaults, every abstract method implemented), and
``register`` refuses a name already taken, as an entry-point clash is refused (the same class registered
again, e.g. on a module reload, is not a clash).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from bench import BenchError


@dataclass(frozen=True)
class PluginInfo:
    name: str
    cls: type
    origin: str  # distribution that provides it ("antidistill-bench" for built-ins), or "registered"


def _check_params(kind: str, name: str, dist: str, cls: type) -> None:
    """A plugin's parameters must all have defaults (a grid or a bare name must be able to build it):
    refused when it loads, naming the field, not at run time as a constructor error."""
    import dataclasses

    params = getattr(cls, "Params", None)
    if params is None or not dataclasses.is_dataclass(params):
        raise BenchError(f"{kind} '{name}' from package {dist}: its Params must be a dataclass (bench.params.param "
                         "fields); see the README's plugin example.")
    for f in dataclasses.fields(params):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise BenchError(f"{kind} '{name}' from package {dist}: parameter '{f.name}' has no default; give every "
                             "Params field a default (bench.params.param(DEFAULT, 'doc')).")


def _check_methods(kind: str, name: str, dist: str, cls: type) -> None:
    """A plugin must implement every abstract method of its interface (``Attack.steal``, ``Task.degrade``):
    refused when it loads, not after a teacher trained for it."""
    missing = sorted(getattr(cls, "__abstractmethods__", ()) or ())
    if missing:
        what = ", ".join(missing)
        raise BenchError(f"{kind} '{name}' from package {dist}: {cls.__qualname__} does not implement {what} "
                         f"(abstract in bench.api); define {what} on the class.")


def _check_plugin(kind: str, name: str, dist: str, cls: type) -> None:
    _check_params(kind, name, dist, cls)
    _check_methods(kind, name, dist, cls)


def _same_class(a: type, b: type) -> bool:
    """The same class, or the same class defined again (its module reloaded, a notebook cell re-run)."""
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _dist_name(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "unknown"


class Registry:
    """Name -> plugin class for one kind of plugin."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._plugins: dict[str, PluginInfo] = {}
        self._entry_points: dict[str, metadata.EntryPoint] | None = None
        self._clashes: dict[str, list[metadata.EntryPoint]] = {}

    def register(self, name: str, *, origin: str = "registered") -> Callable[[type], type]:
        """A class decorator registering a plugin under ``name`` in this process. A name already taken (by
        another registered class or an installed plugin) is refused; unregister it first to replace it."""
        def decorate(cls: type) -> type:
            taken = self._plugins.get(name)
            if taken is not None and not _same_class(taken.cls, cls):
                raise BenchError(f"{self.kind} '{name}' is already registered ({taken.cls.__module__}."
                                 f"{taken.cls.__qualname__}, from {taken.origin}); pick another name, or "
                                 f"{self.kind.upper()}S.unregister('{name}') first.")
            if taken is None and name in self._eps():
                ep = self._eps()[name]
                raise BenchError(f"{self.kind} '{name}' is already provided by package {_dist_name(ep)} "
                                 f"({ep.value}); pick another name for {cls.__qualname__}.")
            _check_plugin(self.kind, name, cls.__module__ if origin == "registered" else origin, cls)
            cls.name = name
            self._plugins[name] = PluginInfo(name, cls, origin)
            return cls

        return decorate

    def unregister(self, name: str) -> None:
        self._plugins.pop(name, None)

    def _eps(self) -> dict[str, metadata.EntryPoint]:
        if self._entry_points is None:
            found: dict[str, list[metadata.EntryPoint]] = {}
            for ep in metadata.entry_points(group=self.group):
                same = found.setdefault(ep.name, [])
                if all((e.value, _dist_name(e)) != (ep.value, _dist_name(ep)) for e in same):
                    same.append(ep)  # one package seen twice on the path is one plugin
            self._clashes = {n: eps for n, eps in found.items() if len(eps) > 1}
            self._entry_points = {n: eps[0] for n, eps in found.items()}
        return self._entry_points

    def names(self) -> list[str]:
        return sorted(set(self._plugins) | set(self._eps()))

    def _load(self, name: str) -> PluginInfo:
        ep = self._eps()[name]
        clash = self._clashes.get(name)
        if clash:  # never pick one of two silently: results would depend on the install order
            who = " and ".join(f"{_dist_name(e)} ({e.value})" for e in clash)
            raise BenchError(f"{self.kind} '{name}' is provided by two packages: {who}; uninstall one, or rename "
                             "the entry point of yours.")
        try:
            cls = ep.load()
        except Exception as exc:  # a broken third-party plugin must not take the suite down silently
            raise BenchError(
                f"{self.kind} '{name}' from package {_dist_name(ep)} failed to import "
                f"({type(exc).__name__}: {exc}); fix or uninstall that package."
            ) from exc
        _check_plugin(self.kind, name, _dist_name(ep), cls)
        cls.name = name
        info = PluginInfo(name, cls, _dist_name(ep))
        self._plugins[name] = info
        return info

    def info(self, name: str) -> PluginInfo:
        if name in self._plugins:
            return self._plugins[name]
        if name in self._eps():
            return self._load(name)
        known = self.names()
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise BenchError(
            f"unknown {self.kind} '{name}'.{hint} Known {self.kind}s: {', '.join(known) or '(none)'}."
        )

    def get(self, name: str) -> Any:
        return self.info(name).cls

    def all(self) -> list[PluginInfo]:
        return [self.info(n) for n in self.names()]

    def survey(self) -> list[PluginInfo | tuple[str, str]]:
        """Every plugin, in name order: its info, or (name, why it is broken) for one that cannot load,
        so that one broken package never hides the others."""
        out: list[PluginInfo | tuple[str, str]] = []
        for n in self.names():
            try:
                out.append(self.info(n))
            except BenchError as exc:
                out.append((n, str(exc)))
        return out


TASKS = Registry("task", "bench.tasks")
DEFENSES = Registry("defense", "bench.defenses")
ATTACKS = Registry("attack", "bench.attacks")

REGISTRIES = {"tasks": TASKS, "defenses": DEFENSES, "attacks": ATTACKS}
