"""One cell end to end on the smoke profile: pairing, caching, shortcut, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from bench.cache import config_key
from bench.pipeline import CellSpec, resolve, run_cell
from bench.store import Store


def _spec(**kw):
    base = dict(task="derain", defense="none", attack="vanilla_kd", profile="smoke", seed=0)
    base.update(kw)
    return CellSpec(**base)


def test_undefended_cell_has_zero_drops(shared_home):
    row = run_cell(_spec(), home=shared_home, progress=False)
    m = row["metrics"]
    assert row["status"] == "done"
    assert m["teacher_drop_db"] == 0.0 and m["student_drop_db"] == 0.0
    assert m["student_shortcut"]
    for k in ("input_psnr", "teacher_psnr", "served_psnr", "student_ref_psnr", "student_psnr"):
        assert math.isfinite(m[k])


def test_asvp_inline_changes_answers_and_trains_a_paired_student(shared_home):
    row = run_cell(_spec(defense="asvp", defense_params={"h": "3.0"}), home=shared_home, progress=False)
    m = row["metrics"]
    assert not m["student_shortcut"]
    assert m["teacher_drop_db"] != 0.0
    assert m["teacher_cached"]  # trained by the first cell of the session or by this one's reference


def test_exposed_only_defense_is_not_credited_against_output_only_attacks(shared_home):
    row = run_cell(_spec(defense="asvp", defense_params={"mode": "exposed"}), home=shared_home,
                   progress=False)
    m = row["metrics"]
    assert m["student_shortcut"] and m["student_drop_db"] == 0.0 and m["teacher_drop_db"] == 0.0


def test_a_cell_is_deterministic_and_stored_once(tmp_path):
    spec = _spec(defense="asvp", seed=3)
    a = run_cell(spec, home=tmp_path / "a", progress=False)["metrics"]
    b = run_cell(spec, home=tmp_path / "b", progress=False)["metrics"]
    for k in ("teacher_psnr", "served_psnr", "student_ref_psnr", "student_psnr"):
        assert a[k] == pytest.approx(b[k], abs=1e-6), k
    again = run_cell(spec, home=tmp_path / "a", progress=False)
    assert again["cached"]
    assert len(Store(tmp_path / "a").cells()) == 1


def test_cell_key_depends_on_what_changes_results():
    base = resolve(_spec()).key
    assert resolve(_spec(seed=1)).key != base
    assert resolve(_spec(defense_params={"h": "2"}, defense="asvp")).key != resolve(_spec(defense="asvp")).key
    assert resolve(_spec(profile_params={"student_steps": "7"})).key != base
    assert resolve(_spec()).key == base


def test_numerics_are_part_of_every_trained_model_key():
    """A thread count changes a trained model's last bits: teachers, reference and ground-truth students
    and cells trained with one thread never share a key with those trained with two."""
    from bench.pipeline import gt_config, reference_config, teacher_config

    one, two = resolve(_spec(threads=1)), resolve(_spec(threads=2))
    assert one.config()["numerics"] == {"device": "cpu", "threads": 1, "precision": "fp32"}
    t1 = config_key(teacher_config(one.task, one.profile, 0, None, one.numerics))
    t2 = config_key(teacher_config(two.task, two.profile, 0, None, two.numerics))
    assert one.key != two.key and t1 != t2
    assert config_key(reference_config(one, t1)) != config_key(reference_config(two, t2))
    assert config_key(gt_config(one)) != config_key(gt_config(two))
    # unset, a spec takes the running process's thread count
    assert resolve(_spec()).numerics["threads"] == torch.get_num_threads()


def test_a_sweep_keys_its_cells_with_the_threads_its_jobs_run_with():
    from bench.scheduler import threads_per_job

    assert threads_per_job("loky", 2) == 1 and threads_per_job("dask", 1) == 1
    assert threads_per_job("loky", 1) == torch.get_num_threads()


def test_shared_models_are_scored_once_and_equal_a_fresh_evaluation(tmp_path):
    """The teacher and the reference/ground-truth students are scored once per store; a second cell reads
    the same numbers, which equal scoring the models again; a damaged score file is recomputed."""
    from bench.api import Defense
    from bench.cache import Artifacts
    from bench.pipeline import evaluate, get_teacher, scored

    first = run_cell(_spec(defense="asvp", defense_params={"h": "2.0"}), home=tmp_path, progress=False)["metrics"]
    files = sorted((tmp_path / "artifacts").glob("*/scores-*.json"))
    assert len(files) == 4  # input and teacher (teacher's folder), reference student, ground-truth student
    second = run_cell(_spec(defense="output_noise"), home=tmp_path, progress=False)["metrics"]
    for k in ("input_psnr", "teacher_psnr", "student_ref_psnr", "student_gt_psnr", "teacher_ssim"):
        assert first[k] == second[k], k
    cell = resolve(_spec())
    artifacts = Artifacts(tmp_path)
    teacher, key, trained = get_teacher(cell.task, cell.profile, 0, artifacts, progress=False)
    assert not trained
    test = cell.task.splits().test
    with Defense(None).serve(teacher, answer_bits=cell.profile.answer_bits) as undefended:  # 8-bit, as served
        fresh = evaluate(undefended, test, cell.task)
        assert fresh["psnr"] == first["teacher_psnr"] and fresh["ssim"] == first["teacher_ssim"]
        assert fresh["psnr_per_image"] == first["teacher_psnr_per_image"]
        for f in files:
            f.write_text("{not json")
        assert scored(undefended, test, cell.task, artifacts, key, "teacher-8bit") == fresh
