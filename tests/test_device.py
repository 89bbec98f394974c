"""One device per job: every tensor of a cell lives on the cell's device, the device is part of every
key and row, and a GPU is used end to end where there is one (those tests skip without CUDA)."""

from __future__ import annotations

import pytest
import torch

from bench import BenchError
from bench.cli import main
from bench.numerics import numerics, resolve_device
from bench.pipeline import CellSpec, resolve, run_cell
from bench.store import Store

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine")
needs_two_gpus = pytest.mark.skipif(not CUDA or torch.cuda.device_count() < 2, reason="fewer than two GPUs")

# every kind of work a cell does: runtime feature and answer defenses, a training-time defense and a
# defense with a surrogate, an output-only and a feature-level attack
CELLS = [("asvp", "vanilla_kd"), ("output_noise", "feature_kd"), ("mad", "finetune"),
         ("nasty_teacher", "feature_kd")]


def _spec(defense: str = "asvp", attack: str = "vanilla_kd", **kw) -> CellSpec:
    return CellSpec(task="derain", defense=defense, attack=attack, profile="smoke", **kw)


@pytest.mark.parametrize(("defense", "attack"), CELLS)
def test_a_cell_creates_no_tensor_off_its_device(tmp_path, defense, attack):
    """With torch's default device set to ``meta``, a tensor or model made without the job's device
    would hold no data and the cell would fail; a cell on an explicit CPU device runs and scores exactly
    as it does without the trap."""
    plain = run_cell(_spec(defense, attack, device="cpu"), home=tmp_path / "plain", progress=False)
    torch.set_default_device("meta")
    try:
        trapped = run_cell(_spec(defense, attack, device="cpu"), home=tmp_path / "trapped", progress=False)
    finally:
        torch.set_default_device(None)
    assert trapped["status"] == "done"
    for name in ("teacher_psnr", "served_psnr", "student_psnr", "student_ref_psnr", "student_drop_db"):
        assert trapped["metrics"][name] == plain["metrics"][name], name


def test_the_device_and_numerics_are_in_the_key_and_the_row(tmp_path):
    assert main(["run", "--task", "derain", "--defense", "asvp", "--profile", "smoke", "--device", "cpu",
                 "--home", str(tmp_path)]) == 0
    (row,) = Store(tmp_path).cells()
    assert row["config"]["numerics"] == {"device": "cpu", "threads": torch.get_num_threads(), "precision": "fp32"}
    assert resolve(_spec(device="cpu")).key != resolve(_spec(device="cpu", threads=99)).key


def test_auto_is_cpu_without_cuda_and_bad_devices_are_one_line_errors():
    assert resolve_device("auto") == ("cuda" if CUDA else "cpu")
    with pytest.raises(BenchError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(BenchError, match="cuda:99"):
        resolve_device("cuda:99")


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_one_line_error(tmp_path, capsys):
    assert main(["run", "--task", "derain", "--profile", "smoke", "--device", "cuda", "--home", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device cuda: this machine has no usable CUDA device") and "\n" not in err
    assert not (tmp_path / "results.sqlite").exists() or not Store(tmp_path).cells()


def test_a_sweep_on_cuda_needs_cuda_and_jobs_per_gpu_needs_a_gpu(tmp_path):
    from bench.scheduler import run_sweep

    with pytest.raises(BenchError, match="--jobs-per-gpu"):
        run_sweep([_spec(device="cpu")], home=tmp_path, jobs_per_gpu=2, progress=False)
    if not CUDA:
        with pytest.raises(BenchError, match="no usable CUDA device"):
            run_sweep([_spec(device="cuda")], home=tmp_path, progress=False)


@needs_cuda
@pytest.mark.parametrize(("defense", "attack"), CELLS)
def test_a_smoke_cell_runs_on_cuda(tmp_path, defense, attack):
    row = run_cell(_spec(defense, attack, device="cuda"), home=tmp_path, progress=False)
    assert row["status"] == "done"
    assert row["config"]["numerics"]["device"] == "cuda" and row["config"]["numerics"]["gpu"]
    cpu = run_cell(_spec(defense, attack, device="cpu"), home=tmp_path, progress=False)
    assert cpu["key"] != row["key"]  # never paired: another device is another model
    # the same data, scored by the same metric code: the input's score is the same number on both devices
    assert row["metrics"]["input_psnr"] == pytest.approx(cpu["metrics"]["input_psnr"], abs=1e-6)
    # trained on other numerics, the models differ a little, not a lot (smoke scale: 30 teacher steps)
    assert abs(row["metrics"]["teacher_psnr"] - cpu["metrics"]["teacher_psnr"]) < 1.0


@needs_cuda
def test_metrics_agree_between_cpu_and_cuda():
    from bench.metrics import psnr, ssim

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    for y in (False, True):
        assert psnr(a.cuda(), b.cuda(), y_channel=y) == pytest.approx(psnr(a, b, y_channel=y), abs=1e-5)
        assert ssim(a.cuda(), b.cuda(), y_channel=y) == pytest.approx(ssim(a, b, y_channel=y), abs=1e-6)


@needs_cuda
def test_a_served_answer_is_the_same_on_every_call_on_cuda():
    from bench.protect import protect
    from tasks.derain import Derain  # noqa: F401  (the registry loads it by name)

    torch.manual_seed(0)
    model = resolve(_spec(device="cuda")).task.teacher_arch().cuda().eval()
    x = torch.rand(2, 3, 32, 32, device="cuda")
    with protect(model, "output_noise", sigma=0.05) as served, torch.no_grad():
        first, again, alone = served(x), served(x), served(x[:1])
    assert torch.equal(first, again) and torch.equal(first[:1], alone)


@needs_two_gpus
def test_two_workers_take_two_gpus(tmp_path):
    from bench.scheduler import run_sweep

    specs = [_spec(device="cuda", seed=s) for s in (0, 1)]
    result = run_sweep(specs, home=tmp_path, jobs_per_gpu=1, progress=False)
    assert result.ok and len(result.rows) == 2


def test_numerics_name_the_gpu_on_cuda_only():
    assert "gpu" not in numerics(1, "cpu")
    if CUDA:
        assert numerics(1, "cuda")["gpu"] == torch.cuda.get_device_name(0)


def test_a_sweep_creates_no_tensor_off_its_device(tmp_path):
    """The sweep's stages (teachers, defense fits, reference and ground-truth students, cells) run in
    this process with one job, under the same ``meta`` trap."""
    from bench.scheduler import run_sweep

    specs = [_spec("mad", "vanilla_kd", device="cpu"), _spec("nasty_teacher", "feature_kd", device="cpu")]
    torch.set_default_device("meta")
    try:
        result = run_sweep(specs, home=tmp_path, n_jobs=1, progress=False)
    finally:
        torch.set_default_device(None)
    assert result.ok, result.failures


def test_bf16_training_is_keyed_apart_and_runs(tmp_path):
    """profile.precision=bf16 trains under bfloat16 autocast: another model, so another key (through the
    numerics, which name it), and a cell runs to the end with it; fp32 keys stay what they were."""
    fp32 = resolve(_spec(device="cpu", threads=1))
    bf16 = resolve(_spec(device="cpu", threads=1, profile_params={"precision": "bf16"}))
    assert bf16.numerics["precision"] == "bf16" and fp32.numerics["precision"] == "fp32"
    assert bf16.key != fp32.key and "precision" not in fp32.config()["profile"]
    row = run_cell(_spec(device="cpu", profile_params={"precision": "bf16"}), home=tmp_path, progress=False)
    assert row["status"] == "done" and row["config"]["numerics"]["precision"] == "bf16"
    ref = run_cell(_spec(device="cpu"), home=tmp_path, progress=False)
    assert row["metrics"]["teacher_psnr"] != ref["metrics"]["teacher_psnr"]  # it did train in bfloat16
