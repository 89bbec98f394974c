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


def rendered(fig: Any) -> dict[str, bytes]:
    """The figure as PNG (HTML, slides) and as PDF and SVG (vector: what a LaTeX paper includes)."""
    out = {"png": png_bytes(fig)}
    for fmt in ("pdf", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, facecolor="white", metadata={"Date": None} if fmt == "pdf" else None)
        out[fmt] = buf.getvalue()
    return out


def interval_note(counts: list[int]) -> str:
    """What the error bars are, honestly: none drawn when every point rests on one seed pair."""
    n = min(counts) if counts else 0
    if max(counts or [0]) <= 1:
        return "one seed pair per point: no interval can be drawn (n = 1)"
    return f"error bars: 95 % CI over seed pairs (n = {n}" + (f" to {max(counts)}" if max(counts) != n else "") + ")"


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
        for ax, attack in zip(axes, attacks):
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
                                    linestyle=("--" if calibrated else "-") if len(pts) > 1 else "none", label=name)
                    handles.setdefault(name, h)
                    for i, p in enumerate(pts):
                        if p["text"]:  # alternate above/below so neighbouring labels overlap less
                            ax.annotate(p["text"], (p["teacher"].mean, p["student"].mean),
                                        textcoords="offset points", xytext=(5, 5 if i % 2 == 0 else -12), fontsize=8,
                                        color=color)
            ax.axline((0, 0), slope=1, linestyle="--", color="0.5", linewidth=0.9, zorder=0)
            ax.axhline(0, color="0.3", linewidth=0.6, zorder=0)
            ax.axvline(0, color="0.3", linewidth=0.6, zorder=0)
            ax.set_title(f"attack: {attack}")
            ax.set_xlabel(TEACHER_AXIS)
            ax.set_ylabel(STUDENT_AXIS)
        for ax in axes[len(attacks):]:
            ax.set_visible(False)
        fig.suptitle(f"{title}: teacher cost vs student harm\n({interval_note(counts)}; dashed grey: equal drops)")
        if handles:
            fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                       ncols=legend_columns(list(handles), 4.6 * ncols), title="Defense")
        return rendered(fig)


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
        fig = new_figure(max(4.5, 0.9 * n * max(1, k * 0.6) + 1.5), 4.2)
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
        ax.set_title(f"{title}: student drop per defense\n(bars: mean over seed pairs; {interval_note(counts)})")
        ax.legend(title="Attack", loc="best")
        return rendered(fig)
