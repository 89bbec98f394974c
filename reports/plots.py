"""Per-task figures: the trade-off of teacher drop against student drop, and student drop per defense.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend switch), sized and
lettered for print (10 pt text at the saved size, 200 dpi PNG; the bars' 300 dpi). Error bars are 95 %
Student-t intervals over seeds (:mod:`reports.stats`); a configuration with one seed has none.

- :func:`tradeoff`: one panel per attack; per defense family (every parameter fixed but the strength) a
  solid curve through its set strengths and a dashed one (hollow markers) through its calibrated budgets,
  sorted by teacher drop; points are labelled with their strength or budget. The grey diagonal marks
  equal drops: above it, a defense costs the student more than the teacher. The noise floor is a grey band
  over its student drop's interval, across the panel; points crowded near the origin are enlarged in an
  inset (the rule: :func:`zoom_region`).
- Defenses acting only on a channel an attack cannot see are left out of that attack's panel and bars
  (their student is the undefended one; the leaderboard lists them, unranked).
- :func:`bars`: horizontal bars of student drop per defense configuration, one colour per attack, ranked
  best first (:func:`bar_order`), each row labelled with its teacher cost; one paper column wide (3.5 in,
  1050 px at 300 dpi).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd

from reports.cells import format_value
from reports.stats import Estimate, mean_ci

PRINT_STYLE = {
    "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "legend.fontsize": 9, "figure.titlesize": 11, "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6,
    "lines.linewidth": 1.6, "lines.markersize": 6, "savefig.dpi": 200,
    "axes.spines.top": False,
    "svg.fonttype": "none", "pdf.fonttype": 42,  # text stays text (searchable, editable) in SVG and PDF
    "axes.spines.right": False,
    "text.parse_math": False,  # names are shown as written: a '$' in a parameter must not start mathtext
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
TEACHER_AXIS = "Teacher PSNR drop (dB)\n(cost to honest users)"
STUDENT_AXIS = "Student PSNR drop (dB)\n(harm to the attacker)"


@contextmanager
def style() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context(PRINT_STYLE):
        yield


def new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


# No timestamp in either vector format, and SVG's clip-path ids from a fixed salt instead of a random one:
# a regenerated report differs from the committed one only where its numbers do (diffs that review).
VECTOR_METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def rendered(fig: Any) -> dict[str, bytes]:
    """The figure as PNG (HTML, slides) and as PDF and SVG (vector: what a LaTeX paper includes)."""
    import matplotlib

    out = {"png": png_bytes(fig)}
    for fmt in ("pdf", "svg"):
        buf = io.BytesIO()
        with matplotlib.rc_context({"svg.hashsalt": "antidistill-bench"}):
            fig.savefig(buf, format=fmt, facecolor="white", metadata=VECTOR_METADATA[fmt])
        out[fmt] = buf.getvalue()
    return out


def interval_note(counts: list[int]) -> str:
    """What the error bars are, honestly: none drawn when every point rests on one seed pair."""
    n = min(counts) if counts else 0
    if max(counts or [0]) <= 1:
        return "one seed pair per point: no interval can be drawn (n = 1)"
    return f"error bars: 95 % CI over seed pairs (n = {n}" + (f" to {max(counts)}" if max(counts) != n else "") + ")"


def fit_lines(text: str, width_in: float, size_pt: float) -> str:
    """``text`` with each line wrapped to fit ``width_in`` inches at ``size_pt`` (a title wider than its figure
    is cut off at the edges; about 0.55 em per character): broken after "; " where that is enough, so
    that each clause stays whole, else between words."""
    import textwrap

    chars = max(20, int(width_in * 72 / (size_pt * 0.55)))
    out: list[str] = []
    for line in text.split("\n"):
        parts = [p + ";" for p in line.split("; ")[:-1]] + [line.split("; ")[-1]]
        current = ""
        for part in parts:
            joined = f"{current} {part}" if current else part
            if len(joined) <= chars or not current:
                current = joined
            else:
                out.append(current)
                current = part
        out += textwrap.wrap(current, chars) or [""]
    return "\n".join(out)


def jpeg_bytes(fig: Any, dpi: int, quality: int = 90) -> bytes:
    """For figures of photographs: a fraction of the PNG's size at no visible loss."""
    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg", dpi=dpi, facecolor="white", pil_kwargs={"quality": quality})
    return buf.getvalue()


def _colors(families: list[str]) -> dict[str, tuple[str, str]]:
    """A stable (colour, marker) per defense family; the undefended reference is black."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    out, i = {}, 0
    for f in families:
        if f == "none":
            out[f] = ("black", "*")
        else:
            out[f] = (cmap(i % 10), MARKERS[i % len(MARKERS)])
            i += 1
    return out


def legend_columns(labels: list[str], width_in: float) -> int:
    """As many legend columns as fit the figure's width (9 pt text: about 0.075 in per character)."""
    widest = max((len(t) for t in labels), default=1) * 0.075 + 0.6
    return max(1, min(len(labels), int(width_in // widest)))


def _ci(e: Estimate) -> float:
    return 0.0 if e.ci is None else e.ci


def _points(g: pd.DataFrame) -> list[dict[str, Any]]:
    """One point per defense configuration of a family: its estimates and a short label."""
    pts = []
    for _, c in g.groupby("config_id", sort=False):
        first = c.iloc[0]
        if not pd.isna(first["budget_db"]):
            text = f"budget {format_value(float(first['budget_db']))} dB"  # where it sits is its test cost
        elif isinstance(first["strength_param"], str) and not pd.isna(first["strength"]):
            text = f"{first['strength_param']}={format_value(float(first['strength']))}"
        else:
            text = ""
        pts.append({"teacher": mean_ci(c["teacher_drop_db"]), "student": mean_ci(c["student_drop_db"]),
                    "text": text})
    return sorted(pts, key=lambda p: (p["teacher"].mean, p["student"].mean))


def tradeoff(cells: pd.DataFrame, title: str) -> dict[str, bytes]:
    """Teacher drop (x) against student drop (y) for the finished cells of one (profile, task).

    Per attack panel, per defense family: a solid curve through its set strengths and a dashed curve with
    hollow markers through its calibrated budgets. Defenses the attack cannot see are left out (their
    student is the undefended one; the leaderboard lists them unranked)."""
    with style():
        return rendered(tradeoff_figure(cells, title))


#: label placement (points): gaps between a point and its label, tried nearest first, and the half-size of
#: the square kept clear around every marker
LABEL_GAPS = (3.0, 8.0, 14.0, 21.0, 29.0, 38.0, 50.0, 64.0)
MARKER_HALF = 4.0
#: directions tried at each gap, in order of preference: (x, y) signs, 0 = centred on the point
LABEL_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
#: a label pushed farther than this (points) from its point (beyond the second gap) gets a thin leader
#: line to it: that far, a crowded label could sit nearer another family's marker than its own
#: (docs/results/claims-v2, MAD's eps=0.008 beside ASVP's curve)
LEADER_FROM = 12.0
#: behind each point label: white, mostly opaque, padded less than the 1 pt margin placement keeps
LABEL_BACKING = {"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8}


def place_labels(ax: Any, labels: list[Any], points: list[tuple[float, float]], renderer: Any,
                 avoid: list[Any] = ()) -> None:
    """Move point labels (annotations in offset points, anchored at their points) so that no two overlap.

    Deterministic and greedy: labels are placed in the order given; each takes the first position, nearest
    gap first and then in the order of ``LABEL_DIRECTIONS``, that stays inside the axes, overlaps no label
    placed before it and, where possible, no marker (``points``, in data coordinates), and lies nearer its
    own point than any other (else a reader pairs it with the wrong point), and off the boxes ``avoid``
    (display units: a panel's inset) as off another label. Where every position overlaps a
    label or leaves the axes, the one doing so least is taken. A label placed more than ``LEADER_FROM``
    points from its point shows its leader line (its ``arrow_patch``, where it has one); a nearer one hides
    it. Positions are computed from the text's rendered size at the axes' current layout, so call this after
    the figure's layout is final (labels are kept out of the layout, so placing them does not change it)."""
    from matplotlib.transforms import Bbox

    if not labels:
        return
    per_pt = ax.figure.dpi / 72.0
    margin = 1.0 * per_pt
    to_display = ax.transData.transform
    centres = [(float(cx), float(cy)) for cx, cy in to_display(points)] if points else []
    markers = [Bbox.from_bounds(cx - MARKER_HALF * per_pt, cy - MARKER_HALF * per_pt, 2 * MARKER_HALF * per_pt,
                                2 * MARKER_HALF * per_pt) for cx, cy in centres]
    inside = ax.bbox
    placed: list[Any] = list(avoid)
    for label in labels:
        x, y = to_display(label.xy)
        others = [(cx, cy) for cx, cy in centres if math.hypot(cx - x, cy - y) > 0.5]
        box = text_box(label, renderer)
        w, h = box.width, box.height
        best: tuple[tuple[int, ...], tuple[float, float]] | None = None
        for ring, gap in enumerate(LABEL_GAPS):
            g = gap * per_pt
            for k, (sx, sy) in enumerate(LABEL_DIRECTIONS):
                left = x + g if sx > 0 else (x - g - w if sx < 0 else x - w / 2)
                bottom = y + g if sy > 0 else (y - g - h if sy < 0 else y - h / 2)
                cand = Bbox.from_bounds(left - margin, bottom - margin, w + 2 * margin, h + 2 * margin)
                # outside the axes a label lands on ticks and axis titles, which nothing here tracks: as bad
                # as covering another label
                clash = sum(_overlap(cand, other) for other in placed) + (0 if _within(cand, inside) else 1)
                blocked = sum(_overlap(cand, m) for m in markers)
                own = _distance(cand, x, y)
                foreign = int(any(_distance(cand, cx, cy) < own for cx, cy in others))
                score = (clash, blocked, foreign, ring, k)
                if best is None or score < best[0]:
                    best = (score, (left, bottom))
            if best is not None and best[0][:3] == (0, 0, 0):
                break
        assert best is not None
        left, bottom = best[1]
        label.set_horizontalalignment("left")
        label.set_verticalalignment("bottom")
        label.xyann = ((left - x) / per_pt, (bottom - y) / per_pt)
        placed.append(Bbox.from_bounds(left, bottom, w, h))
        if label.arrow_patch is not None:  # how far the label's box is from its point, in points
            label.arrow_patch.set_visible(_distance(Bbox.from_bounds(left, bottom, w, h), x, y) / per_pt > LEADER_FROM)


def _distance(box: Any, x: float, y: float) -> float:
    """From a point to the nearest point of a box (0 inside it), in display units."""
    return math.hypot(max(box.x0 - x, 0.0, x - box.x1), max(box.y0 - y, 0.0, y - box.y1))


def text_box(label: Any, renderer: Any) -> Any:
    """A label's text box in display units: an annotation's own extent also covers its leader line, shown
    or not."""
    from matplotlib.text import Text

    label.get_window_extent(renderer)  # positions the annotation for this renderer
    return Text.get_window_extent(label, renderer)


def _overlap(a: Any, b: Any) -> bool:
    """Whether two boxes share area (touching edges do not count)."""
    return min(a.x1, b.x1) > max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0)


def _within(a: Any, b: Any) -> bool:
    return a.x0 >= b.x0 and a.x1 <= b.x1 and a.y0 >= b.y0 and a.y1 <= b.y1


#: the noise floor's defense (the leaderboard's ``FLOOR_DEFENSE``): drawn as a band, not as a point
FLOOR_DEFENSE = "noise_floor"
#: the zoom rule of a trade-off panel (:func:`zoom_region`): an inset enlarges the points near the origin
#: where at least ``ZOOM_MIN_POINTS`` of them lie within ``ZOOM_SHARE`` of the panel's axis ranges of (0, 0)
ZOOM_SHARE = 0.1
ZOOM_MIN_POINTS = 3
#: the inset's sides tried, largest first, and its distance from the panel's edges, as fractions of the panel's
INSET_SIDES = (0.42, 0.36, 0.3)
INSET_MARGIN = 0.03
#: the room its tick labels take beside an inset, as a fraction of the panel's sides
INSET_TICKS = 0.08
#: the corners an inset may take, in order of preference
INSET_CORNERS = ("upper left", "upper right", "lower right", "lower left")


def _series(sub: pd.DataFrame, families: list[str], look: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """Per defense family of one panel: its set-strength points, then its calibrated ones."""
    out = []
    for fam in families:
        g = sub[sub["defense_base"] == fam]
        color, marker = look[fam]
        for calibrated, part in ((False, g[g["budget_db"].isna()]), (True, g[g["budget_db"].notna()])):
            if not part.empty:
                out.append({"fam": fam, "calibrated": calibrated, "pts": _points(part), "color": color,
                            "marker": marker, "name": f"{fam} @ budgets" if calibrated else fam})
    return out


def floor_estimates(sub: pd.DataFrame) -> list[tuple[str, Estimate]]:
    """(legend label, student-drop estimate) per noise-floor configuration of one panel's cells."""
    groups = list(sub[sub["defense"] == FLOOR_DEFENSE].groupby("config_id", sort=True))
    out = []
    for _, c in groups:
        e = mean_ci(c["student_drop_db"])
        what = "student drop ± 95 % CI" if e.ci else f"student drop, n = {e.n}: no interval"
        own = f" {c['defense_label'].iloc[0]}" if len(groups) > 1 else ""
        out.append((f"noise floor{own} ({what})", e))
    return out


def _draw_floors(ax: Any, floors: list[tuple[str, Estimate]]) -> dict[str, Any]:
    """Each noise floor as a grey band across the panel over its student drop's interval, a dotted line at
    its mean (the line alone where there is no interval); returns the legend handles."""
    handles = {}
    for label, e in floors:
        if not math.isfinite(e.mean):
            continue
        line = ax.axhline(e.mean, color="0.4", linewidth=0.9, linestyle=":", zorder=1, label=f"_{label}")
        if e.ci:
            handles[label] = ax.axhspan(e.mean - e.ci, e.mean + e.ci, facecolor="0.6", alpha=0.2, edgecolor="none",
                                        zorder=0.5, label=label)
        else:
            line.set_label(label)
            handles[label] = line
    return handles


def _draw_series(ax: Any, series: list[dict[str, Any]]) -> dict[str, Any]:
    """The curves of ``series`` on ``ax`` (labels: :func:`_annotate`); returns the legend handles."""
    handles: dict[str, Any] = {}
    for s in series:
        pts, fam = s["pts"], s["fam"]
        one = all(p["student"].n <= 1 for p in pts)  # no interval exists: draw none, not a zero cap
        h = ax.errorbar([p["teacher"].mean for p in pts], [p["student"].mean for p in pts],
                        xerr=None if one else [_ci(p["teacher"]) for p in pts],
                        yerr=None if one else [_ci(p["student"]) for p in pts],
                        color=s["color"], marker=s["marker"], capsize=3, elinewidth=1,
                        markersize=8 if fam == "none" else 6,
                        markerfacecolor="white" if s["calibrated"] else s["color"],
                        linestyle=("--" if s["calibrated"] else "-") if len(pts) > 1 else "none", label=s["name"],
                        zorder=3 if fam == "none" else 2)  # the undefended point on top of the others
        handles.setdefault(s["name"], h)
    return handles


def _annotate(ax: Any, series: list[dict[str, Any]], labelled: Any, fontsize: float = 8) -> tuple[
        list[Any], list[tuple[float, float]]]:
    """A label at each point of ``series`` that has a text and for which ``labelled(xy)`` holds (placed apart
    once the layout is final: :func:`place_labels`). Returns the labels and every point (finite means)."""
    labels: list[Any] = []
    points: list[tuple[float, float]] = []
    for s in series:
        for p in s["pts"]:
            xy = (p["teacher"].mean, p["student"].mean)
            if not all(math.isfinite(v) for v in xy):
                continue
            points.append(xy)
            if not (p["text"] and labelled(xy)):
                continue
            note = ax.annotate(p["text"], xy, textcoords="offset points", xytext=(3, 3), fontsize=fontsize,
                               color=s["color"], annotation_clip=False, zorder=4,
                               # error bars and curves are not avoided (markers are): a light backing keeps
                               # a crossed label legible
                               bbox=LABEL_BACKING,
                               # grey: in the family's colour it vanished on its own curve
                               arrowprops={"arrowstyle": "-", "color": "0.35", "linewidth": 0.6, "shrinkA": 1,
                                           "shrinkB": MARKER_HALF})
            note.set_in_layout(False)
            labels.append(note)
    return labels, points


def zoom_region(points: list[tuple[float, float]], xlim: tuple[float, float],
                ylim: tuple[float, float]) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The (x, y) limits of a trade-off panel's inset, or None where the panel needs none.

    The rule: the points (means) within ``ZOOM_SHARE`` of the panel's x range of x = 0 and within as much
    of its y range of y = 0 are "near the origin"; with ``ZOOM_MIN_POINTS`` or more of them, the inset
    spans their box and the origin, widened by 15 % of its side (at least 1 % of the panel's range) on
    every side."""
    xr, yr = xlim[1] - xlim[0], ylim[1] - ylim[0]
    near = [(x, y) for x, y in points if abs(x) <= ZOOM_SHARE * xr and abs(y) <= ZOOM_SHARE * yr]
    if len(near) < ZOOM_MIN_POINTS:
        return None

    def padded(values: list[float], full: float) -> tuple[float, float]:
        lo, hi = min(values), max(values)
        pad = max(0.15 * (hi - lo), 0.01 * full)
        return lo - pad, hi + pad

    return padded([x for x, _ in near] + [0.0], xr), padded([y for _, y in near] + [0.0], yr)


Box = tuple[float, float, float, float]


def inset_corner(ax: Any, boxes: list[Box], zoom: tuple[tuple[float, float], tuple[float, float]]) -> tuple[str, Box]:
    """Where on ``ax`` its inset goes: (corner, (left, bottom, width, height) in axes fractions).

    Each side of ``INSET_SIDES`` (largest first) in each corner of ``INSET_CORNERS`` (in that order) is
    scored by what the inset, with ``INSET_TICKS`` for its tick labels on its inner sides, covers: the
    zoomed region, then markers; the largest side covering neither wins, and among its corners the one
    crossing fewest error bars (``boxes``: each point's (x low, x high, y low, y high) in data units); where
    every placement covers one, the least covering (fewest markers, then bars), largest first."""
    from matplotlib.transforms import Bbox

    to_axes = (ax.transData + ax.transAxes.inverted()).transform
    (x0, x1), (y0, y1) = zoom
    region = Bbox(to_axes([(x0, y0), (x1, y1)]))
    marks = [tuple(to_axes([((lo + hi) / 2, (bl + bh) / 2)])[0]) for lo, hi, bl, bh in boxes]
    bars = [Bbox(to_axes([(lo, bl), (hi, bh)])) for lo, hi, bl, bh in boxes]

    def meets(a: Any, b: Any) -> bool:  # touching counts: an error bar is a box of no width
        return min(a.x1, b.x1) >= max(a.x0, b.x0) and min(a.y1, b.y1) >= max(a.y0, b.y0)

    best = None
    for s, side in enumerate(INSET_SIDES):
        for k, name in enumerate(INSET_CORNERS):
            left = INSET_MARGIN if name.endswith("left") else 1 - INSET_MARGIN - side
            bottom = INSET_MARGIN if name.startswith("lower") else 1 - INSET_MARGIN - side
            # with its tick labels, on its inner sides (tradeoff_figure puts them there)
            grow_l, grow_r = (0.0, INSET_TICKS) if name.endswith("left") else (-INSET_TICKS, 0.0)
            grow_b, grow_t = (-INSET_TICKS, 0.0) if name.startswith("upper") else (0.0, INSET_TICKS)
            rect = Bbox.from_extents(left + grow_l, bottom + grow_b, left + side + grow_r, bottom + side + grow_t)
            covered = int(meets(rect, region)), sum(rect.contains(x, y) for x, y in marks)
            score = (*covered, s, sum(meets(rect, b) for b in bars), k)
            if best is None or score < best[0]:
                best = (score, (name, (left, bottom, side, side)))
    assert best is not None
    return best[1]


def _frame(ax: Any) -> None:
    ax.axline((0, 0), slope=1, linestyle="--", color="0.5", linewidth=0.9, zorder=0)
    ax.axhline(0, color="0.3", linewidth=0.6, zorder=0)
    ax.axvline(0, color="0.3", linewidth=0.6, zorder=0)


def tradeoff_figure(cells: pd.DataFrame, title: str) -> Any:
    """The figure of :func:`tradeoff` (drawn inside :func:`style`), point labels placed apart
    (:func:`place_labels`).

    The noise floor is a grey band across each panel over its student drop's 95 % interval (a dotted line
    at its mean), not a point: its teacher cost is nil by design. Where points crowd near the origin
    (:func:`zoom_region`'s rule) an inset in the panel's least covered corner (:func:`inset_corner`)
    enlarges them, with their labels (the panel labels only the points outside it) and the floor's band; a
    grey frame on the panel marks the enlarged region."""
    from matplotlib.patches import Rectangle

    cells = cells[cells["attack_sees_defense"].astype(bool)]
    attacks = sorted(cells["attack_label"].unique())
    families = sorted(cells.loc[cells["defense"] != FLOOR_DEFENSE, "defense_base"].unique(),
                      key=lambda f: (f != "none", f))
    look = _colors(families)
    ncols = max(1, min(len(attacks), 2))
    nrows = max(1, math.ceil(len(attacks) / ncols))
    with style():
        fig = new_figure(4.6 * ncols, 3.8 * nrows + 0.6)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        handles: dict[str, Any] = {}
        floor_handles: dict[str, Any] = {}
        counts: list[int] = []
        zoomed = False
        # per panel or inset: its labels, the points they avoid and the boxes (insets) they keep off
        labelled: list[tuple[Any, list[Any], list[tuple[float, float]], list[Any]]] = []
        for ax, attack in zip(axes, attacks):
            sub = cells[cells["attack_label"] == attack]
            series = _series(sub, families, look)
            floors = floor_estimates(sub)
            counts += [p["student"].n for s in series for p in s["pts"]] + [e.n for _, e in floors]
            for name, h in _draw_floors(ax, floors).items():
                floor_handles.setdefault(name, h)
            _frame(ax)
            own = _draw_series(ax, series)
            for name, h in own.items():
                handles.setdefault(name, h)
            _, drawn = _annotate(ax, series, lambda xy: False)
            zoom = zoom_region(drawn, ax.get_xlim(), ax.get_ylim())

            def outside(xy: tuple[float, float], zoom: Any = zoom) -> bool:
                return zoom is None or not (zoom[0][0] <= xy[0] <= zoom[0][1] and zoom[1][0] <= xy[1] <= zoom[1][1])

            labels, points = _annotate(ax, series, outside)
            ax.set_title(f"attack: {attack}")
            ax.set_xlabel(TEACHER_AXIS)
            ax.set_ylabel(STUDENT_AXIS)
            avoid: list[Any] = []
            if zoom is not None:
                zoomed = True
                boxes = [(p["teacher"].mean - _ci(p["teacher"]), p["teacher"].mean + _ci(p["teacher"]),
                          p["student"].mean - _ci(p["student"]), p["student"].mean + _ci(p["student"]))
                         for s in series for p in s["pts"]]
                ax.set_xlim(ax.get_xlim())  # the panel keeps the limits the inset was decided on
                ax.set_ylim(ax.get_ylim())
                corner, bounds = inset_corner(ax, boxes, zoom)
                inset = ax.inset_axes(bounds, zorder=5)
                inset.set_facecolor("white")
                _draw_floors(inset, floors)
                _frame(inset)
                _draw_series(inset, series)
                near, near_points = _annotate(inset, series, lambda xy: not outside(xy), fontsize=7)
                inset.set_xlim(*zoom[0])
                inset.set_ylim(*zoom[1])
                inset.tick_params(labelsize=7, length=2, pad=1)
                # tick labels on the inset's inner sides: on its outer ones they would cover the panel's
                if corner.endswith("left"):
                    inset.yaxis.tick_right()
                if corner.startswith("lower"):
                    inset.xaxis.tick_top()
                inset.grid(True, alpha=0.3, linewidth=0.5)
                for side in inset.spines.values():
                    side.set_visible(True)
                    side.set_color("0.4")
                # the enlarged region framed on the panel (no connectors: they crossed the curves)
                ax.add_patch(Rectangle((zoom[0][0], zoom[1][0]), zoom[0][1] - zoom[0][0], zoom[1][1] - zoom[1][0],
                                       fill=False, edgecolor="0.3", linewidth=0.8, zorder=4))
                labelled.append((inset, near, near_points, []))
                avoid.append(inset)
            labelled.append((ax, labels, points, avoid))
        for ax in axes[len(attacks):]:
            ax.set_visible(False)
        fig.suptitle(fit_lines(f"{title}: teacher cost vs student harm\n({interval_note(counts)}; dashed grey: equal "
                               "drops" + ("; inset: the points near the origin, enlarged" if zoomed else "") + ")",
                               4.6 * ncols, 11))
        handles.update((k, v) for k, v in floor_handles.items() if k not in handles)
        if handles:
            fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                       ncols=legend_columns(list(handles), 4.6 * ncols), title="Defense")
        fig.draw_without_rendering()  # the final layout: label positions depend on the axes' size
        renderer = fig.canvas.get_renderer()
        for ax, labels, points, avoid in labelled:
            place_labels(ax, labels, [p for p in points if all(math.isfinite(v) for v in p)], renderer,
                         avoid=[a.get_window_extent(renderer) for a in avoid])
        return fig


#: the bar plot fits a paper's column: this wide (inches) at ``BAR_DPI`` (1050 px), at most this tall
BAR_WIDTH_IN = 3.5
BAR_DPI = 300
BAR_MAX_HEIGHT_IN = 7.0
#: per configuration (two lines of label: name, teacher cost), plus this much per further attack
BAR_ROW_IN = 0.42
BAR_ROW_PER_ATTACK_IN = 0.12
#: a bar's label is wrapped to this many characters a line (8 pt at a third of the column's width)
BAR_LABEL_CHARS = 22


def _bar_label(c: pd.Series) -> str:
    if c["defense"] == FLOOR_DEFENSE:
        return "noise floor"
    budget = "" if pd.isna(c["budget_db"]) else f" @ {format_value(float(c['budget_db']))} dB"
    return (c["defense_base"] + budget) if budget else str(c["defense_label"])


def bar_order(cells: pd.DataFrame) -> list[tuple[str, str, float]]:
    """(config id, label, teacher cost) per bar row of :func:`bars`, top to bottom.

    The ranking: the defenses with a bar, by their smallest mean student drop over the attacks that see
    them (each defense judged by the attack that harms it least), largest first; then the references, the
    noise floor and the undefended teacher; then the defenses no attack sees (no bar). Ties go by label.
    A row's teacher cost is its configuration's mean teacher drop on test over its cells: what its bars
    were read at."""
    seen = cells[cells["attack_sees_defense"].astype(bool)]
    rows = []
    for cid, c in cells.groupby("config_id", sort=False):
        first = c.iloc[0]
        mine = seen[seen["config_id"] == cid]
        drops = [mean_ci(g["student_drop_db"]).mean for _, g in mine.groupby("attack_label")]
        drops = [d for d in drops if math.isfinite(d)]
        reference = 1 if first["defense"] == FLOOR_DEFENSE else 2 if first["defense"] == "none" else 0
        group = 3 if not drops else reference
        cost = mean_ci(c["teacher_drop_db"]).mean
        rows.append(((group, -min(drops) if drops and group == 0 else 0.0, _bar_label(first)), str(cid),
                     _bar_label(first), cost))
    return [(cid, label, cost) for _, cid, label, cost in sorted(rows, key=lambda r: r[0])]


def _cost_text(cost: float) -> str:
    if not math.isfinite(cost):
        return "cost n/a"
    return f"cost {0.0 if abs(cost) < 0.005 else cost:.2f} dB"


def bars(cells: pd.DataFrame, title: str) -> dict[str, bytes]:
    """Student drop per defense configuration and attack, for one (profile, task): :func:`bars_figure`, the
    PNG at ``BAR_DPI``."""
    import matplotlib

    with style(), matplotlib.rc_context({"savefig.dpi": BAR_DPI}):
        return rendered(bars_figure(cells, title))


def bars_figure(cells: pd.DataFrame, title: str) -> Any:
    """Horizontal bars of student drop, one row per defense configuration (ranked: :func:`bar_order`, best
    first, the references and the unseen after), one bar per attack (colour), each row labelled with the
    teacher cost at which it was read. Sized for a paper's column: ``BAR_WIDTH_IN`` wide, ``BAR_ROW_IN``
    per row (more with several attacks), at most ``BAR_MAX_HEIGHT_IN`` tall. A defense the attack cannot
    see gets no bar for that attack."""
    import textwrap

    from matplotlib import colormaps

    seen = cells[cells["attack_sees_defense"].astype(bool)]
    order = bar_order(cells)
    attacks = sorted(cells["attack_label"].unique())
    n, k = len(order), len(attacks)
    height = 0.8 / k
    cmap = colormaps["tab10"]
    with style():
        counts = [mean_ci(g["student_drop_db"]).n for _, g in seen.groupby(["config_id", "attack_label"])]
        against = f" (attack {attacks[0]})" if k == 1 else ""
        heading = fit_lines(f"{title}: student drop per defense{against}, best on top\n(bars: means; "
                            f"{interval_note(counts)}; under each name the teacher cost it was read at)",
                            BAR_WIDTH_IN - 0.15, 9)
        head_in = 0.17 * (heading.count("\n") + 1) + 0.6 + (0.45 if k > 1 else 0.0)
        rows_in = n * (BAR_ROW_IN + BAR_ROW_PER_ATTACK_IN * (k - 1))
        fig = new_figure(BAR_WIDTH_IN, min(BAR_MAX_HEIGHT_IN, head_in + rows_in))
        ax = fig.subplots()
        for j, attack in enumerate(attacks):
            means, errs, ys = [], [], []
            for i, (cid, _, _) in enumerate(order):
                g = seen[(seen["config_id"] == cid) & (seen["attack_label"] == attack)]
                if g.empty:
                    continue
                e = mean_ci(g["student_drop_db"])
                ys.append(i + (j - (k - 1) / 2) * height)
                means.append(e.mean)
                errs.append(_ci(e))
            ax.barh(ys, means, height=height * 0.92, xerr=errs if any(errs) else None, capsize=2, color=cmap(j % 10),
                    label=attack, error_kw={"elinewidth": 0.8, "capthick": 0.8})
        ax.axvline(0, color="0.2", linewidth=0.8)
        ticks = ["\n".join(textwrap.wrap(label, BAR_LABEL_CHARS, break_on_hyphens=False)) + "\n" + _cost_text(cost)
                 for _, label, cost in order]
        ax.set_yticks(range(n), ticks, fontsize=8)
        ax.set_ylim(n - 0.5, -0.5)  # the best defense on top
        ax.set_xlabel("Student PSNR drop (dB)")
        ax.grid(axis="y", visible=False)
        fig.suptitle(heading, fontsize=9)  # centred on the figure: the axes sit right of the long labels
        if k > 1:
            fig.legend(title="Attack", loc="outside lower center", ncols=legend_columns(attacks, BAR_WIDTH_IN))
        return fig
