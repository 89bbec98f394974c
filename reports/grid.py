"""The visual grid: one test image through every model, one row per defense configuration.

Columns: input (SR: bicubic at output size), ground truth, teacher, served teacher, student stolen from
the undefended teacher, student stolen from the served model. The PNGs are the ones each cell saved
(``<home>/artifacts/<cell key>/samples/``, :func:`bench.pipeline.save_samples`). All rows show the same
seed, the smallest one every configuration has (else each row its own smallest), so the undefended
student is the same network on every row; a missing image is drawn as a labelled blank.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from reports.leaderboard import Table
from reports.plots import jpeg_bytes, new_figure, style

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


def grid(home: Path, chosen: list[tuple[str, pd.Series]], title: str) -> bytes:
    """The grid figure as JPEG bytes at ``GRID_DPI`` (rows: ``chosen``)."""
    rows = max(1, len(chosen))
    with style():
        fig = new_figure(1.4 * len(COLUMNS) + 2.2, 1.45 * rows + 0.8)
        axes = fig.subplots(rows, len(COLUMNS), squeeze=False)
        seeds = sorted({int(c["seed"]) for _, c in chosen})
        for i, (label, cell) in enumerate(chosen):
            folder = sample_dir(home, cell["key"])
            for j, (name, heading) in enumerate(COLUMNS):
                ax = axes[i, j]
                img = _read(folder / f"{name}.png")
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
                if i == 0:
                    ax.set_title(heading, fontsize=9)
                if j == 0:
                    ax.set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center", labelpad=6)
        seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
        fig.suptitle(f"{title}: one test image ({seed_text})")
        return jpeg_bytes(fig, GRID_DPI)
