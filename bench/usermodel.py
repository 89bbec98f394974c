"""Your own teacher or student: ``PACKAGE.MODULE:FACTORY`` and optionally a weights file.

``bench run --teacher my_models:make_teacher [--weights teacher.pt]`` builds the teacher by calling
``FACTORY()`` (``FACTORY(scale=S)`` when it takes a ``scale`` argument: S is the task's scale), which
must return a ``torch.nn.Module`` mapping (N, 3, H, W) in [0, 1] to (N, 3, S*H, S*W). The module is
imported like ``python -m`` would (the current directory is searched last), from the command line only,
never from a results file.

- Weights are read with ``torch.load(weights_only=True)``: a state dict, or a checkpoint dict holding
  one under ``state_dict``, ``params_ema``, ``params`` or ``model``. They must match the model exactly
  (strict loading); a mismatch is a one-line error naming the missing / unexpected keys and the
  mismatched shapes. With weights the teacher is used as it is; without, the suite trains it on
  ``owner`` exactly like the reference teacher (and caches it).
- Identity (cache keys, result rows): the factory path, a hash of the architecture (class, ``repr`` and
  the names, shapes and dtypes of parameters and buffers) and a SHA-256 of the weights file. A change
  to ``forward`` that none of these shows needs ``--force``.
- Scale: a probe forward in eval mode on a 32x24 input gives the model's scale (output / input size);
  it must be an integer, the same on both axes, and equal the task's scale.
- Models that need input sides divisible by m declare ``size_multiple = m`` (:mod:`bench.sizing` pads
  and crops around every call). Models with internal normalisation (batch norm, mean shift) work: the
  suite trains in train mode and serves, probes and scores in eval mode.
- Feature layers: ASVP's ``layers=middle`` and other "middle block" defaults use the model's
  ``feature_layers`` attribute (a sequence of module names, in order) where it declares one.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench import BenchError, sizing

#: checkpoint dict keys under which a state dict is looked for, in order
NESTED_KEYS = ("state_dict", "params_ema", "params", "model")
PROBE_SIZE = (24, 32)  # (H, W): rectangular, so a transposed output is caught


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _brief(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_factory(path: str, role: str = "teacher") -> Callable[..., Any]:
    """The callable named by ``PACKAGE.MODULE:FACTORY``; BenchError saying what is wrong otherwise."""
    flag = f"--{role}"
    if path.count(":") != 1 or not all(path.split(":")):
        raise BenchError(f"{flag} expects PACKAGE.MODULE:FACTORY (e.g. my_models:make_teacher), got {path!r}.")
    mod_name, attr = path.split(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # like `python -m`, but installed packages come first
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if exc.name and (mod_name == exc.name or mod_name.startswith(exc.name + ".")):
            raise BenchError(
                f"{flag}: no module named '{mod_name}'; put its folder on PYTHONPATH (or run bench from "
                "it) or pip install its package."
            ) from None
        raise BenchError(f"{flag}: importing module '{mod_name}' failed ({_one_line(exc)}).") from None
    except Exception as exc:
        raise BenchError(f"{flag}: importing module '{mod_name}' failed ({_one_line(exc)}).") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            near = difflib.get_close_matches(part, names, n=3, cutoff=0.5)
            hint = f" Near names: {', '.join(near)}." if near else ""
            raise BenchError(f"{flag}: module '{mod_name}' has no attribute '{attr}'.{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BenchError(f"{flag}: {path} is a {type(obj).__name__}, not a callable that returns the model.")
    return obj


def call_factory(factory: Callable[..., Any], path: str, role: str, scale: int) -> nn.Module:
    """``factory()`` (with ``scale=`` if it takes one), checked to be an ``nn.Module``."""
    try:
        takes_scale = "scale" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes_scale = False
    try:
        model = factory(scale=scale) if takes_scale else factory()
    except Exception as exc:
        how = f"scale={scale}" if takes_scale else "no arguments"
        raise BenchError(f"--{role}: calling {path} with {how} failed ({_one_line(exc)}).") from None
    if not isinstance(model, nn.Module):
        raise BenchError(f"--{role}: {path} returned an object of type {type(model).__name__}, not a torch.nn.Module; "
                         "the factory must return the model.")
    return model


def state_dict_of(obj: Any) -> Mapping[str, torch.Tensor] | None:
    """The state dict in a loaded checkpoint (plain or nested under :data:`NESTED_KEYS`), else None."""
    def plain(d: Any) -> bool:
        return isinstance(d, Mapping) and len(d) > 0 and all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in d.items())

    if plain(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            if plain(obj.get(key)):
                return obj[key]
    return None


def load_weights(model: nn.Module, path: str | Path, role: str = "teacher") -> None:
    """Load a weights file into ``model`` (``weights_only``, strict); one-line BenchError on mismatch."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise BenchError(f"--weights: {p} does not exist or is not a file.")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BenchError(f"--weights: cannot load {p} with torch.load(weights_only=True) ({_one_line(exc)}); "
                         "save a state dict: torch.save(model.state_dict(), PATH).") from None
    state = state_dict_of(obj)
    if state is None:
        raise BenchError(f"--weights: {p} holds a {type(obj).__name__} that is not a state dict; "
                         "save one with torch.save(model.state_dict(), PATH).")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} in file vs {tuple(v.shape)} in model"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_brief(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_brief(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch: {_brief(shapes, 2)}")
        raise BenchError(f"--weights: {p.name} does not match the --{role} model ({'; '.join(parts)}).")
    model.load_state_dict(state)


def architecture_hash(model: nn.Module) -> str:
    """A hash of what the model is: class, ``repr`` and parameter/buffer names, shapes and dtypes."""
    h = hashlib.sha256()
    cls = type(model)
    h.update(f"{cls.__module__}.{cls.__qualname__}\x1e{model!r}\x1e".encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\x1e".encode())
    h.update(f"size_multiple={sizing.size_multiple(model)}".encode())
    return h.hexdigest()[:16]


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@torch.no_grad()
def probe_scale(model: nn.Module, role: str = "teacher") -> int:
    """The model's scale (output side / input side), from one forward in eval mode on a small input."""
    hin, win = PROBE_SIZE
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.rand(1, 3, hin, win, generator=torch.Generator().manual_seed(0), device="cpu").to(device)
    was_training = model.training
    model.eval()
    try:
        y = model(x)
    except BenchError:
        raise
    except Exception as exc:
        raise BenchError(
            f"the --{role} model fails on a 1x3x{hin}x{win} input ({_one_line(exc)}); if it needs input sides "
            "divisible by m, give it the attribute size_multiple = m."
        ) from None
    finally:
        model.train(was_training)
    if not torch.is_tensor(y) or y.dim() != 4 or y.shape[:2] != (1, 3):
        got = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise BenchError(f"the --{role} model answers a (1, 3, {hin}, {win}) input with {got}; a restoration "
                         "model must return one (N, 3, scale*H, scale*W) tensor.")
    hout, wout = y.shape[-2:]
    if hout % hin or wout % win or hout // hin != wout // win or hout < hin:
        raise BenchError(f"the --{role} model answers a {win}x{hin} input with {wout}x{hout}, not an integer "
                         "scale (>= 1) of it; a restoration model must return (N, 3, scale*H, scale*W).")
    return hout // hin


class UserModel:
    """A model from ``PACKAGE.MODULE:FACTORY`` (optionally with a weights file) for a task of ``scale``.

    :meth:`resolve` checks everything once (import, type, weights, scale) before any training;
    :meth:`build` then makes fresh instances (with the weights, if any, and padding hooks installed).
    """

    def __init__(self, role: str, factory: str, weights: str | None = None, *, scale: int = 1) -> None:
        self.role = role
        self.path = factory
        self.weights = str(Path(weights).expanduser().resolve()) if weights else None
        self.scale = int(scale)
        self._factory: Callable[..., Any] | None = load_factory(factory, role)
        self._identity: dict[str, Any] | None = None

    @classmethod
    def resolve(cls, role: str, factory: str, weights: str | None = None, *, scale: int = 1,
                task_name: str = "the task") -> UserModel:
        """A checked user model: factory imports and returns a module, weights match, scale agrees."""
        um = cls(role, factory, weights, scale=scale)
        model = um.build()
        got = probe_scale(model, role)
        if got != um.scale:
            w, h = PROBE_SIZE[1], PROBE_SIZE[0]
            raise BenchError(
                f"the --{role} model {factory} has scale {got} (a {w}x{h} input gives {w * got}x{h * got}) but "
                f"{task_name} has scale {um.scale}; use a model or task of the same scale (e.g. --set "
                "task.scale=...)."
            )
        um._identity = {"factory": factory, "arch": architecture_hash(model),
                        "weights": file_hash(um.weights) if um.weights else None}
        return um

    def __getstate__(self) -> dict[str, Any]:
        # crosses process boundaries as its path: the worker imports the factory itself
        return {**self.__dict__, "_factory": None}

    def build(self, *, weights: bool = True) -> nn.Module:
        """A fresh instance (eval mode), with the weights file loaded unless ``weights=False``."""
        if self._factory is None:
            self._factory = load_factory(self.path, self.role)
        model = call_factory(self._factory, self.path, self.role, self.scale)
        if weights and self.weights:
            load_weights(model, self.weights, self.role)
        sizing.install(model, permanent=True)
        model.eval()
        return model

    def identity(self) -> dict[str, Any]:
        """Factory path, architecture hash and weights hash (for cache keys and result rows)."""
        if self._identity is None:
            model = self.build(weights=False)
            self._identity = {"factory": self.path, "arch": architecture_hash(model),
                              "weights": file_hash(self.weights) if self.weights else None}
        return self._identity
