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

