"""Adaptive misinformation (issue 32): listed; in-distribution queries pay less than out-of-distribution ones;
deterministic per input and batch-invariant; off at flag_rate 0; the gate grows with the strength; a smoke cell
runs end to end and its row holds the cost on the attacker's queries."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench.cache import Artifacts
from bench.pipeline import CellSpec, fit_defense, get_teacher, resolve, run_cell
from bench.registry import DEFENSES
from bench.row import undocumented
from bench.scoring import ATTACKER_QUERIES, attacker_queries

NAME = "adaptive_misinformation"


def _cell(**params):
    return resolve(CellSpec(task="derain", defense=NAME, profile="smoke", defense_params=params))


@pytest.fixture(scope="module")
def smoke(shared_home):
    """(artifacts, teacher, teacher key) of the smoke derain teacher, shared by the session."""
    cell = _cell()
    artifacts = Artifacts(shared_home)
    teacher, key, _ = get_teacher(cell.task, cell.profile, 0, artifacts, progress=False)
    return artifacts, teacher, key


def _fitted(smoke, **params):
    artifacts, teacher, key = smoke
    cell = _cell(**params)
    fit_defense(cell, teacher, key, artifacts, progress=False)
    return cell.defense


def _answers(defense, teacher, x):
    with torch.no_grad(), defense.serve(teacher) as served, DEFENSES.get("none")(None).serve(teacher) as plain:
        return served(x), plain(x)


def _owner_crops(n: int = 6, size: int = 24) -> torch.Tensor:
    """Crops of the owner's images at positions of their own (not those the statistics were fit on)."""
    pool = _cell().task.splits().owner
    x, _ = pool.sample_crops(n, size, torch.Generator().manual_seed(123), augment=False)
    return x


def test_listed_with_its_strength(capsys):
    from bench.cli import main

    assert main(["list", "defenses"]) == 0
    out = capsys.readouterr().out
    assert NAME in out and "(strength: flag_rate)" in out
    cls = DEFENSES.get(NAME)
    assert cls(cls.Params()).channels() == ("answers",)
    assert cls.strength in {f.name for f in dataclasses.fields(cls.Params)}


def test_in_distribution_queries_pay_less_than_out_of_distribution_ones(smoke):
    _, teacher, _ = smoke
    defense = _fitted(smoke)
    ood = torch.rand(6, 3, 24, 24, generator=torch.Generator().manual_seed(0))  # noise images
    ind = _owner_crops()
    with torch.no_grad():
        s_in, s_out = defense.ood_score(ind), defense.ood_score(ood)
        a_in, a_out = defense.gate(ind), defense.gate(ood)
    assert float(s_in.max()) < float(s_out.min()), (s_in, s_out)
    assert float(a_out.min()) > 0.9 and float(a_in.mean()) < 0.5, (a_in, a_out)
    # what each pays, in the served answers (against the undefended teacher's)
    cost = {}
    for who, x in (("in", ind), ("out", ood)):
        served, plain = _answers(defense, teacher, x)
        cost[who] = (served - plain).abs().flatten(1).mean(1)
    assert float(cost["in"].mean()) < 0.25 * float(cost["out"].mean()), cost


def test_deterministic_per_input_and_batch_invariant(smoke):
    _, teacher, _ = smoke
    defense = _fitted(smoke, flag_rate="0.5")
    x = torch.cat([_owner_crops(2), torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))])
    batch = torch.cat([x, x[:1]])  # the first image twice, at two positions
    with torch.no_grad(), defense.serve(teacher) as served:
        torch.manual_seed(1)
        a = served(batch)
        torch.manual_seed(2)  # the global generator plays no part
        b = served(batch)
        alone = [served(x[i:i + 1]) for i in range(len(x))]
    assert torch.equal(a, b)
    assert torch.allclose(a[0], a[3], atol=1e-5), "the same image inside one batch got two answers"
    for i, y in enumerate(alone):
        assert torch.allclose(y, a[i:i + 1], atol=1e-5), f"image {i} alone and inside a batch got different answers"


def test_flag_rate_zero_serves_the_teacher_and_the_gate_grows_with_it(smoke):
    _, teacher, _ = smoke
    x = torch.cat([_owner_crops(3), torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(2))])
    off = _fitted(smoke, flag_rate="0")
    served, plain = _answers(off, teacher, x)
    assert torch.equal(served, plain)
    gates = [_fitted(smoke, flag_rate=str(q)).gate(x) for q in (0.01, 0.1, 0.5, 2.0)]
    for lo, hi in zip(gates, gates[1:]):
        assert bool((hi >= lo).all()), (lo, hi)
    assert float(gates[-1].min()) > 0.9  # past every owner score, every image is answered with misinformation
    # the owner statistics are the teacher's, not the strength's: fit once
    a, b = _fitted(smoke, flag_rate="0.01").stats, _fitted(smoke, flag_rate="2.0").stats
    assert torch.equal(a.scores, b.scores) and torch.equal(a.mu, b.mu)


def test_misinformation_reverse_turns_the_correction_round(smoke):
    _, teacher, _ = smoke
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(3))  # gate ~1: the answer is f_mis
    for kind, want in (("reverse", lambda f: 2 * x - f), ("input", lambda f: x)):
        defense = _fitted(smoke, misinformation=kind, flag_rate="2.0")
        with torch.no_grad():
            f = teacher(x)
            a = defense.gate(x).view(-1, 1, 1, 1)
            got = defense.perturb_answers(f, type("Q", (), {"inputs": x})())
        assert torch.allclose(got, f + a * (want(f) - f), atol=1e-6), kind


def test_smoke_cell_reports_the_cost_on_the_attackers_queries(tmp_path):
    row = run_cell(CellSpec(task="derain", defense=NAME, profile="smoke", defense_params={"flag_rate": "1.0"}),
                   home=tmp_path / "runs", progress=False)
    m = row["metrics"]
    assert row["status"] == "done" and undocumented(m) == []
    per = m["attacker_query_drop_db_per_image"]
    assert len(per) == ATTACKER_QUERIES and all(math.isfinite(v) for v in per)
    assert m["attacker_query_drop_db"] == pytest.approx(sum(per) / len(per))
    assert any(v != 0.0 for v in per)  # answers are changed on the attacker's crops at this strength
    plain = run_cell(CellSpec(task="derain", defense="none", profile="smoke"), home=tmp_path / "runs",
                     progress=False)["metrics"]
    assert plain["attacker_query_drop_db"] == 0.0


def test_attacker_queries_are_the_attacks_kind_of_query():
    cell = _cell()
    pool, size = cell.task.splits().attacker, cell.profile.query_size
    q = attacker_queries(pool, size)
    assert len(q) == ATTACKER_QUERIES
    assert all(tuple(x.shape[-2:]) == (size, size) and tuple(y.shape[-2:]) == (size, size)
               for x, y in zip(q.degraded, q.clean))
    again = attacker_queries(pool, size)
    assert all(torch.equal(a, b) for a, b in zip(q.degraded, again.degraded))  # fixed seed: every cell alike


def test_the_threshold_is_read_off_held_out_owner_images(smoke):
    """The owner scores the threshold comes from are each image's crops against the other images' statistics,
    what an unseen in-distribution image scores: above the owner images' own (in-sample) scores, and a low flag
    rate flags a minority of the test split's images, not all of them (version 1's in-sample threshold)."""
    defense = _fitted(smoke)
    splits = _cell().task.splits()
    own = torch.cat([defense.ood_score(x[None]) for x in splits.owner.degraded])
    unseen = torch.cat([defense.ood_score(x[None]) for x in splits.test.degraded])
    held_out = defense.stats.scores
    assert float(held_out.median()) > float(own.median()), (held_out, own)
    tau, _ = defense.stats.threshold(0.05)
    assert float((unseen >= tau).float().mean()) <= 0.5, (unseen, tau)
    assert float(unseen.median()) < float(held_out.max())


def test_below_one_owner_score_in_n_the_threshold_keeps_rising_and_the_cost_falls_to_zero(smoke):
    from defenses.adaptive_misinformation import OwnerStats

    stats = OwnerStats(1, 8)
    with torch.no_grad():
        stats.scores.copy_(torch.arange(8.0))
    n, top = 8, 6.125  # the 1 - 1/8 quantile of 0..7, linearly interpolated
    at_one_in_n, iqr = stats.threshold(1 / n)
    assert math.isclose(at_one_in_n, top) and math.isclose(stats.threshold(1 / n - 1e-12)[0], top, abs_tol=1e-9)
    taus = [stats.threshold(q)[0] for q in (1 / 16, 1 / 32, 1 / 64)]
    assert [round(t - top, 9) for t in taus] == [round(iqr * k, 9) for k in (1, 2, 3)]  # one IQR per halving
    # on the teacher: a noise image, past every owner score, is answered with misinformation at a flag rate of
    # 0.05 and let through as the flag rate falls towards 0 (version 1 flagged it at any rate above 0)
    far = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    gates = [float(_fitted(smoke, flag_rate=q).gate(far)) for q in (0.05, 1e-3, 1e-9)]
    assert gates[0] > 0.9 and gates[2] < 0.01 and gates[0] >= gates[1] >= gates[2], gates
