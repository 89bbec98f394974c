"""One dataset, one identity (issue 27): every spelling of a data folder names one task, a content change keeps
no stale fingerprint, images decode as a viewer shows them, a test image leaked from training is refused, and
split files name any file."""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import noisy, save_png
from PIL import Image

from bench import BenchError
from bench.cli import main
from bench.layouts import image_size, read_pixels
from bench.pipeline import CellSpec, make_plugin, resolve
from bench.profiles import get_profile
from bench.registry import TASKS
from bench.store import Store

SMOKE = get_profile("smoke")
SIZE = 40  # px: above the smoke profile's crop and query size
FAST = ["--profile", "smoke", "--set", "profile.teacher_steps=3", "--set", "profile.student_steps=3"]


def make_task(name: str, overrides: dict | None = None):
    return make_plugin(TASKS, name, {k: str(v) for k, v in (overrides or {}).items()}, profile=SMOKE)


def cell_key(data: str, **more: str) -> tuple[dict, str]:
    cell = resolve(CellSpec(task="folder", profile="smoke", task_params={"data": data, **more}))
    return cell.task.identity(), cell.key


def _img(seed: int, h: int = SIZE, w: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.random((h // 8 + 2, w // 8 + 2, 3))
    return (np.kron(base, np.ones((8, 8, 1)))[:h, :w] * 255).astype(np.uint8)


def _smooth(h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth colour image (JPEG keeps it within a few levels)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([40 + 3 * x, 60 + 3 * y, 200 - 2 * x - y], -1)
    return np.clip(img, 0, 255).astype(np.uint8)




def paired(root: Path, parts: tuple[tuple[str, int], ...] = (("train", 4), ("test", 2)), *,
           names: list[str] | None = None) -> Path:
    """The folder task's layout: input/ + target/ (under train/ and test/ where ``parts`` name them)."""
    for part, n in parts:
        for i in range(n):
            name = names[i] if names else f"{part}{i}"
            clean = _img(10 * len(part) + i + 1)
            save_png(root / part / "target" / f"{name}.png", clean)
            save_png(root / part / "input" / f"{name}.png", noisy(clean, i + 1000))
    return root


def _png(path: Path, pixels: np.ndarray, *, depth: int = 16, size: tuple[int, int] | None = None) -> Path:
    """A PNG written by hand (Pillow cannot write 16-bit colour): grey, grey + alpha, RGB or RGBA by the
    channel count; ``size`` (width, height) overrides the header's size (the pixel data is then ``pixels``')."""
    a = np.asarray(pixels)
    channels = 1 if a.ndim == 2 else a.shape[2]
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    a = a.astype(">u2" if depth == 16 else np.uint8)
    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    w, h = size or (w, h)
    header = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------------------------------------- item 1
def test_every_spelling_of_a_data_folder_is_one_identity(tmp_path, monkeypatch):
    paired(tmp_path / "ds" / "base")
    (tmp_path / "link").symlink_to(tmp_path / "ds" / "base")
    monkeypatch.chdir(tmp_path)
    spellings = ["ds/base", "ds/base/", "./ds/base", str(tmp_path / "ds" / "base"), "link"]
    found = [cell_key(s) for s in spellings]
    assert all(ident == found[0][0] for ident, _ in found)
    assert len({key for _, key in found}) == 1
    assert found[0][0]["params"]["data"] == (tmp_path / "ds" / "base").resolve().as_posix()
    # --input/--target and --split-file too
    split = tmp_path / "split.txt"
    split.write_text("train0 test\n")
    keys = set()
    for prefix in ("ds/base/train", "./ds/base/train/", str(tmp_path / "ds/base/train")):
        cell = resolve(CellSpec(task="folder", profile="smoke", task_params={
            "input": f"{prefix}/input", "target": f"{prefix}/target/",
            "split_file": "split.txt" if prefix.startswith("ds") else str(split)}))
        keys.add(cell.key)
    assert len(keys) == 1


# ---------------------------------------------------------------------------------------------- item 2
def test_a_content_change_keeping_size_and_mtime_changes_the_fingerprint(tmp_path, monkeypatch):
    root = paired(tmp_path / "ds")
    target = root / "train" / "target" / "train1.bmp"  # BMP: the same size whatever the pixels
    for side, pixels in (("target", _img(7)), ("input", noisy(_img(7), 3))):
        (root / "train" / side / "train1.png").unlink()
        Image.fromarray(pixels).save(root / "train" / side / "train1.bmp")
    before_ident, before = cell_key(str(root))
    st = target.stat()
    pixels = _img(7)
    pixels[5:9, 5:9] = 255 - pixels[5:9, 5:9]
    Image.fromarray(pixels).save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    after_ident, after = cell_key(str(root))
    assert after_ident["data_fingerprint"] != before_ident["data_fingerprint"]
    assert after != before
    # in one process each file is hashed once: a second task over the same files reads none of them
    import bench.layouts.images as images

    opened: list[str] = []
    real_open = open

    def counting(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(images, "open", counting, raising=False)
    assert cell_key(str(root))[1] == after
    assert not [p for p in opened if p.endswith((".png", ".bmp"))]


# ---------------------------------------------------------------------------------------------- item 3
def _strip_adobe(data: bytes) -> bytes:
    """A JPEG without its APP14 (Adobe) segment."""
    i = data.index(b"\xff\xee")
    length = struct.unpack(">H", data[i + 2:i + 4])[0]
    return data[:i] + data[i + 2 + length:]


def test_cmyk_jpegs_decode_to_their_rgb_colours(tmp_path):
    rgb = _smooth()
    cmyk = np.asarray(Image.fromarray(rgb).convert("CMYK"))
    # Adobe's kind (what Photoshop and Pillow write: inverted values, an APP14 marker)
    adobe = tmp_path / "adobe.jpg"
    Image.fromarray(rgb).convert("CMYK").save(adobe, quality=95)
    with Image.open(adobe) as im:
        assert im.mode == "CMYK" and "adobe" in im.info
    # a plain one: the values as they are, no marker (Pillow writes inverted, so invert first)
    buf = io.BytesIO()
    Image.frombytes("CMYK", (rgb.shape[1], rgb.shape[0]), (255 - cmyk).tobytes()).save(buf, "JPEG", quality=95)
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(_strip_adobe(buf.getvalue()))
    with Image.open(plain) as im:
        assert im.mode == "CMYK" and "adobe" not in im.info
    for path in (adobe, plain):
        img = read_pixels(path)
        assert img.shape == rgb.shape and img.dtype == np.uint8
        diff = np.abs(img.astype(float) - rgb).mean()
        assert diff < 4, (path.name, diff)


def test_an_exif_rotated_jpeg_decodes_upright_and_reports_its_upright_size(tmp_path):
    upright = _smooth(48, 64)  # 64 wide, 48 high
    upright[:8, :8] = 0  # a dark top-left corner
    stored = np.rot90(upright, 1)  # as the camera saved it: to be turned 90 degrees clockwise (orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "camera.jpg"
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif.tobytes())
    assert image_size(path) == (64, 48)
    img = read_pixels(path)
    assert img.shape == (48, 64, 3)
    assert np.abs(img.astype(float) - upright).mean() < 4
    assert img[:6, :6].mean() < 30 < img[-6:, -6:].mean()
    # a rotated camera JPEG pairs with its upright partner: the pair check sees the upright size
    root = paired(tmp_path / "ds")
    cam = root / "train" / "target" / "train2.jpg"
    clean = _img(5, 48, 64)
    Image.fromarray(np.ascontiguousarray(np.rot90(clean, 1))).save(cam, quality=95, exif=exif.tobytes())
    (root / "train" / "target" / "train2.png").unlink()
    (root / "train" / "input" / "train2.png").unlink()
    save_png(root / "train" / "input" / "train2.jpg", clean)
    task = make_task("folder", {"data": root})
    splits = task.splits()
    (k,) = [i for i, s in enumerate(splits.owner.sources + splits.attacker.sources + splits.calib.sources)
            if s.endswith("train2")]
    pools = list(splits.owner.clean) + list(splits.attacker.clean) + list(splits.calib.clean)
    assert tuple(pools[k].shape) == (3, 48, 64)


def test_16_bit_pngs_keep_their_low_bits(tmp_path):
    rng = np.random.default_rng(0)
    k = rng.integers(0, 255, (12, 10, 4))
    values = (257 * k + 1).astype(np.uint16)  # the low byte is not the high byte: 8 bits cannot hold them
    cases = {
        "rgb": (values[..., :3], values[..., :3]),
        "rgba": (values, values[..., :3]),
        "grey_alpha": (values[..., :2], np.repeat(values[..., :1], 3, axis=2)),
        "grey": (values[..., 0], np.repeat(values[..., :1], 3, axis=2)),
    }
    for name, (stored, expected) in cases.items():
        img = read_pixels(_png(tmp_path / f"{name}.png", stored))
        assert img.dtype == np.float32 and img.shape == (12, 10, 3), name
        np.testing.assert_array_equal(np.round(img * 65535).astype(np.uint16), expected, err_msg=name)


def test_a_symlink_loop_in_a_data_folder_is_skipped_with_a_warning(tmp_path, capsys):
    root = paired(tmp_path / "ds")
    (root / "train" / "input" / "loop.png").symlink_to("loop.png")  # a link to itself
    (root / "train" / "knot").symlink_to("knot")
    task = make_task("folder", {"data": root})
    pools = task.source.pools()
    assert sorted(p.name for p in pools["test"]) == ["test0", "test1"]
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "loop.png" in line]
    assert len(lines) == 1 and "symbolic link loop" in lines[0]
    assert "knot" in err


def test_a_huge_image_hits_the_suites_megapixel_limit_not_pillows(tmp_path):
    root = paired(tmp_path / "ds")
    big = root / "train" / "target" / "train0.png"
    _png(big, np.zeros((1, 1, 3), np.uint8), depth=8, size=(20000, 20000))  # the header's size only
    assert image_size(big) == (20000, 20000)
    with pytest.raises(BenchError) as info:
        make_task("folder", {"data": root}).splits()
    msg = str(info.value)
    assert "20000x20000 (400.0 MP), over the folder task's limit of 16 MP" in msg
    assert "raise --set task.max_megapixels=400" in msg and "re-save" not in msg and "\n" not in msg


# ---------------------------------------------------------------------------------------------- item 4
def _leak(root: Path) -> tuple[Path, Path]:
    """A test pair copied, under another name, from a training pair: (the test target, the training one)."""
    for side in ("input", "target"):
        shutil.copy(root / "train" / side / "train1.png", root / "test" / side / "dup.png")
    return root / "test" / "target" / "dup.png", root / "train" / "target" / "train1.png"


def test_a_test_image_copied_from_training_is_refused_naming_both(tmp_path, capsys):
    root = paired(tmp_path / "ds")
    _leak(root)
    with pytest.raises(BenchError) as info:
        make_task("folder", {"data": root}).splits()
    msg = str(info.value)
    assert "test/input/dup.png is a copy of" in msg and "train/input/train1.png" in msg and "\n" not in msg
    assert "task.allow_leakage=true" in msg
    splits = make_task("folder", {"data": root, "allow_leakage": True}).splits()
    assert len(splits.test) == 3
    # on the command line: one line on stderr; the override runs the cell
    home = str(tmp_path / "runs")
    assert main(["run", "--task", "folder", "--data", str(root), *FAST, "--home", home]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dup.png" in err and "train1.png" in err
    code = main(["run", "--task", "folder", "--data", str(root), *FAST, "--set", "task.allow_leakage=true",
                 "--home", home])
    assert code == 0, capsys.readouterr().err
    # a cell scored with the override is marked: in its identity (so its key) and in the report's label
    (row,) = Store(home).cells(status="done")
    assert row["config"]["task"]["params"]["allow_leakage"] is True
    assert make_task("folder", {"data": root}).identity() != make_task("folder", {"data": root,
                                                                              "allow_leakage": True}).identity()


def test_a_link_or_a_near_copy_of_a_training_image_is_refused(tmp_path):
    # a link to a training file, in a test split chosen by a split file
    root = paired(tmp_path / "ds", (("all", 6),))
    src = root / "all"
    (src / "target" / "all5.png").unlink()
    (src / "target" / "all5.png").symlink_to(src / "target" / "all0.png")
    split = tmp_path / "split.txt"
    split.write_text("all5 test\n")
    args = {"input": src / "input", "target": src / "target", "split_file": split}
    with pytest.raises(BenchError, match=r"all5\.png and (owner|attacker|calib) image .*all0\.png are one file"):
        make_task("folder", args).splits()
    # a near copy: the training image re-saved as a JPEG, slightly brighter
    (src / "target" / "all5.png").unlink()
    near = np.clip(_img(10 * 3 + 2 + 1).astype(int) + 6, 0, 255).astype(np.uint8)  # all2's clean image
    (src / "input" / "all5.png").unlink()
    Image.fromarray(near).save(src / "target" / "all5.jpg", quality=90)
    save_png(src / "input" / "all5.jpg", noisy(near, 5))
    with pytest.raises(BenchError, match=r"all5\.jpg is near-identical to (owner|attacker|calib) image .*all2\.png"):
        make_task("folder", args).splits()
    assert len(make_task("folder", {**args, "allow_leakage": "true"}).splits().test) == 1


def test_distinct_images_and_the_bundled_data_pass_the_leakage_check(tmp_path):
    splits = make_task("folder", {"data": paired(tmp_path / "ds")}).splits()
    assert len(splits.test) == 2 and sum(len(splits[p]) for p in ("owner", "attacker", "calib")) == 4
    assert make_task("derain").source is None  # bundled: no DataSource, nothing checked


# ---------------------------------------------------------------------------------------------- item 5
def test_split_files_name_files_with_spaces_commas_and_hashes(tmp_path):
    names = ["my photo", "a,b", "c#1", "d", "e", "f"]
    root = paired(tmp_path / "ds", (("all", len(names)),), names=names)
    split = tmp_path / "split.txt"
    split.write_text("# the paper's test list\nmy photo test\na,b, test   # a comment\nc#1\ttest\n\"d\" owner\n")
    args = {"input": root / "all" / "input", "target": root / "all" / "target", "split_file": split}
    pools = make_task("folder", args).source.pools()
    assert sorted(p.name for p in pools["test"]) == ["a,b", "c#1", "my photo"]
    assert [p.name for p in pools["owner"]] == ["d"]
