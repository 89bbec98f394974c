"""Features of any shape (bench.features): token sequences (N, L, C) and tuples seen as maps by every defense
and attack, exposed copies cut to the caller's input, and the minimum side of bench.sizing. No spandrel needed:
the transformer here is a toy whose blocks take (x, x_size) as SwinIR's do."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench import BenchError, sizing
from bench.features import as_map, crop_exposed, token_shape
from bench.protect import protect


class MapBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.conv(x))


class TokenBlock(MapBlock):
    """The same block on a token sequence (N, L, C), told its spatial shape like a Swin block."""

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        n, length, c = x.shape
        m = x.transpose(1, 2).reshape(n, c, *x_size)
        return super().forward(m).flatten(2).transpose(1, 2)


class TokenBlockNoShape(MapBlock):
    """A token block that is not told its shape: it is the input's (stride 1)."""

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:  # type: ignore[override]
        n, length, c = x.shape
        return super().forward(x.transpose(1, 2).reshape(n, c, h, w)).flatten(2).transpose(1, 2)


class Net(nn.Module):
    """head -> three blocks -> tail; ``tokens`` runs the blocks on token sequences."""

    def __init__(self, tokens: str = "", c: int = 6) -> None:
        super().__init__()
        block = {"": MapBlock, "shape": TokenBlock, "noshape": TokenBlockNoShape}[tokens]
        self.tokens = tokens
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList(block(c) for _ in range(3))
        self.tail = nn.Conv2d(c, 3, 3, padding=1)
        self.feature_layers = ["blocks.0", "blocks.1", "blocks.2"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.head(x)
        n, c, h, w = f.shape
        if self.tokens:
            f = f.flatten(2).transpose(1, 2)
        for b in self.blocks:
            f = b(f, (h, w)) if self.tokens == "shape" else b(f, h, w) if self.tokens else b(f)
        if self.tokens:
            f = f.transpose(1, 2).reshape(n, c, h, w)
        return x + 0.1 * self.tail(f)


def _pair(tokens: str) -> tuple[Net, Net]:
    torch.manual_seed(0)
    maps = Net().eval()
    toks = Net(tokens).eval()
    toks.load_state_dict(maps.state_dict())
    return maps, toks


@pytest.mark.parametrize("tokens", ["shape", "noshape"])
@pytest.mark.parametrize("layout", ["channel", "spatial"])
def test_asvp_on_token_layer_equals_asvp_on_the_map(tokens, layout):
    maps, toks = _pair(tokens)
    x = torch.rand(2, 3, 12, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(maps(x), toks(x), atol=1e-6)  # the twins compute the same function
        with protect(maps, "asvp", layout=layout, expose=("blocks.1",)) as a, \
                protect(toks, "asvp", layout=layout, expose=("blocks.1",)) as b:
            ya, fa = a.forward_with_features(x)
            yb, fb = b.forward_with_features(x)
            plain = maps(x)
    assert not torch.allclose(ya, plain, atol=1e-4)  # the defense acted (inline, middle block)
    assert torch.allclose(ya, yb, rtol=0, atol=1e-6), (ya - yb).abs().max()
    assert fb["blocks.1"].shape == fa["blocks.1"].shape == (2, 6, 12, 20)  # exposed as a map
    assert torch.allclose(fa["blocks.1"], fb["blocks.1"], rtol=0, atol=1e-6)


def test_feature_kd_learns_from_a_token_teacher_and_student(tmp_path):
    """Feature KD on a transformer teacher and student: hints and guided features are maps of the query's
    size; the student trains (its loss is finite) without any change to the attack's parameters."""
    from bench.api import AttackContext
    from bench.cell import make_plugin
    from bench.data import Pool
    from bench.profiles import get_profile
    from bench.query import QueryAPI
    from bench.registry import ATTACKS, TASKS

    _, teacher = _pair("shape")
    _, student = _pair("shape")
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(3, 24, 24, generator=g) for _ in range(4)]
    pool = Pool("attacker", imgs, imgs, [f"s{i}" for i in range(4)], 1)
    profile = get_profile("smoke")
    attack = make_plugin(ATTACKS, "feature_kd", {"steps": 3})
    layers = tuple(attack.feature_layers(teacher))  # layers=middle: the middle of the declared feature_layers
    assert layers == ("blocks.1",)
    served = protect(teacher, "asvp", expose=layers)
    api = QueryAPI(served, budget=4, access="features")
    task = make_plugin(TASKS, "derain", {}, profile=profile)
    ctx = AttackContext(profile=profile, seed=0, task=task, budget=4, exposed_layers=("blocks.1",), progress=False)
    out = attack.steal(api, pool, student, ctx)
    assert out is student and all(torch.isfinite(p).all() for p in student.parameters())
    served.close()


def test_token_shape_from_arguments_else_input_size():
    assert token_shape(12, ((3, 4),)) == (3, 4)
    assert token_shape(12, (torch.Size([4, 3]),)) == (4, 3)
    assert token_shape(12, (), (6, 8)) == (3, 4)            # stride 2 of the input
    assert token_shape(13, (), (6, 8)) is None
    with pytest.raises(BenchError, match="layer 'blk'.*spatial shape is unknown"):
        as_map(torch.zeros(1, 13, 4), (), (6, 8), layer="blk")


def test_tuple_output_is_its_first_tensor_and_flows_back_whole():
    out = (torch.ones(1, 2, 3, 3), "extra", 5)
    fmap, back = as_map(out)
    assert fmap is out[0]
    again = back(fmap * 2)
    assert isinstance(again, tuple) and again[1:] == ("extra", 5) and torch.equal(again[0], fmap * 2)


def test_exposed_copy_is_cut_to_the_callers_input():
    fmap = torch.zeros(1, 4, 16, 16)
    assert crop_exposed(fmap, (12, 10), (16, 16)).shape[-2:] == (12, 10)          # padded by the suite
    assert crop_exposed(torch.zeros(1, 4, 32, 32), (12, 10), (16, 16)).shape[-2:] == (24, 20)  # x2 features
    assert crop_exposed(torch.zeros(1, 4, 8, 8), (12, 10), (16, 16)).shape[-2:] == (8, 8)  # inner level: as is
    assert crop_exposed(torch.zeros(1, 4, 32, 32), (24, 24), (24, 24)).shape[-2:] == (24, 24)  # padded inside


def test_minimum_side_pads_small_inputs_and_crops_back():
    x = torch.rand(1, 3, 5, 7)
    assert sizing.pad_to_multiple(x, 1, 16).shape[-2:] == (16, 16)
    assert sizing.pad_to_multiple(x, 4, 6).shape[-2:] == (8, 8)
    assert sizing.pad_to_multiple(torch.rand(1, 3, 20, 20), 1, 16).shape[-2:] == (20, 20)

    class NeedsSixteen(nn.Module):
        size_minimum = 16

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert min(x.shape[-2:]) >= 16
            return F.interpolate(x, scale_factor=2, mode="nearest")

    m = NeedsSixteen()
    sizing.install(m, permanent=True)
    assert m(x).shape[-2:] == (10, 14)
