"""Plugin registries: a decorator for built-ins, entry points for everything, loaded lazily.

Built-in plugins are declared in this distribution's own entry-point groups (``bench.tasks``,
``bench.defenses``, ``bench.attacks``), exactly as a third-party package declares its own, so the core
never imports a plugin module by name. ``@DEFENSES.register("name")`` registers a class directly (for
plugins defined in a notebook or test) and names the class.
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

    def register(self, name: str, *, origin: str = "registered") -> Callable[[type], type]:
        def decorate(cls: type) -> type:
            cls.name = name
            self._plugins[name] = PluginInfo(name, cls, origin)
            return cls

        return decorate

    def unregister(self, name: str) -> None:
        self._plugins.pop(name, None)

    def _eps(self) -> dict[str, metadata.EntryPoint]:
        if self._entry_points is None:
            self._entry_points = {ep.name: ep for ep in metadata.entry_points(group=self.group)}
        return self._entry_points

    def names(self) -> list[str]:
        return sorted(set(self._plugins) | set(self._eps()))

    def _load(self, name: str) -> PluginInfo:
        ep = self._eps()[name]
        try:
            cls = ep.load()
        except Exception as exc:  # a broken third-party plugin must not take the suite down silently
            raise BenchError(
                f"{self.kind} '{name}' from package {_dist_name(ep)} failed to import "
                f"({type(exc).__name__}: {exc}); fix or uninstall that package."
            ) from exc
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


TASKS = Registry("task", "bench.tasks")
DEFENSES = Registry("defense", "bench.defenses")
ATTACKS = Registry("attack", "bench.attacks")

REGISTRIES = {"tasks": TASKS, "defenses": DEFENSES, "attacks": ATTACKS}
