"""The skeptical student attack (attacks/skeptical_student.py) on the smoke profile: registered and listed,
a cell end to end, deterministic for a seed, its auxiliary head kept out of the student the suite saves and
scores, and with the head switched off exactly vanilla KD."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench import BenchError
from bench.cache import Artifacts
from bench.cli import main
from bench.models import RestorationCNN
from bench.pipeline import CellSpec, get_teacher, resolve, run_cell, steal_student
from bench.registry import ATTACKS
from bench.stages import defense_fits, fit_defense
from bench.store import Store


def _spec(**kw) -> CellSpec:
    base = dict(task="derain", defense="nasty_teacher", attack="skeptical_student", profile="smoke", seed=0)
    base.update(kw)
    return CellSpec(**base)


def _steal(spec: CellSpec, home) -> torch.nn.Module:
    cell = resolve(spec)
    artifacts = Artifacts(home)
    teacher, key, _ = get_teacher(cell.task, cell.profile, 0, artifacts, progress=False)
    if defense_fits(cell):  # the nasty teacher: fine-tuned once per home, then cached
        fit_defense(cell, teacher, key, artifacts, progress=False)
    return steal_student(cell, teacher, cell.defense, artifacts=artifacts, progress=False)[0]


def test_it_is_listed_by_the_registry_and_the_cli(capsys):
    assert "skeptical_student" in ATTACKS.names()
    info = ATTACKS.info("skeptical_student")
    assert info.origin == "antidistill-bench" and info.cls.access == "outputs"
    assert main(["list", "attacks"]) == 0
    out = capsys.readouterr().out
    assert "skeptical_student" in out and "final_target" in out and "aux_weight" in out


def test_a_smoke_cell_runs_end_to_end_against_the_nasty_teacher(capsys, tmp_path):
    home = tmp_path / "runs"
    code = main(["run", "--task", "derain", "--defense", "nasty_teacher", "--attack", "skeptical_student",
                 "--profile", "smoke", "--threads", "1", "--home", str(home)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "skeptical_student" in out and "student (defended)" in out
    cell = resolve(_spec(threads=1))
    row = Store(home).get_cell(cell.key)
    assert row is not None and row["status"] == "done"
    m = row["metrics"]
    for k in ("teacher_psnr", "served_psnr", "student_ref_psnr", "student_psnr", "student_gt_psnr"):
        assert math.isfinite(m[k]), k
    assert m["queries_used"] == cell.attack.budget(cell.profile)


def test_the_saved_students_hold_no_auxiliary_head(tmp_path):
    home = tmp_path / "runs"
    run_cell(_spec(), home=home, progress=False)
    want = set(resolve(_spec()).student_arch().state_dict())
    saved = []
    for cfg_path in (home / "artifacts").glob("*/config.json"):
        config = json.loads(cfg_path.read_text())["config"]
        if config.get("kind") in ("student", "gt_student") and config["attack"]["name"] == "skeptical_student":
            state = torch.load(cfg_path.with_name("model.pt"), map_location="cpu", weights_only=True)
            saved.append(config["kind"])
            assert set(state) == want, config["kind"]
    assert sorted(saved) == ["gt_student", "student"]


def test_the_returned_student_is_the_plain_architecture_with_no_hooks_left(tmp_path):
    student = _steal(_spec(), tmp_path)
    fresh = resolve(_spec()).student_arch()
    assert list(student.state_dict()) == list(fresh.state_dict())
    assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in fresh.parameters())
    assert all(not m._forward_hooks for m in student.modules())
    assert not student.training


def test_it_is_deterministic_for_a_seed(tmp_path):
    a = _steal(_spec(), tmp_path / "a")
    b = _steal(_spec(), tmp_path / "b")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    other = _steal(_spec(seed=1), tmp_path / "a")
    assert not torch.equal(other.tail.weight, a.tail.weight)


def test_without_the_head_it_is_vanilla_kd_and_with_it_it_is_not(tmp_path):
    vanilla = _steal(_spec(attack="vanilla_kd"), tmp_path)
    off = _steal(_spec(attack_params={"aux_weight": "0", "final_target": "answer"}), tmp_path)
    for (name, a), b in zip(vanilla.state_dict().items(), off.state_dict().values()):
        assert torch.equal(a, b), name
    for target in ("hybrid", "aux", "answer"):
        on = _steal(_spec(attack_params={"final_target": target}), tmp_path)
        assert not torch.equal(on.tail.weight, vanilla.tail.weight), target


def test_the_head_sits_on_the_shallower_middle_block_and_bad_settings_are_refused(tmp_path):
    attack = resolve(_spec()).attack
    assert attack.aux_layer(RestorationCNN(4, 1)) == "body.0"
    assert attack.aux_layer(RestorationCNN(4, 2)) == "body.0"
    assert attack.aux_layer(RestorationCNN(4, 3)) == "body.1"
    assert attack.aux_layer(RestorationCNN(4, 4)) == "body.1"
    with pytest.raises(BenchError, match="aux_weight=0"):
        resolve(_spec(attack_params={"aux_weight": "0"}))
    with pytest.raises(BenchError, match="final_target"):
        resolve(_spec(attack_params={"final_target": "labels"}))
    with pytest.raises(BenchError, match="no_such_layer"):
        _steal(_spec(attack_params={"aux_layer": "no_such_layer"}), tmp_path)


def test_super_resolution_runs_through_the_heads_pixel_shuffle(tmp_path):
    m = run_cell(_spec(task="sr", defense="none"), home=tmp_path, progress=False)["metrics"]
    assert math.isfinite(m["student_psnr"]) and math.isfinite(m["student_gt_psnr"])
