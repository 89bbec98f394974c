"""The served model: a teacher behind a defense, with named features exposed.

The served model has two channels (DESIGN section 2): its *answers* (what every user receives) and
its *exposed features* (named intermediate features that feature-level attackers consume). A defense
may touch either. With ``answer_bits`` (the pipeline passes the profile's, 8 by default) answers leave as
an image would: clamped and rounded to 8-bit levels, after the defense (:func:`as_image`).
Features are captured and perturbed by forward hooks on named modules; the hooks
are shared by every defense, so feature-level attacks see what each defense does to features.

Stochastic defenses draw randomness from :meth:`Query.generator`, seeded by the query's content and
the defense seed, so asking the same question twice (or one image alone versus inside a batch) gives
the same answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from bench import BenchError, sizing
from bench.features import InputSizes, as_map, crop_exposed

if TYPE_CHECKING:
    from bench.api import Defense


def content_seed(sample: torch.Tensor, defense_seed: int) -> int:
    """A 63-bit seed from one input image's bytes and the defense seed."""
    data = sample.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    h = hashlib.blake2b(data, digest_size=8, key=str(int(defense_seed)).encode())
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


@dataclass
class Query:
    """One batch of questions to the served model, with a content seed per image.

    Seeds are hashed on first use only, so deterministic defenses pay nothing for them.
    """

    inputs: torch.Tensor
    defense_seed: int = 0
    _seeds: list[int] | None = None

    @property
    def seeds(self) -> list[int]:
        if self._seeds is None:
            self._seeds = [content_seed(s, self.defense_seed) for s in self.inputs]
        return self._seeds

    def generator(self, index: int, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator for image ``index`` of the batch: the same image always gets the same stream."""
        g = torch.Generator(device=device)
        g.manual_seed(self.seeds[index])
        return g


def as_image(answers: torch.Tensor, bits: int) -> torch.Tensor:
    """Answers as a served image carries them: clamped to [0, 1] and rounded to multiples of
    1 / (2**bits - 1) (8 bits: 1/255). ``bits`` 0 keeps float answers (only clamped)."""
    answers = answers.clamp(0, 1)
    if not bits:
        return answers
    levels = float(2 ** int(bits) - 1)
    return torch.round(answers * levels) / levels


def checked(out: object, like: torch.Tensor, defense: Defense, method: str) -> torch.Tensor:
    """What a defense method returned, if it is what it replaces: a tensor of the same shape, dtype and
    device, with finite values; else a one-line error naming the defense and the method (it would
    otherwise fail deep in training, or train a student on NaNs)."""
    who = f"defense '{getattr(defense, 'name', type(defense).__name__)}': {method}"
    if not isinstance(out, torch.Tensor):
        raise BenchError(f"{who} returned {type(out).__name__}, not a tensor; return the changed tensor.")
    if out.shape != like.shape or out.dtype != like.dtype or out.device != like.device:
        raise BenchError(f"{who} returned a {out.dtype} tensor of shape {tuple(out.shape)} on {out.device} for a "
                         f"{like.dtype} one of shape {tuple(like.shape)} on {like.device}; return the same shape, "
                         "dtype and device.")
    # one reduction instead of an elementwise mask (the mask cost as much as ASVP's whole channel-layout
    # perturbation, 5 ms per layer at 256x256 on 2 threads); a sum is finite when every value is, and a finite
    # tensor whose sum overflows gets the exact check
    if not bool(torch.isfinite(out.sum())) and not bool(torch.isfinite(out).all()):
        if not bool(torch.isfinite(like).all()):  # the model's own output already was: not the defense's doing
            raise BenchError(f"the teacher's own output holds NaN or inf values (before {method}): the teacher is "
                             "at fault, not the defense; check its weights, or retrain it (--force).")
        raise BenchError(f"{who} returned non-finite values (NaN or inf); keep its output finite.")
    return out


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; a one-line error listing near names if there is none."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    import difflib

    names = [n for n in modules if n]
    near = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    listed = ", ".join(near or names[:12])
    raise BenchError(f"the model has no layer '{name}'. Near names: {listed}.")


class ServedModel(nn.Module):
    """``defense`` wrapped around ``model``: ``forward`` gives answers, ``forward_with_features`` also
    the exposed features by layer name. The wrapped model is left unchanged once :meth:`close` runs."""

    def __init__(
        self,
        model: nn.Module,
        defense: Defense | None = None,
        *,
        exposed_layers: Sequence[str] = (),
        defense_seed: int = 0,
        answer_bits: int = 0,
    ) -> None:
        super().__init__()
        self.answer_bits = int(answer_bits)
        self.model = model
        self.defense = defense
        self.defense_seed = int(defense_seed)
        self.exposed_layers = tuple(exposed_layers)
        perturbed = tuple(defense.feature_layers(model)) if defense is not None else ()
        self.perturbed_layers = perturbed
        self._query: Query | None = None
        self._features: dict[str, torch.Tensor] | None = None
        self._handles = []
        for name in dict.fromkeys(self.exposed_layers + perturbed):
            module = resolve_module(model, name)
            self._handles.append(module.register_forward_hook(self._make_hook(name)))
        # inputs padded to the model's declared size_multiple (bench.sizing), only for calls made here
        self._handles.extend(sizing.install(model, active=lambda: self._query is not None))
        # the input's size as called and as padded: token features' spatial shape, exposed copies' crop
        self._sizes: InputSizes | None = None
        if self.exposed_layers or perturbed:
            self._sizes = InputSizes(model)
            self._handles.extend(self._sizes.handles)
        self._hooked = bool(self._handles)
        self._closed = False

    @property
    def inline(self) -> bool:
        return bool(self.defense is not None and self.defense.inline)

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor):
            if self._query is None:  # the model is being called directly, not through this wrapper
                return None
            sizes = self._sizes
            # token sequences (N, L, C) and tuples are seen as maps (N, C, H, W) (bench.features)
            fmap, back = as_map(output, args, sizes.padded if sizes else None, layer=name)
            exposed = fmap
            flow = None
            if name in self.perturbed_layers and (self.inline or self._features is not None):
                perturbed = checked(self.defense.perturb_features(name, fmap, self._query), fmap,
                                    self.defense, f"perturb_features (layer '{name}')")
                exposed = perturbed
                if self.inline:
                    flow = back(perturbed)
            if self._features is not None and name in self.exposed_layers:
                called, padded = (sizes.called, sizes.padded) if sizes else (None, None)
                self._features[name] = crop_exposed(exposed, called, padded).detach()
            return flow

        return hook

    def _run(self, x: torch.Tensor, want_features: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self._closed and self._hooked:
            raise BenchError("this served model was closed; serve the model again")
        query = Query(x, self.defense_seed)
        self._query = query
        self._features = {} if want_features else None
        try:
            y = self.model(x)
            if self.defense is not None:
                y = checked(self.defense.perturb_answers(y, query), y, self.defense, "perturb_answers")
            if self.answer_bits:  # what a service sends is an image: perturbations under a grey level vanish
                y = as_image(y, self.answer_bits)
            feats = self._features or {}
        finally:
            self._query = None
            self._features = None
        return y, feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, False)[0]

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self._run(x, True)

    def close(self) -> None:
        """Remove every hook this wrapper put on the model."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._closed = True

    def __enter__(self) -> ServedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
