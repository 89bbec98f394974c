"""A newcomer's first hour (issue 18): progress in a log, complete help and listings, hints that point
the right way, where a result went."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from bench.cli import main


def _bench(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "BENCH_PROGRESS"}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True,
                          env=environ, timeout=600)


def test_a_run_logged_to_a_file_shows_progress_lines_and_where_it_stored(tmp_path):
    out = _bench("run", "--task", "derain", "--defense", "asvp", "--profile", "smoke", "--home", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "training teacher (derain)" in out.stderr and "\r" not in out.stderr  # lines, not a redrawn bar
    for role in ("reference", "ground truth", "defended"):  # which of the three students each bar trains
        assert f"training student [{role}]" in out.stderr, out.stderr
    assert f"stored in {tmp_path / 'results.sqlite'}" in out.stdout
    quiet = _bench("run", "--task", "derain", "--profile", "smoke", "--seed", "1", "--home", str(tmp_path),
                   BENCH_PROGRESS="0")
    assert quiet.returncode == 0 and "training" not in quiet.stderr


def test_a_sweep_logged_to_a_file_writes_a_line_per_stage_and_whole_lines(tmp_path):
    """Issue 33: a 15-cell smoke sweep logged to a file wrote 76 lines in 5 s, two per job, some cut
    mid-word ('0 fai'); the README promises one line per stage at most every 30 s."""
    out = _bench("sweep", "--tasks", "derain", "--defenses", "none,asvp,output_noise,mad,noise_floor", "--seeds",
                 "0-2", "--profile", "smoke", "--set", "profile.teacher_steps=4", "--set", "profile.student_steps=4",
                 "--n-jobs", "2", "--home", str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = [x for x in out.stderr.splitlines() if "job" in x]
    stages = ("sweep", "teachers & ground-truth students", "defense fits & reference students", "cells",
              "sweep done")
    assert len(lines) <= len(stages) + 2, lines  # a line per stage (and one more if a stage took 30 s)
    assert lines[-1].startswith("sweep done") and lines[-1].endswith("cells 15/15 done, 0 failed]"), lines
    assert all(x.endswith("]") for x in lines), lines  # never cut to a width


def test_a_log_gets_the_last_progress_line_once():
    import io

    from bench.progress import LineProgress

    log = io.StringIO()
    bar = LineProgress(total=2, desc="sweep", file=log)
    bar.update(2)
    bar.set_description("sweep done")  # draws the final state ...
    bar.close()  # ... which close() would draw again
    lines = log.getvalue().splitlines()
    assert lines and lines[-1].startswith("sweep done") and len(lines) == len(set(lines)), lines


def test_list_shows_profiles_and_choices(capsys):
    assert main(["list", "profiles"]) == 0
    out = capsys.readouterr().out
    assert "quick" in out and "teacher_steps" in out and "--set profile.FIELD=VALUE" in out
    assert main(["list", "tasks"]) == 0
    assert "one of screen|add" in capsys.readouterr().out


def test_a_closed_pipe_is_not_an_error():
    out = subprocess.run(f"{sys.executable} -m bench.cli list | head -n 2; exit ${{PIPESTATUS[0]}}", shell=True,
                         executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Error" not in out.stderr, out.stderr
    assert len(out.stdout.splitlines()) == 2


@pytest.mark.parametrize("command", ["run", "calibrate", "report", "sweep", "list"])
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert len(text.split("options:")[0].splitlines()) > 3, text  # a description, not only the usage
    assert "``" not in text


def test_calibrate_says_its_budget_is_required(capsys):
    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    out = capsys.readouterr().out
    assert "required: the teacher cost to calibrate to" in out and "default: as set" not in out


@pytest.mark.parametrize(("args", "words"), [
    (["--set", "task.scale=4"], "'scale' is a parameter of task folder, sr"),
    (["--data", "/tmp"], "--task folder --data DIR"),
])
def test_hints_point_to_the_plugin_that_has_the_parameter(tmp_path, capsys, args, words):
    assert main(["run", "--task", "derain", "--profile", "smoke", *args, "--home", str(tmp_path)]) == 2
    assert words in capsys.readouterr().err


def test_sweeps_and_reports_write_a_configuration_alike():
    from bench.pipeline import CellSpec, resolve
    from bench.scheduler import label as sweep_label
    from reports.cells import label as report_label

    cell = resolve(CellSpec(task="derain", defense="asvp", defense_params={"h": "2.0"}, profile="smoke"))
    assert "asvp (h=2)" in sweep_label(cell) and report_label("asvp", [("h", 2.0)]) == "asvp (h=2)"


# ------------------------------------------------------------------------------------ help: defaults once
@pytest.mark.parametrize("command", ["run", "calibrate", "sweep", "report", "list"])
def test_help_states_every_default_once(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert not [line for line in text.splitlines() if line.count("(default:") > 1], text
    options = re.split(r"\n(?=  -)", text.split("options:", 1)[1])  # one block per option, wrapped lines joined
    for block in options:
        assert " ".join(block.split()).lower().count("default") <= 1, block
    assert "(default: None)" not in text and "(default: [])" not in text and "(default: False)" not in text
    if command in ("run", "calibrate", "sweep"):
        device = next(b for b in options if b.strip().startswith("--device"))
        assert "auto (default:" in device and "(default: auto)" not in device


# --------------------------------------------------------------------------- remarks on puzzling results
def _row(**metrics):
    m = {"input_psnr": 20.0, "input_ssim": 0.6, "teacher_psnr": 30.0, "teacher_ssim": 0.9, "served_psnr": 29.9,
         "served_ssim": 0.9, "student_ref_psnr": 28.0, "student_ref_ssim": 0.85, "student_psnr": 27.5,
         "student_ssim": 0.84, "student_gt_psnr": 28.3, "student_gt_ssim": 0.86, "teacher_drop_db": 0.1,
         "student_drop_db": 0.5, "student_ssim_drop_pct": 1.0, "queries_used": 16, "channels": "answers"}
    m.update(metrics)
    m["student_drop_db"] = m["student_ref_psnr"] - m["student_psnr"]
    return {"key": "k", "task": "derain", "defense": "asvp", "attack": "vanilla_kd", "seed": 0, "profile": "quick",
            "config": {"teacher_seed": 0}, "cached": True, "metrics": m}


def test_bench_run_remarks_on_results_that_look_wrong(tmp_path, monkeypatch, capsys):
    import bench.pipeline
    from bench.cli import format_cell

    plain = format_cell(_row())
    assert "remark" not in plain
    below = format_cell(_row(student_gt_psnr=27.6))
    assert "remark: the ground-truth student scored 0.40 dB below the distilled reference" in below
    assert "not an error" in below
    gain = format_cell(_row(student_psnr=28.25), has_sets=True)
    (line,) = [x for x in gain.splitlines() if x.startswith("remark: the defended student beat")]
    assert "by 0.25 dB" in line and "noise of training" in line and "0.2-0.4 dB" in line
    assert "bench sweep --tasks derain --defenses none,noise_floor,asvp --seeds 0-4" in line and "--set" in line
    assert "remark" not in format_cell(_row(student_psnr=28.004))  # rounding, not a result
    # what bench run prints is that text (no training: the cell's row is handed back as stored)
    monkeypatch.setattr(bench.pipeline, "run_cell", lambda cell, **kw: {
        **_row(student_gt_psnr=27.0, student_psnr=28.5), "profile": cell.profile.name})
    assert main(["run", "--task", "derain", "--profile", "smoke", "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\nremark: ") == 3 and "1.00 dB below the distilled reference" in out
    assert "--profile smoke" in out
    assert "remark: profile smoke exists for the tests" in out  # smoke numbers never pass for results


def test_bench_run_remarks_on_a_teacher_worth_nothing_and_a_costly_default():
    """Issue 33: a smoke teacher below its input, a student above its teacher, and the default ASVP costing
    1.08 dB passed without a word."""
    from bench.cli import format_cell

    weak = format_cell(_row(input_psnr=29.64, teacher_psnr=29.53, student_ref_psnr=29.0, student_psnr=28.9,
                            student_gt_psnr=29.1))
    assert "remark: the teacher scores 29.53 dB against its input's 29.64 dB (a gain of -0.11 dB" in weak
    above = format_cell(_row(teacher_psnr=28.10, student_ref_psnr=28.21, student_psnr=28.0, student_gt_psnr=28.3))
    assert "remark: the undefended student (28.21 dB) beats its teacher (28.10 dB)" in above
    costly = format_cell(_row(teacher_drop_db=1.08, worst_teacher_drop_db=2.27, served_fidelity_db=35.0))
    assert "costs honest users 1.08 dB (worst test image 2.27 dB)" in costly and "--budget 0.1" in costly
    assert "remark" not in format_cell(_row())


def _report_cell(key, defense, seed, teacher_seed, *, student, gt=28.5, teacher=0.2):
    metrics = {"teacher_drop_db": teacher, "student_drop_db": student, "student_ssim_drop_pct": 10 * student,
               "worst_teacher_drop_db": 2 * teacher, "served_fidelity_db": 40.0, "teacher_psnr": 30.0,
               "served_psnr": 30.0 - teacher, "student_ref_psnr": 28.0, "student_psnr": 28.0 - student,
               "student_gt_psnr": gt, "channels": "answers", "student_shortcut": False, "queries_used": 16}
    return {"key": key, "task": "derain", "defense": defense, "attack": "vanilla_kd", "seed": seed,
            "profile": "smoke", "status": "done", "error": None, "metrics": metrics,
            "config": {"task": {"name": "derain", "version": "1", "params": {}},
                       "defense": {"name": defense, "version": "1", "params": {}},
                       "attack": {"name": "vanilla_kd", "version": "1", "params": {}},
                       "seed": seed, "teacher_seed": teacher_seed, "budget_db": None, "profile": {"crop": 24}}}


def test_the_report_remarks_on_results_that_look_wrong(tmp_path):
    from bench.store import Store
    from reports import build_report
    from reports.html import table_html

    store = Store(tmp_path / "s")
    pairs = [(t, s) for t in (0, 1) for s in range(4)]
    for i, (t, s) in enumerate(pairs):
        gt = 27.7 if i < 3 else 28.4  # below the reference (28.0) on 3 of 8 pairs, by 0.3 dB
        jitter = 0.02 * ((3 * i) % 5 - 2)
        store.put_cell(_report_cell(f"f{i}", "noise_floor", s, t, student=jitter, gt=gt, teacher=0.001))
        store.put_cell(_report_cell(f"o{i}", "output_noise", s, t, student=-0.5 + jitter, gt=gt))  # helps
        store.put_cell(_report_cell(f"m{i}", "mad", s, t, student=0.3 * (-1) ** i - 0.05, gt=gt))  # noise
        store.put_cell(_report_cell(f"a{i}", "asvp", s, t, student=1.0 + jitter, gt=gt))
    rep = build_report(tmp_path / "s", tmp_path / "out", ("md",), progress=False)
    (table,) = rep.tables
    notes = [n for n in table.notes if "Ground-truth student below" in n]
    assert notes == [notes[0]] and "in 3 of 8 seed pair(s) (by 0.30 dB on average)" in notes[0]
    (gain,) = [n for n in table.notes if "above the reference, more than training noise" in n]
    # from the mean of the reference and the floor student (issue 29): -0.5 + mean jitter / 2 = -0.5025
    assert gain.startswith("output_noise: the defended students scored 0.502 dB above")
    assert "below the noise floor" in gain
    (noise,) = [n for n in table.notes if n.startswith("Negative mean student drop")]
    assert "mad" in noise and "output_noise" not in noise and "asvp" not in noise
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    page = table_html(table)  # what report.html shows for the table (without drawing its figures here)
    for text in ("Ground-truth student below the distilled reference in 3 of 8", "more than training noise explains",
                 "Negative mean student drop"):
        assert text in md.replace("\\", "") and text in page
    # nothing puzzling, no remark
    clean = Store(tmp_path / "c")
    for i, (t, s) in enumerate(pairs):
        clean.put_cell(_report_cell(f"a{i}", "asvp", s, t, student=1.0 + 0.01 * i))
    (table,) = build_report(tmp_path / "c", tmp_path / "out2", ("md",), progress=False).tables
    assert not [n for n in table.notes if "Ground-truth" in n or "Negative" in n or "above the reference" in n]


def test_a_smoke_report_says_what_smoke_is_for_and_shows_the_input(tmp_path):
    """Issue 33: on smoke the teacher scored below its input with nothing said, and the leaderboard never
    showed the input PSNR."""
    from bench.store import Store
    from reports import build_report

    store = Store(tmp_path / "s")
    for s in range(3):
        cell = _report_cell(f"a{s}", "asvp", s, 0, student=0.1)
        cell["metrics"].update(input_psnr=29.64, teacher_psnr=29.53)
        store.put_cell(cell)
    rep = build_report(tmp_path / "s", tmp_path / "out", ("md",), progress=False)
    assert any(m.startswith("profile smoke exists for the tests") for m in rep.messages)
    (table,) = rep.tables
    assert any(n.startswith("Input 29.64 dB PSNR, undefended teacher 29.53 dB") for n in table.notes)
    assert any(n.startswith("The teacher scores 29.53 dB against its input's 29.64 dB") for n in table.notes)
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "profile smoke exists for the tests" in md and "Published numbers use at least 5 student seeds" not in md


# ------------------------------------------------------------------------------- figures a reader can read
def test_trade_off_labels_of_neighbouring_points_do_not_overlap(tmp_path):
    import itertools

    from bench.store import Store
    from reports import cells as cells_mod
    from reports import plots

    store = Store(tmp_path / "s")
    close = [("asvp", 1.5, 0.30, 0.60), ("asvp", 1.75, 0.31, 0.61), ("asvp", 2.0, 0.32, 0.605), ("asvp", 3.0, 2.0, 2.5),
             ("output_noise", 0.01, 0.305, 0.6), ("output_noise", 0.015, 0.3, 0.62), ("output_noise", 0.02, 1.0, 0.2)]
    for seed in range(2):
        for defense, strength, teacher, student in close:
            key = "sigma" if defense == "output_noise" else "h"
            cell = _report_cell(f"{defense}{strength}-{seed}", defense, seed, 0, student=student + 0.001 * seed,
                                teacher=teacher)
            cell["config"]["defense"]["params"] = {key: strength}
            store.put_cell(cell)
    cells = cells_mod.load(tmp_path / "s")

    def label_boxes(fig):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        return [(t.get_text(), plots.text_box(t, renderer)) for ax in fig.axes for t in ax.texts]

    def overlapping(boxes):
        return [(a, b) for (a, x), (b, y) in itertools.combinations(boxes, 2) if plots._overlap(x, y)]

    with plots.style():
        fig = plots.tradeoff_figure(cells, "derain (profile smoke)")
        boxes = label_boxes(fig)
        assert sorted(t for t, _ in boxes) == sorted(f"{'sigma' if d == 'output_noise' else 'h'}={s:g}"
                                                     for d, s, _, _ in close)
        assert not overlapping(boxes), overlapping(boxes)
        # a label pushed away from its point is tied to it by a leader line; one beside its point is not
        notes = [t for ax in fig.axes for t in ax.texts]
        renderer = fig.canvas.get_renderer()
        per_pt = fig.dpi / 72.0
        gaps = {t: plots._distance(plots.text_box(t, renderer), *t.axes.transData.transform(t.xy)) / per_pt
                for t in notes}
        far = [t.arrow_patch.get_visible() for t in notes if gaps[t] > plots.LEADER_FROM]
        near = [t.arrow_patch.get_visible() for t in notes if gaps[t] <= plots.LEADER_FROM]
        assert far and all(far) and near and not any(near), [(t.get_text(), gaps[t]) for t in notes]
        # the undefended point is drawn above every other family's
        lines = {ln.get_label(): ln.get_zorder() for ax in fig.axes for ln in ax.lines if ln.get_label()}
        assert lines.get("none", 3) >= max(lines.values())
        # placement avoids markers, not error bars: each label sits above every curve, on a light backing
        assert all(t.get_bbox_patch() is not None and t.get_zorder() > max(lines.values()) for t in notes)
        for text in (t for ax in fig.axes for t in ax.texts):  # all at one offset, as before: they collide
            text.xyann = (3, 3)
            text.set_horizontalalignment("left")
            text.set_verticalalignment("bottom")
        assert ("h=1.5", "h=1.75") in overlapping(label_boxes(fig))


def _write_samples(folder, target, noise):
    import imageio.v3 as iio
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("input", "target", "teacher", "served", "student_ref", "student"):
        img = target if name == "target" else np.clip(target + rng.normal(0, noise[name], target.shape), 0, 255)
        iio.imwrite(folder / f"{name}.png", img.astype(np.uint8))


def test_visual_grid_captions_each_tile_with_psnr_and_zooms_into_the_most_detailed_window(tmp_path):
    import numpy as np

    from bench.store import Store
    from reports import build_report
    from reports import grid as grid_mod
    from reports.html import image_size

    target = np.full((64, 64, 3), 120.0)
    checker = (np.indices((16, 16)).sum(0) % 2) * 200.0 + 20
    target[40:56, 44:60] = checker[..., None]  # the detail: a quarter of the sides, at (40, 44)
    assert grid_mod.detail_window(target) == (40, 44, 16, 16)
    store = Store(tmp_path / "s")
    for defense, student in (("none", 0.0), ("asvp", 0.5)):
        store.put_cell(_report_cell(defense, defense, 0, 0, student=student))
        noise = {"input": 30, "teacher": 3, "served": 5, "student_ref": 6, "student": 9 if student else 6}
        _write_samples(grid_mod.sample_dir(tmp_path / "s", defense), target, noise)
    rep = build_report(tmp_path / "s", tmp_path / "out", ("plots",), progress=False)
    (figure,) = [f for f in rep.figures if f.kind == "grid"]
    assert not [m for m in rep.messages if "lack sample images" in m]
    chosen = grid_mod.chosen_cells(rep.tables[0], rep.cells)
    assert len(chosen) == 2
    # two image rows per configuration: the whole image and the zoom row
    assert image_size(figure.image)[1] >= 2 * len(chosen) * 1.4 * grid_mod.GRID_DPI
    assert "PSNR against the ground truth" in figure.caption and "enlarged 4x" in figure.caption
    with grid_mod.style():
        fig = grid_mod.grid_figure(tmp_path / "s", chosen, "t")
    axes = np.array(fig.axes).reshape(2 * len(chosen), len(grid_mod.COLUMNS))
    names = [n for n, _ in grid_mod.COLUMNS]
    for i in range(len(chosen)):
        whole, zoom = axes[2 * i], axes[2 * i + 1]
        assert zoom[0].get_ylabel() == "zoom ×4"
        for j, name in enumerate(names):
            assert zoom[j].images and zoom[j].images[0].get_array().shape[:2] == (16, 16)
            if name == "target":
                continue
            assert whole[j].get_xlabel().endswith(" dB") and zoom[j].get_xlabel().startswith("crop ")
            img = np.asarray(whole[j].images[0].get_array(), dtype=float)
            mse = np.mean((img / 255 - target / 255) ** 2)
            assert float(whole[j].get_xlabel().split()[0]) == pytest.approx(10 * np.log10(1 / mse), abs=0.006)
