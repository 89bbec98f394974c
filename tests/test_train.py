"""The one training loop (bench/train.py): channels-last training is the same optimisation, and leaves the
model as it found it apart from its weights."""

from __future__ import annotations

import contextlib

import torch

import bench.train
from bench.models import RestorationCNN
from bench.train import TrainingDiverged, train


def _fit(monkeypatch, channels_last: bool, steps: int = 8) -> tuple[list[float], RestorationCNN]:
    if not channels_last:
        monkeypatch.setattr(bench.train, "_channels_last", lambda model: contextlib.nullcontext())
    torch.manual_seed(0)
    model = RestorationCNN(8, 2)
    data = torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(1))

    def next_batch(g: torch.Generator):
        idx = torch.randint(0, len(data), (4,), generator=g)
        return data[idx], data[idx].flip(-1)

    losses = train(model, next_batch, steps=steps, lr=3e-3, seed=0, progress=False)
    monkeypatch.undo()
    return losses, model


def test_channels_last_training_matches_the_default_layout(monkeypatch):
    ref_losses, ref = _fit(monkeypatch, channels_last=False)
    losses, model = _fit(monkeypatch, channels_last=True)
    # other convolution kernels: the same steps up to float rounding
    assert torch.allclose(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-4, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert p.is_contiguous(), f"{name} kept the channels-last layout after training"
        assert torch.allclose(p, q, rtol=1e-3, atol=1e-5), name
    assert losses[-1] < losses[0]


def test_layout_is_restored_when_training_diverges():
    model = RestorationCNN(4, 1)
    ids = [id(p) for p in model.parameters()]
    x = torch.rand(2, 3, 8, 8)
    try:
        train(model, lambda g: (x, torch.full_like(x, float("nan"))), steps=3, lr=1e-3, seed=0, progress=False)
    except TrainingDiverged:
        pass
    else:
        raise AssertionError("a NaN loss must stop training")
    assert [id(p) for p in model.parameters()] == ids
    assert all(p.is_contiguous() for p in model.parameters())
