"""Datasets as they lie on disk (bench.layouts): every layout's tree, built tiny here, is recognised, keeps
its own test split, keeps a scene's variants in one pool, and runs a smoke cell; its errors are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import noisy, save_png
from skimage.io import imread

from bench import BenchError
from bench.cli import main
from bench.data import SPLITS
from bench.layouts import LAYOUTS, LazyPool, natural, split_by_scene
from bench.pipeline import CellSpec, make_plugin, resolve
from bench.profiles import get_profile
from bench.registry import TASKS

SMOKE = get_profile("smoke")
SIZE = 40  # px: above the smoke profile's crop and query size (24 output px)


def make_task(name: str, overrides: dict | None = None, profile=SMOKE):
    return make_plugin(TASKS, name, {k: str(v) for k, v in (overrides or {}).items()}, profile=profile)


def _img(seed: int, h: int = SIZE, w: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.random((h // 8 + 2, w // 8 + 2, 3))
    up = np.kron(base, np.ones((8, 8, 1)))[:h, :w]  # blocky, so a tiny model can learn something
    return (up * 255).astype(np.uint8)




def _pair(ddir: Path, dname: str, cdir: Path, cname: str, seed: int, *, ext: str = "png",
          clean: np.ndarray | None = None) -> None:
    clean = _img(seed) if clean is None else clean
    if not (cdir / f"{cname}.{ext}").exists():
        save_png(cdir / f"{cname}.{ext}", clean)
    save_png(ddir / f"{dname}.{ext}", noisy(clean, seed + 1000))


# ---------------------------------------------------------------------------------------------- trees
def rain100(root: Path) -> Path:
    """Rain100L/H: rain-N.png + norain-N.png in one folder, under train/ and test/ (the test names
    zero-padded, the train names not, as distributed)."""
    for i in range(1, 7):
        _pair(root / "train", f"rain-{i}", root / "train", f"norain-{i}", i)
    for i in range(1, 3):
        _pair(root / "test", f"rain-{i:03d}", root / "test", f"norain-{i:03d}", 100 + i)
    save_png(root / "train" / "rainregion-1.png", _img(99))  # RainTrainL's extra files are ignored
    return root


def rain100_folders(root: Path) -> Path:
    """Rain100 as rain/ + norain/ folders without parts: the last fifth (by name) is test."""
    for i in range(1, 6):
        _pair(root / "rain", f"rain-{i:03d}", root / "norain", f"norain-{i:03d}", i)
    return root


def rain1400(root: Path) -> Path:
    """Rain1400: three rainy variants N_k.jpg of each clean N.jpg (the real set has 14)."""
    for part, scenes in (("training", range(1, 7)), ("testing", range(7, 9))):
        for n in scenes:
            clean = _img(n)
            for k in range(1, 4):
                _pair(root / part / "rainy_image", f"{n}_{k}", root / part / "ground_truth", f"{n}", n * 10 + k,
                      ext="jpg", clean=clean)
    return root


def lol(root: Path) -> Path:
    for part, ids in (("our485", (2, 5, 10, 11)), ("eval15", (1, 22))):
        for i in ids:
            _pair(root / part / "low", f"{i}", root / part / "high", f"{i}", i)
    return root


def uieb(root: Path) -> Path:
    for i in range(1, 6):
        _pair(root / "raw-890", f"{i}_img_", root / "reference-890", f"{i}_img_", i)
    return root


def reside(root: Path) -> Path:
    """ITS (hazy/N_k_beta.png -> clear/N.png) with SOTS indoor (hazy/N_k.png -> gt/N.png, the GT 20 px
    larger, as SOTS indoor's is) and outdoor: ITS is scored on SOTS/indoor."""
    for n in range(1, 5):
        clean = _img(n)
        for k in range(1, 3):
            _pair(root / "ITS" / "hazy", f"{n}_{k}_0.{k}5", root / "ITS" / "clear", f"{n}", n * 10 + k, clean=clean)
    for sub, first in (("indoor", 1400), ("outdoor", 1)):
        for n in range(first, first + 2):
            big = _img(n + 7, SIZE + 20, SIZE + 20)
            save_png(root / "SOTS" / sub / "gt" / f"{n:04d}.png", big)
            for k in range(1, 3):
                save_png(root / "SOTS" / sub / "hazy" / f"{n:04d}_{k}.png", noisy(big[10:-10, 10:-10], n + k))
    return root


def div2k(root: Path, scale: int = 2) -> Path:
    """DIV2K: *_HR/NNNN.png with *_LR_bicubic/X2/NNNNx2.png (HR 49 px: mod-cropped to 48)."""
    for part, ids in (("train", range(1, 5)), ("valid", range(801, 803))):
        for i in ids:
            hr = _img(i, 49, 49)
            save_png(root / f"DIV2K_{part}_HR" / f"{i:04d}.png", hr)
            lr = hr[: 48: scale, : 48: scale]
            save_png(root / f"DIV2K_{part}_LR_bicubic" / f"X{scale}" / f"{i:04d}x{scale}.png", lr)
    return root


def hr_only(root: Path, sets: tuple[str, ...] = ("Set5",)) -> Path:
    """A train/ folder of HR photographs beside Set5 (HR only: the LR is made by bicubic downscaling)."""
    for i in range(4):
        save_png(root / "train" / f"photo{i}.png", _img(i, 50, 49))
    for j, name in enumerate(sets):
        for i, stem in enumerate(("baby", "bird")):
            save_png(root / name / f"{stem}.png", _img(50 + 10 * j + i, 48, 48))
    return root


def paired(root: Path) -> Path:
    for part, n in (("train", 4), ("test", 2)):
        for i in range(n):
            _pair(root / part / "input", f"{part}{i}", root / part / "target", f"{part}{i}", 10 * len(part) + i)
    return root


#: (task, layout, tree builder, the test folder's pair names)
CASES = [
    ("derain", "rain100", rain100, ["rain-001", "rain-002"]),
    ("derain", "rain1400", rain1400, [f"{n}_{k}" for n in (7, 8) for k in (1, 2, 3)]),
    ("lowlight", "lol", lol, ["1", "22"]),
    ("underwater", "uieb", uieb, ["5_img_"]),  # no split of its own: the last fifth by name
    ("dehaze", "reside", reside, ["1400_1", "1400_2", "1401_1", "1401_2"]),
    ("sr", "div2k", div2k, ["0801x2", "0802x2"]),
    ("sr", "hr_only", hr_only, ["baby", "bird"]),
    ("folder", "paired", paired, ["test0", "test1"]),
]
IDS = [c[1] for c in CASES]


def _names(pool) -> list[str]:
    return [s.rsplit("/", 1)[-1] for s in pool.sources]


@pytest.mark.parametrize(("task_name", "layout", "build", "test_names"), CASES, ids=IDS)
def test_each_layout_is_recognised_and_keeps_its_test_split(tmp_path, task_name, layout, build, test_names):
    root = build(tmp_path / layout)
    task = make_task(task_name, {"data": root})
    assert task.source.layout.name == layout  # recognised from the tree
    splits = task.splits()
    splits.check_disjoint()
    pairs = {id(p): p for p in task.source.pairs()}
    by_pool = task.source.pools()
    assert sorted((p.name for p in by_pool["test"]), key=natural) == test_names  # exactly the test folder's
    assert all(len(splits[s]) > 0 for s in SPLITS)
    assert sum(len(v) for v in by_pool.values()) == len(pairs)  # every pair in one pool, none twice
    scenes = {}
    for pool, members in by_pool.items():
        for p in members:
            scenes.setdefault(p.source, set()).add(pool)
    assert all(len(pools) == 1 for pools in scenes.values())  # a scene's variants never span two pools
    if layout != "uieb":  # a set with its own split: no train pair is scored
        assert all(p.part == "test" for p in by_pool["test"])
        assert all(p.part == "train" for s in ("owner", "attacker", "calib") for p in by_pool[s])
    s = task.scale
    for name in SPLITS:
        pool = splits[name]
        assert isinstance(pool, LazyPool) and pool.scale == s
        for x, y in zip(pool.degraded, pool.clean):
            assert x.dtype == y.dtype == torch.float32
            assert y.shape == (3, x.shape[1] * s, x.shape[2] * s)
            assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_rain1400_variants_of_one_scene_stay_in_one_pool(tmp_path):
    task = make_task("derain", {"data": rain1400(tmp_path / "r")})
    pools = task.source.pools()
    for pool in SPLITS:
        scenes = {p.scene for p in pools[pool]}
        for scene in scenes:
            assert [p.name for p in pools[pool] if p.scene == scene] == [f"{scene}_{k}" for k in (1, 2, 3)]
    assert {p.scene for p in pools["owner"]} == {"1", "2", "3"}  # 6 train scenes: 3 / 2 / 1, in name order
    assert {p.scene for p in pools["attacker"]} == {"4", "5"} and {p.scene for p in pools["calib"]} == {"6"}
    # a clean image shared by its variants is decoded once
    test = task.splits().test
    shared = [test.clean[i] for i in range(3)]
    assert torch.equal(shared[0], shared[2])
    assert len([k for k in task.source._decoded if k[0].name == "7.jpg"]) == 1


def test_pixels_are_the_files_and_decode_lazily(tmp_path):
    root = reside(tmp_path / "r")
    task = make_task("dehaze", {"data": root})
    splits = task.splits()
    assert all(splits[s].clean.decoded() == 0 and splits[s].degraded.decoded() == 0 for s in SPLITS)
    x, y = splits.test.degraded[0], splits.test.clean[0]
    want_x = imread(str(root / "SOTS/indoor/hazy/1400_1.png")).astype(np.float32) / 255
    want_y = imread(str(root / "SOTS/indoor/gt/1400.png"))[10:-10, 10:-10].astype(np.float32) / 255  # centre crop
    np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), want_x)
    np.testing.assert_array_equal(y.permute(1, 2, 0).numpy(), want_y)
    assert splits.owner.clean.decoded() == 0 and splits.attacker.degraded.decoded() == 0  # untouched pools
    assert splits.test.clean.decoded() == 1
    x[:] = 0  # a copy: the held image is not changed
    assert torch.equal(splits.test.degraded[0].permute(1, 2, 0), torch.from_numpy(want_x))


def test_sr_layouts_mod_crop_and_make_the_lr_bicubically(tmp_path):
    task = make_task("sr", {"data": div2k(tmp_path / "d")})
    pool = task.splits().test
    assert pool.clean[0].shape == (3, 48, 48) and pool.degraded[0].shape == (3, 24, 24)  # HR 49 px mod-cropped

    task = make_task("sr", {"data": hr_only(tmp_path / "h")})
    test = task.splits().test
    hr = imread(str(tmp_path / "h" / "Set5" / "baby.png")).astype(np.float32) / 255
    with torch.device("cpu"):
        want = task.degrade(hr, np.random.default_rng(0))
    np.testing.assert_allclose(test.degraded[0].permute(1, 2, 0).numpy(), np.round(want * 255) / 255, atol=1e-6)
    owner = task.splits().owner
    assert owner.clean[0].shape == (3, 50, 48) and owner.degraded[0].shape == (3, 25, 24)  # 49 px wide: cropped


def test_several_test_sets_are_chosen_by_name(tmp_path):
    root = hr_only(tmp_path / "h", sets=("Set5", "Set14"))
    with pytest.raises(BenchError, match=r"several test sets \(Set5, Set14; layout hr_only\).*task.test_set"):
        make_task("sr", {"data": root}).identity()
    task = make_task("sr", {"data": root, "test_set": "set14"})
    assert [p.where for p in task.source.pools()["test"]] == ["Set14", "Set14"]
    assert task.identity()["params"]["test_set"] == "Set14"
    # RESIDE pairs ITS with SOTS/indoor by itself, and takes the other when asked
    task = make_task("dehaze", {"data": reside(tmp_path / "r"), "test_set": "SOTS/outdoor"})
    assert {p.where for p in task.source.pools()["test"]} == {"SOTS/outdoor"}


def test_split_file_and_scene_pattern(tmp_path):
    src = tmp_path / "src"
    for scene in ("a", "b", "c", "d", "e"):
        clean = _img(ord(scene))
        for k in (1, 2):
            _pair(src / "in", f"{scene}_{k}", src / "gt", f"{scene}_{k}", ord(scene) * 10 + k, clean=clean)
    args = {"input": src / "in", "target": src / "gt"}
    plain = make_task("folder", args).source.pools()
    assert [p.name for p in plain["test"]] == ["e_1", "e_2"]  # 10 one-pair scenes: the last two are test
    grouped = make_task("folder", {**args, "scene_pattern": r"^(\w)_"}).source.pools()
    assert [p.name for p in grouped["test"]] == ["e_1", "e_2"] and [p.scene for p in grouped["test"]] == ["e", "e"]
    assert [p.name for p in grouped["calib"]] == ["d_1", "d_2"]  # 5 scenes: 2 / 1 / 1 / 1
    split = tmp_path / "split.txt"
    split.write_text("# my paper's split\na test\nb_1 owner\nb_2, owner\n")
    task = make_task("folder", {**args, "scene_pattern": r"^(?P<scene>\w)_", "split_file": split})
    pools = task.source.pools()
    assert [p.name for p in pools["test"]] == ["a_1", "a_2"] and [p.scene for p in pools["owner"]] == ["b", "b"]
    assert {p.scene for p in pools["attacker"] + pools["calib"]} == {"c", "d", "e"}  # train: the empty pools
    fp = task.identity()["data_fingerprint"]
    split.write_text("# my paper's split\nc test\n")
    assert make_task("folder", {**args, "scene_pattern": r"^(\w)_", "split_file": split}).identity()[
        "data_fingerprint"] != fp  # the split file is part of the data's identity


def test_identity_names_the_data_and_the_bundled_one_is_unchanged(tmp_path):
    bundled = make_task("derain")
    assert bundled.source is None and set(bundled.identity()) == {"name", "version", "params", "augment"}
    assert set(bundled.identity()["params"]) == {"angle", "length", "density", "width", "intensity", "blend"}
    root = rain100(tmp_path / "r")
    ident = make_task("derain", {"data": root}).identity()
    assert ident["params"]["layout"] == "rain100" and ident["params"]["data"] == str(root)
    assert len(ident["data_fingerprint"]) == 32
    keys = {resolve(CellSpec(task="derain", profile="smoke", task_params=tp)).key
            for tp in ({}, {"data": str(root)}, {"data": str(root), "layout": "rain100"})}
    assert len(keys) == 2  # the data's cells apart from the bundled ones; naming the found layout changes nothing


def test_split_by_scene_is_the_folder_rule():
    assert {p: len(v) for p, v in split_by_scene([f"s{i}" for i in range(10)], SPLITS, "").items()} == \
        {"owner": 4, "attacker": 3, "calib": 1, "test": 2}
    three = split_by_scene([f"s{i}" for i in range(1, 9)], ("owner", "attacker", "calib"), "")
    assert three == {"owner": ["s1", "s2", "s3", "s4"], "attacker": ["s5", "s6", "s7"], "calib": ["s8"]}
    with pytest.raises(BenchError, match="need at least 3"):
        split_by_scene(["a", "b"], ("owner", "attacker", "calib"), "x has")


def test_all_tasks_with_data_run_the_task_whose_layout_it_is(tmp_path, capsys):
    from bench.grid import make_grid

    grid = make_grid(tasks="all", defenses="none", profile="smoke", sets={"task": {"data": str(rain100(tmp_path))}})
    assert [t.name for t in grid.tasks] == ["derain"]
    err = capsys.readouterr().err
    assert "leaves out lowlight" in err and "leaves out folder" in err
    from bench.cli import build_parser, sweep_specs

    args = build_parser().parse_args(["sweep", "--data", str(tmp_path), "--layout", "rain100", "--scene-pattern",
                                      "(.*)", "--defenses", "none", "--profile", "smoke"])
    (spec,) = sweep_specs(args)
    assert spec.task == "derain" and spec.task_params == {"data": str(tmp_path), "layout": "rain100",
                                                          "scene_pattern": "(.*)"}


# ---------------------------------------------------------------------------------------------- errors
def _error(task_name: str, overrides: dict) -> str:
    with pytest.raises(BenchError) as info:
        task = make_task(task_name, overrides)
        task.identity()
        task.splits()
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_rainy_image_without_clean_partner(tmp_path):
    root = rain100(tmp_path / "r")
    save_png(root / "train" / "rain-7.png", _img(7))
    msg = _error("derain", {"data": root})
    assert "rain-7.png has no partner" in msg and "norain-7.png" in msg and "layout rain100" in msg
    (root / "train" / "rain-7.png").unlink()
    save_png(root / "test" / "norain-009.png", _img(9))
    msg = _error("derain", {"data": root})
    assert "norain-009.png has no partner" in msg and "rain-009" in msg


def test_div2k_scale_errors(tmp_path):
    root = div2k(tmp_path / "d")
    bad = root / "DIV2K_train_LR_bicubic" / "X2"
    (bad / "0003x2.png").rename(bad / "0003x4.png")
    msg = _error("sr", {"data": root})
    assert "0003x4.png is named for scale x4" in msg and "X2" in msg and "div2k" in msg
    msg = _error("sr", {"data": div2k(tmp_path / "e"), "scale": 4})
    assert "has X2 but the task's scale is 4" in msg and "X4" in msg
    root = div2k(tmp_path / "f")
    save_png(root / "DIV2K_valid_LR_bicubic" / "X2" / "0801x2.png", _img(1, 20, 24))  # 20 px: not 49 // 2
    msg = _error("sr", {"data": root})
    assert "0801.png is 49x49 px" in msg and "0801x2.png is 24x20 px" in msg and "scale 2" in msg


def test_empty_and_missing_test_splits(tmp_path):
    root = lol(tmp_path / "l")
    for sub in ("low", "high"):
        for f in (root / "eval15" / sub).iterdir():
            f.unlink()
    msg = _error("lowlight", {"data": root})
    assert "test split of" in msg and "is empty" in msg and "eval15" in msg
    msg = _error("lowlight", {"data": lol(tmp_path / "m") / "eval15"})  # a test set alone
    assert "holds test pairs only" in msg and "our485" in msg
    msg = _error("sr", {"data": hr_only(tmp_path / "h") / "Set5"})
    assert "holds test pairs only" in msg and "DIV2K_train_HR" in msg
    sots = reside(tmp_path / "s")
    msg = _error("dehaze", {"data": sots / "SOTS"})
    assert "holds test pairs only" in msg and "ITS" in msg


def test_ambiguous_and_unrecognised_trees(tmp_path):
    root = uieb(tmp_path / "u")
    for i in range(4):
        _pair(root / "input", f"p{i}", root / "target", f"p{i}", i)
    msg = _error("underwater", {"data": root})
    assert "matches several layouts" in msg and "uieb" in msg and "paired" in msg and "--layout" in msg
    assert make_task("underwater", {"data": root, "layout": "uieb"}).source.layout.name == "uieb"
    msg = _error("derain", {"data": lol(tmp_path / "l")})
    assert "in no layout of task derain" in msg
    assert all(name in msg for name in ("rain100", "rain1400", "paired", "--layout NAME"))
    msg = _error("derain", {"data": lol(tmp_path / "m"), "layout": "lol"})
    assert "layout lol holds lowlight data" in msg and "--task lowlight" in msg
    msg = _error("derain", {"data": root, "layout": "rain1400"})
    assert "does not hold the rain1400 layout" in msg


def test_other_errors_are_one_line(tmp_path):
    with pytest.raises(BenchError, match="'layout' must be one of rain100, rain1400"):
        make_task("derain", {"data": tmp_path, "layout": "rain200"})
    with pytest.raises(BenchError, match="scene_pattern' is not a regular expression"):
        make_task("derain", {"data": tmp_path, "scene_pattern": "("})
    with pytest.raises(BenchError, match="give the data too"):
        make_task("derain", {"layout": "rain100"})
    assert "--input and --target go together" in _error("derain", {"input": tmp_path})
    src = tmp_path / "src"
    for scene in ("a", "b", "c", "d"):
        clean = _img(ord(scene))
        for k in (1, 2):
            _pair(src / "in", f"{scene}_{k}", src / "gt", f"{scene}_{k}", ord(scene) + k, clean=clean)
    split = tmp_path / "split.txt"
    split.write_text("a_1 test\na_2 owner\n")
    msg = _error("folder", {"input": src / "in", "target": src / "gt", "scene_pattern": "^(.)_", "split_file": split})
    assert "a_1 (test) and a_2 (owner) are variants of one scene 'a'" in msg
    split.write_text("z_9 test\n")
    assert "line 1: no pair or scene named 'z_9'" in _error("folder", {"input": src / "in", "target": src / "gt",
                                                                        "split_file": split})
    split.write_text("a_1 tset\n")
    assert "expected 'NAME POOL'" in _error("folder", {"input": src / "in", "target": src / "gt", "split_file": split})
    msg = _error("folder", {"input": src / "in", "target": src / "gt", "scene_pattern": "^b"})
    assert "a_1.png: its name 'a_1' does not match --scene-pattern" in msg
    msg = _error("derain", {"data": rain100(tmp_path / "r"), "max_megapixels": 0.001})
    assert "over the derain task's limit of 0.001 MP" in msg


# ---------------------------------------------------------------------------------------------- smoke cells
FAST = ["--profile", "smoke", "--set", "profile.teacher_steps=3", "--set", "profile.student_steps=3"]


@pytest.mark.parametrize(("task_name", "layout", "build", "test_names"), CASES, ids=IDS)
def test_a_smoke_cell_runs_on_each_layout(tmp_path, capsys, task_name, layout, build, test_names):
    root = build(tmp_path / layout)
    code = main(["run", "--task", task_name, "--data", str(root), *FAST, "--home", str(tmp_path / "runs")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"{task_name} · none · vanilla_kd" in out
    from bench.store import Store

    (row,) = Store(tmp_path / "runs").cells()
    ident = row["config"]["task"]
    assert ident["params"]["layout"] == layout and ident["data_fingerprint"]
    assert len(row["metrics"]["teacher_psnr_per_image"]) == len(test_names)


def test_the_general_form_and_layout_flags_on_the_command_line(tmp_path, capsys):
    src = paired(tmp_path / "p") / "train"
    split = tmp_path / "split.txt"
    split.write_text("train3 test\n")
    code = main(["run", "--task", "lowlight", "--input", str(src / "input"), "--target", str(src / "target"),
                 "--split-file", str(split), "--scene-pattern", "(.*)", *FAST, "--home", str(tmp_path / "runs")])
    out, err = capsys.readouterr()
    assert code == 0, err
    code = main(["run", "--task", "derain", "--data", str(tmp_path / "p"), "--layout", "rain100", *FAST,
                 "--home", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not hold the rain100 layout" in err
    assert main(["list", "layouts"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in LAYOUTS)


@pytest.mark.parametrize(("task_name", "build"), [("derain", rain1400), ("sr", hr_only)], ids=["rain1400", "hr_only"])
def test_data_pools_create_no_tensor_off_the_jobs_device(tmp_path, task_name, build):
    """As tests/test_device.py does for the bundled data: with torch's default device ``meta``, a tensor
    made off the job's device holds no data and fails; the cell runs and scores exactly as without it."""
    from bench.pipeline import run_cell

    root = build(tmp_path / "d")
    spec = CellSpec(task=task_name, profile="smoke", device="cpu", task_params={"data": str(root)},
                    profile_params={"teacher_steps": "3", "student_steps": "3"})
    plain = run_cell(spec, home=tmp_path / "plain", progress=False)
    torch.set_default_device("meta")
    try:
        trapped = run_cell(spec, home=tmp_path / "trapped", progress=False)
    finally:
        torch.set_default_device(None)
    assert trapped["status"] == "done"
    for name in ("teacher_psnr", "served_psnr", "student_psnr", "input_psnr"):
        assert trapped["metrics"][name] == plain["metrics"][name], name
