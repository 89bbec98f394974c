"""The attack field on the smoke profile: every (task, defense, attack) runs; feature KD, fine-tuning, the
ground-truth reference row and the adaptive countermeasures inside a cell."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench import BenchError
from bench.api import Attack
from bench.cache import Artifacts
from bench.cli import main
from bench.pipeline import CellSpec, get_teacher, resolve, run_cell, steal_student
from bench.query import FeatureAccessDenied
from bench.registry import ATTACKS, DEFENSES, TASKS
from bench.store import Store

TASK_NAMES = [t for t in TASKS.names() if t != "folder"]  # folder needs --data: see test_folder_task_*


def _spec(**kw):
    base = dict(task="derain", defense="none", attack="vanilla_kd", profile="smoke", seed=0)
    base.update(kw)
    return CellSpec(**base)


def _kinds(home, kind):
    return [json.loads(p.read_text())["config"] for p in (home / "artifacts").glob("*/config.json")
            if json.loads(p.read_text())["config"].get("kind") == kind]


@pytest.mark.parametrize("attack", ATTACKS.names())
@pytest.mark.parametrize("defense", DEFENSES.names())
@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_defense_and_attack_runs_from_the_cli(capsys, shared_home, task, defense, attack):
    code = main(["run", "--task", task, "--defense", defense, "--attack", attack, "--profile", "smoke",
                 "--home", str(shared_home)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "student (ground truth)" in out
    cell = resolve(_spec(task=task, defense=defense, attack=attack))
    row = Store(shared_home).get_cell(cell.key)
    m = row["metrics"]
    for k in ("teacher_psnr", "served_psnr", "student_ref_psnr", "student_psnr", "student_gt_psnr",
              "student_gt_ssim"):
        assert math.isfinite(m[k]), k
    assert 0 < m["queries_used"] <= cell.attack.budget(cell.profile)


def test_folder_task_runs_every_attack(capsys, tmp_path, pairs_dir):
    for attack in ATTACKS.names():
        code = main(["run", "--task", "folder", "--data", str(pairs_dir), "--defense", "asvp",
                     "--attack", attack, "--profile", "smoke", "--home", str(tmp_path / "runs")])
        assert code == 0, capsys.readouterr().err


# ------------------------------------------------------------------------------------ ground truth
def test_gt_student_is_cached_once_and_shared_by_every_defense(tmp_path):
    home = tmp_path / "runs"
    rows = [run_cell(_spec(defense=d), home=home, progress=False) for d in ("none", "asvp")]
    a, b = (r["metrics"] for r in rows)
    assert a["student_gt_psnr"] == b["student_gt_psnr"] and a["student_gt_ssim"] == b["student_gt_ssim"]
    gts = _kinds(home, "gt_student")
    assert len(gts) == 1 and "teacher" not in gts[0]  # needs no teacher: keyed by task, profile, attack, seed
    run_cell(_spec(seed=1), home=home, progress=False)
    assert len(_kinds(home, "gt_student")) == 2


def test_ground_truth_mode_pairs_the_attacks_queries_with_their_clean_crops():
    from bench.data import sample_pair_crops
    from bench.kd import collect
    from bench.pipeline import _attack_context
    from bench.query import OfflineAPI

    cell = resolve(_spec())
    pool = cell.task.splits().attacker
    ctx = _attack_context(cell, Artifacts("unused"), progress=False, ground_truth=True)
    api = OfflineAPI(ctx.budget)
    inputs, targets, feats = collect(api, pool, ctx, features=True)
    want_x, want_y = sample_pair_crops(pool.degraded, pool.clean, ctx.budget, cell.profile.query_size,
                                       torch.Generator().manual_seed(ctx.seed), augment=False)
    assert torch.equal(inputs, want_x) and torch.equal(targets, want_y) and feats == {} and api.used == 0
    with pytest.raises(BenchError, match="must not query"):
        api.query(inputs[:1])


class _Peeker(Attack):
    """Output-only attack that tries to read features anyway."""

    def steal(self, api, pool, student, ctx):
        api.query_features(pool.degraded[0][None, :, :8, :8])
        return student


def test_an_output_only_attack_gets_no_features_in_a_cell(tmp_path):
    ATTACKS.register("test_peeker")(_Peeker)
    try:
        with pytest.raises(FeatureAccessDenied):
            run_cell(_spec(attack="test_peeker"), home=tmp_path, progress=False)
        row = Store(tmp_path).cells()[0]
        assert row["status"] == "failed" and "output-only access" in row["error"]
    finally:
        ATTACKS.unregister("test_peeker")


# -------------------------------------------------------------------------------------- feature KD
def test_feature_kd_hints_default_to_the_teachers_middle_blocks_matched_by_depth():
    from bench.models import RestorationCNN

    attack = resolve(_spec(attack="feature_kd")).attack
    teacher, student = RestorationCNN(8, 4), RestorationCNN(4, 2)
    layers = attack.feature_layers(teacher)
    assert layers == ["body.1", "body.2"]
    assert attack._student_layers(layers, student) == ["body.0", "body.1"]
    assert attack._student_layers(["body.1"], RestorationCNN(4, 8)) == ["body.3"]
    bad = resolve(_spec(attack="feature_kd", attack_params={"student_layers": "body.0"})).attack
    with pytest.raises(BenchError, match="1 student_layers for 2 teacher layers"):
        bad._student_layers(bad.feature_layers(teacher), student)


def _steal(cell, home):
    artifacts = Artifacts(home)
    teacher, _, _ = get_teacher(cell.task, cell.profile, 0, artifacts, progress=False)
    return steal_student(cell, teacher, cell.defense, artifacts=artifacts, progress=False)[0]


def test_feature_kd_without_feature_terms_is_vanilla_kd(shared_home):
    vanilla = _steal(resolve(_spec()), shared_home)
    fkd = _steal(resolve(_spec(attack="feature_kd", attack_params={"feature_weights": "0", "augment": "true"})),
                 shared_home)
    for (name, a), b in zip(vanilla.state_dict().items(), fkd.state_dict().values()):
        assert torch.equal(a, b), name
    hinted = _steal(resolve(_spec(attack="feature_kd", attack_params={"augment": "true"})), shared_home)
    assert not torch.equal(hinted.tail.weight, vanilla.tail.weight)


def test_a_features_only_defense_acts_on_feature_kd_but_not_on_vanilla_kd(shared_home):
    params = {"mode": "exposed", "h": "4.0"}
    fkd = run_cell(_spec(defense="asvp", attack="feature_kd", defense_params=params), home=shared_home,
                   progress=False)["metrics"]
    assert not fkd["student_shortcut"] and fkd["teacher_drop_db"] == 0.0 and fkd["student_drop_db"] != 0.0
    van = run_cell(_spec(defense="asvp", defense_params=params), home=shared_home, progress=False)["metrics"]
    assert van["student_shortcut"] and van["student_drop_db"] == 0.0


# ---------------------------------------------------------------------------------------- finetune
def test_finetune_pretrains_on_another_task_once_per_cell_and_uses_a_quarter_budget(tmp_path):
    home = tmp_path / "runs"
    m = run_cell(_spec(defense="asvp", attack="finetune"), home=home, progress=False)["metrics"]
    assert m["queries_used"] == resolve(_spec()).profile.query_budget // 4
    pre = _kinds(home, "pretrained_student")
    assert len(pre) == 1 and pre[0]["task"]["name"] == "dehaze"  # shared by reference, gt and attacked student


def test_finetune_pretraining_task_differs_from_the_attacked_one():
    from attacks.finetune import source_task

    cell = resolve(_spec(task="sr", attack="finetune"))
    src = source_task(cell.task, "auto", cell.profile)
    assert src.name == "sr" and src.scale == 4 and cell.task.scale == 2
    with pytest.raises(BenchError, match="must come from another task"):
        source_task(resolve(_spec()).task, "derain", cell.profile)


def test_finetune_starts_from_the_public_weights(tmp_path):
    cell = resolve(_spec(attack="finetune", attack_params={"steps": "1", "lr": "1e-9"}))
    artifacts = Artifacts(tmp_path)
    public = None
    student = _steal(cell, tmp_path)
    for cfg in _kinds(tmp_path, "pretrained_student"):
        from bench.cache import config_key

        public = cell.task.student_arch()
        assert artifacts.load_model(config_key(cfg), public)
    assert public is not None
    torch.testing.assert_close(student.body[0].conv1.weight, public.body[0].conv1.weight, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------- adaptive
@pytest.mark.parametrize("attack", ATTACKS.names())
def test_adaptive_countermeasures_work_with_every_attack(shared_home, attack):
    spec = _spec(defense="asvp", attack=attack, attack_params={"tta_average": "true", "output_filter": "gaussian"})
    m = run_cell(spec, home=shared_home, progress=False)["metrics"]
    budget = resolve(spec).attack.budget(resolve(spec).profile)
    assert m["queries_used"] == budget // 8 * 8 > 0  # whole images of 8 transforms, charged in full
    assert math.isfinite(m["student_psnr"]) and math.isfinite(m["student_gt_psnr"])


def test_a_budget_too_small_for_one_averaged_image_is_a_clear_error(tmp_path):
    spec = _spec(attack_params={"tta_average": "true", "queries": "7"})
    with pytest.raises(BenchError, match="affords no image"):
        run_cell(spec, home=tmp_path, progress=False)
