"""`bench report`: leaderboards (ranking, Student-t intervals, seed counts), plots, LaTeX, CSV and the HTML
page, built from a store filled by a small smoke sweep, plus hand-written stores for exact numbers."""

from __future__ import annotations

import json
import math
import re
import shutil
import sqlite3
import subprocess
from collections import defaultdict
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image

from bench.api import Defense
from bench.cli import main
from bench.pipeline import CellSpec, run_cell
from bench.registry import DEFENSES
from bench.store import Store
from reports import build_report
from reports.latex import standalone

# the t quantile for 2 degrees of freedom in closed form (its CDF is 1/2 + t / (2 sqrt(2 + t^2))): 4.3027
T_975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
TASKS = ("derain", "sr")
STRENGTHS = ("1.5", "3")
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A smoke sweep: derain/sr x none/asvp at two strengths x 3 seeds, plus one single-seed exposed-only
    ASVP cell (features only: unseen by vanilla KD) and one cell that fails (its defense's fit raises)."""
    home = tmp_path_factory.mktemp("report_store")
    for task in TASKS:
        for defense, params in [("none", {})] + [("asvp", {"h": h}) for h in STRENGTHS]:
            for seed in SEEDS:
                run_cell(CellSpec(task=task, defense=defense, defense_params=params, profile="smoke", seed=seed),
                         home=home, progress=False)
    run_cell(CellSpec(task="derain", defense="asvp", defense_params={"mode": "exposed"}, profile="smoke"),
             home=home, progress=False)
    DEFENSES.register("exploding")(Exploding)
    try:
        with pytest.raises(RuntimeError, match="exploded on purpose"):
            run_cell(CellSpec(task="derain", defense="exploding", profile="smoke"), home=home, progress=False)
    finally:
        DEFENSES.unregister("exploding")
    return home


class Exploding(Defense):
    """A defense whose fit fails mid-cell, so the store holds a real failed row."""

    def fit(self, teacher, splits, ctx):
        raise RuntimeError("exploded on purpose")


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    return build_report(sweep, tmp_path_factory.mktemp("report_out"), progress=False)


def _store_rows(home):
    """The store's done rows, read with sqlite3 and json only (independent of the report code)."""
    con = sqlite3.connect(home / "results.sqlite")
    rows = con.execute("SELECT task, defense, seed, config, metrics FROM cells WHERE status = 'done'").fetchall()
    con.close()
    return [(t, d, s, json.loads(c), json.loads(m)) for t, d, s, c, m in rows]


def _hand_stats(values):
    x = np.asarray(values, dtype=float)
    assert len(x) == 3
    return x.mean(), T_975_DF2 * x.std(ddof=1) / math.sqrt(3)


def _label(defense, config):
    if defense == "none":
        return "none"
    p = config["defense"]["params"]
    return f"asvp (mode={p['mode']}, h={p['h']:g})"


def test_leaderboard_ranks_defenses_by_student_drop_with_t_intervals(sweep, report):
    by = defaultdict(lambda: defaultdict(list))
    for task, defense, _seed, config, m in _store_rows(sweep):
        by[task][_label(defense, config)].append(m)
    tables = {t.task: t for t in report.tables}
    assert set(tables) == set(TASKS)
    for task in TASKS:
        table = tables[task]
        assert table.attack == "vanilla_kd" and table.attack_access == "outputs" and table.profile == "smoke"
        as_run = [r for r in table.rows if r.matched_cost is None]  # the matched-cost groups come first
        assert {r.group for r in as_run} == {"as run (each at its set strength)"}
        rows = {r.defense: r for r in as_run}
        assert set(rows) == set(by[task])
        for name, ms in by[task].items():
            row = rows[name]
            assert len(row.seeds) == row.student.n == len(ms)
            if len(ms) == 1:
                assert row.student.ci is None
                continue
            for est, metric in ((row.student, "student_drop_db"), (row.ssim, "student_ssim_drop_pct")):
                mean, half = _hand_stats([m[metric] for m in ms])
                assert est.mean == pytest.approx(mean, abs=1e-12) and est.ci == pytest.approx(half, abs=1e-12)
            # the teacher's cost depends on the teacher seed alone: one teacher seed here, so no interval (an
            # interval over its student seeds would be a misleading 0)
            mean, _ = _hand_stats([m["teacher_drop_db"] for m in ms])
            assert row.teacher.mean == pytest.approx(mean, abs=1e-12) and row.teacher.ci is None
        ranked = [r for r in as_run if r.rank is not None]
        assert [(r.rank, -r.student.mean) for r in ranked] == sorted((r.rank, -r.student.mean) for r in ranked)
        assert ranked[0].rank == 1 and ranked[0].top and len(ranked) == 1 + len(STRENGTHS)
        assert all(r.budget_db is None for r in as_run)  # nothing calibrated: no calibrated group


def test_feature_only_defense_is_listed_unranked_with_one_seed_and_no_ci(report):
    derain = next(t for t in report.tables if t.task == "derain")
    exposed = next(r for r in derain.rows if "mode=exposed" in r.defense)
    assert exposed.rank is None and not exposed.sees and exposed.channels == "features"
    assert exposed.seeds == [0] and exposed.student.ci is None
    assert derain.rows[-1] is exposed  # unranked rows come after the ranked ones
    md = (report.out / "leaderboard.md").read_text()
    line = next(li for li in md.splitlines() if "mode=exposed" in li and li.startswith("|"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == "–" and cells[2] == "features ‡" and cells[-1] == "1 (1×1) †"
    assert "± " not in cells[6]  # no interval printed for one seed
    assert "one seed pair: no confidence interval" in md
    assert any("one seed only" in m and "mode=exposed" in m for m in report.messages)
    # a task is compared with its own tables only (issue 33): sr never ran derain's configurations
    assert not any(m.startswith("sr · ") and "no finished cells" in m for m in report.messages)


def test_markdown_table_rows_match_the_numbers(report):
    md = (report.out / "leaderboard.md").read_text()
    for table in report.tables:
        assert f"## {table.title}".replace("_", "\\_") in md
        for row in table.rows:
            if row.student.ci is None:
                continue
            pairs = re.escape(f"{len(row.pairs)} ({len(row.seeds)}×{len(row.teacher_seeds)})")
            pattern = (rf"\|\s*{row.rank}\s*\|\s*{re.escape(row.defense + (' ' + row.flags if row.flags else ''))}"
                       rf"\s*\|.*\|\s*{row.student.mean:.3f} ± {row.student.ci:.3f}\s*\|.*\|\s*{pairs}\s*\|")
            assert re.search(pattern, md.replace("\\_", "_")), (row.defense, pattern)
    assert "## Failed cells" in md and "RuntimeError: exploded on purpose" in md


def test_csv_has_every_cell_done_and_failed(sweep, report):
    import pandas as pd

    df = pd.read_csv(report.out / "cells.csv")
    n_done = len(TASKS) * (1 + len(STRENGTHS)) * len(SEEDS) + 1
    assert len(df) == n_done + 1
    assert (df["status"] == "done").sum() == n_done
    failed = df[df["status"] == "failed"].iloc[0]
    assert failed["error"] == "RuntimeError: exploded on purpose" and failed["defense"] == "exploding"
    for col in ("task", "defense_label", "attack", "seed", "channels", "budget_db", "teacher_drop_db",
                "student_drop_db", "student_ssim_drop_pct", "teacher_psnr", "student_ref_psnr", "queries_used"):
        assert col in df.columns, col
    rows = {(t, s, json.dumps(c["defense"]["params"], sort_keys=True)): m for t, _d, s, c, m in _store_rows(sweep)}
    for _, r in df[df["status"] == "done"].iterrows():
        params = json.dumps(json.loads(r["defense_params"]), sort_keys=True)
        assert r["student_drop_db"] == pytest.approx(rows[(r["task"], r["seed"], params)]["student_drop_db"])


def test_every_plot_is_a_valid_nonblank_image(report):
    files = sorted((report.out / "plots").glob("*.*"))
    names = {f.name for f in files}
    for task in TASKS:
        assert {f"tradeoff-{task}-smoke.png", f"bars-{task}-smoke.png", f"grid-{task}-vanilla_kd-smoke.jpg"} <= names
        for kind in ("tradeoff", "bars"):  # vector versions for LaTeX (PDF) and the web (SVG)
            pdf = (report.out / "plots" / f"{kind}-{task}-smoke.pdf").read_bytes()
            assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-64:]
            svg = ElementTree.fromstring((report.out / "plots" / f"{kind}-{task}-smoke.svg").read_bytes())
            assert svg.tag.endswith("svg")
    for f in (f for f in files if f.suffix in (".png", ".jpg")):
        assert f.stat().st_size > 0
        with Image.open(f) as im:
            im.verify()
        with Image.open(f) as im:
            arr = np.asarray(im.convert("L"), dtype=float)
            assert im.size[0] >= 600 and im.size[1] >= 400, (f.name, im.size)
        assert arr.std() > 5, f"{f.name} looks blank"


def test_latex_is_escaped_and_compiles(report, tmp_path):
    tex = (report.out / "leaderboard.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\usepackage{booktabs}" in tex
    body = "\n".join(li for li in tex.splitlines() if not li.lstrip().startswith("%"))  # comments need no escaping
    assert "vanilla\\_kd" in body and "vanilla_kd" not in body.replace("vanilla\\_kd", "")
    assert "$\\pm$" in tex
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("pdflatex is not on PATH; the LaTeX output is checked for escaping only")
    (tmp_path / "doc.tex").write_text(standalone(tex))
    proc = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert "Overfull \\hbox" not in log, "a table is wider than an article's text width"


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium; apt-get install -y chromium)")


def _chromium_args(binary, tmp_path):
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}"]


def test_html_page_renders_tables_and_images_in_headless_chromium(report, tmp_path):
    binary = _chromium()
    page = report.out / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: nothing fetched
    url = page.resolve().as_uri()
    shot = tmp_path / "report.png"
    dom = subprocess.run(_chromium_args(binary, tmp_path) + [f"--screenshot={shot}", "--window-size=1280,2000",
                                                             "--dump-dom", url],
                         capture_output=True, text=True, timeout=180, check=True).stdout
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1280, 2000)
        arr = np.asarray(im.convert("RGB"), dtype=float)
    not_white = (arr.min(axis=2) < 235).mean()
    assert not_white > 0.03, f"screenshot is almost blank ({not_white:.1%} non-white pixels)"
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 200  # text, tables and plots, not a flat page

    n_rows = sum(len(t.rows) for t in report.tables)
    from reports.askers import who_pays

    payers = who_pays(report.cells)
    assert payers  # every cell records the attacker-query cost: a 'who pays' table per task
    assert dom.count("<table") == len(report.tables) + len(payers) + 1  # leaderboards + who pays + failed cells
    assert len(re.findall(r"<tr[ >]", dom)) >= n_rows + len(report.tables)
    for t in report.tables:
        for r in t.rows:
            assert f"<td>{r.defense}" in dom
    imgs = re.findall(r'<img src="data:image/(?:png|jpeg);base64,[A-Za-z0-9+/=]{1000,}"', dom)
    assert len(imgs) == len(report.figures) == 3 * len(TASKS)


# ------------------------------------------------------------------------ hand-written stores (exact)
def _cell(key, defense, params, seed, *, budget=None, student, teacher=0.1, status="done", error=None,
          task="derain", channels="answers"):
    metrics = None if status != "done" else {
        "teacher_drop_db": teacher, "student_drop_db": student, "student_ssim_drop_pct": 10 * student,
        "teacher_psnr": 30.0, "served_psnr": 30.0 - teacher, "student_ref_psnr": 28.0,
        "student_psnr": 28.0 - student, "channels": channels, "student_shortcut": False, "queries_used": 16}
    return {"key": key, "task": task, "defense": defense, "attack": "vanilla_kd", "seed": seed, "profile": "smoke",
            "status": status, "error": error, "metrics": metrics,
            "config": {"task": {"name": task, "version": "1", "params": {}},
                       "defense": {"name": defense, "version": "1", "params": params},
                       "attack": {"name": "vanilla_kd", "version": "1", "params": {}},
                       "seed": seed, "teacher_seed": 0, "budget_db": budget, "profile": {"crop": 24}}}


def test_calibrated_cells_are_ranked_within_their_budget(tmp_path):
    store = Store(tmp_path / "s")
    for seed, (h, drop) in enumerate([(1.3, 1.0), (1.35, 2.0), (1.4, 3.0)]):  # calibration: h per seed
        store.put_cell(_cell(f"a{seed}", "asvp", {"h": h, "mode": "inline"}, seed, budget=0.1, student=drop))
    for seed, drop in enumerate([0.5, 0.5, 0.8]):
        store.put_cell(_cell(f"b{seed}", "blurry", {"sigma": 1.0}, seed, budget=0.1, student=drop))
    for seed in range(3):
        store.put_cell(_cell(f"n{seed}", "none", {}, seed, student=0.0, teacher=0.0, channels="none"))
    rep = build_report(tmp_path / "s", tmp_path / "out", ("md", "latex", "html"), progress=False)
    (table,) = rep.tables
    # three seed pairs cannot separate asvp's drops (1, 2, 3 dB) from blurry's (0.5, 0.5, 0.8): one rank
    assert [(r.rank, r.defense, r.budget_db) for r in table.rows] == [
        (1, "asvp (h=1.3–1.4)", 0.1), (1, "blurry", 0.1), (1, "none", None)]
    assert [r.group for r in table.rows] == ["calibrated to 0.1 dB on calib"] * 2 + [
        "as run (each at its set strength)"]
    asvp, blurry, _ = table.rows
    assert asvp.student.mean == pytest.approx(2.0) and asvp.student.ci == pytest.approx(T_975_DF2 / math.sqrt(3))
    assert blurry.student.mean == pytest.approx(0.6)
    assert blurry.student.ci == pytest.approx(T_975_DF2 * math.sqrt(0.03) / math.sqrt(3))
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "### calibrated to 0.1 dB on calib" in md and "2.000 ± 2.484" in md and "0.600 ± 0.430" in md
    tex = (tmp_path / "out" / "leaderboard.tex").read_text()
    assert tex.count(r"\midrule") == 2  # header rule + one between the 0.1 dB group and the uncalibrated one
    assert any("lack sample images" in m for m in rep.messages)  # hand-written cells saved no PNGs


def test_cells_on_a_users_own_teacher_are_a_task_of_their_own(tmp_path):
    store = Store(tmp_path / "s")
    for seed in range(2):
        store.put_cell(_cell(f"r{seed}", "asvp", {"h": 1.5}, seed, student=1.0))
        mine = _cell(f"u{seed}", "asvp", {"h": 1.5}, seed, student=3.0)
        mine["config"]["teacher_model"] = {"factory": "my_model:make_teacher", "arch": "ab12", "weights": "cd34ef567"}
        store.put_cell(mine)
    rep = build_report(tmp_path / "s", tmp_path / "out", ("md",), progress=False)
    assert sorted(t.task for t in rep.tables) == ["derain (teacher=my_model:make_teacher@cd34ef56)",
                                                  "derain (teacher=reference)"]
    assert sorted(t.rows[0].student.mean for t in rep.tables) == [1.0, 3.0]


def test_names_are_escaped_in_html_markdown_and_latex(tmp_path):
    store = Store(tmp_path / "s")
    evil = "<img src=x onerror=alert(1)>&_%$x^$"
    store.put_cell(_cell("e0", evil, {"p": "<b>"}, 0, student=1.0))
    store.put_cell(_cell("i0", "![i](http://evil.example/p.png)", {}, 0, student=1.0))
    store.put_cell(_cell("f0", "none", {}, 1, student=0.0, status="failed", error="RuntimeError: <script>x</script>"))
    rep = build_report(tmp_path / "s", tmp_path / "out", ("md", "latex", "html"), progress=False)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<img src=x" not in page and "<script>" not in page and "<b>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;_%" in page and "&lt;script&gt;" in page
    tex = (tmp_path / "out" / "leaderboard.tex").read_text()
    assert r"\textless{}img src=x onerror=alert(1)\textgreater{}\&\_\%" in tex
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert re.search(r"(?<!\\)[<>]", md) is None  # every angle bracket shown literally: no HTML
    assert r"\<img src=x onerror=alert(1)\>" in md and r"\<script\>" in md
    assert "![i]" not in md and r"\!\[i\](http://evil.example/p.png)" in md  # no image, no link
    assert rep.tables[0].rows[0].student.ci is None


def test_empty_store_report_says_what_is_missing(tmp_path, capsys):
    Store(tmp_path / "empty")
    code = main(["report", "--home", str(tmp_path / "empty")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "no finished cells in" in err and "run bench run or bench sweep first" in err
    md = (tmp_path / "empty" / "report" / "leaderboard.md").read_text()
    assert "no finished cells in" in md
    page = (tmp_path / "empty" / "report" / "report.html").read_text()
    assert "no finished cells in" in page and "<img" not in page


def test_only_failed_cells_lists_them(tmp_path):
    store = Store(tmp_path / "s")
    store.put_cell(_cell("f0", "asvp", {"h": 2.0}, 0, student=0, status="failed", error="ValueError: NaN loss"))
    rep = build_report(tmp_path / "s", tmp_path / "out", progress=False)
    assert rep.tables == [] and rep.figures == []
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "no finished cells" in md and "ValueError: NaN loss" in md


@pytest.mark.parametrize("argv, words", [
    (["report", "--home", "{tmp}/nowhere"], ["no results store in", "bench run or bench sweep"]),
    (["report", "--home", "{tmp}/s", "--format", "md,pdf"], ["unknown report format 'pdf'", "md, latex, csv"]),
])
def test_report_errors_are_one_line(tmp_path, capsys, argv, words):
    Store(tmp_path / "s")
    code = main([a.format(tmp=tmp_path) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    for w in words:
        assert w in err
    assert not (tmp_path / "nowhere").exists()  # a report never creates a store


def test_visual_grid_shows_each_tables_own_cells(sweep, report):
    from reports.grid import chosen_cells

    for table in report.tables:
        chosen = chosen_cells(table, report.cells)
        as_run = list(dict.fromkeys(r.defense for r in table.rows if r.matched_cost is None))
        assert [label.split("\n")[0] for label, _ in chosen] == as_run
        for _, cell in chosen:
            assert (cell["task"], cell["attack"], cell["status"]) == (table.task, table.attack, "done")
            assert cell["seed"] == 0  # the seed every row has
            assert (sweep / "artifacts" / cell["key"] / "samples" / "student.png").is_file()


def test_one_seed_sweep_is_summarised_not_listed(tmp_path):
    store = Store(tmp_path / "s")
    for i, name in enumerate(["asvp", "blurry", "none"]):
        store.put_cell(_cell(f"k{i}", name, {}, 0, student=1.0 - 0.5 * i))
    rep = build_report(tmp_path / "s", tmp_path / "out", ("md",), progress=False)
    (msg,) = [m for m in rep.messages if "one seed only" in m]
    assert msg.startswith("every configuration (3) has one seed only") and "blurry" not in msg


def test_one_seed_pair_draws_no_interval_and_says_so(tmp_path):
    store = Store(tmp_path / "s")
    store.put_cell(_cell("n0", "none", {}, 0, student=0.0, teacher=0.0))
    for i, h in enumerate((1.5, 2.0)):
        store.put_cell(_cell(f"a{i}", "asvp", {"h": h}, 0, student=1.0 + i, teacher=0.2 + i))
    build_report(tmp_path / "s", tmp_path / "out", ("plots",), progress=False)
    for kind in ("tradeoff", "bars"):
        text = (tmp_path / "out" / "plots" / f"{kind}-derain-smoke.svg").read_text()
        assert "no interval can be drawn (n = 1)" in text and "95 % CI" not in text


def test_a_store_of_the_undefended_teacher_alone_draws_no_empty_chart(tmp_path):
    store = Store(tmp_path / "s")
    store.put_cell(_cell("n0", "none", {}, 0, student=0.0, teacher=0.0))
    rep = build_report(tmp_path / "s", tmp_path / "out", ("plots",), progress=False)
    assert not [f for f in rep.figures if f.kind in ("tradeoff", "bars")]


def test_calibrated_and_uncalibrated_cells_of_one_profile_share_its_tables(tmp_path):
    # the calib fields are keyed into calibrated cells only; the profile must not split on them
    store = Store(tmp_path / "s")
    for seed in range(2):
        cal = _cell(f"c{seed}", "asvp", {"h": 1.3}, seed, budget=0.5, student=1.0)
        cal["config"]["profile"] = {"crop": 24, "calib_pool": "calib", "calib_draws": 8}
        store.put_cell(cal)
        store.put_cell(_cell(f"n{seed}", "none", {}, seed, student=0.0, teacher=0.0, channels="none"))
    rep = build_report(tmp_path / "s", tmp_path / "out", ("md",), progress=False)
    (table,) = rep.tables
    assert table.profile == "smoke"
    assert [r.group for r in table.rows] == ["calibrated to 0.5 dB on calib", "as run (each at its set strength)"]


def test_report_of_some_tasks_holds_only_theirs(tmp_path, capsys):
    store = Store(tmp_path / "s")
    for task in ("derain", "sr"):
        for seed in range(2):
            store.put_cell(_cell(f"{task}{seed}", "asvp", {"h": 1.5}, seed, student=1.0, task=task))
    rep = build_report(tmp_path / "s", tmp_path / "out", ("md", "csv"), progress=False, tasks=("sr",))
    assert [t.task for t in rep.tables] == ["sr"] and set(rep.cells["task"]) == {"sr"}
    assert "derain" not in (tmp_path / "out" / "cells.csv").read_text()
    assert main(["report", "--home", str(tmp_path / "s"), "--out", str(tmp_path / "o2"), "--tasks", "lowlight"]) == 2
    err = capsys.readouterr().err
    assert "--tasks lowlight" in err and "derain, sr" in err and len(err.strip().splitlines()) == 1


def test_vector_plots_are_byte_stable():
    """Rendering the same figure twice gives the same PDF and SVG bytes (no timestamps, no random ids), so a
    regenerated report shows in git only where its numbers changed."""
    from reports.plots import new_figure, rendered, style

    def draw() -> dict[str, bytes]:
        with style():
            fig = new_figure(3, 2)
            ax = fig.add_subplot()
            ax.plot([0, 1, 2], [0.0, 0.5, 0.2], marker="o")
            ax.set_title("ASVP")
            return rendered(fig)

    first, second = draw(), draw()
    assert first["pdf"] == second["pdf"] and b"CreationDate" not in first["pdf"]
    assert first["svg"] == second["svg"] and b"<dc:date>" not in first["svg"]
