"""The visual grid: one test image through every model, one row per defense configuration.

Columns: input (SR: bicubic at output size), ground truth, teacher, served teacher, student stolen from
the undefended teacher, student stolen from the served model. The PNGs are the ones each cell saved
(``<home>/artifacts/<cell key>/samples/``, :func:`bench.pipeline.save_samples`). All rows show the same
seed, the smallest one every configuration has (else each row its own smallest), so the undefended
student is the same network on every row; a missing image is drawn as a labelled blank.

Each tile is captioned with its PSNR against the ground truth on this image (8-bit PNGs, the task's
convention), and under each row a zoom row shows the same window of every column enlarged with
nearest-neighbour: the window, a quarter of the image's sides, where the input differs most from the
ground truth (:func:`degradation_window`: where the rain, noise or blur is; the most detailed window,
:func:`detail_window`, where the input cannot be compared), outlined on the ground-truth tile and
captioned with its own PSNR, so that differences of half a dB, invisible at full view, can be seen.

The JPEG is at most ``GRID_MAX_HEIGHT_PX`` tall: tiles shrink, then rows are left out
(:func:`grid_layout`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.leaderboard import Table
from reports.plots import fit_lines, jpeg_bytes, new_figure, style

# Panels are 1.4 in wide: at 140 dpi about the test images' own size (192 px), so nothing is upsampled; a
# JPEG of photographs is a fraction of a PNG's size (a 5-task report's page went from 42 MB to a few MB).
GRID_DPI = 140

COLUMNS = (("input", "Input"), ("target", "Ground truth"), ("teacher", "Teacher"), ("served", "Served teacher"),
           ("student_ref", "Student\n(undefended)"), ("student", "Student\n(defended)"))


def sample_dir(home: Path, key: str) -> Path:
    return Path(home) / "artifacts" / key / "samples"


def _read(path: Path) -> np.ndarray | None:
    import imageio.v3 as iio

    try:
        return np.asarray(iio.imread(path))
    except Exception:  # missing or unreadable: the grid says so instead of failing
        return None


def chosen_cells(table: Table, cells: pd.DataFrame) -> list[tuple[str, pd.Series]]:
    """(row label, cell) per configuration of ``table``, at one seed shared by every row where possible."""
    rows = list({r.config_id: r for r in table.rows if r.matched_cost is None and r.pairs}.values())  # as run
    common = set.intersection(*(set(r.pairs) for r in rows)) if rows else set()
    profile_id, task_id, attack_id = table.ids
    mine = cells[(cells["profile_id"] == profile_id) & (cells["task_id"] == task_id) & (cells["attack_id"] == attack_id)
                 & (cells["status"] == "done")]
    out = []
    for r in rows:
        g = mine[mine["config_id"] == r.config_id]
        teacher_seed, seed = min(common) if common else min(r.pairs)
        g = g[(g["seed"] == seed) & (g["teacher_seed"].fillna(0).astype(int) == teacher_seed)]
        if len(g):
            budget = "" if r.budget_db is None else f"\n@ {r.budget_text}"
            out.append((r.defense + budget, g.iloc[0]))
    return out


def missing_images(home: Path, chosen: list[tuple[str, pd.Series]], title: str) -> list[str]:
    """One line per grid that lacks sample images (drawn as blanks), naming the first folder at fault."""
    lacking = []
    for label, cell in chosen:
        folder = sample_dir(home, cell["key"])
        lost = [name for name, _ in COLUMNS if not (folder / f"{name}.png").is_file()]
        if lost:
            lacking.append((" ".join(label.split()), folder, lost))
    if not lacking:
        return []
    label, folder, lost = lacking[0]
    return [f"visual grid {title}: {len(lacking)} of {len(chosen)} row(s) lack sample images, drawn blank "
            f"(e.g. {label}: {', '.join(lost)}.png not in {folder}); re-run those cells with --force to save them."]


#: the zoom row shows a window of this fraction of the image's sides (1/16 of its area), enlarged to tile size
ZOOM_FRACTION = 4


def _best_window(energy: np.ndarray, fraction: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the window, ``1/fraction`` of the sides of ``energy`` (H, W), with the
    largest sum of ``energy``. Windows are tried on a grid of a quarter of their size; ties go to the first
    (top, then left), so the choice is deterministic."""
    rows, cols = energy.shape
    h, w = max(1, rows // fraction), max(1, cols // fraction)
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best, where = -1.0, (0, 0)
    for top in range(0, rows - h + 1, max(1, h // 4)):
        for left in range(0, cols - w + 1, max(1, w // 4)):
            total = (integral[top + h, left + w] - integral[top, left + w] - integral[top + h, left]
                     + integral[top, left])
            if total > best:
                best, where = total, (top, left)
    return where[0], where[1], h, w


def _grey(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float64)
    return img[..., :3].mean(axis=-1) if img.ndim == 3 else img


def detail_window(image: np.ndarray, fraction: int = ZOOM_FRACTION) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the window, ``1/fraction`` of the image's sides, with the most detail
    in ``image`` (H, W[, C]): the largest sum of squared luminance differences between neighbouring pixels
    (:func:`_best_window`'s search)."""
    grey = _grey(image)
    energy = np.zeros_like(grey)
    energy[:, 1:] += np.diff(grey, axis=1) ** 2
    energy[1:, :] += np.diff(grey, axis=0) ** 2
    return _best_window(energy, fraction)


def degradation_window(degraded: np.ndarray | None, target: np.ndarray,
                       fraction: int = ZOOM_FRACTION) -> tuple[int, int, int, int]:
    """The zoom row's window: where the degradation is, the window (``1/fraction`` of the sides) with the
    largest squared error of ``degraded`` (the input, at output size) against ``target``, summed over its
    pixels and channels (:func:`_best_window`'s search). A window chosen for detail alone showed the input
    identical to the ground truth ("crop 100.00 dB") where the rain fell elsewhere. Where there is no
    input of the target's size, or it equals the target, the most detailed window (:func:`detail_window`)."""
    target = np.asarray(target)
    if degraded is None or np.asarray(degraded).shape != target.shape:
        return detail_window(target, fraction)
    diff = np.asarray(degraded, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    error = (diff ** 2).sum(axis=-1) if diff.ndim == 3 else diff ** 2
    if not error.any():
        return detail_window(target, fraction)
    return _best_window(error, fraction)


def metric_settings(cell: pd.Series) -> tuple[bool, int]:
    """(y_channel, shave) of the cell's task, as its scores use them (SR: Y channel, ``scale`` pixels)."""
    import json

    from bench.registry import TASKS

    try:
        params = json.loads(cell.get("task_params") or "{}")
    except (TypeError, ValueError):
        params = {}
    try:
        cls = TASKS.get(str(cell["task"]))
    except Exception:  # an uninstalled task: RGB, no shave
        cls = None
    y = params.get("y_channel", getattr(cls, "y_channel", False))
    scale = params.get("scale", getattr(cls, "scale", 1))
    y = y if isinstance(y, bool) else False  # a property on the class: the parameter decides (absent: RGB)
    scale = int(scale) if isinstance(scale, (int, float)) and not isinstance(scale, bool) else 1
    return y, scale if scale > 1 else 0


def tile_psnr(image: np.ndarray, target: np.ndarray, *, y_channel: bool = False, shave: int = 0) -> float | None:
    """PSNR (dB) of an 8-bit image against the 8-bit ground truth, in the task's convention; None where the
    two cannot be compared (sizes differ, nothing left after the shave)."""
    import torch

    from bench.metrics import psnr

    if image.shape != target.shape or image.ndim != 3 or image.shape[-1] < 3:
        return None

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a[..., :3])).permute(2, 0, 1)[None].to(torch.float64) / 255

    try:
        return psnr(tensor(image), tensor(target), y_channel=y_channel, shave=shave)
    except ValueError:
        return None


def _tile(ax: Any, img: np.ndarray | None) -> None:
    if img is None:
        ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_facecolor("0.92")
    else:
        ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for side in ax.spines.values():
        side.set_visible(False)


def _cut(img: np.ndarray | None, window: tuple[int, int, int, int] | None,
         target: np.ndarray | None) -> np.ndarray | None:
    """The window of ``img`` (None where there is no image, no window, or a size other than the target's)."""
    if img is None or window is None or target is None or img.shape[:2] != target.shape[:2]:
        return None
    top, left, h, w = window
    return img[top:top + h, left:left + w]


def _caption(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} dB"


#: the grid's JPEG is at most this many pixels tall at ``GRID_DPI`` (a 14-configuration smoke grid was
#: 6384): :func:`grid_layout`'s rule shrinks the tiles to fit, down to ``MIN_TILE_IN``, then shows fewer rows
GRID_MAX_HEIGHT_PX = 3000
#: a tile's side (inches) at most and at least, the caption under each image row, the title above the
#: grid, the row labels' column, and the narrowest a column gets (its heading and captions fit)
TILE_IN = 1.4
MIN_TILE_IN = 0.5
CAPTION_IN = 0.2
HEADER_IN = 0.8
LABEL_IN = 2.2
COLUMN_MIN_IN = 0.95


def grid_layout(configs: int) -> tuple[int, float]:
    """(configurations shown, tile side in inches) of a grid of ``configs`` rows: two image rows each (the
    image and its zoom), a tile and its caption high, under a title.

    The rule: tiles of ``TILE_IN`` while the grid fits ``GRID_MAX_HEIGHT_PX`` at ``GRID_DPI``; else the
    tile side that makes it fit (rounded down to 0.01 in), down to ``MIN_TILE_IN``; below that, tiles of
    ``MIN_TILE_IN`` and only the first configurations that fit (the leaderboard's order: floor and best
    defenses first), which the title says."""
    cap = GRID_MAX_HEIGHT_PX / GRID_DPI
    n = max(1, configs)
    tile = min(TILE_IN, math.floor(((cap - HEADER_IN) / (2 * n) - CAPTION_IN) * 100) / 100)
    if tile >= MIN_TILE_IN:
        return configs, tile
    return max(1, int((cap - HEADER_IN) // (2 * (MIN_TILE_IN + CAPTION_IN)))), MIN_TILE_IN


def grid_figure(home: Path, chosen: list[tuple[str, pd.Series]], title: str) -> Any:
    """The grid figure (rows: ``chosen``), drawn inside :func:`reports.plots.style`.

    Per configuration two rows: the whole test image through every model, each tile captioned with its
    PSNR against the ground truth on this image (the task's convention: SR on Y with the border shaved),
    and under it the window where the input is most degraded (:func:`degradation_window`, a quarter of
    the sides, outlined on the ground-truth tile) enlarged with nearest-neighbour in every column,
    captioned with the PSNR of that window (RGB or Y, no shave), where half-dB differences can be seen.
    Sized by :func:`grid_layout` (at most ``GRID_MAX_HEIGHT_PX`` tall)."""
    from matplotlib.patches import Rectangle

    total = len(chosen)
    shown, tile = grid_layout(total)
    chosen = chosen[:shown]
    configs = max(1, len(chosen))
    fig = new_figure(max(tile, COLUMN_MIN_IN) * len(COLUMNS) + LABEL_IN, 2 * (tile + CAPTION_IN) * configs + HEADER_IN)
    axes = fig.subplots(2 * configs, len(COLUMNS), squeeze=False)
    seeds = sorted({int(c["seed"]) for _, c in chosen})
    for i, (label, cell) in enumerate(chosen):
        folder = sample_dir(home, cell["key"])
        images = {name: _read(folder / f"{name}.png") for name, _ in COLUMNS}
        target = images["target"]
        y_channel, shave = metric_settings(cell)
        window = degradation_window(images["input"], target) if target is not None else None
        for j, (name, heading) in enumerate(COLUMNS):
            img, ax, zoom = images[name], axes[2 * i, j], axes[2 * i + 1, j]
            crop = _cut(img, window, target)
            _tile(ax, img)
            _tile(zoom, crop)
            if name == "target":
                ax.set_xlabel("reference", fontsize=8)
                zoom.set_xlabel("reference", fontsize=8)
                if window is not None:
                    top, left, h, w = window
                    ax.add_patch(Rectangle((left - 0.5, top - 0.5), w, h, fill=False, edgecolor="yellow",
                                           linewidth=1.0))
            else:
                whole = tile_psnr(img, target, y_channel=y_channel, shave=shave) \
                    if img is not None and target is not None else None
                part = tile_psnr(crop, _cut(target, window, target), y_channel=y_channel) if crop is not None else None
                ax.set_xlabel(_caption(whole), fontsize=8)
                zoom.set_xlabel("crop " + _caption(part), fontsize=8)
            if i == 0:
                ax.set_title(heading, fontsize=9)
            if j == 0:
                ax.set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center", labelpad=6)
                zoom.set_ylabel(f"zoom ×{ZOOM_FRACTION}", fontsize=8, rotation=0, ha="right", va="center",
                                labelpad=6)
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    cut = (f"; the first {shown} of {total} configurations in the leaderboard's order (the grid is capped at "
           f"{GRID_MAX_HEIGHT_PX} px)") if shown < total else ""
    fig.suptitle(fit_lines(f"{title}: one test image ({seed_text}); under each tile its PSNR against the ground "
                           f"truth{cut}", fig.get_figwidth(), 11))
    return fig


def grid(home: Path, chosen: list[tuple[str, pd.Series]], title: str) -> bytes:
    """The grid figure (:func:`grid_figure`) as JPEG bytes at ``GRID_DPI``."""
    with style():
        return jpeg_bytes(grid_figure(home, chosen, title), GRID_DPI)
