"""What a computation's numbers depend on besides its config: device, thread count and precision.

A convolution's result changes in its last bits with the device, the number of threads that split its
reductions, and the precision it runs in; a student trained on other numerics is another student. So
these are part of the key of every trained model and every cell (DESIGN: "numerics are identity"), and a
reference student trained with two threads is never paired with a defended one trained with one.
"""

from __future__ import annotations

from typing import Any

import torch


def numerics(threads: int = 0) -> dict[str, Any]:
    """The numerics a job runs with: ``threads`` torch threads (0: this process's current count), on
    the CPU in float32 (the only device and precision the suite runs on today)."""
    return {"device": "cpu", "threads": int(threads) or torch.get_num_threads(), "precision": "fp32"}
