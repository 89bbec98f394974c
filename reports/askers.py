"""Who pays: each defense's teacher cost for the test split's honest users beside its cost on the attacker's queries.

Matched-cost tables read a defense at its cost on the test split: full images of the owner's distribution, the
queries an honest user sends. A defense whose answer depends on who asks (adaptive misinformation changes only
answers that look out of distribution) is built to make that cost small and the attacker's large, which a
test-split cost alone cannot show (issue 32). Every cell also scores the served model on the attacker's kind of
query (``attacker_query_drop_db``: :data:`bench.scoring.ATTACKER_QUERIES` crops of the profile's query size from
the attacker pool, one fixed draw for every cell, :func:`bench.scoring.attacker_queries`), so this table puts the
two side by side for every configuration run. A uniform defense can differ between the columns as well: crops
are not full images (less context, more border), so a gap is read against the uniform defenses' gaps.

Both costs are teacher-side (no student enters them; the attacker's crops are the same for every student seed),
so their intervals are over teacher seeds (:func:`reports.stats.teacher_unit_of`), as the leaderboard's teacher
columns are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from reports.leaderboard import pair_values
from reports.stats import Estimate, teacher_unit_of, unit_ci


@dataclass(frozen=True)
class Payer:
    defense: str
    test_users: Estimate
    attacker: Estimate
    teacher_seeds: tuple[int, ...]


@dataclass(frozen=True)
class WhoPays:
    profile: str
    task: str
    rows: tuple[Payer, ...]


def who_pays(cells: pd.DataFrame) -> list[WhoPays]:
    """Per (profile, task) with the attacker-query cost recorded: one row per defense configuration (the
    undefended one left out: it costs nothing on either), test-user cost and attacker-query cost over teacher
    seeds."""
    if cells.empty or "attacker_query_drop_db" not in cells:
        return []
    done = cells[(cells["status"] == "done") & (cells["defense"] != "none")
                 & cells["attacker_query_drop_db"].notna()]
    out = []
    # grouped by identity, as the leaderboard is (labels are only names: two versions of a task share one)
    for _, g in done.groupby(["profile_id", "task_id"], sort=True):
        profile, task = g.iloc[0]["profile_label"], g.iloc[0]["task_label"]
        rows = []
        # one configuration per config_id; the attack does not change what the served model answers
        for _, c in g.groupby("config_id", sort=False):
            first = c.iloc[0]
            name = first["defense_label"] + (f" @ {first['budget_db']:g} dB (calib)" if first["calibrated"] else "")
            rows.append(Payer(defense=name,
                              test_users=unit_ci(pair_values(c, "teacher_drop_db"), unit=teacher_unit_of),
                              attacker=unit_ci(pair_values(c, "attacker_query_drop_db"), unit=teacher_unit_of),
                              teacher_seeds=tuple(sorted({int(t) for t in c["teacher_seed"]}))))
        rows.sort(key=lambda r: r.defense)
        out.append(WhoPays(profile=str(profile), task=str(task), rows=tuple(rows)))
    return out


def _estimate(e: Estimate) -> str:
    return f"{e.mean:.3f}" + (f" ± {e.ci:.3f}" if e.ci is not None else "")


HEADERS = ("Defense", "Test users (dB)", "Attacker's queries (dB)", "Teacher seeds")
NOTE = ("Teacher PSNR drop each kind of user sees: test users, the test split's full images (the owner's "
        "distribution; the leaderboard's teacher drop); attacker's queries, the crops of the attacker pool the "
        "attacks send, one fixed draw for every cell. Mean ± 95 % CI over teacher seeds (the costs do not depend on "
        "the student). A defense that answers by who asks (adaptive misinformation) means to be small on the left "
        "and large on the right; uniform defenses differ too, as crops are not full images: read a gap against "
        "theirs.")


def cells_of(row: Payer) -> list[str]:
    return [row.defense, _estimate(row.test_users), _estimate(row.attacker),
            ", ".join(map(str, row.teacher_seeds))]


def markdown(tables: list[WhoPays], escape: Callable[[str], str] = str) -> str:
    """A 'Who pays' section per (profile, task), or nothing."""
    from tabulate import tabulate

    parts = []
    for t in tables:
        body = [[escape(c) for c in cells_of(r)] for r in t.rows]
        text = tabulate(body, headers=HEADERS, tablefmt="github", disable_numparse=True,
                        colalign=("left", "right", "right", "left"))
        parts.append(f"## Who pays: {escape(t.task)} · profile {escape(t.profile)}\n\n{text}\n\n- {escape(NOTE)}\n")
    return "\n".join(parts)


def html(table: WhoPays, esc: Callable[[object], str]) -> str:
    """One 'Who pays' table for the HTML page's section of its (profile, task)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells_of(r)) + "</tr>\n" for r in table.rows)
    return (f"<h3>Who pays: {esc(table.task)}</h3>\n<div class=\"scroll\"><table><thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{body}</tbody></table></div>\n<ul class=\"notes\"><li>{esc(NOTE)}</li></ul>\n")
