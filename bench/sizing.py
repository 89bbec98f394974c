"""Inputs padded to the size a model requires, outputs cropped back (bring your own model).

A model whose forward only accepts input sides divisible by ``m`` (a U-Net with three 2x poolings:
``m = 8``; a window-attention model: its window size) declares it as an attribute, ``size_multiple = m``.
The suite then pads every input on the bottom and right to the next multiple of ``m`` by reflection
(by replication where the input is too small to reflect), calls the model, and crops the output back
to the unpadded input's size times the model's scale. A model that needs input sides of at least ``k``
pixels (SwinIR: 16, for its reflection padding to the window) declares ``size_minimum = k``; inputs are
then padded the same way up to that side (and on to the next multiple). The scale is read off the shapes of that very
call (output side / padded input side), so super-resolution models need no extra declaration.

This is done by a pair of hooks on the model itself (a forward pre-hook pads, a forward hook crops),
so every caller benefits: training, the served model and every defense on it, and the evaluation.
The suite puts permanent hooks on the models it builds from a user's factory
(:func:`install`, ``permanent=True``); :class:`bench.serving.ServedModel` puts hooks on a user's own
model only for the calls made through it, and removes them on ``close()``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from bench import BenchError

#: models that carry permanent padding hooks (the suite's own instances); never hooked twice
_PERMANENT: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def size_multiple(model: nn.Module) -> int:
    """The model's declared ``size_multiple`` (1 when it declares none)."""
    m = getattr(model, "size_multiple", None)
    if m is None:
        return 1
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise BenchError(f"the model's size_multiple must be a positive int, got {m!r}; "
                         "set it to the number the input sides must be divisible by.")
    return m


def size_minimum(model: nn.Module) -> int:
    """The model's declared ``size_minimum``: the smallest input side it accepts (0 when it declares none)."""
    m = getattr(model, "size_minimum", None)
    if m is None:
        return 0
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise BenchError(f"the model's size_minimum must be an int >= 0, got {m!r}; "
                         "set it to the smallest input side the model accepts.")
    return m


def pad_to_multiple(x: torch.Tensor, multiple: int, minimum: int = 0) -> torch.Tensor:
    """``x`` (N, C, H, W) padded on the bottom and right so H and W are at least ``minimum`` and
    multiples of ``multiple``."""
    h, w = x.shape[-2:]
    th, tw = max(h, minimum), max(w, minimum)
    ph, pw = th - h + -th % multiple, tw - w + -tw % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def crop_output(y: torch.Tensor, size: tuple[int, int], padded: tuple[int, int]) -> torch.Tensor:
    """The part of ``y`` (the answer to an input padded from ``size`` to ``padded``) that answers the
    unpadded input: ``size`` times the scale ``y.shape / padded``."""
    out = []
    for side, pad_side, y_side in zip(size, padded, y.shape[-2:]):
        if (y_side * side) % pad_side:
            raise BenchError(
                f"the model answered a {padded[1]}x{padded[0]} input with {y.shape[-1]}x{y.shape[-2]}, not "
                "an integer scale of it; a restoration model must return (N, 3, scale*H, scale*W)."
            )
        out.append(y_side * side // pad_side)
    return y[..., : out[0], : out[1]]


def install(model: nn.Module, *, permanent: bool = False,
            active: Callable[[], bool] | None = None) -> list[RemovableHandle]:
    """Hooks that pad the model's first positional input and crop its output (none if the model needs
    no padding, or already carries permanent hooks). ``active``: pad only while it returns True."""
    m, minimum = size_multiple(model), size_minimum(model)
    if (m == 1 and minimum == 0) or model in _PERMANENT:
        return []
    pending: list[tuple[tuple[int, int], tuple[int, int]] | None] = []

    def pre(module: nn.Module, args: tuple) -> tuple | None:
        if not args or not torch.is_tensor(args[0]) or (active is not None and not active()):
            pending.append(None)
            return None
        x = args[0]
        xp = pad_to_multiple(x, m, minimum)
        pending.append((tuple(x.shape[-2:]), tuple(xp.shape[-2:])) if xp is not x else None)
        return None if xp is x else (xp, *args[1:])

    def post(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        sizes = pending.pop() if pending else None
        if sizes is None or not torch.is_tensor(output):
            return None
        return crop_output(output, *sizes)

    handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
    if permanent:
        _PERMANENT.add(model)
    return handles
