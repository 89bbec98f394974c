"""Progress (tqdm on stderr) with a stage label and an estimate.

On a terminal, live bars; anywhere else (a log file, a pipe, CI, ``nohup``) plain lines, one at the
start, then at most one every 30 s and one at the end, so a log shows a long run moving. ``BENCH_PROGRESS=0``
turns both off, ``1`` forces live bars. Sweeps turn the per-cell bars off in workers and show one bar over
jobs instead.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

#: seconds between two progress lines when stderr is not a terminal
LINE_INTERVAL = 30.0


def enabled(requested: bool = True) -> bool:
    if not requested:
        return False
    env = os.environ.get("BENCH_PROGRESS", "").strip().lower()
    return env not in ("0", "false", "no", "off")


def live() -> bool:
    """Live bars (redrawn in place) on a terminal or with BENCH_PROGRESS=1; else lines."""
    env = os.environ.get("BENCH_PROGRESS", "").strip().lower()
    return env in ("1", "true", "yes", "on") or sys.stderr.isatty()


def stage_of(desc: str | None) -> str:
    """A bar's stage: its description without a trailing count (``cells 3/15`` -> ``cells``)."""
    return re.sub(r"\s+\d+/\d+$", "", (desc or "").rstrip(": "))  # tqdm keeps a description as "NAME: "


class LineProgress(tqdm):
    """tqdm for a log file or a pipe: whole lines (never a carriage return, never cut to a width), one when a
    stage starts, then at most one every ``LINE_INTERVAL`` seconds, and the final state. tqdm redraws on
    every ``set_description``/``set_postfix`` whatever its ``mininterval``: a 15-cell smoke sweep wrote 76
    lines in 5 s, two per job; the rate limit is therefore here, in ``display``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.update(mininterval=LINE_INTERVAL, maxinterval=LINE_INTERVAL, ascii=True, dynamic_ncols=False,
                      ncols=None, leave=True)
        self._closing = False
        super().__init__(*args, **kwargs)

    def clear(self, nolock: bool = False) -> None:  # nothing to erase in a log
        return None

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing the bar: nothing to clear in a log (and no carriage return)
            return False
        # one line per state: the same count, stage and status again (a redraw at close) is not news
        state = (self.n, self.total, self.desc, self.postfix)
        if msg is None and state == getattr(self, "_last_state", None):
            return True
        if msg is None and not self._closing:
            now, stage = time.monotonic(), stage_of(self.desc)
            if stage == getattr(self, "_last_stage", None) and now - self._last_line < LINE_INTERVAL:
                return True  # not news yet: the state is drawn when due, or at the end
            self._last_stage, self._last_line = stage, now
        self._last_state = state
        text = (self.__str__() if msg is None else msg).strip("\r\n ")
        if text:
            self.fp.write(text + "\n")
            self.fp.flush()
        return True

    def close(self) -> None:
        # the final state once (if it is new), and none of tqdm's closing newline or redraw
        if not self.disable and self.leave:
            self._closing = True
            self.display()
        self.leave = False
        super().close()


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
        show: bool = True, unit: str = "it", leave: bool = False) -> Any:
    cls = tqdm if live() else LineProgress
    return cls(iterable, total=total, desc=desc, disable=not enabled(show), unit=unit,
               leave=leave, dynamic_ncols=True, file=sys.stderr)
