"""Scores: a model's PSNR/SSIM on a pool (:func:`evaluate`), remembered beside a cached model
(:func:`scored`), the pool digest that keys them (:func:`pool_digest`, also in calibration keys) and the
report's sample images (:func:`save_samples`). Used by the cell (:mod:`bench.pipeline`) and by
calibration (:mod:`bench.calibrate`)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.api import TRACE_ALPHA, Defense, Task
from bench.cache import Artifacts, atomic_write_bytes, config_key
from bench.data import Pool, sample_pair_crops, stable_seed
from bench.metrics import psnr, ssim

SCORES_RECIPE = "2"  # bump when evaluate() or bench.metrics changes: scores of cached models are kept
#: attacker queries a cell scores the served model on (as many as the smoke test split has images)
ATTACKER_QUERIES = 8


def pool_digest(pool: Pool) -> str:
    """A digest of a pool's images (degraded and clean), so a calibration follows its data."""
    h = hashlib.blake2b(digest_size=12)
    for t in list(pool.degraded) + list(pool.clean):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def evaluate(model: nn.Module | None, pool: Pool, task: Task, *, against: nn.Module | None = None) -> dict[str, Any]:
    """Mean PSNR/SSIM over the pool's images (``model=None`` scores the degraded input itself), with
    each image's PSNR (``psnr_per_image``, in pool order). With ``against`` (the undefended teacher), also
    each answer's PSNR against that model's answer (``fidelity_per_image``: how faithfully honest users get
    the teacher's output; 100 dB where they are identical, the metric's MSE floor), in the same pass."""
    ps, ss, fs = [], [], []
    for x, y in zip(pool.degraded, pool.clean):
        x, y = x[None], y[None]
        pred = task.baseline(x) if model is None else model(x)
        pred = pred.clamp(0, 1)
        ps.append(psnr(pred, y, y_channel=task.y_channel, shave=task.shave))
        ss.append(ssim(pred, y, y_channel=task.y_channel, shave=task.shave))
        if against is not None:
            fs.append(psnr(pred, against(x).clamp(0, 1), y_channel=task.y_channel, shave=task.shave))
    scores = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "psnr_per_image": [float(p) for p in ps]}
    if against is not None:
        scores["fidelity_per_image"] = [float(f) for f in fs]
    return scores


def attacker_queries(pool: Pool, size: int, n: int = ATTACKER_QUERIES) -> Pool:
    """``n`` queries of the kind the attacks send (:func:`bench.kd.collect`): crops of ``size`` output pixels of
    the attacker pool's degraded images, without flips, with their clean crops as targets. Drawn from a fixed
    seed, the same for every cell, so the cost on them compares across defenses and seeds."""
    g = torch.Generator().manual_seed(stable_seed("attacker-queries", n, size))
    x, y = sample_pair_crops(pool.degraded, pool.clean, n, size, g, scale=pool.scale, augment=False,
                             setting="profile.query_size")
    return Pool("attacker-queries", list(x), list(y), [], pool.scale, pool.transforms)


def attacker_query_drop(served: nn.Module, teacher: nn.Module, pool: Pool, task: Task, size: int) -> list[float]:
    """Per attacker query (:func:`attacker_queries` of ``pool``): the undefended ``teacher``'s PSNR minus the
    ``served`` model's, both against the query's clean crop."""
    queries = attacker_queries(pool, size)
    plain, defended = evaluate(teacher, queries, task), evaluate(served, queries, task)
    return [t - s for t, s in zip(plain["psnr_per_image"], defended["psnr_per_image"])]


def scored(model: nn.Module | None, pool: Pool, task: Task, artifacts: Artifacts, model_key: str, who: str, *,
           force: bool = False, digest: str | None = None) -> dict[str, Any]:
    """:func:`evaluate`, remembered in the artifact folder of a cached model (``model_key``): the teacher
    and the reference and ground-truth students are shared by many cells, and scoring them again on the
    test images was a third of each cell's scoring time. Keyed by ``who``, the pool's images and the
    task's metric settings (``digest``: the pool's :func:`pool_digest`, when the caller has
    it); a file that cannot be read is recomputed."""
    # keyed by the weights actually scored (their saved digest), not only by the config that made them
    name = config_key({"kind": "scores", "recipe": SCORES_RECIPE, "who": who, "pool": digest or pool_digest(pool),
                       "y_channel": task.y_channel, "shave": task.shave,
                       "weights": artifacts.weights_digest(model_key)})
    path = artifacts.dir(model_key) / f"scores-{name}.json"
    if not force:
        try:
            cached = json.loads(path.read_text())
            scores = {"psnr": float(cached["psnr"]), "ssim": float(cached["ssim"]),
                      "psnr_per_image": [float(p) for p in cached["psnr_per_image"]]}
            if cached.get("sha256") == _scores_digest(scores):  # an edited file is recomputed
                return scores
            print(f"warning: cached scores {path} do not match their digest; recomputing them", file=sys.stderr)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    scores = evaluate(model, pool, task)
    # floats round-trip exactly through JSON
    atomic_write_bytes(path, json.dumps({**scores, "sha256": _scores_digest(scores)}).encode())
    return scores


def _scores_digest(scores: dict[str, Any]) -> str:
    body = json.dumps({k: scores[k] for k in ("psnr", "ssim", "psnr_per_image")}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


@torch.no_grad()
def trace_metrics(defense: Defense, pool: Pool, teacher: nn.Module,
                  models: dict[str, nn.Module | None]) -> dict[str, Any]:
    """A tracing defense's verdict (:meth:`bench.api.Defense.trace`) on each model of ``models`` (row-metric
    suffix -> model; None: absent) over the pool's images, against ``teacher``'s undefended answers:
    ``trace_stat``, ``trace_z``, ``trace_p`` + suffix, and ``traced`` (p < TRACE_ALPHA) for the stolen
    student (suffix "")."""
    inputs = [x[None] for x in pool.degraded]
    teacher_outputs = [teacher(x).clamp(0, 1) for x in inputs]
    out: dict[str, Any] = {}
    for suffix, model in models.items():
        if model is None:
            continue
        t = defense.trace([model(x).clamp(0, 1) for x in inputs], inputs, teacher_outputs)
        out.update({f"trace_stat{suffix}": t.stat, f"trace_z{suffix}": t.z, f"trace_p{suffix}": t.p})
        if not suffix:
            out["traced"] = bool(t.p < TRACE_ALPHA)
    return out


@torch.no_grad()
def save_samples(folder: Path, pool: Pool, task: Task, models: dict[str, nn.Module], index: int = 0) -> None:
    """PNGs of one test image through every model (input, target, teacher, served, students) for the
    report's visual grid; the input is shown at output size (SR: bicubic)."""
    import imageio.v3 as iio

    x, y = pool.degraded[index][None], pool.clean[index][None]
    images = {"input": task.baseline(x), "target": y}
    images.update({name: m(x) for name, m in models.items()})
    for name, img in images.items():
        arr = (img[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        atomic_write_bytes(folder / f"{name}.png", iio.imwrite("<bytes>", arr, extension=".png"))
