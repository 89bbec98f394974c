"""Progress bars (tqdm on stderr) with a stage label and an estimate.

Shown when stderr is a terminal; ``BENCH_PROGRESS=1`` forces them on (``0`` off). Sweeps turn the
per-cell bars off in workers and show one bar over cells instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def enabled(requested: bool = True) -> bool:
    if not requested:
        return False
    env = os.environ.get("BENCH_PROGRESS", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    return sys.stderr.isatty()


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
        show: bool = True, unit: str = "it", leave: bool = False) -> Any:
    return tqdm(iterable, total=total, desc=desc, disable=not enabled(show), unit=unit,
                leave=leave, dynamic_ncols=True, file=sys.stderr)
