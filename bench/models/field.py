"""The field's own architectures as teachers and students, through spandrel (``pip install -e '.[models]'``).

``--teacher ARCH`` / ``--student ARCH`` build a published architecture with random weights for the suite to
train, like the reference CNN; ``--weights FILE`` without ``--teacher`` is a published checkpoint used as it
is, its architecture and hyper-parameters detected from the state dict. spandrel (chaiNNer's model library,
MIT; each architecture keeps its original licence, named in :data:`ARCHITECTURES`) holds the architectures'
code and the detection. It imports torchvision, which imports only beside the torch it was built for, so it
is an optional dependency: without it everything else of the suite works, and these flags say how to get it.

Names. ``ARCH`` is an architecture (``nafnet``, ``swinir``, ``span``, ``rrdb``: its default preset), a preset
(``nafnet-w16``, ``swinir-light``, ... : ``bench list models``), either with constructor arguments in
parentheses, ``'swinir-light(depths=[4,4],num_heads=[6,6])'`` (Python literals, checked against the
constructor's signature). The name with its arguments is one string, so it crosses process boundaries, grid
files and cache keys as ``PACKAGE.MODULE:FACTORY`` does. The task's scale is given by the task (``upscale`` /
``scale`` are not arguments); an architecture that cannot build it is refused with the scales it supports.

Choices, and why:

- Presets. ``*-tiny`` presets (a few thousand to a few ten thousand parameters) keep a smoke cell to
  seconds on a CPU; the others are published configurations (NAFNet width 32 as for SIDD, SwinIR's
  lightweight SR model "SwinIR-S", SPAN's 48 channels, ESRGAN's RRDBNet 64x23) or the smallest of a family
  that still has its structure (``nafnet-w16``: one block per level).
- Random weights train as the reference CNN does (the profile's steps and learning rate). SwinIR's
  stochastic depth (``drop_path_rate``, 0.1 in the paper) is off in the presets: a regulariser for long
  training that makes short CPU training noisier; ``swinir(drop_path_rate=0.1)`` turns it on. The presets
  keep the constants spandrel's detection assumes (SwinIR ``img_range`` 1, SPAN ``img_range`` 255 with its
  mean shift, no window size 7, which spandrel detects as a JPEG model of range 255), so a state dict of a
  suite-built model is detected back as the same model.
- Size requirements come from spandrel's descriptor of the model (detected from its state dict, also for a
  model built here): ``multiple_of`` becomes ``size_multiple`` and ``minimum`` ``size_minimum``
  (:mod:`bench.sizing` pads and crops around every call). Models that need square inputs are refused: the
  suite feeds crops and whole images of any aspect.
- Feature layers (``feature_layers``, read by :func:`bench.models.body_layers`; ASVP's and feature KD's
  ``layers=middle`` take their middle): the main blocks at the input's resolution, in forward order, since
  feature KD needs hints at the query's resolution (:mod:`attacks.feature_kd`) and ASVP acts anywhere.
  NAFNet: the blocks of the first encoder level and of the last decoder level (its middle blocks work on
  1/2^levels of the image; name ``middle_blks.0`` to perturb there); SwinIR: its residual Swin groups
  ``layers.i`` (token sequences (N, L, C), seen as maps by :mod:`bench.features`); SPAN: ``block_1`` ...
  ``block_6`` (tuples: their first tensor); RRDBNet: the RRDB blocks ``model.1.sub.i``. A checkpoint of an
  architecture spandrel knows but this table does not declares none: name its layers with
  ``--set defense.layers=...``.
- Identity (keys and rows): the name as given, spandrel's architecture id, the constructor arguments (for a
  checkpoint: spandrel's detected hyper-parameters), the architecture hash of :mod:`bench.usermodel` and the
  SHA-256 of the weights file.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench import BenchError, sizing
from bench.usermodel import (
    UserModel,
    architecture_hash,
    check_archive,
    file_hash,
    probe_scale,
    probe_sides,
    probe_sizes,
    state_dict_of,
)

#: the one install line of the models group (README, "The field's models")
INSTALL_HINT = "pip install torch==2.14.1 torchvision==0.29.1 -e '.[models]' (README: The field's models)"


def spandrel_problem() -> str | None:
    """None when spandrel imports, else why not (one line)."""
    try:
        import spandrel  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - an ImportError, or torchvision's RuntimeError beside another torch
        text = " ".join(str(exc).split())
        return f"{type(exc).__name__}: {text[:160]}"
    return None


def require_spandrel(what: str) -> None:
    """A one-line BenchError saying that ``what`` needs spandrel and how to install it, where it does not import."""
    problem = spandrel_problem()
    if problem:
        raise BenchError(f"{what} needs spandrel, which does not import here ({problem}); install it with "
                         f"{INSTALL_HINT}.")


# ------------------------------------------------------------------------------------ feature layers
def _numbered(model: nn.Module, prefix: str) -> list[str]:
    """Names ``prefix.0``, ``prefix.1``, ... of the model's direct children of ``prefix``, in order."""
    names = [n for n, _ in model.named_modules()
             if n.startswith(prefix + ".") and n[len(prefix) + 1:].isdigit()]
    return sorted(names, key=lambda n: int(n.rsplit(".", 1)[1]))


def _nafnet_layers(model: nn.Module) -> list[str]:
    encoders = _numbered(model, "encoders")
    if not encoders:  # no levels: the middle blocks are at the input's resolution
        return _numbered(model, "middle_blks")
    decoders = _numbered(model, "decoders")
    return _numbered(model, encoders[0]) + (_numbered(model, decoders[-1]) if decoders else [])


def _swinir_layers(model: nn.Module) -> list[str]:
    return _numbered(model, "layers")


def _span_layers(model: nn.Module) -> list[str]:
    return [f"block_{i}" for i in range(1, 7) if hasattr(model, f"block_{i}")]


def _rrdb_layers(model: nn.Module) -> list[str]:
    blocks = _numbered(model, "model.1.sub")
    return blocks[:-1]  # the last entry is the trunk's closing convolution, not an RRDB


# ------------------------------------------------------------------------------------ constructors
def _nafnet_kwargs(p: dict[str, Any], scale: int) -> dict[str, Any]:
    return {"img_channel": 3, **p}


def _swinir_kwargs(p: dict[str, Any], scale: int) -> dict[str, Any]:
    p = dict(p)
    upsampler = p.pop("upsampler", "pixelshuffledirect")
    if int(p.get("window_size", 8)) == 7:
        raise BenchError("swinir: window_size 7 is what spandrel detects as a JPEG model of image range 255, so a "
                         "checkpoint of it would not load back as the model trained; use another window size.")
    return {"in_chans": 3, "img_range": 1.0, "resi_connection": "1conv", **p, "upscale": scale,
            "upsampler": upsampler if scale > 1 else ""}


def _span_kwargs(p: dict[str, Any], scale: int) -> dict[str, Any]:
    return {"num_in_ch": 3, "num_out_ch": 3, "img_range": 255.0, "norm": True, **p, "upscale": scale}


def _rrdb_kwargs(p: dict[str, Any], scale: int) -> dict[str, Any]:
    # scales 1 and 2 as Real-ESRGAN builds them: the input pixel-unshuffled by 4 / scale into a x4 network
    shuffle = {1: 4, 2: 2}.get(scale)
    inner = 4 if shuffle else scale
    return {"in_nc": 3 * (shuffle or 1) ** 2, "out_nc": 3, **p, "scale": inner, "shuffle_factor": shuffle}


@dataclass(frozen=True)
class Architecture:
    """One architecture of the field: where spandrel keeps it, its licence, scales, presets, feature layers."""

    name: str
    spandrel_id: str
    module: str
    cls: str
    licence: str
    source: str
    purpose: str
    scales: tuple[int, ...]
    #: preset name -> constructor arguments (without the scale, which the task gives)
    presets: Mapping[str, Mapping[str, Any]]
    default: str
    kwargs: Callable[[dict[str, Any], int], dict[str, Any]]
    layers: Callable[[nn.Module], list[str]]
    layers_doc: str
    #: constructor arguments the task sets (refused in a name's parentheses)
    reserved: tuple[str, ...] = field(default=())

    def constructor(self) -> type:
        require_spandrel(f"architecture '{self.name}'")
        return getattr(importlib.import_module(self.module), self.cls)


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture(
        name="nafnet", spandrel_id="NAFNet", module="spandrel.architectures.NAFNet", cls="NAFNet",
        licence="MIT (megvii-research/NAFNet)", source="Chen et al., Simple Baselines for Image Restoration, ECCV 2022",
        purpose="restoration (denoise, deblur, derain, ...)", scales=(1,),
        presets={
            "nafnet-tiny": {"width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]},
            "nafnet-w16": {"width": 16, "middle_blk_num": 1, "enc_blk_nums": [1, 1, 1, 1],
                           "dec_blk_nums": [1, 1, 1, 1]},
            "nafnet-w32": {"width": 32, "middle_blk_num": 12, "enc_blk_nums": [2, 2, 4, 8],
                           "dec_blk_nums": [2, 2, 2, 2]},
        },
        default="nafnet-w16", kwargs=_nafnet_kwargs, layers=_nafnet_layers,
        layers_doc="encoders.0.*, decoders.<last>.* (the full-resolution blocks)",
        reserved=("img_channel",)),
    Architecture(
        name="swinir", spandrel_id="SwinIR", module="spandrel.architectures.SwinIR", cls="SwinIR",
        licence="Apache-2.0 (JingyunLiang/SwinIR)",
        source="Liang et al., SwinIR: Image Restoration Using Swin Transformer, ICCVW 2021",
        purpose="SR (x2, x3, x4, x8) and restoration (x1)", scales=(1, 2, 3, 4, 8),
        presets={
            "swinir-tiny": {"img_size": 16, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 2], "window_size": 4,
                            "mlp_ratio": 2.0, "drop_path_rate": 0.0},
            "swinir-light": {"img_size": 64, "embed_dim": 60, "depths": [6, 6, 6, 6], "num_heads": [6, 6, 6, 6],
                             "window_size": 8, "mlp_ratio": 2.0, "drop_path_rate": 0.0},
            "swinir-m": {"img_size": 64, "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 8,
                         "mlp_ratio": 2.0, "drop_path_rate": 0.0, "upsampler": "pixelshuffle"},
        },
        default="swinir-light", kwargs=_swinir_kwargs, layers=_swinir_layers,
        layers_doc="layers.* (residual Swin groups; tokens (N, L, C))",
        reserved=("upscale", "in_chans")),
    Architecture(
        name="span", spandrel_id="SPAN", module="spandrel.architectures.SPAN", cls="SPAN",
        licence="Apache-2.0 (hongyuanyu/SPAN)",
        source="Wan et al., Swift Parameter-free Attention Network for Efficient Super-Resolution, CVPRW 2024",
        purpose="efficient SR (any integer scale; x1 too)", scales=(1, 2, 3, 4, 8),
        presets={"span-tiny": {"feature_channels": 8}, "span-48": {"feature_channels": 48}},
        default="span-48", kwargs=_span_kwargs, layers=_span_layers,
        layers_doc="block_1 ... block_6 (their first output)",
        reserved=("upscale", "num_in_ch", "num_out_ch")),
    Architecture(
        name="rrdb", spandrel_id="ESRGAN", module="spandrel.architectures.ESRGAN", cls="ESRGAN",
        licence="Apache-2.0 (xinntao/ESRGAN)",
        source="Wang et al., ESRGAN: Enhanced Super-Resolution GANs, ECCVW 2018 (RRDBNet)",
        purpose="SR (x1, x2 through pixel-unshuffle; x3, x4, x8)", scales=(1, 2, 3, 4, 8),
        presets={"rrdb-tiny": {"num_filters": 8, "num_blocks": 1}, "esrgan": {"num_filters": 64, "num_blocks": 23}},
        default="esrgan", kwargs=_rrdb_kwargs, layers=_rrdb_layers,
        layers_doc="model.1.sub.* (the RRDB blocks)",
        reserved=("scale", "in_nc", "out_nc", "shuffle_factor")),
)}

#: spandrel's architecture id -> this table's entry (feature layers of a detected checkpoint)
BY_SPANDREL_ID = {a.spandrel_id: a for a in ARCHITECTURES.values()}


def preset_names() -> list[str]:
    """Every name ``--teacher`` / ``--student`` take: architectures and their presets."""
    return [n for a in ARCHITECTURES.values() for n in (a.name, *a.presets)]


def is_architecture_name(text: str) -> bool:
    """True for a text that names an architecture rather than ``PACKAGE.MODULE:FACTORY`` (it has no colon)."""
    return ":" not in text


def parse_name(text: str, role: str = "teacher") -> tuple[Architecture, str, dict[str, Any]]:
    """``(architecture, preset, overrides)`` of ``NAME`` or ``NAME(key=value, ...)``; one-line BenchError
    naming the known names (and the closest) otherwise."""
    text = text.strip()
    base, overrides = text, {}
    if "(" in text:
        if not text.endswith(")"):
            raise BenchError(f"--{role} {text!r}: arguments go in parentheses at the end, e.g. "
                             "'swinir-light(depths=[4,4],num_heads=[6,6])'.")
        base, inner = text[:-1].split("(", 1)
        base = base.strip()
        try:
            call = ast.parse(f"f({inner})", mode="eval").body
            assert isinstance(call, ast.Call) and not call.args
            overrides = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
            if len(overrides) != len(call.keywords):
                raise ValueError("**kwargs")
        except (SyntaxError, ValueError, AssertionError):
            raise BenchError(f"--{role} {text!r}: the arguments must be key=value with Python literals, e.g. "
                             "'nafnet-w16(width=24,middle_blk_num=2)'.") from None
    names = preset_names()
    if base not in names:
        near = difflib.get_close_matches(base, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise BenchError(f"--{role} {base!r} is neither an architecture ({', '.join(names)}: bench list models) nor "
                         f"PACKAGE.MODULE:FACTORY (your own model).{hint}")
    arch = ARCHITECTURES.get(base) or next(a for a in ARCHITECTURES.values() if base in a.presets)
    preset = arch.default if base == arch.name else base
    return arch, preset, overrides


def constructor_arguments(arch: Architecture, preset: str, overrides: Mapping[str, Any], scale: int,
                          role: str = "teacher") -> dict[str, Any]:
    """The keyword arguments ``arch``'s spandrel class is built with for ``scale``: the preset's, the
    overrides, the scale; each override checked against the constructor's signature."""
    if scale not in arch.scales:
        raise BenchError(f"--{role} {arch.name}: the task has scale {scale}, which {arch.name} does not build "
                         f"(scales {', '.join(map(str, arch.scales))}); use a task of one of them or another "
                         "architecture.")
    taken = [k for k in overrides if k in arch.reserved]
    if taken:
        raise BenchError(f"--{role} {arch.name}: {', '.join(taken)} is set by the task (its scale and RGB images), "
                         "not by the name's arguments.")
    allowed = {p for p in inspect.signature(arch.constructor()).parameters if p != "self"}
    if arch.name == "swinir":
        allowed.add("upsampler")
    unknown = [k for k in overrides if k not in allowed]
    if unknown:
        raise BenchError(f"--{role} {arch.name}: no constructor argument {', '.join(unknown)}; it takes "
                         f"{', '.join(sorted(allowed - set(arch.reserved)))}.")
    return arch.kwargs({**arch.presets[preset], **overrides}, scale)


def build_architecture(arch: Architecture, kwargs: Mapping[str, Any], role: str = "teacher") -> nn.Module:
    """``arch`` built with ``kwargs`` (random weights, from torch's global generator) and its feature layers
    declared; a one-line BenchError if the constructor refuses the arguments."""
    cls = arch.constructor()
    try:
        with warnings.catch_warnings():  # SwinIR's torch.meshgrid without indexing=: torch's notice, not ours
            warnings.filterwarnings("ignore", message=r"torch\.meshgrid")
            model = cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the constructor's own complaint, in one line
        text = " ".join(str(exc).split())
        raise BenchError(f"--{role} {arch.name}: building {arch.spandrel_id}({_args_text(kwargs)}) failed "
                         f"({type(exc).__name__}: {text}).") from None
    model.feature_layers = arch.layers(model)
    return model


def _args_text(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


# ------------------------------------------------------------------------------------------ detection
def read_state_dict(path: str | Path, role: str = "teacher") -> dict[str, torch.Tensor]:
    """The state dict in a weights file (torch's format, read with ``weights_only=True`` after the archive
    check of :func:`bench.usermodel.check_archive`, or ``.safetensors``), finite; one-line BenchError else."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise BenchError(f"--weights: {p} does not exist or is not a file.")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        except Exception as exc:  # noqa: BLE001
            raise BenchError(f"--weights: cannot read {p} as safetensors ({type(exc).__name__}: {exc}).") from None
    else:
        # no model yet to size the archive by: a torch checkpoint stores its tensors uncompressed, so the file's
        # own size bounds what it may declare
        check_archive(p, None, role, own_bytes=p.stat().st_size)
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            text = " ".join(str(exc).split())
            raise BenchError(f"--weights: cannot load {p} with torch.load(weights_only=True) ({type(exc).__name__}: "
                             f"{text[:200]}); save a state dict: torch.save(model.state_dict(), PATH).") from None
    state = state_dict_of(obj)
    if state is None:
        raise BenchError(f"--weights: {p} holds a {type(obj).__name__} that is not a state dict; "
                         "save one with torch.save(model.state_dict(), PATH).")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise BenchError(f"--weights: {p} holds NaN or inf values ({len(bad)} tensor(s): {', '.join(bad[:3])}); "
                         "use weights from before training diverged.")
    return dict(state)


def detect(state: Mapping[str, torch.Tensor], name: str = "the weights") -> Any:
    """spandrel's descriptor of the model in ``state`` (its architecture, hyper-parameters, scale, size
    requirements, and the model with the weights loaded); one-line BenchError if spandrel knows none."""
    require_spandrel("detecting the architecture of --weights")
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"torch\.meshgrid")
            desc = ModelLoader().load_from_state_dict(dict(state))
    except UnsupportedModelError:
        raise BenchError(f"--weights: spandrel recognises no architecture in {name}; for a model of your own "
                         "give --teacher PACKAGE.MODULE:FACTORY with it.") from None
    except Exception as exc:  # noqa: BLE001 - a detected architecture whose hyper-parameters do not fit
        text = " ".join(str(exc).split())
        raise BenchError(f"--weights: spandrel could not load {name} ({type(exc).__name__}: {text[:200]}).") from None
    if not isinstance(desc, ImageModelDescriptor):
        raise BenchError(f"--weights: {name} is a {desc.architecture.name} model (an inpainting model taking a "
                         "mask), not an image-to-image model.")
    return desc


def size_requirements(desc: Any, what: str) -> tuple[int, int]:
    """(multiple, minimum) from a spandrel descriptor; square-only models refused in one line."""
    req = desc.size_requirements
    if req.square:
        raise BenchError(f"{what} ({desc.architecture.name}) needs square inputs; the suite feeds crops and images "
                         "of any aspect, so it cannot serve it.")
    return int(req.multiple_of), int(req.minimum)


def _annotate(model: nn.Module, multiple: int, minimum: int, arch: Architecture | None) -> nn.Module:
    """The attributes the suite reads off a model: size requirements and (for a known architecture) layers."""
    if multiple > 1:
        model.size_multiple = multiple
    if minimum > 0:
        model.size_minimum = minimum
    if arch is not None and getattr(model, "feature_layers", None) is None:
        model.feature_layers = arch.layers(model)
    return model


def _jsonable(value: Any) -> Any:
    """Hyper-parameters as keys hold them: JSON values as they are, anything else (a class) by its repr."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


class FieldModel(UserModel):
    """A teacher or student of the field: a named architecture with random weights (``--teacher nafnet-w16``),
    or a checkpoint whose architecture spandrel detects (``--weights FILE``, with ``--teacher ARCH`` only to
    insist on the family). Same interface as :class:`bench.usermodel.UserModel`: :meth:`resolve` checks
    everything once, :meth:`build` makes fresh instances, :meth:`identity` keys them."""

    def __init__(self, role: str, name: str | None, weights: str | None = None, *, scale: int = 1) -> None:
        self.role = role
        self.name = name
        self.weights = str(Path(weights).expanduser().resolve()) if weights else None
        self.scale = int(scale)
        self.path = name or "detected"
        self._factory = None
        self._identity: dict[str, Any] | None = None
        self._kwargs: dict[str, Any] | None = None
        self._arch: Architecture | None = None
        self._size: tuple[int, int] = (1, 0)
        self._detected: str | None = None
        self._preset: str | None = None
        if name is not None:
            self._arch, self._preset, overrides = parse_name(name, role)
            self._kwargs = constructor_arguments(self._arch, self._preset, overrides, self.scale, role)

    @classmethod
    def resolve(cls, role: str, factory: str | None, weights: str | None = None, *, scale: int = 1,  # type: ignore[override]
                task_name: str = "the task", profile: Any = None) -> FieldModel:
        """A checked model of the field: the name parses, spandrel imports, a checkpoint is detected (and is of
        the named family, when a name is given too) with the task's scale, and the model answers every probe
        size with exactly scale times it."""
        if weights and role != "teacher":
            raise BenchError(f"--weights is the teacher's checkpoint; a --{role} is always trained by the suite.")
        if factory is None:
            require_spandrel(f"--weights {Path(weights).name if weights else ''} without --teacher (detecting the "
                             "architecture; or give --teacher PACKAGE.MODULE:FACTORY)")
        um = cls(role, factory, weights, scale=scale)
        if um._arch is not None:
            require_spandrel(f"--{role} {factory}")
        where = f"--weights {Path(um.weights).name}" if um.weights else f"--{role} {factory}"
        if um.weights:
            desc = detect(read_state_dict(um.weights, role), Path(um.weights).name)
            found = desc.architecture.id
            if um._arch is not None and found != um._arch.spandrel_id:
                raise BenchError(f"--weights {Path(um.weights).name} holds a {found} model, not the {um._arch.name} "
                                 f"({um._arch.spandrel_id}) that --{role} names; leave --{role} out to use it as "
                                 "detected.")
            if desc.scale != um.scale:
                raise BenchError(f"--weights {Path(um.weights).name} is a {found} of scale {desc.scale}, but "
                                 f"{task_name} has scale {um.scale}: use a x{um.scale} checkpoint, or a task of scale "
                                 f"{desc.scale} (--set task.scale={desc.scale}).")
            if desc.input_channels != 3 or desc.output_channels != 3:
                raise BenchError(f"--weights {Path(um.weights).name}: a {found} with {desc.input_channels} input and "
                                 f"{desc.output_channels} output channels; the suite's images are RGB (3 and 3).")
            um._arch = um._arch or BY_SPANDREL_ID.get(found)
            um._detected = found
            um._size = size_requirements(desc, where)
        else:
            model = build_architecture(um._arch, um._kwargs, role)
            desc = detect(model.state_dict(), f"the {um._arch.name} built here")  # spandrel's size requirements
            um._detected = desc.architecture.id
            um._size = size_requirements(desc, where)
        model = um.build()
        if not um.weights and not any(p.requires_grad for p in model.parameters()):
            raise BenchError(f"--{role} {factory} has no trainable parameters.")
        got = probe_scale(model, role, where)
        if got != um.scale:
            raise BenchError(f"{where} has scale {got} but {task_name} has scale {um.scale}.")
        probe_sizes(model, um.scale, probe_sides(profile, um.scale), role, where)
        um._identity = um._make_identity(model)
        return um

    def _make_identity(self, model: nn.Module) -> dict[str, Any]:
        params = self._kwargs if self._kwargs is not None and not self.weights else \
            getattr(model, "hyperparameters", None) or {}
        return {"factory": self.path, "architecture": getattr(self, "_detected", None), "params": _jsonable(params),
                "arch": architecture_hash(model), "weights": file_hash(self.weights) if self.weights else None}

    def build(self, *, weights: bool = True) -> nn.Module:
        """A fresh instance (eval mode) with padding hooks: the named architecture with random weights from
        torch's global generator (the suite seeds it), or the checkpoint's model as spandrel detects it (also
        for ``weights=False``: a checkpoint's architecture is known only from its weights)."""
        if self.weights:
            desc = detect(read_state_dict(self.weights, self.role), Path(self.weights).name)
            model = desc.model
        else:
            assert self._arch is not None and self._kwargs is not None
            model = build_architecture(self._arch, self._kwargs, self.role)
        _annotate(model, *self._size, self._arch)
        sizing.install(model, permanent=True)
        model.eval()
        return model

    def identity(self) -> dict[str, Any]:
        """Name, spandrel architecture, constructor arguments (or detected hyper-parameters), architecture hash
        and weights hash: what the cache keys and the result rows hold."""
        if self._identity is None:
            self._identity = self._make_identity(self.build(weights=False))
        return self._identity


def resolve_model(role: str, name: str | None, weights: str | None, *, scale: int, task_name: str,
                  profile: Any) -> UserModel | None:
    """The cell's ``--teacher`` / ``--student``: None for the reference architecture, a
    :class:`bench.usermodel.UserModel` for ``PACKAGE.MODULE:FACTORY``, a :class:`FieldModel` for an
    architecture's name or (teacher only) a checkpoint given without ``--teacher``."""
    if name is None and not weights:
        return None
    if name is not None and not is_architecture_name(name):
        return UserModel.resolve(role, name, weights, scale=scale, task_name=task_name, profile=profile)
    return FieldModel.resolve(role, name, weights, scale=scale, task_name=task_name, profile=profile)


def listing(counts: bool = True) -> list[str]:
    """``bench list models``: every architecture with its licence, scales, feature layers and presets (with
    parameter counts, built once each, where spandrel imports and ``counts``)."""
    problem = spandrel_problem()
    out = ["models:  (--teacher NAME / --student NAME, NAME(key=value,...) for other sizes; --weights FILE alone: "
           "a checkpoint, detected)"]
    if problem:
        out.append(f"  spandrel does not import here ({problem}); install the group: {INSTALL_HINT}")
    for arch in ARCHITECTURES.values():
        out.append(f"  {arch.name}  [spandrel {arch.spandrel_id}]  {arch.purpose}; {arch.source}")
        out.append(f"      licence: {arch.licence}; scales: {', '.join(map(str, arch.scales))}; "
                   f"feature layers: {arch.layers_doc}")
        for preset, kwargs in arch.presets.items():
            count = ""
            if counts and not problem:
                scale = 1 if arch.scales == (1,) else 2
                with torch.random.fork_rng(devices=[]):
                    model = build_architecture(arch, arch.kwargs(dict(kwargs), scale))
                count = f"  {sum(p.numel() for p in model.parameters()):,} parameters at x{scale}"
            default = " (default)" if preset == arch.default else ""
            out.append(f"      {preset}{default}{count}: {_args_text(kwargs)}")
    return out
