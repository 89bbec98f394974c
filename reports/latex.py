"""The leaderboard as LaTeX booktabs tables, ready to paste into a paper (needs ``\\usepackage{booktabs}``).

Built here rather than with tabulate's ``latex_booktabs`` because the cells mix escaped names with
math (``$\\pm$``), which tabulate would escape too. Every name is escaped (:func:`escape`); numbers are
not. One ``table`` float per (profile, task, attack), with its caption, a ``\\label`` derived from the
names, each budget group headed by a spanning row (``\\midrule`` between groups) and the table's notes
below it. Sized (``\\small``, 3 pt column gaps) to fit a one-column article's text width.
"""

from __future__ import annotations

import re

from reports.leaderboard import ONE_SEED, UNSEEN, Row, Table, row_cells, trace_cell

_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "|": r"\textbar{}", "–": "--", "−": "--", "·": r"\textperiodcentered{}", "±": r"$\pm$",
    ONE_SEED: r"\dag{}", UNSEEN: r"\ddag{}",
}
_PATTERN = re.compile("|".join(re.escape(k) for k in _SPECIAL))
#: PSNR drops to 2 decimals (as restoration papers print PSNR), SSIM drop in % to 1
DECIMALS = {"teacher": 2, "student": 2, "ssim": 1, "fidelity": 1}
PREAMBLE = "% antidistill-bench leaderboard. Needs \\usepackage{booktabs} in the preamble.\n"


def escape(text: str) -> str:
    """``text`` as LaTeX prints it literally (specials escaped, a few Unicode signs as LaTeX commands)."""
    return _PATTERN.sub(lambda m: _SPECIAL[m.group(0)], str(text))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


_SHORT_CHANNELS = {"answers + features": "ans.+feat.", "answers": "ans.", "features": "feat."}


def _defense(label: str) -> str:
    """``name (k=v, ...)`` -> the name, then its parameters in a smaller size (keeps the column narrow)."""
    name, sep, params = label.partition(" (")
    return escape(name) + (f" {{\\scriptsize({escape(params)}}}" if sep else "")


def _estimate(text: str) -> str:
    """``mean PM ci`` -> the mean, then the interval in a smaller size; typographic minus signs."""
    text = text.replace("-", "$-$")
    if " PM " not in text:
        return text
    mean, ci = text.split(" PM ")
    return f"{mean}{{\\scriptsize\\,$\\pm$\\,{ci}}}"


def _number(text: str) -> str:
    """An estimate cell (or a word such as n/a) as LaTeX."""
    return "--" if text == "–" else _estimate(escape(text))


def _trace(row: Row) -> str:
    """The traceability cell, compact: 'traced/pairs, z mean PM ci; clean flagged/clean', or -- ."""
    text = trace_cell(row)
    if text == "–":
        return "--"
    return escape(text.replace(" · ", "; ").replace(" ± ", " PM ")).replace("PM", r"$\pm$")


def table_latex(table: Table) -> str:
    """One booktabs table; ranked groups (matched test cost, calibrated budget, as run) are headed by a
    spanning row instead of a column (narrower)."""
    tracing = any(r.traced is not None for r in table.rows)  # the column only where a defense traces
    n_cols = 10 + tracing
    lines = [
        f"% {escape(table.title)}",
        r"\begin{table}[htbp]",
        r"  \centering\scriptsize",
        r"  \setlength{\tabcolsep}{2.5pt}",
        f"  \\caption{{Student PSNR drop at equal teacher cost: {escape(table.task)}, attack "
        f"{escape(table.attack)}, profile {escape(table.profile)}. Mean $\\pm$ 95\\,\\% confidence interval over "
        r"(teacher seed, student seed) pairs (Student $t$); $n$: pairs. Teacher: mean drop on test, the worst test "
        r"image's drop, and fidelity (served vs.\ teacher answers, PSNR). Floor: paired $t$-test against the noise "
        r"floor, Holm-corrected within each group (above: significantly larger; n.s.: not separable). Rows that "
        r"cannot be separated share a rank. Acts on: the channel the defense changes (ans.: every user's answers; "
        r"feat.: the features exposed to feature-level attackers)."
        + (r" Traced: seed pairs whose stolen student the owner's detector flags at a 1\,\% false-positive "
           r"rate, the detection $z$, and the clean students (reference, ground truth) flagged, on how many "
           r"keys (the rate is one over keys: at one key the clean students' $z$ nearly coincide); -- where the "
           r"defense does not trace." if tracing else "") + "}",
        f"  \\label{{tab:leaderboard-{_slug(table.task)}-{_slug(table.attack)}-{_slug(table.profile)}}}",
        r"  \begin{tabular}{rllrrrrlrr" + ("l" if tracing else "") + "}",
        r"    \toprule",
        r"    & & & \multicolumn{3}{c}{teacher} & student & & SSIM & " + ("& " if tracing else "") + r"\\",
        r"    \cmidrule(lr){4-6}",
        r"    Rank & Defense & Acts on & drop (dB) & worst (dB) & fid.\ (dB) & drop (dB) & vs floor & drop (\%) "
        r"& $n$" + (" & traced" if tracing else "") + r" \\",
        r"    \midrule",
    ]
    for i, row in enumerate(table.rows):
        if i == 0 or row.group != table.rows[i - 1].group:
            if i:
                lines.append(r"    \midrule")
            lines.append(f"    \\multicolumn{{{n_cols}}}{{l}}{{\\emph{{{escape(row.group)}}}}} \\\\")
        cells = row_cells(row, pm=" PM ", escape=escape, decimals=DECIMALS)
        cells[0] = escape(cells[0])
        cells[1] = _defense(row.defense) + (f"\\,{escape(row.flags)}" if row.flags else "")
        cells[2] = escape(_SHORT_CHANNELS.get(row.channels, row.channels)) + (
            "\\," + escape(UNSEEN) if not row.sees else "")
        n_text = escape(cells[10].split(" (")[0] + (f" {ONE_SEED}" if ONE_SEED in cells[10] else ""))
        cells = (cells[:3] + [_number(c) for c in cells[3:7]] + [escape(cells[7]), _number(cells[9]), n_text])
        if tracing:
            cells.append(_trace(row))
        lines.append("    " + " & ".join(cells) + r" \\")
    lines += [r"    \bottomrule", r"  \end{tabular}"]
    if table.notes:
        lines.append(r"  \par\smallskip")
        lines.append(r"  \begin{minipage}{\linewidth}\footnotesize")
        lines += [f"  {escape(n)}\\par" for n in table.notes]
        lines.append(r"  \end{minipage}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def latex(tables: list[Table], messages: list[str]) -> str:
    parts = [PREAMBLE]
    parts += ["% " + " ".join(m.split()) + "\n" for m in messages]
    parts += [table_latex(t) for t in tables]
    return "\n".join(parts)


def standalone(body: str) -> str:
    """A compilable document around :func:`latex`'s output (for checking that it compiles)."""
    return ("\\documentclass{article}\n\\usepackage{booktabs}\n"
            "\\begin{document}\n" + body + "\n\\end{document}\n")
