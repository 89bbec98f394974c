"""Figures a reader can read (issue 33, item 5) and a report that keeps tasks apart (item 7): the noise floor
drawn as a band, crowded trade-off points enlarged in an inset, bars a paper column wide and ranked with
their teacher cost, the grid's zoom window where the degradation is and the grid's height capped, and
"no finished cells for ..." lines that compare only tables of one task. Stores are hand-written rows
(``Store.put_cell``), so every number is known."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bench.store import Store
from reports import build_report, plots
from reports import cells as cells_mod
from reports import grid as grid_mod
from reports.stats import mean_ci

STRENGTH = {"asvp": "h", "output_noise": "sigma", "mad": "eps", "noise_floor": "sigma"}


def _cell(key, defense, seed, *, student, teacher, strength=None, attack="vanilla_kd", task="derain"):
    params = {} if strength is None else {STRENGTH[defense]: strength}
    metrics = {"teacher_drop_db": teacher, "student_drop_db": student, "student_ssim_drop_pct": 10 * student,
               "teacher_psnr": 30.0, "served_psnr": 30.0 - teacher, "student_ref_psnr": 28.0,
               "student_psnr": 28.0 - student, "channels": "none" if defense == "none" else "answers",
               "student_shortcut": False, "queries_used": 16}
    return {"key": key, "task": task, "defense": defense, "attack": attack, "seed": seed, "profile": "smoke",
            "status": "done", "error": None, "metrics": metrics,
            "config": {"task": {"name": task, "version": "1", "params": {}},
                       "defense": {"name": defense, "version": "1", "params": params},
                       "attack": {"name": attack, "version": "1", "params": {}},
                       "seed": seed, "teacher_seed": 0, "budget_db": None, "profile": {"crop": 24}}}


#: the issue's picture: ASVP's strengths, MAD's and the floor all within a few hundredths of a dB of the
#: undefended star, one output-noise point far out. (defense, strength, teacher drop, student drop)
CROWDED = [("none", None, 0.0, 0.0), ("noise_floor", None, 0.0005, 0.01), ("asvp", 1.1, 0.01, 0.02),
           ("asvp", 1.5, 0.02, 0.04), ("asvp", 2.0, 0.03, 0.05), ("mad", 0.01, 0.02, 0.0),
           ("output_noise", 0.05, 3.0, 1.5)]
FLOOR_JITTER = (-0.03, 0.0, 0.06)


def _store(tmp_path, rows, seeds=(0, 1, 2), attacks=("vanilla_kd",)):
    store = Store(tmp_path / "s")
    for attack in attacks:
        for defense, strength, teacher, student in rows:
            for seed in seeds:
                jitter = FLOOR_JITTER[seed] if defense == "noise_floor" else 0.002 * seed
                store.put_cell(_cell(f"{attack}-{defense}{strength}-{seed}", defense, seed, student=student + jitter,
                                     teacher=teacher, strength=strength, attack=attack))
    return tmp_path / "s"


def _texts(ax):
    return sorted(t.get_text() for t in ax.texts)


# ------------------------------------------------------------------------------------- trade-off plots
def test_the_noise_floor_is_a_band_over_its_interval_not_a_point(tmp_path):
    cells = cells_mod.load(_store(tmp_path, CROWDED))
    with plots.style():
        fig = plots.tradeoff_figure(cells, "derain (profile smoke)")
    (ax,) = fig.axes
    floor = mean_ci(np.array([0.01 + j for j in FLOOR_JITTER]))
    bands = [p for p in ax.patches if p.get_label().startswith("noise floor")]
    assert len(bands) == 1, [p.get_label() for p in ax.patches]
    (band,) = bands
    assert "95 % CI" in band.get_label()
    low, high = sorted(band.get_bbox().get_points()[:, 1])  # axhspan: y in data units, x across the axes
    assert low == pytest.approx(floor.mean - floor.ci) and high == pytest.approx(floor.mean + floor.ci)
    # no marker for the floor: no curve labelled after it, and the legend names the band
    assert not [ln for ln in ax.lines if ln.get_label() == "noise_floor"]
    assert not [c for c in ax.containers if c.get_label() == "noise_floor"]
    (legend,) = fig.legends
    assert band.get_label() in [t.get_text() for t in legend.get_texts()]
    # one seed: no interval, a line at its mean, said so
    one = cells_mod.load(_store(tmp_path / "one", CROWDED, seeds=(0,)))
    with plots.style():
        (ax1,) = plots.tradeoff_figure(one, "t").axes
    assert not [p for p in ax1.patches if p.get_label().startswith("noise floor")]
    (line,) = [ln for ln in ax1.lines if ln.get_label().startswith("noise floor")]
    assert "no interval" in line.get_label() and line.get_ydata()[0] == pytest.approx(0.01 + FLOOR_JITTER[0])


def test_points_crowded_near_the_origin_are_enlarged_in_an_inset(tmp_path):
    cells = cells_mod.load(_store(tmp_path, CROWDED))
    with plots.style():
        fig = plots.tradeoff_figure(cells, "derain (profile smoke)")
        fig.canvas.draw()
    (ax,) = fig.axes
    (inset,) = ax.child_axes
    near = {"h=1.1", "h=1.5", "h=2", "eps=0.01"}
    assert set(_texts(inset)) == near and _texts(ax) == ["sigma=0.05"]  # each label drawn once, where it reads
    (x0, x1), (y0, y1) = inset.get_xlim(), inset.get_ylim()
    for _, _, teacher, student in CROWDED[:-1]:  # every crowded point (and the origin) inside, the far one out
        assert x0 < teacher < x1 and y0 < student + 0.002 < y1
    assert not x0 < 3.0 < x1
    assert [p for p in inset.patches if p.get_label().startswith("noise floor")]  # the band in the inset too
    # the inset's labels stay apart and inside it; the panel's keep off the inset
    renderer = fig.canvas.get_renderer()
    boxes = [plots.text_box(t, renderer) for t in inset.texts]
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if plots._overlap(a, b)]
    assert all(plots._within(b, inset.bbox) for b in boxes)
    assert not any(plots._overlap(plots.text_box(t, renderer), inset.bbox) for t in ax.texts)
    # the rule itself: three or more means within a tenth of the axis ranges of the origin
    assert plots.zoom_region([(0, 0), (0.05, 0.05), (0.09, 0.0), (1, 1)], (0, 1), (0, 1)) is not None
    assert plots.zoom_region([(0, 0), (0.05, 0.05), (0.2, 0.0), (1, 1)], (0, 1), (0, 1)) is None
    # points spread over the panel: no inset
    spread = [("none", None, 0.0, 0.0), ("asvp", 1.5, 1.0, 1.5), ("asvp", 2.0, 2.0, 2.2),
              ("output_noise", 0.05, 3.0, 0.5)]
    with plots.style():
        (ax2,) = plots.tradeoff_figure(cells_mod.load(_store(tmp_path / "spread", spread)), "t").axes
    assert not ax2.child_axes and set(_texts(ax2)) == {"h=1.5", "h=2", "sigma=0.05"}


def test_trade_off_vectors_stay_byte_stable_with_the_band_and_the_inset(tmp_path):
    cells = cells_mod.load(_store(tmp_path, CROWDED))
    first, second = plots.tradeoff(cells, "t"), plots.tradeoff(cells, "t")
    assert first["pdf"] == second["pdf"] and first["svg"] == second["svg"]


# ------------------------------------------------------------------------------------------ bar plots
BARS = [("none", None, 0.0, 0.0), ("noise_floor", None, 0.0005, 0.01), ("asvp", 1.5, 0.02, 0.3),
        ("asvp", 2.0, 0.05, 0.8), ("output_noise", 0.02, 1.43, 0.1), ("mad", 0.01, 0.4, 0.5)]


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def test_bars_fit_a_paper_column_ranked_by_student_drop_with_their_teacher_cost(tmp_path):
    cells = cells_mod.load(_store(tmp_path, BARS))
    out = plots.bars(cells, "derain (profile smoke)")
    width, height = _png_size(out["png"])
    assert width == round(plots.BAR_WIDTH_IN * plots.BAR_DPI) == 1050  # one column at 300 dpi
    assert height <= plots.BAR_MAX_HEIGHT_IN * plots.BAR_DPI
    with plots.style():
        fig = plots.bars_figure(cells, "derain (profile smoke)")
    (ax,) = fig.axes
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    names = [" ".join(t.splitlines()[:-1]) for t in ticks]
    # best defense first (largest student drop), the references after
    assert names == ["asvp (h=2)", "mad (eps=0.01)", "asvp (h=1.5)", "output_noise (sigma=0.02)", "noise floor", "none"]
    costs = [t.splitlines()[-1] for t in ticks]
    assert costs == ["cost 0.05 dB", "cost 0.40 dB", "cost 0.02 dB", "cost 1.43 dB", "cost 0.00 dB", "cost 0.00 dB"]
    bars = sorted(ax.patches, key=lambda p: p.get_y())  # top row first (the y axis runs downwards)
    drops = [b.get_width() for b in bars]
    assert drops == pytest.approx([0.802, 0.502, 0.302, 0.102, 0.01 + np.mean(FLOOR_JITTER), 0.002])
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # inverted: the first row on top
    # several attacks: ranked by the attack that harms a defense least; every bar row still fits
    store = Store(_store(tmp_path / "two", BARS, attacks=("vanilla_kd", "finetune")))
    for seed in range(3):  # against finetune, asvp h=2 is the weakest
        store.put_cell(_cell(f"finetune-asvp2.0-{seed}", "asvp", seed, student=0.05, teacher=0.05, strength=2.0,
                             attack="finetune"))
    two = cells_mod.load(tmp_path / "two" / "s")
    with plots.style():
        (ax2,) = plots.bars_figure(two, "t").axes
    names2 = [" ".join(t.get_text().splitlines()[:-1]) for t in ax2.get_yticklabels()]
    assert names2[:2] == ["mad (eps=0.01)", "asvp (h=1.5)"] and names2[-2:] == ["noise floor", "none"]
    assert _png_size(plots.bars(two, "t")["png"])[0] == 1050


def test_a_report_shows_bars_at_their_dpi(tmp_path):
    rep = build_report(_store(tmp_path, BARS), tmp_path / "out", ("plots",), progress=False)
    (bars,) = [f for f in rep.figures if f.kind == "bars"]
    assert bars.dpi == plots.BAR_DPI and _png_size(bars.image)[0] == 1050
    assert _png_size((tmp_path / "out" / "plots" / "bars-derain-smoke.png").read_bytes())[0] == 1050


# --------------------------------------------------------------------------------------- visual grid
def _localised(size=64):
    """A target with its detail top left, an input whose rain falls bottom right, on flat ground."""
    target = np.full((size, size, 3), 90.0)
    checker = (np.indices((16, 16)).sum(0) % 2) * 160.0 + 40
    target[0:16, 0:16] = checker[..., None]
    degraded = target.copy()
    streaks = np.zeros((16, 16))
    streaks[:, ::3] = 120.0  # vertical rain streaks
    degraded[44:60, 44:60] += streaks[..., None]
    return target.astype(np.uint8), np.clip(degraded, 0, 255).astype(np.uint8)


def test_the_zoom_window_is_where_the_input_is_degraded():
    target, degraded = _localised()
    assert grid_mod.detail_window(target) == (0, 0, 16, 16)  # detail alone would zoom on a clean patch
    assert grid_mod.degradation_window(degraded, target) == (44, 44, 16, 16)
    # no input to compare (missing, another size, identical): the most detailed window, as before
    assert grid_mod.degradation_window(None, target) == (0, 0, 16, 16)
    assert grid_mod.degradation_window(degraded[:32], target) == (0, 0, 16, 16)
    assert grid_mod.degradation_window(target, target) == (0, 0, 16, 16)


def _write_samples(folder, target, degraded, noise):
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("teacher", "served", "student_ref", "student"):
        img = np.clip(target + rng.normal(0, noise, target.shape), 0, 255).astype(np.uint8)
        iio.imwrite(folder / f"{name}.png", img)
    iio.imwrite(folder / "target.png", target)
    iio.imwrite(folder / "input.png", degraded)


def _grid_store(tmp_path, n):
    """n configurations of one table, each with its sample images."""
    home = tmp_path / "s"
    store = Store(home)
    target, degraded = _localised()
    rows = [("none", None)] + [("asvp", 1.0 + 0.1 * i) for i in range(1, n)]
    for i, (defense, strength) in enumerate(rows):
        key = f"k{i}"
        store.put_cell(_cell(key, defense, 0, student=0.01 * i, teacher=0.01 * i, strength=strength))
        _write_samples(grid_mod.sample_dir(home, key), target, degraded, 3 + i % 4)
    return home


def test_the_grid_zooms_on_the_rain_and_its_input_crop_is_not_lossless(tmp_path):
    from matplotlib.patches import Rectangle

    home = _grid_store(tmp_path, 2)
    rep = build_report(home, tmp_path / "out", ("md",), progress=False)
    chosen = grid_mod.chosen_cells(rep.tables[0], rep.cells)
    with grid_mod.style():
        fig = grid_mod.grid_figure(home, chosen, "t")
    axes = np.array(fig.axes).reshape(-1, len(grid_mod.COLUMNS))
    names = [n for n, _ in grid_mod.COLUMNS]
    (outline,) = [p for p in axes[0, names.index("target")].patches if isinstance(p, Rectangle)]
    assert (outline.get_x() + 0.5, outline.get_y() + 0.5) == (44, 44)  # (left, top) of the rain's window
    caption = axes[1, names.index("input")].get_xlabel()
    assert caption.startswith("crop ") and caption != "crop 100.00 dB"
    assert float(caption.split()[1]) < 30


@pytest.mark.parametrize("n, tile", [(2, grid_mod.TILE_IN), (6, grid_mod.TILE_IN), (8, None), (14, None)])
def test_grid_layout_keeps_the_grid_under_its_cap(n, tile):
    shown, side = grid_mod.grid_layout(n)
    assert shown == n
    height = 2 * (side + grid_mod.CAPTION_IN) * n + grid_mod.HEADER_IN
    assert height * grid_mod.GRID_DPI <= grid_mod.GRID_MAX_HEIGHT_PX
    assert side == tile if tile else grid_mod.MIN_TILE_IN <= side < grid_mod.TILE_IN
    # too many to fit at the smallest tile: the first ones that fit, at that tile
    shown, side = grid_mod.grid_layout(40)
    assert side == grid_mod.MIN_TILE_IN and 0 < shown < 40
    assert (2 * (side + grid_mod.CAPTION_IN) * shown + grid_mod.HEADER_IN) * grid_mod.GRID_DPI <= 3000


def test_a_grid_of_many_configurations_is_capped_at_3000_px(tmp_path):
    from reports.html import image_size

    home = _grid_store(tmp_path, 14)  # the smoke grid of the issue: 14 rows, 6384 px tall before
    rep = build_report(home, tmp_path / "out", ("plots",), progress=False)
    (figure,) = [f for f in rep.figures if f.kind == "grid"]
    width, height = image_size(figure.image)
    assert figure.filename.endswith(".jpg") and 2000 < height <= grid_mod.GRID_MAX_HEIGHT_PX == 3000
    assert width <= 1500
    # beyond what fits, rows are left out and the title says so
    chosen = grid_mod.chosen_cells(rep.tables[0], rep.cells)
    shown, _ = grid_mod.grid_layout(40)
    many = (chosen * 3)[:40]
    with grid_mod.style():
        fig = grid_mod.grid_figure(home, many, "t")
    assert len(fig.axes) == 2 * shown * len(grid_mod.COLUMNS)
    assert f"the first {shown} of 40 configurations" in fig.get_suptitle().replace("\n", " ")
    assert fig.get_figheight() * grid_mod.GRID_DPI <= 3000


# ----------------------------------------------------------------------------------- what is missing
def test_missing_configurations_are_compared_within_one_task_only(tmp_path):
    """A derain sweep and a folder-task run: the folder table once listed every derain configuration as
    "no finished cells for ...". Within derain, an attack that lacks a configuration still says so."""
    store = Store(tmp_path / "s")
    for seed in range(2):
        for defense, strength in (("none", None), ("asvp", 1.5), ("output_noise", 0.02), ("noise_floor", None)):
            store.put_cell(_cell(f"d-{defense}-{seed}", defense, seed, student=0.1, teacher=0.1, strength=strength))
        store.put_cell(_cell(f"f-none-{seed}", "none", seed, student=0.0, teacher=0.0, task="folder"))
        store.put_cell(_cell(f"ft-none-{seed}", "none", seed, student=0.0, teacher=0.0, attack="finetune"))
    rep = build_report(tmp_path / "s", tmp_path / "out", ("md",), progress=False)
    lines = [m for m in rep.messages if "no finished cells for" in m]
    assert not [m for m in lines if m.startswith("folder")], lines
    (derain,) = lines
    assert derain.startswith("derain · finetune · profile smoke: no finished cells for ")
    for label in ("asvp (h=1.5)", "output_noise (sigma=0.02)", "noise floor"):
        assert label in derain
