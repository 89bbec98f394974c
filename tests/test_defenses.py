"""The defense field (output_noise, nasty_teacher, mad beside none and asvp): determinism per input,
the channels each touches, output noise against theory, MAD's bound and gradient deviation, the nasty
teacher's cost on the owner data."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench.cache import Artifacts
from bench.calibrate import calibrate
from bench.models import RestorationCNN
from bench.pipeline import CellSpec, evaluate, fit_defense, get_teacher, resolve
from bench.query import QueryAPI
from bench.registry import DEFENSES
from bench.store import Store
from defenses.mad import gradient_deviation

DEFENSE_NAMES = ["none", "asvp", "output_noise", "mad", "nasty_teacher"]
# small but effective settings for the smoke profile's tiny teacher (its default fine-tune is 3 steps)
NASTY_SMOKE = {"steps": "30", "lr": "0.003"}


def _cell(defense: str, **params):
    return resolve(CellSpec(task="derain", defense=defense, profile="smoke", defense_params=params))


@pytest.fixture(scope="module")
def smoke(shared_home):
    """(artifacts, teacher, teacher key) of the smoke derain teacher, shared by the session."""
    cell = _cell("none")
    artifacts = Artifacts(shared_home)
    teacher, key, _ = get_teacher(cell.task, cell.profile, 0, artifacts, progress=False)
    return artifacts, teacher, key


def _fitted(smoke, name: str, seed: int = 0, **params):
    artifacts, teacher, key = smoke
    cell = _cell(name, **params)
    defense = DEFENSES.get(name)(cell.defense.params, seed=seed)
    cell = dataclasses.replace(cell, defense=defense)
    fit_defense(cell, teacher, key, artifacts, progress=False)
    return cell


def _queries(n: int = 3, size: int = 24, seed: int = 0) -> torch.Tensor:
    from bench.kd import pick_queries

    pool = _cell("none").task.splits().attacker
    return pick_queries(pool, n, size, torch.Generator().manual_seed(seed))


# -------------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", DEFENSE_NAMES)
def test_every_defense_answers_deterministically_per_input(smoke, name):
    _, teacher, _ = smoke
    params = {"h": "3.0"} if name == "asvp" else NASTY_SMOKE if name == "nasty_teacher" else {}
    defense = _fitted(smoke, name, **params).defense
    x = _queries(3)
    batch = torch.cat([x, x[:1]])  # the first image twice, at two positions
    with torch.no_grad(), defense.serve(teacher, exposed_layers=["body.0"]) as served:
        torch.manual_seed(1)
        a, fa = served.forward_with_features(batch)
        torch.manual_seed(2)  # the global generator must play no part
        b, fb = served.forward_with_features(batch)
        alone = served(x[1:2])
    assert torch.equal(a, b) and torch.equal(fa["body.0"], fb["body.0"])
    assert torch.allclose(a[0], a[3], atol=1e-5), "the same image inside one batch got two answers"
    assert torch.allclose(alone, a[1:2], atol=1e-5), "an image alone and inside a batch got different answers"


@pytest.mark.parametrize("name", ["output_noise", "mad"])
def test_stochastic_defenses_draw_from_the_defense_seed(smoke, name):
    _, teacher, _ = smoke
    x = _queries(2)
    with torch.no_grad():
        outs = []
        for seed in (0, 1):
            with _fitted(smoke, name, seed=seed).defense.serve(teacher) as served:
                outs.append(served(x))
    assert not torch.allclose(outs[0], outs[1])


@pytest.mark.parametrize("name, want", [
    ("none", ()), ("output_noise", ("answers",)), ("mad", ("answers",)),
    ("nasty_teacher", ("answers", "features")), ("asvp", ("answers", "features")),
])
def test_channels_are_declared_and_strength_named(name, want):
    cls = DEFENSES.get(name)
    assert cls(cls.Params(), seed=0).channels() == want
    if name != "none":
        assert cls.strength in {f.name for f in dataclasses.fields(cls.Params)}


def test_nasty_teacher_changes_answers_and_exposed_features(smoke):
    _, teacher, _ = smoke
    x = _queries(2)
    with torch.no_grad():
        with DEFENSES.get("none")(None).serve(teacher, exposed_layers=["body.0"]) as plain:
            y0, f0 = plain.forward_with_features(x)
        nasty = _fitted(smoke, "nasty_teacher", omega="0.3", **NASTY_SMOKE).defense
        with nasty.serve(teacher, exposed_layers=["body.0"]) as served:
            y1, f1 = served.forward_with_features(x)
    assert not torch.allclose(y0, y1, atol=1e-3)
    assert not torch.allclose(f0["body.0"], f1["body.0"], atol=1e-3)


# ------------------------------------------------------------------------------------- output noise
@pytest.mark.parametrize("distribution", ["gaussian", "uniform"])
@pytest.mark.parametrize("sigma", [0.01, 0.04])
def test_output_noise_psnr_matches_theory(distribution, sigma):
    """Served vs teacher PSNR = -20 log10(sigma): answers kept inside (0, 1), so clamping never acts."""
    cls = DEFENSES.get("output_noise")
    defense = cls(cls.Params(sigma=sigma, distribution=distribution), seed=0)
    torch.manual_seed(0)
    model = RestorationCNN(8, 1).eval()
    x = 0.3 + 0.4 * torch.rand(4, 3, 64, 64)
    with torch.no_grad(), defense.serve(model) as served:
        clean = model(x)
        assert float(clean.min()) > 6 * sigma and float(clean.max()) < 1 - 6 * sigma
        answers = QueryAPI(served, budget=4).query(x)  # what the service returns: clamped to [0, 1]
    mse = float((answers.double() - clean.double()).pow(2).mean())
    assert -10 * math.log10(mse) == pytest.approx(-20 * math.log10(sigma), abs=0.1)


# ---------------------------------------------------------------------------------------------- MAD
def test_mad_stays_within_eps_and_beats_random_perturbations(smoke):
    _, teacher, _ = smoke
    eps = 0.05
    mad = _fitted(smoke, "mad", eps=str(eps)).defense
    x = _queries(4, seed=3)
    with torch.no_grad():
        y = teacher(x).clamp(0, 1)
        with mad.serve(teacher) as served:
            answers = served(x)
    d = answers - y
    norms, bound = d.flatten(1).norm(dim=1), eps * y.flatten(1).norm(dim=1)
    assert (norms <= bound * (1 + 1e-5)).all()
    assert float(answers.min()) >= 0 and float(answers.max()) <= 1
    assert (norms >= 0.5 * bound).all()  # it uses its budget
    dev = gradient_deviation(mad.surrogate, x, y, d)
    g = torch.Generator().manual_seed(7)
    random_devs = []
    for _ in range(5):
        r = torch.randn(d.shape, generator=g)
        r = r * (norms / r.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
        random_devs.append(gradient_deviation(mad.surrogate, x, y, r))
    best_random = torch.stack(random_devs).amax(0)
    assert (dev > best_random).all(), (dev, best_random)
    assert float(dev.mean()) > 1.5 * float(best_random.mean())


def test_mad_surrogate_is_cached_and_independent_of_eps(smoke):
    a = _fitted(smoke, "mad", eps="0.01").defense.surrogate
    b = _fitted(smoke, "mad", eps="0.08").defense.surrogate
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


# ------------------------------------------------------------------------------------ nasty teacher
def _owner_drop(smoke, defense) -> float:
    _, teacher, _ = smoke
    task = _cell("none").task
    owner = task.splits().owner
    with defense.serve(teacher) as served:
        return evaluate(teacher, owner, task)["psnr"] - evaluate(served, owner, task)["psnr"]


def test_nasty_teacher_stays_within_its_teacher_cost_budget_on_owner(smoke):
    budget = 0.5
    free = _fitted(smoke, "nasty_teacher", omega="0.3", **NASTY_SMOKE).defense
    assert _owner_drop(smoke, free) > 2 * budget  # unbudgeted, this omega costs far more
    held = _fitted(smoke, "nasty_teacher", omega="0.3", owner_budget_db=str(budget), **NASTY_SMOKE).defense
    drop = _owner_drop(smoke, held)
    assert 0.6 * budget <= drop <= budget + 1e-6, drop


def test_nasty_teacher_calibrates_on_calib(smoke, tmp_path):
    """Each strength tried is one (cached) fine-tuning; the calibration still lands on the budget."""
    artifacts, teacher, key = smoke
    budget = 0.5
    cell = resolve(CellSpec(task="derain", defense="nasty_teacher", profile="smoke", defense_params=NASTY_SMOKE,
                            budget_db=budget))
    cal = calibrate(cell, teacher, key, artifacts, Store(tmp_path), progress=False)
    assert abs(cal.achieved_db - budget) <= 0.02 and cal.evaluations <= 8
    nasty = cell.defense.with_strength(cal.value)
    fit_defense(dataclasses.replace(cell, defense=nasty), teacher, key, artifacts, progress=False)
    calib = cell.task.splits().calib
    with nasty.serve(teacher) as served:
        drop = evaluate(teacher, calib, cell.task)["psnr"] - evaluate(served, calib, cell.task)["psnr"]
    assert abs(drop - budget) <= 0.05


# ----------------------------------------------------------------------- your own model (bench.protect)
@pytest.mark.parametrize("name", ["mad", "nasty_teacher", "output_noise"])
def test_new_defenses_protect_a_users_model_with_owner_data(name):
    from bench.protect import protect

    torch.manual_seed(0)
    model = RestorationCNN(8, 2).eval()
    g = torch.Generator().manual_seed(0)
    targets = [torch.rand(3, 32, 32, generator=g) for _ in range(3)]
    inputs = [(t + 0.1 * torch.randn(3, 32, 32, generator=g)).clamp(0, 1) for t in targets]
    x = torch.stack(inputs[:2])
    with torch.no_grad():
        plain = model(x)
    owner = (inputs, targets) if name != "output_noise" else None
    with protect(model, name, owner=owner, profile="smoke") as served, torch.no_grad():
        a, b = served(x), served(x[1:])
    assert not torch.allclose(a, plain) and torch.allclose(a[1:], b, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(model(x), plain)  # the user's model is untouched
