"""Your own teacher or student: ``PACKAGE.MODULE:FACTORY`` and optionally a weights file.

``bench run --teacher my_models:make_teacher [--weights teacher.pt]`` builds the teacher by calling
``FACTORY()`` (``FACTORY(scale=S)`` when it takes a ``scale`` argument: S is the task's scale), which
must return a ``torch.nn.Module`` mapping (N, 3, H, W) in [0, 1] to (N, 3, S*H, S*W). The module is
imported like ``python -m`` would (the current directory is searched last), from the command line only,
never from a results file.

- Weights are read with ``torch.load(weights_only=True)``: a state dict, or a checkpoint dict holding
  one under ``state_dict``, ``params_ema``, ``params`` or ``model``. They must match the model exactly
  (strict loading); a mismatch is a one-line error naming the missing / unexpected keys and the
  mismatched shapes, and so are NaN/inf values in them. With weights the teacher is used as it is;
  without, the suite trains it on ``owner`` exactly like the reference teacher (and caches it), so it
  must have trainable parameters (a student always must).
- A weights file in torch's zip format is checked before it is loaded (``torch.load`` checks no CRCs):
  its members may declare, uncompressed, at most :data:`ARCHIVE_FACTOR` times the model's own tensor
  bytes plus :data:`ARCHIVE_MARGIN` (a checkpoint may also hold an EMA copy or optimiser state; a zip
  bomb is refused before anything is inflated), and every member must match its CRC-32 (a damaged file
  is refused, not loaded with wrong numbers). A legacy (non-zip) torch file is loaded as before,
  unchecked: it carries no checksums.
- Identity (cache keys, result rows): the factory path, a hash of the architecture (class, ``repr`` and
  the names, shapes and dtypes of parameters and buffers) and a SHA-256 of the weights file. A change
  to ``forward`` that none of these shows needs ``--force``.
- Scale: a probe forward in eval mode on a 32x24 input gives the model's scale (output / input size);
  it must be an integer, the same on both axes, and equal the task's scale, and the output must be
  finite. Further probes (an odd 27x21 input, and the square training crop and query of the profile)
  must give exactly scale times their size: the suite feeds the model crops and whole images of any
  size.
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
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench import BenchError, sizing

#: checkpoint dict keys under which a state dict is looked for, in order
NESTED_KEYS = ("state_dict", "params_ema", "params", "model")
PROBE_SIZE = (24, 32)  # (H, W): rectangular, so a transposed output is caught
#: a second probe: odd sides (no multiple of 2, 4 or 8), so a model that only works on some sizes is caught
ODD_PROBE_SIZE = (21, 27)
#: the profile's crop and query sizes are probed up to this side (input pixels)
MAX_PROBE_SIDE = 256
#: what a weights archive may declare uncompressed: this many times the model's tensor bytes, plus the margin
ARCHIVE_FACTOR = 4
ARCHIVE_MARGIN = 1 << 20
#: weights archives already checked, by (path, size, mtime): a sweep builds the model many times
_CHECKED_ARCHIVES: set[tuple[str, int, int]] = set()


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
    check_archive(p, model, role)
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
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise BenchError(f"--weights: {p} holds NaN or inf values ({len(bad)} tensor(s): {_brief(bad)}); the --{role} "
                         "model would answer NaN: use weights from before training diverged.")
    model.load_state_dict(state)


def _mb(n: int) -> str:
    return f"{n} bytes" if n < 1000 else f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.1f} MB"


def check_archive(path: Path, model: nn.Module | None, role: str = "teacher", *, own_bytes: int | None = None) -> None:
    """A weights file in torch's zip format that is whole: its members declare no more bytes than a
    checkpoint of ``model`` can hold (checked before anything is inflated), and each matches its CRC-32.
    Without a model (a checkpoint whose architecture is detected from it), ``own_bytes`` stands for the
    model's tensor bytes. A non-zip (legacy) torch file passes unchecked. One-line BenchError otherwise."""
    try:
        st = path.stat()
        seen = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if seen in _CHECKED_ARCHIVES or not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            declared = sum(i.file_size for i in infos)
            own = int(own_bytes or 0) if model is None else \
                sum(t.numel() * t.element_size() for t in model.state_dict().values())
            limit = ARCHIVE_FACTOR * own + ARCHIVE_MARGIN
            if declared > limit:
                biggest = max(infos, key=lambda i: i.file_size)
                raise BenchError(
                    f"--weights: {path} declares {_mb(declared)} of contents uncompressed (member "
                    f"'{biggest.filename}': {_mb(biggest.file_size)}), more than a checkpoint of the --{role} model "
                    f"can hold ({_mb(limit)}: {ARCHIVE_FACTOR}x its {_mb(own)} of tensors + {_mb(ARCHIVE_MARGIN)}); "
                    "it was not read. Save the model's own weights: torch.save(model.state_dict(), PATH).")
            for info in infos:
                with zf.open(info) as fh:  # reads at most the declared size; a bad CRC raises at the end
                    while fh.read(1 << 20):
                        pass
    except BenchError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
        raise BenchError(f"--weights: {path} is damaged ({_one_line(exc)}); its bytes are not those that were "
                         "saved: copy or download it again (or save it again).") from None
    except OSError as exc:
        raise BenchError(f"--weights: cannot read {path} ({_one_line(exc)}).") from None
    _CHECKED_ARCHIVES.add(seen)


def architecture_hash(model: nn.Module) -> str:
    """A hash of what the model is: class, ``repr`` and parameter/buffer names, shapes and dtypes."""
    h = hashlib.sha256()
    cls = type(model)
    h.update(f"{cls.__module__}.{cls.__qualname__}\x1e{model!r}\x1e".encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\x1e".encode())
    h.update(f"size_multiple={sizing.size_multiple(model)}".encode())
    if sizing.size_minimum(model):  # only when declared, so the hashes of models that declare none stay
        h.update(f"size_minimum={sizing.size_minimum(model)}".encode())
    return h.hexdigest()[:16]


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _probe(model: nn.Module, size: tuple[int, int], who: str) -> torch.Tensor:
    """``model``'s answer (eval mode) to a (1, 3, H, W) input of uniform noise; one-line BenchError if it
    fails or returns something other than one (1, 3, h, w) tensor."""
    hin, win = size
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
            f"{who} fails on a 1x3x{hin}x{win} input ({_one_line(exc)}); if it needs input sides "
            "divisible by m, give it the attribute size_multiple = m."
        ) from None
    finally:
        model.train(was_training)
    if not torch.is_tensor(y) or y.dim() != 4 or y.shape[:2] != (1, 3):
        got = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise BenchError(f"{who} answers a (1, 3, {hin}, {win}) input with {got}; a restoration "
                         "model must return one (N, 3, scale*H, scale*W) tensor.")
    return y


@torch.no_grad()
def probe_scale(model: nn.Module, role: str = "teacher", name: str = "") -> int:
    """The model's scale (output side / input side), from one forward in eval mode on a small input,
    whose answer must be finite. ``name`` (the factory and weights file) is named in errors."""
    who = f"the --{role} model{' ' + name if name else ''}"
    hin, win = PROBE_SIZE
    y = _probe(model, PROBE_SIZE, who)
    hout, wout = y.shape[-2:]
    if hout % hin or wout % win or hout // hin != wout // win or hout < hin:
        raise BenchError(f"{who} answers a {win}x{hin} input with {wout}x{hout}, not an integer "
                         "scale (>= 1) of it; a restoration model must return (N, 3, scale*H, scale*W).")
    if not bool(torch.isfinite(y).all()):
        raise BenchError(f"{who} answers the probe input (1x3x{hin}x{win}, uniform noise in [0, 1]) with NaN or inf "
                         "values: the model is at fault, not a defense; check its weights and forward.")
    return hout // hin


def probe_sides(profile: Any, scale: int) -> list[tuple[int, int]]:
    """The input sizes a model is probed at besides :data:`PROBE_SIZE`: an odd size, and the square
    training crop and attacker query of ``profile`` (input pixels: the sides over ``scale``; up to
    :data:`MAX_PROBE_SIDE`)."""
    sizes = [ODD_PROBE_SIZE]
    if profile is not None:
        for side in (profile.crop, profile.query_size):
            s = max(1, int(side) // scale)
            if s <= MAX_PROBE_SIDE:  # larger ones are the memory check's (bench.guards), not a probe's
                sizes.append((s, s))
    return list(dict.fromkeys(sizes))


@torch.no_grad()
def probe_sizes(model: nn.Module, scale: int, sizes: Sequence[tuple[int, int]], role: str = "teacher",
                name: str = "") -> None:
    """Check that ``model`` answers every input size of ``sizes`` with exactly ``scale`` times it: the
    suite feeds models crops and whole images of any size, and a model that is right only at the probe
    size would fail after training. One line naming every size where input and output disagree."""
    who = f"the --{role} model{' ' + name if name else ''}"
    wrong = []
    for h, w in sizes:
        y = _probe(model, (h, w), who)
        hout, wout = y.shape[-2:]
        if (hout, wout) != (scale * h, scale * w):
            wrong.append(f"{w}x{h} -> {wout}x{hout} (not {scale * w}x{scale * h})")
    if wrong:
        pw, ph = PROBE_SIZE[1], PROBE_SIZE[0]
        raise BenchError(
            f"{who} answers {pw}x{ph} at scale {scale} but other input sizes wrongly: {'; '.join(wrong)}; the suite "
            "feeds it crops and whole images of any size: if it needs input sides divisible by m, give it the "
            "attribute size_multiple = m (the suite then pads and crops around it)."
        )


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
                task_name: str = "the task", profile: Any = None) -> UserModel:
        """A checked user model: factory imports and returns a module, weights match (and are finite),
        scale agrees, the output is finite and has the right size at other sizes too (an odd one, and
        ``profile``'s crop and query sizes when given), and a model the suite will train has trainable
        parameters (a student, or a teacher without weights)."""
        um = cls(role, factory, weights, scale=scale)
        model = um.build()
        name = factory + (f" (weights {Path(um.weights).name})" if um.weights else "")
        trained = role != "teacher" or not um.weights
        if trained and not any(p.requires_grad for p in model.parameters()):
            raise BenchError(
                f"the --{role} model {factory} has no trainable parameters, and the suite trains the {role}"
                f"{' (no --weights given)' if role == 'teacher' else ''}; give a model with parameters"
                f"{', or --weights for a teacher used as it is' if role == 'teacher' else ''}."
            )
        got = probe_scale(model, role, name)
        if got != um.scale:
            w, h = PROBE_SIZE[1], PROBE_SIZE[0]
            raise BenchError(
                f"the --{role} model {factory} has scale {got} (a {w}x{h} input gives {w * got}x{h * got}) but "
                f"{task_name} has scale {um.scale}; use a model or task of the same scale (e.g. --set "
                "task.scale=...)."
            )
        probe_sizes(model, um.scale, probe_sides(profile, um.scale), role, name)
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
