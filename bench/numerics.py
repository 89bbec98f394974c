"""Where a job computes, and what its numbers depend on besides its config.

**The device.** A job (a cell, or one stage of a sweep) runs on one device, ``cpu`` or ``cuda[:N]``:
:func:`on_device` makes it torch's default device for the job, so every model, pool, query, defense
and metric of the job lands there, a plugin's own tensors included, without each call naming it. What
must stay on the CPU says so: the bundled data are built there (from numpy) and moved once per job;
models are initialised there (the same initial weights on every device) and then moved; the random
draws of crops and data order come from CPU generators.

**Numerics are identity.** A convolution's result changes in its last bits with the device and GPU
model, the number of threads that split its reductions, and the precision it runs in; a student trained
on other numerics is another student. So :func:`numerics` is part of the key of every trained model and
every cell (DESIGN: "numerics are identity"): a reference student trained on a CPU is never paired with a
defended student trained on a GPU, nor one trained with two threads with one trained with one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

import torch

from bench import BenchError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
#: what the training forward passes compute in (profile.precision): float32, or bfloat16 autocast
PRECISIONS = ("fp32", "bf16")
_PRECISION: ContextVar[str] = ContextVar("bench_precision", default="fp32")


def resolve_device(name: str | None) -> str:
    """``auto`` (CUDA where available, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` -> a device string; a
    one-line error when CUDA is asked for on a machine without it, or the name is not a device."""
    text = (name or "cpu").strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU"
            raise BenchError(f"--device {text}: this machine has no usable CUDA device (torch "
                             f"{torch.__version__}, {build}); use --device cpu, or install the CUDA build of "
                             "torch on a GPU machine (README: Running on GPUs).")
        if ":" in text and int(text[5:]) >= torch.cuda.device_count():
            raise BenchError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0; pick one of cuda:0..cuda:{torch.cuda.device_count() - 1}.")
        return text
    raise BenchError(f"--device: unknown device '{name}'; use {DEVICE_CHOICES}.")


def numerics(threads: int = 0, device: str = "cpu", precision: str = "fp32") -> dict[str, Any]:
    """The numerics a job runs with: ``threads`` torch threads (0: this process's current count) on
    ``device``, training in ``precision``. On CUDA the GPU model is named too (two GPUs of one model
    compute alike)."""
    num: dict[str, Any] = {"device": "cpu", "threads": int(threads) or torch.get_num_threads(),
                           "precision": precision}
    if str(device).startswith("cuda"):
        index = int(str(device)[5:]) if ":" in str(device) else 0
        num["device"] = "cuda"
        num["gpu"] = torch.cuda.get_device_name(index) if torch.cuda.is_available() else "unknown"
    return num


def make_reproducible(device: str) -> None:
    """On CUDA: deterministic kernels where torch has them (a warning names any that is not), and the
    cuBLAS workspace setting they need; it must be set before cuBLAS starts, so call this first."""
    if str(device).startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@contextmanager
def on_device(device: str | torch.device, *, reproducible: bool = True,
              precision: str = "fp32") -> Iterator[torch.device]:
    """Run the body with ``device`` as torch's default device (see the module docstring), training in
    ``precision`` (:func:`autocast`); a suite job is also made ``reproducible``
    (:func:`make_reproducible`; a user's own process, bench.protect, is not)."""
    if precision not in PRECISIONS:
        raise BenchError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    dev = torch.device(device)
    if reproducible:
        make_reproducible(str(dev))
    token = _PRECISION.set(precision)
    try:
        with torch.device(dev):
            yield dev
    finally:
        _PRECISION.reset(token)


def autocast(device: torch.device) -> Any:
    """The training forward pass's precision for the running job: bfloat16 autocast where the job's
    profile asks for it (``profile.precision=bf16``), else nothing (float32)."""
    if _PRECISION.get() == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def job_device() -> torch.device:
    """The device of the running job (torch's default device: :func:`on_device` sets it)."""
    return torch.get_default_device()
