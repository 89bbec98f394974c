"""One cell end to end on the smoke profile: pairing, caching, shortcut, determinism."""

from __future__ import annotations

import math

import pytest

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
