"""The command line: results table, plugin listing, and one-line errors without tracebacks."""

from __future__ import annotations

import pytest

from bench.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("task", ["sr", "lowlight", "underwater", "dehaze", "derain"])
@pytest.mark.parametrize("defense", ["none", "asvp", "output_noise", "mad", "nasty_teacher"])
def test_smoke_run_prints_the_result_table(capsys, shared_home, task, defense):
    code, out, err = run(capsys, "run", "--task", task, "--defense", defense, "--profile", "smoke",
                         "--home", str(shared_home))
    assert code == 0, err
    for label in ("teacher", "served teacher", "student (undefended)", "student (defended)",
                  "teacher_drop_db", "student_drop_db", "student_ssim_drop_pct"):
        assert label in out


@pytest.mark.parametrize("sets, want", [
    (["mode=exposed"], {"mode": "exposed"}),
    (["layout=spatial"], {"layout": "spatial"}),
    (["k_mode=fixed", "k=2"], {"k_mode": "fixed", "k": 2}),
    (["k_mode=energy", "tau=0.5", "k_max=3"], {"k_mode": "energy", "tau": 0.5, "k_max": 3}),
    (["h=2.5"], {"h": 2.5}),
    (["coherence=false"], {"coherence": False}),
    (["coherence=true", "rho=0.2"], {"coherence": True, "rho": 0.2}),
    (["layers=body.0,middle"], {"layers": ("body.0", "middle")}),
])
def test_asvp_ablations_are_reachable_with_set(sets, want):
    from bench.cli import build_parser, spec_from_args
    from bench.pipeline import resolve

    argv = ["run", "--task", "derain", "--defense", "asvp"]
    for item in sets:
        argv += ["--set", f"defense.{item}"]
    params = resolve(spec_from_args(build_parser().parse_args(argv))).defense.params
    for key, value in want.items():
        assert getattr(params, key) == value


def test_asvp_ablations_combined_run_on_smoke(capsys, shared_home):
    sets = ["layout=spatial", "k_mode=fixed", "k=2", "coherence=false", "h=3", "layers=body.0"]
    argv = ["run", "--task", "derain", "--defense", "asvp", "--profile", "smoke", "--home", str(shared_home)]
    for item in sets:
        argv += ["--set", f"defense.{item}"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "channels touched: answers,features" in out


def test_folder_task_runs_on_user_pairs(capsys, tmp_path, pairs_dir):
    code, out, err = run(capsys, "run", "--task", "folder", "--data", str(pairs_dir),
                         "--defense", "asvp", "--profile", "smoke", "--home", str(tmp_path / "runs"))
    assert code == 0, err
    assert "folder · asvp" in out


@pytest.mark.parametrize("argv, words", [
    (["run", "--task", "derian"], ["unknown task 'derian'", "Did you mean 'derain'"]),
    (["run", "--task", "derain", "--defense", "asvq"], ["unknown defense 'asvq'", "asvp"]),
    (["run", "--task", "derain", "--attack", "kd"], ["unknown attack 'kd'", "vanilla_kd"]),
    (["run", "--task", "derain", "--defense", "asvp", "--set", "defense.hh=2"], ["no parameter 'hh'"]),
    (["run", "--task", "derain", "--defense", "asvp", "--set", "defense.h=big"], ["'h' must be float"]),
    (["run", "--task", "derain", "--set", "h=2"], ["GROUP.KEY=VALUE"]),
    (["run", "--task", "derain", "--profile", "huge"], ["unknown profile 'huge'", "smoke, quick, paper"]),
    (["run", "--task", "folder"], ["--data"]),
    (["run", "--task", "folder", "--data", "/nonexistent/dir"], ["/nonexistent/dir"]),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, words):
    code, out, err = run(capsys, *argv, "--home", str(tmp_path))
    assert code == 2
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: ")
    for w in words:
        assert w in err


def test_broken_image_in_data_names_the_file(capsys, tmp_path):
    for sub in ("input", "target"):
        (tmp_path / "d" / sub).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "d" / sub / f"x{i}.png").write_bytes(b"\x89PNG not really")
    code, out, err = run(capsys, "run", "--task", "folder", "--data", str(tmp_path / "d"), "--profile",
                         "smoke", "--home", str(tmp_path / "runs"))
    assert code == 2 and "x0.png" in err and err.count("\n") == 1


def test_list_shows_every_plugin_with_origin_and_params(capsys):
    code, out, err = run(capsys, "list")
    assert code == 0
    for name in ("asvp", "none", "vanilla_kd", "derain", "sr", "folder"):
        assert name in out
    assert "[antidistill-bench]" in out and "tau" in out and "strength: h" in out
