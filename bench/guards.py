"""Cheap checks that a cell fits before it runs: an estimate of the memory it needs.

:func:`check_memory` (called by :func:`bench.pipeline.resolve`, so ``bench run`` and every cell of a
``bench sweep`` plan are checked before anything trains) estimates what a cell holds at its peak and
refuses, in one line, a cell that cannot fit:

- **image pools**: the bundled photographs at ``profile.image_size`` (their shapes are known), each
  drawn ``profile.variants`` times (the calib pool ``calib_draws`` times), degraded and clean, float32.
  Pools read from disk (``--data``) are left out: the layouts check their images' sizes.
- **queries**: the attack's queries and answers at ``profile.query_size`` (and the exposed features, for a
  feature-level attack), float32, twice (collected, then concatenated).
- **training**: a batch of ``profile.batch`` crops of ``profile.crop`` through the teacher or student,
  with backward: :data:`ACTIVATION_FACTOR` times the elements every module of the model outputs per
  input pixel (measured by one forward on a small input, so a user's own model is measured too).
- **inference**: one query batch, or the largest test image, through the teacher without gradients.

The cell needs pools + queries + the larger of training and inference; on CUDA that is compared with the
GPU's memory (the pools are also built on the host first), on the CPU with the machine's physical
memory (or a cgroup limit below it): the same cell is refused or not whatever else is running. The
factors are generous (measured peaks were 1.3-1.6x the module outputs; the estimate uses 4x): a refusal
means the cell cannot fit. ``BENCH_NO_MEMORY_CHECK=1`` skips the check (an environment variable, not a
profile field, so it changes no cell's identity).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench import BenchError

#: the environment variable that skips :func:`check_memory`
OVERRIDE = "BENCH_NO_MEMORY_CHECK"
#: training bytes per byte of module outputs (activations kept for backward, their gradients, workspaces)
ACTIVATION_FACTOR = 4
#: inference bytes per byte of the widest module output (input, output and a few live intermediates)
INFERENCE_FACTOR = 3
#: copies of a training batch's images held at once (crops, stacked batch, prediction, gradient)
IO_FACTOR = 4
FLOAT = 4  # bytes per element (float32)
#: (H, W) of the bundled photographs (bench.data._load_raw), so the pools are sized without loading them
SOURCE_SHAPES: dict[str, tuple[int, int]] = {
    "rocket": (427, 640), "retina": (1411, 1411), "hubble_deep_field": (872, 1000), "brick": (512, 512),
    "moon": (512, 512), "clock": (300, 400), "page": (191, 384), "chelsea": (300, 451),
    "immunohistochemistry": (512, 512), "grass": (512, 512), "text": (172, 448), "cell": (660, 550),
    "motorcycle_left": (500, 741), "coins": (303, 384), "astronaut": (512, 512), "coffee": (400, 600),
    "camera": (512, 512), "gravel": (512, 512),
}
_PROBE = (24, 32)


@dataclass(frozen=True)
class Footprint:
    """What a model's forward holds, in elements per input pixel of one image."""

    total: float  # every leaf module's output, summed
    widest: float  # the largest single module output
    layers: dict[str, float]  # each named module's output


@torch.no_grad()
def footprint(model: nn.Module) -> Footprint:
    """Measured by one eval-mode forward on a small CPU input."""
    sizes: dict[str, int] = {}
    leaves: set[str] = set()

    def hook(name: str):
        def fn(module: nn.Module, args: tuple, output: Any) -> None:
            outs = output if isinstance(output, (tuple, list)) else (output,)
            sizes[name] = sizes.get(name, 0) + sum(t.numel() for t in outs if torch.is_tensor(t))
        return fn

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_hook(hook(name)))
        if not any(True for _ in module.children()):
            leaves.add(name)
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        model(torch.rand(1, 3, *_PROBE, device=device))
    except Exception:  # noqa: BLE001 - the model's own checks report a model that fails; size it as nothing
        sizes = {}
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    px = _PROBE[0] * _PROBE[1]
    return Footprint(total=sum(v for k, v in sizes.items() if k in leaves) / px,
                     widest=max(sizes.values(), default=0) / px,
                     layers={k: v / px for k, v in sizes.items()})


#: (teacher, student, the attack's exposed layers) by what makes them: a sweep plans thousands of cells
_MEASURED: dict[tuple, tuple[Footprint, Footprint, list[str]]] = {}


def _measure(cell: Any) -> tuple[Footprint, Footprint, list[str]]:
    def user(um: Any) -> tuple | None:
        return None if um is None else (um.path, um.weights, um.scale)

    task, attack = cell.task, cell.attack
    key = (type(task).__module__, type(task).__qualname__, repr(task.params), task.scale, repr(cell.profile),
           user(cell.teacher_model), user(cell.student_model), type(attack).__module__, type(attack).__qualname__,
           repr(attack.params))
    if key not in _MEASURED:
        with torch.device("cpu"):
            teacher_model = cell.teacher_arch()
            layers: list[str] = []
            if attack.access == "features":
                try:
                    layers = list(attack.feature_layers(teacher_model))
                except Exception:  # noqa: BLE001 - check_layers reports bad layers
                    layers = []
            _MEASURED[key] = (footprint(teacher_model), footprint(cell.student_arch()), layers)
    return _MEASURED[key]


def pool_bytes(profile: Any, scale: int) -> int:
    """The bundled pools of ``profile`` (bench.data.bundled_splits), degraded and clean, float32."""
    from bench.data import SOURCE_SPLITS

    def area(src: str) -> float:
        h, w = SOURCE_SHAPES.get(src, (512, 512))
        if profile.image_size:
            f = profile.image_size / min(h, w)
            h, w = max(1, round(h * f)), max(1, round(w * f))
        return float(h) * w

    total = 0.0
    for split, sources in SOURCE_SPLITS.items():
        draws = max(1, profile.variants)
        srcs = list(sources)
        if split == "calib":
            draws = max(1, profile.calib_draws or profile.variants)
            if profile.calib_pool == "calib+owner":
                srcs += list(SOURCE_SPLITS["owner"])
        total += sum(area(s) for s in srcs) * draws * 3 * (1 + 1 / scale**2) * FLOAT
    return int(total)


def _largest_test_area(profile: Any) -> float:
    from bench.data import SOURCE_SPLITS

    out = 0.0
    for src in SOURCE_SPLITS["test"]:
        h, w = SOURCE_SHAPES.get(src, (512, 512))
        f = profile.image_size / min(h, w) if profile.image_size else 1.0
        out = max(out, h * f * w * f)
    return out


def available_memory(device: str) -> tuple[int, str]:
    """(bytes, what they are) the cell may use on ``device``: the GPU's memory, or the machine's
    physical memory (a cgroup limit when lower)."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        index = int(str(device)[5:]) if ":" in str(device) else 0
        return int(torch.cuda.get_device_properties(index).total_memory), f"{device}'s memory"
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 0
    if not total:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            total = 0
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < (total or 1 << 62):
            return int(text), "this container's memory limit"
    return int(total), "this machine's memory"


def estimate(cell: Any) -> dict[str, int]:
    """The bytes ``cell`` (a :class:`bench.pipeline.Cell`) needs at its peak, by part: ``pools``,
    ``queries``, ``training`` and ``inference``."""
    p, task, scale = cell.profile, cell.task, max(1, int(cell.task.scale))
    teacher, student, layers = _measure(cell)
    bundled = getattr(task, "source", None) is None and not getattr(task, "requires_data", False)
    pools = pool_bytes(p, scale) if bundled else 0

    in_crop = max(1, p.crop // scale)
    io = p.batch * 3 * (in_crop**2 + (in_crop * scale) ** 2) * FLOAT * IO_FACTOR
    trained = [student] if (cell.teacher_model is not None and cell.teacher_model.weights) else [teacher, student]
    training = max(int(ACTIVATION_FACTOR * fp.total * p.batch * in_crop**2 * FLOAT) for fp in trained) + io

    try:
        n_queries = int(cell.attack.budget(p))
    except Exception:  # noqa: BLE001 - an attack that cannot say is sized by the profile
        n_queries = p.query_budget
    q_in = max(1, p.query_size // scale)
    per_query = 3 * (q_in**2 + (q_in * scale) ** 2)
    per_query += sum(teacher.layers.get(name, 0.0) for name in layers) * q_in**2
    queries = int(n_queries * per_query * FLOAT * 2)

    test_area = _largest_test_area(p) / scale**2 if bundled else 0.0
    inference = int(INFERENCE_FACTOR * teacher.widest * max(p.query_batch * q_in**2, test_area) * FLOAT)
    return {"pools": pools, "queries": queries, "training": training, "inference": inference}


#: what to lower for each part of the estimate
FIELDS = {"pools": "profile.image_size or profile.variants", "queries": "profile.query_budget or profile.query_size",
          "training": "profile.batch or profile.crop", "inference": "profile.query_batch or profile.image_size"}


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(cell: Any) -> None:
    """One-line BenchError when ``cell`` cannot fit in memory (see the module docstring)."""
    if os.environ.get(OVERRIDE, "").strip().lower() in ("1", "true", "yes"):
        return
    parts = estimate(cell)
    need = parts["pools"] + parts["queries"] + max(parts["training"], parts["inference"])
    device = str(cell.spec.device)
    checks = [(need, *available_memory(device))]
    if device.startswith("cuda"):  # the pools are built on the host, then moved
        checks.append((parts["pools"], *available_memory("cpu")))
    for bytes_, have, what in checks:
        if have and bytes_ > have:
            top = max(parts, key=parts.get)
            listed = ", ".join(f"{k} {_gib(v)}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])
                               if v >= bytes_ / 100)
            raise BenchError(
                f"profile '{cell.profile.name}' with these settings needs an estimated {_gib(bytes_)} of memory "
                f"({listed}), more than {what} ({_gib(have)}); lower {FIELDS[top]} (--set {FIELDS[top].split()[0]}"
                f"=...), or set {OVERRIDE}=1 to run it anyway."
            )
