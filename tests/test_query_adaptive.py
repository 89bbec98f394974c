"""The attacker's query API and the adaptive countermeasures (bench.query, bench.adaptive, bench.kd)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench import adaptive
from bench.api import Defense
from bench.data import dihedral, sample_pair_crops
from bench.filters import gaussian_blur
from bench.kd import ask
from bench.query import FeatureAccessDenied, QueryAPI, QueryBudgetExceeded
from bench.serving import ServedModel


def _equivariant_model() -> nn.Module:
    """Exactly equivariant to the 8 flips/rotations: 1x1 convs and 3x3 kernels symmetric under them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.Tanh(),
                          nn.Conv2d(6, 3, 1))
    with torch.no_grad():
        w = model[2].weight
        w.copy_(sum(dihedral(w, k) for k in range(8)) / 8)
        model[4].weight.mul_(0.1)
        model[4].bias.fill_(0.5)  # answers around 0.5: clamping to [0, 1] never bites
    return model.eval()


class _ContentNoise(Defense):
    """Gaussian noise of std ``sigma`` on the answers, drawn from the query's content seed."""

    sigma = 0.02

    def channels(self):
        return ("answers",)

    def perturb_answers(self, answers, query):
        noise = torch.stack([torch.randn(a.shape, generator=query.generator(i)) for i, a in enumerate(answers)])
        return answers + self.sigma * noise


def _images(n=4, h=24, w=32, seed=1):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- budget
def test_a_query_past_the_budget_raises_a_clear_error_and_costs_nothing():
    api = QueryAPI(ServedModel(_equivariant_model()), budget=6)
    x = _images(4)
    first = api.query(x)
    with pytest.raises(QueryBudgetExceeded) as err:
        api.query(x)
    assert "4 of 6 used, 4 more asked" in str(err.value) and "attack.queries" in str(err.value)
    assert api.used == 4 and api.remaining == 2
    assert torch.equal(api.query(x[:2]), first[:2])  # what still fits is answered, the same as before
    assert api.remaining == 0


def test_ask_stops_at_the_budget_and_the_student_trains_on_what_was_answered(capsys):
    from bench.api import AttackContext
    from bench.kd import distill
    from bench.profiles import get_profile
    from bench.registry import TASKS

    profile = get_profile("smoke")
    api = QueryAPI(ServedModel(_equivariant_model()), budget=5)
    inputs = _images(9, 24, 24)
    got_x, got_y, _ = ask(api, inputs, batch=4, progress=False)
    assert len(got_x) == len(got_y) == 5 and api.used == 5
    assert torch.equal(got_x, inputs[:5])
    assert "after 5 of 9 images" in capsys.readouterr().err
    student = nn.Conv2d(3, 3, 3, padding=1)
    before = student.weight.detach().clone()
    task = TASKS.get("derain")(TASKS.get("derain").Params(), profile=profile)
    ctx = AttackContext(profile=profile, seed=0, task=task, budget=5, progress=False)
    losses = distill(student, got_x, got_y, ctx, steps=3, lr=1e-2)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(student.weight, before)


def test_feature_access_is_refused_to_output_only_attacks_through_every_wrapper():
    served = ServedModel(_equivariant_model(), exposed_layers=("2",))
    for api in (QueryAPI(served, 8, "outputs"),
                adaptive.wrap(QueryAPI(served, 8, "outputs"), adaptive.AdaptiveParams(output_filter="gaussian"))):
        assert api.exposed_layers == ()
        with pytest.raises(FeatureAccessDenied, match="output-only access"):
            api.query_features(_images(1))
        assert api.used == 0
    y, feats = QueryAPI(served, 8, "features").query_features(_images(1))
    assert set(feats) == {"2"} and feats["2"].shape == (1, 6, 24, 32)


# ----------------------------------------------------------------------------------------- averaging
def test_tta_average_changes_nothing_on_an_undefended_equivariant_model():
    served = ServedModel(_equivariant_model())
    x = _images(3, 12, 16)  # not square: rotated queries have another shape
    plain = QueryAPI(served, 100).query(x)
    api = adaptive.wrap(QueryAPI(served, 100), adaptive.AdaptiveParams(tta_average=True))
    averaged = api.query(x)
    assert api.cost == 8 and api.used == 24  # every transformed image is charged
    torch.testing.assert_close(averaged, plain, atol=1e-6, rtol=0)


def test_tta_average_divides_content_seeded_noise_variance_by_eight():
    model = _equivariant_model()
    x = _images(8, 32, 32)
    clean = model(x).detach()
    served = ServedModel(model, _ContentNoise(None, seed=0), defense_seed=3)
    noisy = QueryAPI(served, 8).query(x)
    api = adaptive.wrap(QueryAPI(served, 64), adaptive.AdaptiveParams(tta_average=True))
    averaged = api.query(x)
    var_plain = (noisy - clean).var().item()
    var_tta = (averaged - clean).var().item()
    assert var_plain == pytest.approx(_ContentNoise.sigma ** 2, rel=0.05)
    assert var_plain / var_tta == pytest.approx(8.0, rel=0.1)
    assert torch.equal(QueryAPI(served, 8).query(x), noisy)  # answers are deterministic: asking again is no help


def test_a_tta_batch_that_does_not_fit_is_refused_whole():
    api = adaptive.wrap(QueryAPI(ServedModel(_equivariant_model()), 20), adaptive.AdaptiveParams(tta_average=True))
    with pytest.raises(QueryBudgetExceeded, match="8 transformed queries"):
        api.query(_images(3))
    assert api.used == 0
    api.query(_images(2))
    assert api.used == 16 and api.remaining // api.cost == 0


def test_tta_keeps_features_of_the_untransformed_query():
    served = ServedModel(_equivariant_model(), exposed_layers=("2",))
    x = _images(2, 16, 16)
    _, direct = QueryAPI(served, 2, "features").query_features(x)
    api = adaptive.wrap(QueryAPI(served, 16, "features"), adaptive.AdaptiveParams(tta_average=True))
    _, feats = api.query_features(x)
    assert torch.equal(feats["2"], direct["2"]) and api.used == 16


# -------------------------------------------------------------------------------------------- filters
def test_gaussian_filter_reduces_white_noise_by_the_kernels_energy():
    sigma = 1.0
    noise = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = gaussian_blur(noise, sigma)
    t = torch.arange(-3, 4, dtype=torch.float32)
    k = torch.exp(-0.5 * t ** 2)
    k = k / k.sum()
    expected = float((k ** 2).sum()) ** 2
    inner = out[..., 4:-4, 4:-4]
    assert inner.var().item() == pytest.approx(expected, rel=0.1)
    flat = torch.full((1, 3, 10, 10), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)


def test_median_filter_removes_impulses_and_keeps_flat_images():
    img = torch.full((1, 3, 9, 9), 0.4)
    spiky = img.clone()
    spiky[0, :, 4, 4] = 1.0
    spiky[0, :, 0, 0] = 0.0
    torch.testing.assert_close(adaptive.median_lowpass(spiky, 3), img)


def test_output_filter_is_applied_to_answers():
    served = ServedModel(_equivariant_model(), _ContentNoise(None, seed=0))
    x = _images(2, 32, 32)
    raw = QueryAPI(served, 2).query(x)
    api = adaptive.wrap(QueryAPI(served, 2), adaptive.AdaptiveParams(output_filter="median", filter_size=3))
    torch.testing.assert_close(api.query(x), adaptive.median_lowpass(raw, 3).clamp(0, 1))


@pytest.mark.parametrize("overrides, words", [
    ({"output_filter": "box"}, ["output_filter", "gaussian"]),
    ({"filter_size": "4"}, ["odd"]),
    ({"filter_sigma": "0"}, ["filter_sigma"]),
])
def test_bad_adaptive_params_are_clear_errors(overrides, words):
    from bench import BenchError
    from bench.params import build
    from bench.registry import ATTACKS

    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        if not issubclass(cls.Params, adaptive.AdaptiveParams):
            continue
        with pytest.raises(BenchError) as err:
            build(cls.Params, overrides, owner=f"attack '{name}'")
        assert all(w in str(err.value) for w in words)


# ----------------------------------------------------------------------------------------- crops
@pytest.mark.parametrize("augment", [False, True])
def test_extra_maps_are_cropped_in_step_with_the_inputs(augment):
    g = torch.Generator().manual_seed(0)
    inputs = _images(3, 20, 28)
    targets = torch.nn.functional.interpolate(inputs, scale_factor=2, mode="nearest")
    same, doubled = inputs.clone(), targets.clone()
    x, y, (e1, e2) = sample_pair_crops(inputs, targets, 6, 16, g, scale=2, augment=augment,
                                       extras=[same, doubled])
    assert torch.equal(e1, x) and torch.equal(e2, y)
    x2, y2 = sample_pair_crops(inputs, targets, 6, 16, torch.Generator().manual_seed(0), scale=2, augment=augment)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # the same crops as without extras
