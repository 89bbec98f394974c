"""Keep freed activation memory in the process (glibc's malloc), so CPU forwards stop page-faulting.

Why: glibc serves an allocation above its mmap threshold with fresh pages from the kernel and unmaps
them again on free. The threshold starts at 128 KiB and only grows as large blocks are freed, so a CPU
forward whose activations are a few MB each keeps asking the kernel for zeroed pages. Measured on the
2-core development machine, a RestorationCNN(32, 4) forward on one 256x256 image: about 31,000 minor
page faults and 121 ms per call with glibc's defaults, none and 71 ms with the settings below
(tests/test_bench_allocator.py). Training on small crops gains nothing measurable, so sweeps are not
faster. (PyTorch's CPU tuning guides suggest jemalloc or tcmalloc for the same reason; this needs no
extra library.)

The settings (``mallopt``): blocks up to 32 MiB (the largest threshold glibc accepts on 64-bit) come
from the heap, and the heap's free top is kept up to 1 GiB instead of being trimmed. The process then
holds on to its peak working set; tensors larger than 32 MiB are still mapped and unmapped.

Between jobs a sweep worker hands its free memory back (``malloc_trim``): otherwise it would keep its
largest job's peak, and joblib's worker pool restarts a worker whose memory grew by 300 MB as leaking.

Applied by the ``bench`` command and in its sweep workers, never on ``import bench`` (a library should
not change its host's allocator). Skipped where it cannot apply (not glibc), where the user set
glibc's own variables (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``) or
where ``BENCH_MALLOC=system`` asks for the system's defaults. Results do not depend on it: only speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_state: dict[str, Any] = {}


def keep_freed_memory() -> bool:
    """Apply the settings above once per process; True if they are in effect."""
    if "applied" not in _state:
        _state["applied"] = _apply()
    return _state["applied"]


def release_freed_memory() -> None:
    """Hand the heap's free memory back to the kernel (where :func:`keep_freed_memory` is in effect)."""
    if _state.get("applied"):
        _state["libc"].malloc_trim(0)


def _apply() -> bool:
    if os.environ.get("BENCH_MALLOC", "").lower() == "system" or any(v in os.environ for v in USER_SETTINGS):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    _state["libc"] = libc
    # mallopt returns 1 on success; the mmap threshold first, so a refused trim setting changes nothing
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
