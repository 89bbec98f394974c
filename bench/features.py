"""Feature maps of any model as (N, C, H, W): what defenses perturb and attacks learn from.

Every defense and attack of the suite reads a layer's features as a map (N, C, H, W): ASVP's channel and
spatial layouts, its coherence mask, feature KD's 1x1 adapters. The field's models do not all give maps:

- A transformer's blocks give token sequences (N, L, C), L = H * W tokens in row-major order (SwinIR's
  residual groups, HAT, DAT). :func:`as_map` turns them into the map (N, C, H, W) and back, so a defense
  acts on exactly the same numbers in the same spatial arrangement as on a CNN's map, and what flows on
  through the model is the perturbed sequence, contiguous, in the model's own layout. The spatial shape
  (H, W) comes, first, from the layer's own arguments: transformer blocks are called with it (SwinIR's
  ``layer(x, x_size)``), so a pair of ints (or a ``torch.Size``) whose product is L is taken; else from the
  size of the input that reached the model, at a resolution of 1/d of it for d in 1, 2, 4, ... 32 (exact
  division only). No guess beyond that: a sequence whose shape neither gives is an error naming the layer.
- A block that returns a tuple (SPAN's blocks return ``(out, out_1, attention)``) has its first tensor as
  its feature; the rest of the tuple flows on unchanged.

:func:`crop_exposed` cuts an exposed copy of a map back to the part that answers the caller's input: a
model padded on the bottom and right (by :mod:`bench.sizing`, or inside its own forward: SwinIR pads to its
window, NAFNet to 2^levels) computes features of the padded image, but an attacker's hints must line up
with its query (feature KD crops hints and queries in step). The flowing features are never cropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from bench import BenchError

#: resolutions (1/d of the model's input) at which a token sequence's spatial shape is looked for
TOKEN_STRIDES = (1, 2, 4, 8, 16, 32)


def _shape_from_args(args: Sequence[Any], length: int) -> tuple[int, int] | None:
    """A pair of positive ints among ``args`` (a tuple, list or ``torch.Size``) whose product is ``length``."""
    for a in args:
        if isinstance(a, (tuple, list, torch.Size)) and len(a) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in a):
            if a[0] * a[1] == length:
                return int(a[0]), int(a[1])
    return None


def token_shape(length: int, args: Sequence[Any] = (), input_size: tuple[int, int] | None = None
                ) -> tuple[int, int] | None:
    """The (H, W) of a sequence of ``length`` tokens: from the layer's arguments, else from the model's
    ``input_size`` (H, W) at stride d (:data:`TOKEN_STRIDES`); None if neither gives it."""
    found = _shape_from_args(args, length)
    if found is not None:
        return found
    if input_size is not None:
        h, w = input_size
        for d in TOKEN_STRIDES:
            if h % d == 0 and w % d == 0 and (h // d) * (w // d) == length:
                return h // d, w // d
    return None


def as_map(output: Any, args: Sequence[Any] = (), input_size: tuple[int, int] | None = None, *,
           layer: str = "") -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """``(feature_map, back)``: a layer's output as a map (N, C, H, W), and the function that turns a map of
    that shape back into an output of the layer's own structure (a token sequence, a tuple with the map's
    tensor first). A map output is returned as it is, with ``back`` the identity. ``args``: the layer's
    positional arguments (a transformer block's spatial shape); ``input_size``: the (H, W) that reached the
    model's forward."""
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        inner, inner_back = as_map(output[0], args, input_size, layer=layer)
        kind = type(output)

        def back_tuple(m: torch.Tensor) -> Any:
            rebuilt = [inner_back(m), *output[1:]]
            return tuple(rebuilt) if kind is tuple else rebuilt

        return inner, back_tuple
    if not torch.is_tensor(output):
        raise BenchError(f"layer '{layer}' returns a {type(output).__name__}, not a feature tensor; choose another "
                         "layer (--set defense.layers=NAME / attack.layers=NAME).")
    if output.dim() == 4:
        return output, lambda m: m
    if output.dim() == 3:
        n, length, c = output.shape
        hw = token_shape(length, args, input_size)
        if hw is None:
            raise BenchError(f"layer '{layer}' gives token features (N, L, C) = {tuple(output.shape)} whose spatial "
                             f"shape is unknown (no (H, W) among its arguments, and L is not the model's input "
                             f"{input_size} at a stride of {', '.join(map(str, TOKEN_STRIDES))}); choose a layer "
                             "that gives maps (N, C, H, W).")
        h, w = hw
        fmap = output.transpose(1, 2).reshape(n, c, h, w)
        return fmap, lambda m: m.flatten(2).transpose(1, 2).contiguous()
    raise BenchError(f"layer '{layer}' gives features of shape {tuple(output.shape)}; the suite handles maps "
                     "(N, C, H, W) and token sequences (N, L, C): choose another layer.")


def crop_exposed(fmap: torch.Tensor, called: tuple[int, int] | None, padded: tuple[int, int] | None) -> torch.Tensor:
    """The part of ``fmap`` that answers the caller's unpadded input: where the map is at least f times the
    size of the input that reached the model (``padded``; f = its side // that side, an integer >= 1 and the
    same on both axes, as an SR model's upsampled features are; a model that pads inside its forward makes
    the map larger still), the top-left f x ``called``; otherwise (a U-Net's inner levels) the map as it is."""
    if called is None or padded is None:
        return fmap
    (fh, fw), (ph, pw) = fmap.shape[-2:], padded
    f = fh // ph
    if f < 1 or fw // pw != f:
        return fmap
    h, w = f * called[0], f * called[1]
    if (fh, fw) == (h, w) or fh < h or fw < w:
        return fmap
    return fmap[..., :h, :w]


class InputSizes:
    """Records, for every call of ``model``, the spatial size of its first input as called (before any
    padding pre-hook) and as it reaches its ``forward`` (after them). Register it after the padding hooks
    (:func:`bench.sizing.install`) it should see past; :meth:`remove` takes its hooks off."""

    def __init__(self, model: nn.Module) -> None:
        self.called: tuple[int, int] | None = None
        self.padded: tuple[int, int] | None = None
        self.handles: list[RemovableHandle] = [
            model.register_forward_pre_hook(self._outer, prepend=True),
            model.register_forward_pre_hook(self._inner),
        ]

    def _outer(self, module: nn.Module, args: tuple) -> None:
        if args and torch.is_tensor(args[0]) and args[0].dim() >= 2:
            self.called = tuple(args[0].shape[-2:])

    def _inner(self, module: nn.Module, args: tuple) -> None:
        if args and torch.is_tensor(args[0]) and args[0].dim() >= 2:
            self.padded = tuple(args[0].shape[-2:])

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
