"""The built-in tasks: disjoint, deterministic pools whose degradations really degrade; the folder task."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.io import imsave

import bench.params
from bench import BenchError
from bench.data import SPLITS, load_source
from bench.profiles import get_profile
from bench.registry import TASKS
from bench.synth import check_range, depth_map

BUILTIN = ("sr", "lowlight", "underwater", "dehaze", "derain")
SMOKE = get_profile("smoke")


def make_task(name: str, overrides: dict | None = None, profile=SMOKE):
    from bench.pipeline import make_plugin  # as bench run builds it: the data parameters too

    return make_plugin(TASKS, name, overrides or {}, profile=profile)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean().clamp_min(1e-12)))


CASES = [(n, {}) for n in BUILTIN] + [("sr", {"scale": "4"})]


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=[f"{n}{o.get('scale', '')}" for n, o in CASES])
def test_builtin_task_pools(name, overrides):
    task = make_task(name, overrides)
    splits = task.splits()
    splits.check_disjoint()
    owners = {s: set(splits[s].sources) for s in SPLITS}
    for i, a in enumerate(SPLITS):
        assert len(splits[a]) > 0
        for b in SPLITS[i + 1:]:
            assert not owners[a] & owners[b], (a, b)

    scale = task.scale
    assert scale == int(overrides.get("scale", 1 if name != "sr" else 2))
    assert task.y_channel == (name == "sr")
    for s in SPLITS:
        pool = splits[s]
        assert pool.scale == scale
        for d, c in zip(pool.degraded, pool.clean):
            assert d.dtype == torch.float32 and c.dtype == torch.float32
            assert c.shape[-2] % scale == 0 and c.shape[-1] % scale == 0
            assert d.shape == (3, c.shape[-2] // scale, c.shape[-1] // scale)
            assert float(d.min()) >= 0.0 and float(d.max()) <= 1.0
            assert torch.isfinite(d).all()

    test = splits.test
    scores = [psnr(task.baseline(d[None])[0], c) for d, c in zip(test.degraded, test.clean)]
    assert 5.0 < float(np.mean(scores)) < 35.0, scores
    assert all(s < 45.0 for s in scores), scores

    again = make_task(name, overrides).splits()  # a fresh instance rebuilds from scratch
    for s in SPLITS:
        assert splits[s].sources == again[s].sources
        for a, b in zip(splits[s].degraded + splits[s].clean, again[s].degraded + again[s].clean):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["lowlight", "underwater", "dehaze", "derain"])
def test_params_change_the_degradation_and_variants_differ(name):
    img = load_source("astronaut", 48)
    task = make_task(name)
    a = task.degrade(img, np.random.default_rng(0))
    b = task.degrade(img, np.random.default_rng(1))
    assert a.shape == img.shape and a.dtype == np.float32
    assert not np.array_equal(a, b)  # the per-image draws vary
    assert np.array_equal(a, task.degrade(img, np.random.default_rng(0)))  # and are seeded

    first = {"lowlight": "gamma", "underwater": "beta_r", "dehaze": "beta", "derain": "density"}[name]
    cls = TASKS.get(name)
    lo, hi = bench.params.as_dict(cls.Params())[first]
    other = make_task(name, {first: f"{hi},{hi}"})
    assert not np.array_equal(a, other.degrade(img, np.random.default_rng(0)))


def test_sr_degradation_is_bicubic_antialiased():
    img = load_source("camera", 64, 4)
    for s in (2, 4):
        task = make_task("sr", {"scale": str(s)})
        out = task.degrade(img, np.random.default_rng(0))
        assert out.shape == (img.shape[0] // s, img.shape[1] // s, 3)
        # a flat image stays flat (antialiasing filters are normalised)
        flat = np.full((16, 16, 3), 0.25, np.float32)
        np.testing.assert_allclose(task.degrade(flat, np.random.default_rng(0)), 0.25, atol=1e-5)
    assert make_task("sr").shave == 2 and make_task("sr", {"scale": "4"}).shave == 4


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("sr", {"scale": "3"}),
        ("lowlight", {"exposure": "0.5,0.1"}),
        ("lowlight", {"exposure": "0,0.3"}),
        ("lowlight", {"gamma": "0.5,2"}),
        ("lowlight", {"read_noise": "1,2,3"}),
        ("dehaze", {"beta": "-1,1"}),
        ("dehaze", {"tint": "0.5"}),
        ("underwater", {"backscatter_b": "0.5,1.5"}),
        ("derain", {"density": "0,0.01"}),
        ("derain", {"angle": "-90,0"}),
        ("derain", {"blend": "multiply"}),
        ("folder", {"scale": "0"}),
    ],
)
def test_bad_params_are_clear_errors(name, overrides):
    cls = TASKS.get(name)
    key = next(iter(overrides))
    with pytest.raises(BenchError, match=key):
        bench.params.build(cls.Params, overrides, owner=f"task '{name}'")


def test_single_value_is_a_fixed_range():
    task = make_task("lowlight", {"gamma": "2", "exposure": "0.3"})
    assert task.params.gamma == (2.0,)
    check_range("gamma", (2.0,), 1.0, 5.0)
    img = load_source("coffee", 32)
    assert task.degrade(img, np.random.default_rng(0)).shape == img.shape


def test_derain_is_fast_at_quick_size():
    task = make_task("derain")
    img = np.random.default_rng(0).random((192, 256, 3), dtype=np.float32)
    best = float("inf")
    for seed in range(3):
        t = time.perf_counter()
        task.degrade(img, np.random.default_rng(seed))
        best = min(best, time.perf_counter() - t)
    assert best < 0.1, best


def test_depth_map_is_smooth_seeded_and_in_range():
    d = depth_map(60, 80, np.random.default_rng(3), near=0.2)
    assert d.shape == (60, 80) and d.dtype == np.float32
    assert abs(float(d.min()) - 0.2) < 1e-5 and abs(float(d.max()) - 1.0) < 1e-5
    np.testing.assert_array_equal(d, depth_map(60, 80, np.random.default_rng(3), near=0.2))
    assert float(np.abs(np.diff(d, axis=0)).max()) < 0.1 and float(np.abs(np.diff(d, axis=1)).max()) < 0.1
    # far at the top on average (a ground plane seen from eye level)
    assert d[:20].mean() > d[-20:].mean()


# ------------------------------------------------------------------------------------------ folder
def _png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(str(path), img, check_contrast=False)


def make_folder(root: Path, n: int = 5, size: int = 32, scale: int = 1) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        target = (rng.random((size * scale, size * scale, 3)) * 255).astype(np.uint8)
        inp = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        _png(root / "target" / f"img{i:02d}.png", target)
        _png(root / "input" / f"img{i:02d}.png", inp)
    return root


def folder_task(root: Path | str, profile=SMOKE, **overrides):
    return make_task("folder", {"data": str(root), **{k: str(v) for k, v in overrides.items()}}, profile)


def test_folder_loads_and_splits(tmp_path):
    root = make_folder(tmp_path / "d", n=10)
    (root / "input" / "notes.txt").write_text("ignored")
    (root / "target" / ".DS_Store").write_text("ignored")
    task = folder_task(root)
    assert task.scale == 1 and not task.y_channel
    splits = task.splits()
    splits.check_disjoint()
    sizes = {s: len(splits[s]) for s in SPLITS}
    assert sizes == {"owner": 4, "attacker": 3, "calib": 1, "test": 2}
    order = [src for s in SPLITS for src in splits[s].sources]
    assert order == [f"img{i:02d}" for i in range(10)]  # consecutive blocks in name order
    from skimage.io import imread

    x, y = splits.test.degraded[0], splits.test.clean[0]
    want = imread(str(root / "target" / "img08.png")).astype(np.float32) / 255
    np.testing.assert_allclose(y.permute(1, 2, 0).numpy(), want, atol=1e-6)
    assert x.shape == y.shape == (3, 32, 32)
    again = folder_task(root).splits()
    assert all(torch.equal(a, b) for a, b in zip(splits.owner.degraded, again.owner.degraded))


def test_folder_minimum_four_pairs_one_each(tmp_path):
    splits = folder_task(make_folder(tmp_path / "d", n=4)).splits()
    assert [len(splits[s]) for s in SPLITS] == [1, 1, 1, 1]


def test_folder_scale_and_y_channel(tmp_path):
    root = make_folder(tmp_path / "d", n=4, size=24, scale=2)
    task = folder_task(root, scale=2, y_channel="true")
    assert task.scale == 2 and task.y_channel and task.shave == 2
    pool = task.splits().owner
    assert pool.scale == 2
    assert pool.degraded[0].shape == (3, 24, 24) and pool.clean[0].shape == (3, 48, 48)


def test_folder_pixel_formats(tmp_path):
    root = make_folder(tmp_path / "d", n=4)
    rng = np.random.default_rng(1)
    grey16 = (rng.random((32, 32)) * 65535).astype(np.uint16)
    _png(root / "input" / "img00.png", grey16)
    rgba = (rng.random((32, 32, 4)) * 255).astype(np.uint8)
    _png(root / "target" / "img00.png", rgba)
    jpg = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    os.remove(root / "input" / "img01.png")
    _png(root / "input" / "img01.JPG", jpg)
    pool = folder_task(root).splits().owner
    x, y = pool.degraded[0], pool.clean[0]
    assert pool.sources == ["img00"]
    np.testing.assert_allclose(x[0].numpy(), grey16 / 65535.0, atol=1e-6)
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    np.testing.assert_allclose(y.permute(1, 2, 0).numpy(), rgba[..., :3] / 255.0, atol=1e-6)
    attacker = folder_task(root).splits().attacker
    assert attacker.sources == ["img01"] and attacker.degraded[0].shape == (3, 32, 32)


def test_folder_fingerprint_follows_the_data(tmp_path):
    root = make_folder(tmp_path / "d", n=4)
    ident = folder_task(root).identity()
    assert ident["name"] == "folder" and ident["params"]["data"] == str(root)
    assert folder_task(root).identity() == ident
    path = root / "target" / "img02.png"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    # the fingerprint hashes content: a touched file is the same data, another image is not
    assert folder_task(root).identity()["data_fingerprint"] == ident["data_fingerprint"]
    path.write_bytes((root / "target" / "img01.png").read_bytes())
    assert folder_task(root).identity()["data_fingerprint"] != ident["data_fingerprint"]


def _error(task) -> str:
    with pytest.raises(BenchError) as info:
        task.splits()
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_folder_errors_missing_data(tmp_path):
    msg = _error(make_task("folder"))
    assert "--data DIR" in msg
    msg = _error(folder_task(tmp_path / "nowhere"))
    assert "nowhere" in msg and "does not exist" in msg
    (tmp_path / "file").write_text("x")
    assert "not a directory" in _error(folder_task(tmp_path / "file"))
    with pytest.raises(BenchError, match="--data DIR"):
        make_task("folder").identity()


@pytest.mark.parametrize("sub", ["input", "target"])
def test_folder_errors_missing_subfolder(tmp_path, sub):
    root = make_folder(tmp_path / "d", n=4)
    for f in (root / sub).iterdir():
        f.unlink()
    (root / sub).rmdir()
    msg = _error(folder_task(root))
    assert f"{sub} is missing" in msg


@pytest.mark.parametrize(("sub", "partner"), [("input", "target"), ("target", "input")])
def test_folder_errors_unpaired(tmp_path, sub, partner):
    root = make_folder(tmp_path / "d", n=5)
    _png(root / sub / "lonely.png", np.zeros((32, 32, 3), np.uint8))
    msg = _error(folder_task(root))
    assert "lonely.png" in msg and f"no partner in {root / partner}" in msg


def test_folder_errors_duplicate_names(tmp_path):
    root = make_folder(tmp_path / "d", n=4)
    _png(root / "input" / "img01.jpg", np.zeros((32, 32, 3), np.uint8))
    msg = _error(folder_task(root))
    assert "img01.jpg" in msg and "img01.png" in msg and "same name" in msg


def test_folder_errors_size_mismatch(tmp_path):
    root = make_folder(tmp_path / "d", n=4)
    _png(root / "target" / "img02.png", np.zeros((32, 30, 3), np.uint8))
    msg = _error(folder_task(root))
    assert "img02.png" in msg and "30x32" in msg and "32x32" in msg
    root2 = make_folder(tmp_path / "e", n=4)  # same size, but the task says x2
    msg = _error(folder_task(root2, scale=2))
    assert "img00.png" in msg and "64x64" in msg and "scale" in msg


def test_folder_errors_corrupt_image(tmp_path):
    root = make_folder(tmp_path / "d", n=4)
    (root / "input" / "img03.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    msg = _error(folder_task(root))
    assert "img03.png" in msg and "cannot read" in msg


def test_folder_errors_too_few_pairs(tmp_path):
    root = make_folder(tmp_path / "d", n=3)
    msg = _error(folder_task(root))
    assert str(root) in msg and "3 image pair" in msg and "at least 4" in msg


def test_folder_errors_smaller_than_crop(tmp_path):
    root = make_folder(tmp_path / "d", n=4, size=16)
    msg = _error(folder_task(root))  # smoke crop is 24 px
    assert "img00.png" in msg and "--set profile.crop=16" in msg
    profile = get_profile("smoke", {"crop": "16", "query_size": "24"})
    msg = _error(folder_task(root, profile=profile))  # now the attacker's queries (24 px) do not fit
    assert "img01.png" in msg and "--set profile.query_size=16" in msg
    ok = get_profile("smoke", {"crop": "16", "query_size": "16"})
    assert len(folder_task(root, profile=ok).splits().test) == 1


def test_crops_only_use_the_flips_the_task_allows():
    """Derain trains on mirrored crops only: a rotated crop would show horizontal rain."""
    from bench.data import HORIZONTAL_FLIPS, dihedral, sample_pair_crops

    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    allowed = [dihedral(img[0], k) for k in HORIZONTAL_FLIPS]
    g = torch.Generator().manual_seed(0)
    x, _ = sample_pair_crops([img[0]], [img[0]], 64, 8, g, augment=HORIZONTAL_FLIPS)
    seen = {next(i for i, a in enumerate(allowed) if torch.equal(c, a)) for c in x}
    assert seen == {0, 1}
    x, _ = sample_pair_crops([img[0]], [img[0]], 64, 8, g, augment=True)
    assert sum(not any(torch.equal(c, a) for a in allowed) for c in x) > 0
    cls = TASKS.get("derain")
    task = cls(bench.params.build(cls.Params, {}, owner="task"), get_profile("smoke"))
    assert task.splits().owner.transforms == HORIZONTAL_FLIPS


@pytest.mark.parametrize("name", ["sr", "derain"])
def test_no_pool_holds_a_pair_twice(name):
    # SR's bicubic degradation is deterministic: two draws of one photograph are one pair, kept once
    splits = make_task(name, profile=dataclasses.replace(SMOKE, variants=2)).splits()
    for split in SPLITS:
        pool = splits[split]
        pairs = list(zip(pool.degraded, pool.clean))
        for i, (d, c) in enumerate(pairs):
            for d2, c2 in pairs[:i]:
                assert not (d.shape == d2.shape and torch.equal(d, d2) and torch.equal(c, c2)), split
    if name == "sr":  # one pair per photograph, however many variants the profile asks for
        assert len(splits.test) == len(set(splits.test.sources))
    else:
        assert len(splits.test) > len(set(splits.test.sources))
