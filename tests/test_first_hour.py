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
    assert f"stored in {tmp_path / 'results.sqlite'}" in out.stdout
    quiet = _bench("run", "--task", "derain", "--profile", "smoke", "--seed", "1", "--home", str(tmp_path),
                   BENCH_PROGRESS="0")
    assert quiet.returncode == 0 and "training" not in quiet.stderr


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
    assert out.count("\nremark: ") == 2 and "1.00 dB below the distilled reference" in out
    assert "--profile smoke" in out


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
    assert gain.startswith("output_noise: the defended students scored 0.505 dB above")
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

