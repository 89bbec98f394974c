"""Plugin parameters: dataclasses with defaults, types and a one-line doc per field.

Every plugin (task, defense, attack) declares ``Params``, a dataclass whose fields are made with
:func:`param`. Values coming from the command line (``--set defense.h=1.5``) or from grid files are
validated against it: an unknown key or a value of the wrong type is a :class:`bench.BenchError` that
names the valid keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from bench import BenchError


def param(default: Any, doc: str, *, choices: tuple | None = None) -> Any:
    """A dataclass field with a default, a one-line doc and optionally a closed set of choices."""
    meta = {"doc": doc}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed; use a tuple")
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class NoParams:
    """A plugin without parameters."""


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    name: str
    type: Any
    default: Any
    doc: str
    choices: tuple | None


def describe(params_cls: type) -> list[FieldInfo]:
    """The fields of a params dataclass, with resolved types, for ``bench list`` and validation."""
    hints = typing.get_type_hints(params_cls)
    out = []
    for f in dataclasses.fields(params_cls):
        choices = f.metadata.get("choices")
        tp = hints[f.name]
        if choices is None and get_origin(tp) is Literal:
            choices = get_args(tp)
        out.append(FieldInfo(f.name, tp, f.default, f.metadata.get("doc", ""), choices))
    return out


def type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"list of {type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any) -> Any:
    """Convert ``value`` (a string from the CLI or a YAML scalar) to ``tp``; ValueError if impossible."""
    origin = get_origin(tp)
    if origin is Literal:
        for choice in get_args(tp):
            if str(choice) == str(value):
                return choice
        raise ValueError
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _convert(value, arg)
            except (ValueError, TypeError):
                continue
        raise ValueError
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        raise ValueError
    if origin is tuple:
        item_tp = get_args(tp)[0]
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]
        return tuple(_convert(v, item_tp) for v in items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError
    if tp is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value) if not isinstance(value, str) else int(value.strip())
    if tp is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError
        return value
    raise TypeError(f"unsupported parameter type {tp!r}")


#: the largest magnitude a number parameter may take: beyond it a float loses meaning (h = 1e19 is an
#: identity in float32 arithmetic) or an int overflows the tensors it sizes
MAX_MAGNITUDE = 1e12


def _check_magnitude(owner: str, key: str, value: Any) -> None:
    for v in value if isinstance(value, tuple) else (value,):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if v != v or abs(v) > MAX_MAGNITUDE:  # NaN, inf, or absurdly large
            raise BenchError(f"{owner} parameter '{key}' must be a finite number of magnitude at most "
                             f"{MAX_MAGNITUDE:g}, got {v!r}.")


def build(params_cls: type, overrides: dict[str, Any] | None, *, owner: str) -> Any:
    """An instance of ``params_cls`` with ``overrides`` applied and validated.

    ``owner`` names the plugin in messages (``defense 'asvp'``).
    """
    overrides = dict(overrides or {})
    fields = {f.name: f for f in describe(params_cls)}
    values: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in fields:
            valid = ", ".join(fields) or "(none: it takes no parameters)"
            near = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise BenchError(f"{owner} has no parameter '{key}'.{hint} Valid parameters: {valid}.")
        info = fields[key]
        try:
            value = _convert(raw, info.type)
        except (ValueError, TypeError):
            raise BenchError(
                f"{owner} parameter '{key}' must be {type_name(info.type)}, got {raw!r}."
            ) from None
        _check_magnitude(owner, key, value)
        if info.choices is not None:
            items = value if isinstance(value, tuple) and get_origin(info.type) is tuple else (value,)
            bad = [v for v in items if v not in info.choices]
            if bad:
                options = ", ".join(str(c) for c in info.choices)
                raise BenchError(f"{owner} parameter '{key}' must be one of {options}, got {bad[0]!r}.")
        values[key] = value
    try:
        instance = params_cls(**values)
    except (ValueError, TypeError) as exc:  # __post_init__ range checks raise ValueError
        raise BenchError(f"{owner}: {exc}") from None
    return instance


def format_value(v: Any) -> str:
    """A parameter value as a reader writes it: 1.5, 2 (also for "2.0" given on the command line), middle,
    [a,b], true."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        try:
            number = float(v)
        except ValueError:
            return v
        return f"{number:g}" if number == number and abs(number) != float("inf") else v
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return v[0] if len(v) == 1 and isinstance(v[0], str) else "[" + ",".join(format_value(x) for x in v) + "]"
    return str(v)


def label(name: str, items: Any) -> str:
    """``asvp (h=2, layout=spatial)``: a plugin with the parameters that tell it apart, the one form used by
    sweeps, summaries and reports."""
    parts = [f"{k}={format_value(v)}" for k, v in items]
    return f"{name} ({', '.join(parts)})" if parts else name


def as_dict(params: Any) -> dict[str, Any]:
    """Plain JSON-able dict of a params instance (tuples become lists), for configs and hashes."""
    out = {}
    for f in dataclasses.fields(params):
        v = getattr(params, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def parse_sets(items: list[str] | None) -> dict[str, dict[str, str]]:
    """``["defense.h=1.5", "attack.steps=200"]`` -> ``{"defense": {"h": "1.5"}, "attack": {...}}``."""
    groups: dict[str, dict[str, str]] = {}
    for item in items or ():
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise BenchError(
                f"--set expects GROUP.KEY=VALUE (group: task, defense, attack or profile), got {item!r}."
            )
        lhs, value = item.split("=", 1)
        group, key = lhs.split(".", 1)
        group, key = group.strip(), key.strip()
        if group not in ("task", "defense", "attack", "profile"):
            raise BenchError(
                f"--set group must be task, defense, attack or profile, got {group!r} in {item!r}."
            )
        groups.setdefault(group, {})[key] = value.strip()
    return groups
