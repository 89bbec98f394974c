"""Protect your own model: put any defense of the suite in front of it, in your own serving code.

    from bench.protect import protect

    with protect(model, "asvp", h=1.5, layers=("body.3",)) as served:
        answer = served(x)                                   # the defended answer, same call as model(x)
        answer, feats = served.forward_with_features(x)      # plus the exposed features by layer name

or in two steps, ``defense = make_defense("asvp", h=1.5)`` then ``served = defense.serve(model)``. The
served model is a :class:`bench.serving.ServedModel`: defenses act through forward hooks on the named
layers of ``model`` (and, where the model declares ``size_multiple``, inputs are padded and outputs
cropped, see :mod:`bench.sizing`). ``close()`` (or leaving the ``with`` block) removes every hook:
``model`` is then exactly what it was (its parameters, buffers and mode are never touched; its answers
are bit-identical to those before serving).

Nothing here needs the suite's tasks or data. Defenses that train before they can serve (their class
overrides :meth:`bench.api.Defense.fit`: surrogates, changed teachers) get the owner's data explicitly,
``protect(model, name, owner=(inputs, targets))``; without it they are refused with a clear error.

Notes for serving: the served model calls ``model`` as it is, so put it in eval mode (``model.eval()``)
and under ``torch.no_grad()`` as for any inference; while it is open, calls through the wrapper are
defended and direct calls to ``model`` are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bench import BenchError
from bench.api import Defense, FitContext, Task
from bench.data import Pool, Splits
from bench.numerics import on_device
from bench.params import build
from bench.profiles import get_profile
from bench.registry import DEFENSES
from bench.serving import ServedModel

__all__ = ["make_defense", "protect", "fit", "needs_fit"]


def make_defense(name: str, *, seed: int = 0, **params: Any) -> Defense:
    """The defense ``name`` (``bench list defenses``) with ``params`` validated against its Params.

    Values may be Python values or strings as on the command line (``layers="body.3,body.5"``).
    ``seed`` seeds the randomness of stochastic defenses (answers stay deterministic per input)."""
    cls = DEFENSES.get(name)
    return cls(build(cls.Params, params, owner=f"defense '{name}'"), seed=seed)


def needs_fit(defense: Defense) -> bool:
    """True for defenses that train before they can serve (their class overrides ``fit``)."""
    return type(defense).fit is not Defense.fit


class _OwnerData(Task):
    """The owner's own pairs as a task for a defense's ``fit``: every pool that fit may use (``owner``,
    ``calib``) holds them; ``attacker`` and ``test`` are empty (a defense never trains on those)."""

    name = "owner-data"

    def __init__(self, pairs: Pool, profile: Any) -> None:
        super().__init__(None, profile)
        self._pairs = pairs

    @property
    def scale(self) -> int:  # type: ignore[override]
        return self._pairs.scale

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "params": {}}

    def degrade(self, clean: Any, rng: Any) -> Any:
        raise BenchError("the owner's data are fixed pairs; nothing is degraded.")

    def splits(self) -> Splits:
        empty = {n: Pool(n, [], [], [], self.scale) for n in ("attacker", "test")}
        calib = Pool("calib", self._pairs.degraded, self._pairs.clean, self._pairs.sources, self.scale)
        return Splits(owner=self._pairs, calib=calib, **empty)


def _pool(owner: Any) -> Pool:
    if isinstance(owner, Pool):
        return owner
    try:
        inputs, targets = owner
        inputs, targets = [torch.as_tensor(t).float() for t in inputs], [torch.as_tensor(t).float() for t in targets]
    except (TypeError, ValueError):
        raise BenchError("owner data must be (inputs, targets): two equal-length sequences of (3, H, W) "
                         "tensors in [0, 1], the degraded images and their clean versions.") from None
    if not inputs or len(inputs) != len(targets) or any(t.dim() != 3 for t in inputs + targets):
        raise BenchError("owner data must be (inputs, targets): two equal-length, non-empty sequences of "
                         "(3, H, W) tensors in [0, 1].")
    scale = targets[0].shape[-1] // inputs[0].shape[-1]
    return Pool("owner", inputs, targets, [f"owner-{i}" for i in range(len(inputs))], max(1, scale))


def fit(defense: Defense, model: nn.Module, owner: Any, *, profile: str = "quick", seed: int = 0,
        progress: bool = True) -> Defense:
    """Train what ``defense`` needs on the owner's pairs ``(inputs, targets)`` (or a Pool), with the
    training sizes of ``profile``; models it trains are not cached. Returns the defense."""
    prof = get_profile(profile)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    task = _OwnerData(_pool(owner).to(device), prof)

    def cached_model(config: dict[str, Any], build_fn: Any, train_fn: Any) -> nn.Module:
        m = build_fn()
        train_fn(m)
        return m.eval()

    # the defense trains where the model lives (its surrogates and changed copies too)
    with on_device(device, reproducible=False):
        defense.fit(model, task.splits(), FitContext(profile=prof, seed=seed, task=task,
                                                     cached_model=cached_model, progress=progress))
    return defense


def protect(model: nn.Module, defense: str | Defense = "asvp", *, expose: Sequence[str] = (), seed: int = 0,
            owner: Any = None, profile: str = "quick", **params: Any) -> ServedModel:
    """``model`` behind ``defense`` (a name with ``params``, or a built Defense): a module with the same
    call, whose answers are defended and whose features at ``expose`` (module names) are returned by
    ``forward_with_features``. ``owner``: (inputs, targets) for defenses that train first (see
    :func:`fit`). Close it (or use it as a context manager) to remove its hooks from ``model``."""
    if not isinstance(model, nn.Module):
        raise BenchError(f"protect() needs a torch.nn.Module, got {type(model).__name__}.")
    if isinstance(defense, str):
        defense = make_defense(defense, seed=seed, **params)
        if needs_fit(defense):
            if owner is None:
                raise BenchError(
                    f"defense '{defense.name}' trains on the owner's data before it serves: pass "
                    "owner=(inputs, targets) to protect(), or call bench.protect.fit(defense, model, owner) "
                    "and then protect(model, defense)."
                )
            fit(defense, model, owner, profile=profile, seed=seed)
    elif not isinstance(defense, Defense):
        raise BenchError(f"protect() needs a defense name or a bench.api.Defense, got {type(defense).__name__}.")
    elif params or owner is not None:
        raise BenchError("protect() takes params and owner data only with a defense name; a built Defense "
                         "already has its params (fit it with bench.protect.fit).")
    return defense.serve(model, exposed_layers=tuple(expose))
