"""The plugin interfaces: Task, Defense, Attack (DESIGN section 4).

A plugin subclasses one of these, declares ``Params`` (a dataclass built with :func:`bench.params.param`)
and is found through the registries. A plugin imports only ``bench`` (and torch/numpy).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench import BenchError
from bench.data import ALL_TRANSFORMS, Splits, bundled_splits
from bench.params import NoParams, as_dict
from bench.profiles import Profile
from bench.serving import Query, ServedModel


class Plugin:
    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    #: bump when the plugin's behaviour changes, so cached artifacts and results are recomputed
    version: ClassVar[str] = "1"

    def identity(self) -> dict[str, Any]:
        """What identifies this plugin instance in cache keys and result rows."""
        return {"name": self.name, "version": self.version, "params": as_dict(self.params)}


# --------------------------------------------------------------------------------------------- tasks
class Task(Plugin, ABC):
    """A restoration task: its data (four disjoint pools), models and metric convention. A subclass must
    define :meth:`degrade` (a task that reads pairs only defines one that refuses, as the folder task does)."""

    #: output size / input size (super-resolution scale)
    scale: int = 1
    #: PSNR/SSIM on the Y channel (BT.601) instead of RGB
    y_channel: bool = False
    #: training flips/rotations that keep images in the task's distribution (bench.data.dihedral indices)
    augment_transforms: tuple[int, ...] = ALL_TRANSFORMS
    #: the task reads pairs from disk only (the folder task): without data it has nothing to work on
    requires_data: ClassVar[bool] = False
    #: the dataset read instead of the bundled photographs (bench.layouts.DataSource, set from the data
    #: parameters by bench.layouts.attach_data); None: the bundled photographs, exactly as before
    source: Any = None

    def __init__(self, params: Any, profile: Profile) -> None:
        self.params = params
        self.profile = profile
        #: where the pools live: the device of the job that made the task (bench.numerics.on_device; a
        #: plugin's own task inside a job, e.g. a pretraining task), or the cell's (bench.pipeline.resolve)
        self.device = torch.get_default_device()
        self._splits: Splits | None = None

    def identity(self) -> dict[str, Any]:
        # the augmentation shapes every model trained on the task, not its data
        out = {**super().identity(), "augment": list(self.augment_transforms)}
        source = self.data_source()
        if source is not None:  # data from disk: named among the parameters (report labels), fingerprinted beside
            out["params"] = {**out["params"], **source.identity_params()}
            out["data_fingerprint"] = source.fingerprint()
        return out

    def data_source(self) -> Any:
        """The dataset this task reads (None: the bundled photographs); BenchError for a task that reads
        pairs only and was given none."""
        if self.source is None and self.requires_data:
            raise BenchError(f"the {self.name} task needs a data directory: pass --data DIR (or --set task.data=DIR), "
                             "where DIR holds input/ and target/ subfolders of paired images (other layouts: bench "
                             "list layouts), or --input DIR --target DIR.")
        return self.source

    @property
    def shave(self) -> int:
        """Border pixels left out of the metrics (SR convention: ``scale``)."""
        return self.scale if self.scale > 1 else 0

    @abstractmethod
    def degrade(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Clean (H, W, 3) float in [0, 1] -> degraded image (the bundled photographs' degradation)."""

    def splits(self) -> Splits:
        """The owner / attacker / calib / test pools (built once per task instance)."""
        if self._splits is None and self.data_source() is not None:
            # pairs read from disk (bench.layouts): checked now, each image decoded on its first use
            self._splits = self.data_source().splits()
        if self._splits is None:
            key = f"{self.name}:{self.version}:{sorted(as_dict(self.params).items())}"
            with torch.device("cpu"):  # degradations run on numpy and CPU tensors; the pools move once
                splits = bundled_splits(
                    key, self.degrade, image_size=self.profile.image_size,
                    variants=self.profile.variants, scale=self.scale, transforms=self.augment_transforms,
                    calib_pool=self.profile.calib_pool, calib_draws=self.profile.calib_draws,
                )
            self._splits = splits.to(self.device)
        return self._splits

    def baseline(self, degraded: torch.Tensor) -> torch.Tensor:
        """What the degraded input scores as, at output size (SR: bicubic upsampling)."""
        if self.scale == 1:
            return degraded
        up = F.interpolate(degraded, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return up.clamp(0, 1)

    def teacher_arch(self) -> nn.Module:
        from bench.models import RestorationCNN

        p = self.profile
        return RestorationCNN(p.teacher_channels, p.teacher_blocks, scale=self.scale)

    def student_arch(self) -> nn.Module:
        from bench.models import RestorationCNN

        p = self.profile
        return RestorationCNN(p.student_channels, p.student_blocks, scale=self.scale)


# ------------------------------------------------------------------------------------------ defenses
#: the false-positive rate at which a tracing defense calls a model ``traced`` (row metric ``traced``)
TRACE_ALPHA = 0.01


@dataclass(frozen=True)
class Trace:
    """A tracing defense's verdict on one model (:meth:`Defense.trace`): ``stat`` the detection statistic,
    ``z`` its distance from the statistic's null (models that never saw the defense's answers) in null standard
    deviations, ``p`` the one-sided p-value of ``z`` (small: the model carries the defense's mark)."""

    stat: float
    z: float
    p: float


@dataclass
class FitContext:
    """What a defense's ``fit`` gets besides the teacher and the data."""

    profile: Profile
    seed: int
    task: Task
    #: ``cached_model(config, build, train)``: a model trained once per config and kept on disk
    cached_model: Callable[..., nn.Module]
    progress: bool = True


class Defense(Plugin):
    """Wraps a teacher into the served model.

    Runtime defenses override :meth:`perturb_features` (at :meth:`feature_layers`) and/or
    :meth:`perturb_answers`; training-time defenses override :meth:`fit` and :meth:`served_teacher`.
    """

    #: name of the parameter that sets the defense's strength (for calibration), if any
    strength: ClassVar[str | None] = None
    #: (value at which the defense costs nothing, a first upper guess) for calibration's bracket; the
    #: cost must grow with the strength from the first value on. None: (0, the parameter's default).
    strength_range: ClassVar[tuple[float, float] | None] = None
    #: strengths a trade-off curve runs at (``strengths: auto`` in a grid file): from the identity to well
    #: past 1 dB of teacher cost on the bundled tasks; None: the grid must list them
    strength_spread: ClassVar[tuple[float, ...] | None] = None
    #: at ``strength_range[0]`` the served answers are exactly the teacher's, so a trade-off curve starts
    #: at (cost 0, drop 0) there; False for a defense that changes the teacher even then (a fine-tuned copy)
    strength_identity: ClassVar[bool] = True
    #: what to loosen when the strength alone cannot reach a budget (ends calibration's error message)
    saturation_hint: ClassVar[str] = "loosen its other parameters"
    #: feature perturbations flow on through the model (answers change) rather than only being exposed
    inline: bool = False
    #: the defense marks its answers so that a model trained on them can be recognised (a watermark): it
    #: implements :meth:`trace`, and the cell scores every student with it (row metrics ``trace_*``)
    traces: ClassVar[bool] = False

    def __init__(self, params: Any, *, seed: int = 0) -> None:
        self.params = params
        self.seed = int(seed)

    def channels(self) -> tuple[str, ...]:
        """Which channels of the served model this defense touches: 'answers' and/or 'features'."""
        return ()

    def fit(self, teacher: nn.Module, splits: Splits, ctx: FitContext) -> None:
        """Optional training (surrogates, changed teachers). Runtime defenses need none."""

    def served_teacher(self, teacher: nn.Module) -> nn.Module:
        """The model actually served (training-time defenses return their changed teacher)."""
        return teacher

    def feature_layers(self, model: nn.Module) -> Sequence[str]:
        """Names of the modules whose output features this defense perturbs."""
        return ()

    def perturb_features(self, layer: str, features: torch.Tensor, query: Query) -> torch.Tensor:
        return features

    def perturb_answers(self, answers: torch.Tensor, query: Query) -> torch.Tensor:
        return answers

    def trace(self, outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor],
              teacher_outputs: Sequence[torch.Tensor]) -> Trace:
        """Whether a model carries this defense's mark (only where ``traces`` is True): ``outputs`` are the
        model's answers to the probe images ``inputs`` (each (1, 3, H, W), in [0, 1]), ``teacher_outputs`` the
        undefended teacher's answers to them (the owner has its teacher)."""
        raise NotImplementedError(f"defense '{self.name}' does not trace (its class sets traces = False)")

    def calibration_identity(self) -> dict[str, Any]:
        """:meth:`identity` without the strength parameter: what a calibration of this defense is for."""
        ident = self.identity()
        if self.strength:
            ident["params"] = {k: v for k, v in ident["params"].items() if k != self.strength}
        return ident

    def with_strength(self, value: float, *, seed: int | None = None) -> Defense:
        """A new defense like this one with its strength parameter set to ``value`` (validated)."""
        import dataclasses

        if not self.strength:
            raise ValueError(f"defense '{self.name}' has no strength parameter")
        params = dataclasses.replace(self.params, **{self.strength: float(value)})
        return type(self)(params, seed=self.seed if seed is None else seed)

    def serve(self, teacher: nn.Module, *, exposed_layers: Sequence[str] = (), answer_bits: int = 0) -> ServedModel:
        """The served model; ``answer_bits`` > 0 rounds its answers to that many bits per channel, as
        an image is sent (the pipeline uses the profile's ``answer_bits``; 0: float answers)."""
        return ServedModel(self.served_teacher(teacher), self, exposed_layers=exposed_layers,
                           defense_seed=self.seed, answer_bits=answer_bits)


# ------------------------------------------------------------------------------------------- attacks
@dataclass
class AttackContext:
    profile: Profile
    seed: int
    task: Task
    budget: int
    #: layers of the served model whose features are exposed (feature-level attacks)
    exposed_layers: tuple[str, ...] = ()
    progress: bool = True
    artifacts: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: train on the clean images of the attacker pool instead of answers (the ``gt_student`` reference);
    #: attacks that take their pairs from :func:`bench.kd.collect` honour it without further code
    ground_truth: bool = False
    #: ``cached_model(config, build, train)``: a model trained once per config and kept on disk (e.g. a
    #: public pretrained student); None outside the pipeline (then it is trained every time)
    cached_model: Callable[..., nn.Module] | None = None
    #: a fresh, untrained student of the cell's architecture (the user's ``--student`` or the task's)
    student_arch: Callable[[], nn.Module] | None = None
    #: which of the cell's students this is, for progress bars: ``reference`` (from the undefended teacher),
    #: ``ground truth`` (from the clean images), ``defended`` (from the served model); empty outside the pipeline
    role: str = ""


class Attack(Plugin, ABC):
    """Steals a student from the served model through a :class:`bench.query.QueryAPI`."""

    #: 'outputs' (answers only) or 'features' (answers plus exposed features)
    access: ClassVar[str] = "outputs"

    def __init__(self, params: Any, *, seed: int = 0) -> None:
        self.params = params
        self.seed = int(seed)

    def feature_layers(self, teacher: nn.Module) -> Sequence[str]:
        """Layers of the served model whose features this attack asks for (feature access only)."""
        return ()

    def budget(self, profile: Profile) -> int:
        """Queries this attack may make: its ``queries`` parameter, or the profile's budget."""
        return int(getattr(self.params, "queries", 0) or profile.query_budget)

    @abstractmethod
    def steal(self, api: Any, pool: Any, student: nn.Module, ctx: AttackContext) -> nn.Module:
        """Train ``student`` from what ``api`` answers on ``pool``'s images and return it."""
