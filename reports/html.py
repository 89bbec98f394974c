"""One self-contained HTML page: every table and figure, images embedded as base64 data URIs.

The page loads nothing from anywhere (no scripts, fonts or style sheets outside it), so it can be mailed
or archived as one file. Every string that comes from the store (names, parameters, errors, paths) goes
through :func:`html.escape`; the only markup is written here.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field

import pandas as pd

from reports import askers
from reports.askers import WhoPays
from reports.leaderboard import HEADERS, TRACE_HEADER, Table, intro, row_cells, trace_cell

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; } h2 { margin-top: 2.4rem; border-bottom: 2px solid #ddd; }
h3 { margin-top: 1.6rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .92rem; }
th, td { padding: .3rem .6rem; border-bottom: 1px solid #e2e2e2; text-align: left; vertical-align: top; }
.scroll { overflow-x: auto; } td pre { white-space: pre-wrap; min-width: 24rem; }
thead th { border-bottom: 2px solid #333; background: #f6f6f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th.num { text-align: right; }
tr.group td { border-top: 2px solid #999; }
tr.unseen td { color: #777; }
.notes { font-size: .88rem; color: #444; margin-top: .2rem; }
.missing { background: #fff6e0; border-left: 4px solid #e0a000; padding: .6rem 1rem; }
figure { margin: 1rem 0; } figcaption { font-size: .88rem; color: #444; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
.meta { color: #555; font-size: .92rem; } code { background: #f3f3f3; padding: 0 .2rem; }
pre { white-space: pre-wrap; margin: 0; font-size: .85rem; }
"""


@dataclass
class Figure:
    """A rendered figure: where it belongs (profile, task), what it shows, its file name (.png or .jpg)
    and image bytes, and the dpi it was drawn at."""

    profile: str
    task: str
    kind: str
    caption: str
    filename: str
    image: bytes
    dpi: int = 200
    #: the same figure as vector graphics for LaTeX and the web ({"pdf": bytes, "svg": bytes}); plots only
    vectors: dict[str, bytes] = field(default_factory=dict)


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def data_uri(image: bytes, filename: str = ".png") -> str:
    mime = "image/jpeg" if filename.lower().endswith((".jpg", ".jpeg")) else "image/png"
    return f"data:{mime};base64," + base64.b64encode(image).decode("ascii")


def table_html(table: Table) -> str:
    numeric = {0, 3, 4, 5, 6, 9, 10}
    tracing = any(r.traced is not None for r in table.rows)  # the column only where a defense traces
    headers = HEADERS + ((TRACE_HEADER,) if tracing else ())
    head = "".join(f'<th class="{"num" if i in numeric else ""}">{esc(h)}</th>' for i, h in enumerate(headers))
    body = []
    for i, row in enumerate(table.rows):
        classes = []
        if i == 0 or row.group != table.rows[i - 1].group:
            span = f'<td colspan="{len(headers)}"><em>{esc(row.group)}</em></td>'
            body.append(f'<tr class="{"group" if i else ""}">{span}</tr>')
        if row.floor:
            classes.append("floor")
        if not row.sees:
            classes.append("unseen")
        cells = row_cells(row, escape=esc) + ([esc(trace_cell(row))] if tracing else [])
        tds = "".join(f'<td class="num">{esc(c)}</td>' if j in numeric else f"<td>{c}</td>"
                      for j, c in enumerate(cells))
        body.append(f'<tr class="{" ".join(classes)}">{tds}</tr>')
    notes = "".join(f"<li>{esc(n)}</li>" for n in table.notes)
    return (f'<h3>{esc(table.title)}</h3>\n<div class="scroll"><table><thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(body) + "\n</tbody></table></div>\n" + (f'<ul class="notes">{notes}</ul>\n' if notes else ""))


def image_size(image: bytes) -> tuple[int, int]:
    """(width, height) in pixels of PNG or JPEG bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(image)) as im:
        return im.size


#: figures are shown at about their print size at 120 dpi, whatever dpi they were drawn at
DISPLAY_DPI = 120


def figure_html(fig: Figure) -> str:
    width = round(image_size(fig.image)[0] * DISPLAY_DPI / fig.dpi)
    return (f'<figure><img src="{data_uri(fig.image, fig.filename)}" width="{width}" alt="{esc(fig.caption)}">'
            f"<figcaption>{esc(fig.caption)}</figcaption></figure>\n")


def failed_html(failed: pd.DataFrame) -> str:
    rows = []
    for _, r in failed.iterrows():
        cells = (r["task_label"], r["defense_label"], r["attack_label"], r["profile_label"], r["seed"], r["key"])
        error = r["error"] if isinstance(r["error"], str) and r["error"] else "(no error recorded)"
        rows.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + f"<td><pre>{esc(error)}</pre></td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Task", "Defense", "Attack", "Profile", "Seed", "Cell key", "Error"))
    return (f'<h2 id="failed">Failed cells ({len(failed)})</h2>\n<div class="scroll"><table><thead><tr>{head}</tr>'
            "</thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>\n")


def page(tables: list[Table], figures: list[Figure], failed: pd.DataFrame, messages: list[str], *, store: str,
         n_done: int, generated: str, payers: list[WhoPays] = ()) -> str:
    sections: dict[tuple[str, str], list[str]] = {}
    for t in tables:
        sections.setdefault((t.profile, t.task), []).append(table_html(t))
    for w in payers:
        sections.setdefault((w.profile, w.task), []).append(askers.html(w, esc))
    for f in figures:
        sections.setdefault((f.profile, f.task), []).append(figure_html(f))
    toc, body = [], []
    for i, ((profile, task), parts) in enumerate(sorted(sections.items(), key=lambda kv: kv[0])):
        anchor = f"section-{i}"
        heading = f"{task} · profile {profile}"
        toc.append(f'<li><a href="#{anchor}">{esc(heading)}</a></li>')
        body.append(f'<h2 id="{anchor}">{esc(heading)}</h2>\n' + "".join(parts))
    if len(failed):
        toc.append(f'<li><a href="#failed">Failed cells ({len(failed)})</a></li>')
    missing = ""
    if messages:
        missing = ('<div class="missing"><strong>What is missing</strong><ul>'
                   + "".join(f"<li>{esc(m)}</li>" for m in messages) + "</ul></div>\n")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>antidistill-bench report: {esc(store)}</title>\n<style>{CSS}</style></head>\n<body>\n"
        "<h1>antidistill-bench report</h1>\n"
        f'<p class="meta">Generated {esc(generated)} from <code>{esc(store)}</code>.</p>\n'
        f"<p>{esc(intro(n_done, len(failed), store))}</p>\n" + missing
        + (f"<nav><ul>{''.join(toc)}</ul></nav>\n" if toc else "")
        + "\n".join(body) + (failed_html(failed) if len(failed) else "") + "\n</body></html>\n"
    )
