"""Per-task figures: the trade-off of teacher drop against student drop, and student drop per defense.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend switch), sized and
lettered for print (10 pt text at the saved size, 200 dpi PNG). Error bars are 95 % Student-t intervals
over seeds (:mod:`reports.stats`); a configuration with one seed has none.

- :func:`tradeoff`: one panel per attack; per defense family (every parameter fixed but the strength) a
  solid curve through its set strengths and a dashed one (hollow markers) through its calibrated budgets,
  sorted by teacher drop; points are labelled with their strength or budget. The grey diagonal marks
  equal drops: above it, a defense costs the student more than the teacher.
- Defenses acting only on a channel an attack cannot see are left out of that attack's panel and bars
  (their student is the undefended one; the leaderboard lists them, unranked).
- :func:`bars`: grouped bars of student drop per defense configuration, one colour per attack.
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


def place_labels(ax: Any, labels: list[Any], points: list[tuple[float, float]], renderer: Any) -> None:
    """Move point labels (annotations in offset points, anchored at their points) so that no two overlap.

    Deterministic and greedy: labels are placed in the order given; each takes the first position, nearest
    gap first and then in the order of ``LABEL_DIRECTIONS``, that stays inside the axes, overlaps no label
    placed before it and, where possible, no marker (``points``, in data coordinates), and lies nearer its
    own point than any other (else a reader pairs it with the wrong point). Where every position overlaps a
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
    placed: list[Any] = []
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


def tradeoff_figure(cells: pd.DataFrame, title: str) -> Any:
    """The figure of :func:`tradeoff` (drawn inside :func:`style`), point labels placed apart
    (:func:`place_labels`)."""
    cells = cells[cells["attack_sees_defense"].astype(bool)]
    attacks = sorted(cells["attack_label"].unique())
    families = sorted(cells["defense_base"].unique(), key=lambda f: (f != "none", f))
    look = _colors(families)
    ncols = max(1, min(len(attacks), 2))
    nrows = max(1, math.ceil(len(attacks) / ncols))
    with style():
        fig = new_figure(4.6 * ncols, 3.8 * nrows + 0.6)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        handles = {}
        counts: list[int] = []
        labelled: list[tuple[Any, list[Any], list[tuple[float, float]]]] = []  # per panel: labels, points
        for ax, attack in zip(axes, attacks):
            labels: list[Any] = []
            points: list[tuple[float, float]] = []
            labelled.append((ax, labels, points))
            sub = cells[cells["attack_label"] == attack]
            for fam in families:
                g = sub[sub["defense_base"] == fam]
                color, marker = look[fam]
                for calibrated, part in ((False, g[g["budget_db"].isna()]), (True, g[g["budget_db"].notna()])):
                    if part.empty:
                        continue
                    pts = _points(part)
                    counts += [p["student"].n for p in pts]
                    name = f"{fam} @ budgets" if calibrated else fam
                    one = all(p["student"].n <= 1 for p in pts)  # no interval exists: draw none, not a zero cap
                    h = ax.errorbar([p["teacher"].mean for p in pts], [p["student"].mean for p in pts],
                                    xerr=None if one else [_ci(p["teacher"]) for p in pts],
                                    yerr=None if one else [_ci(p["student"]) for p in pts],
                                    color=color, marker=marker, capsize=3, elinewidth=1,
                                    markersize=8 if fam == "none" else 6,
                                    markerfacecolor="white" if calibrated else color,
                                    linestyle=("--" if calibrated else "-") if len(pts) > 1 else "none", label=name,
                                    # the undefended point on top: the noise floor's sits at about (0, 0) too
                                    zorder=3 if fam == "none" else 2)
                    handles.setdefault(name, h)
                    for p in pts:
                        xy = (p["teacher"].mean, p["student"].mean)
                        points.append(xy)
                        if p["text"]:  # placed apart once the layout is final (place_labels)
                            note = ax.annotate(p["text"], xy, textcoords="offset points", xytext=(3, 3),
                                               fontsize=8, color=color, annotation_clip=False, zorder=4,
                                               # error bars and curves are not avoided (markers are): a
                                               # light backing keeps a crossed label legible
                                               bbox=LABEL_BACKING,
                                               # grey: in the family's colour it vanished on its own curve
                                               arrowprops={"arrowstyle": "-", "color": "0.35", "linewidth": 0.6,
                                                           "shrinkA": 1, "shrinkB": MARKER_HALF})
                            note.set_in_layout(False)
                            labels.append(note)
            ax.axline((0, 0), slope=1, linestyle="--", color="0.5", linewidth=0.9, zorder=0)
            ax.axhline(0, color="0.3", linewidth=0.6, zorder=0)
            ax.axvline(0, color="0.3", linewidth=0.6, zorder=0)
            ax.set_title(f"attack: {attack}")
            ax.set_xlabel(TEACHER_AXIS)
            ax.set_ylabel(STUDENT_AXIS)
        for ax in axes[len(attacks):]:
            ax.set_visible(False)
        fig.suptitle(fit_lines(f"{title}: teacher cost vs student harm\n({interval_note(counts)}; dashed grey: equal "
                               "drops)", 4.6 * ncols, 11))
        if handles:
            fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                       ncols=legend_columns(list(handles), 4.6 * ncols), title="Defense")
        fig.draw_without_rendering()  # the final layout: label positions depend on the axes' size
        renderer = fig.canvas.get_renderer()
        for ax, labels, points in labelled:
            place_labels(ax, labels, [p for p in points if all(math.isfinite(v) for v in p)], renderer)
        return fig


def bars(cells: pd.DataFrame, title: str) -> dict[str, bytes]:
    """Student drop per defense configuration (x) and attack (colour), for one (profile, task). A defense the
    attack cannot see gets no bar for that attack."""
    from matplotlib import colormaps

    seen = cells[cells["attack_sees_defense"].astype(bool)]

    configs = (cells.assign(_ref=cells["defense"] != "none")  # the undefended reference first
               .sort_values(["_ref", "defense_base", "budget_db", "strength"], na_position="first")
               .drop_duplicates("config_id"))
    labels = []
    for _, c in configs.iterrows():
        budget = "" if pd.isna(c["budget_db"]) else f" @ {format_value(float(c['budget_db']))} dB"
        labels.append((c["defense_base"] + budget) if budget else c["defense_label"])
    attacks = sorted(cells["attack_label"].unique())
    n, k = len(labels), len(attacks)
    width = 0.8 / k
    cmap = colormaps["tab10"]
    with style():
        fig = new_figure(max(5.0, 0.9 * n * max(1, k * 0.6) + 1.5), 4.2)
        ax = fig.subplots()
        counts: list[int] = []
        for j, attack in enumerate(attacks):
            means, errs, xs = [], [], []
            for i, cid in enumerate(configs["config_id"]):
                g = seen[(seen["config_id"] == cid) & (seen["attack_label"] == attack)]
                if g.empty:
                    continue
                e = mean_ci(g["student_drop_db"])
                counts.append(e.n)
                xs.append(i + (j - (k - 1) / 2) * width)
                means.append(e.mean)
                errs.append(_ci(e))
            ax.bar(xs, means, width=width * 0.95, yerr=errs if any(errs) else None, capsize=3, color=cmap(j % 10),
                   label=attack, error_kw={"elinewidth": 1})
        ax.axhline(0, color="0.2", linewidth=0.8)
        ax.set_xticks(range(n), labels, rotation=30, ha="right")
        ax.set_ylabel("Student PSNR drop (dB)")
        ax.set_xlabel("Defense")
        ax.grid(axis="x", visible=False)
        heading = f"{title}: student drop per defense\n(bars: mean over seed pairs; {interval_note(counts)})"
        ax.set_title(fit_lines(heading, fig.get_figwidth() - 0.3, 10))
        ax.legend(title="Attack", loc="best")
        return rendered(fig)
