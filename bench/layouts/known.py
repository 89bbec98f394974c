"""Every layout the suite knows, by name, which of them a task recognises, and ``bench list layouts``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.layouts.base import Layout
from bench.layouts.paired import Form, PairedLayout
from bench.layouts.sr import SRLayout

if TYPE_CHECKING:
    from bench.api import Task


def _reside_prefer(tests: list[str], trains: list[str]) -> str | None:
    """RESIDE's pairing: ITS (indoor) is scored on SOTS/indoor, OTS (outdoor) on SOTS/outdoor."""
    kinds = {"its": "indoor", "ots": "outdoor"}
    wanted = {kinds[t.lower()] for t in trains if t.lower() in kinds}
    if len(wanted) != 1:
        return None
    kind = wanted.pop()
    hits = [t for t in tests if kind in t.lower().split("/")]
    return hits[0] if len(hits) == 1 else None


#: every layout, by name; a task recognises its own (``tasks``) and ``paired``
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    PairedLayout(
        name="rain100", tasks=("derain",), dataset="Rain100L/H, Yang et al., CVPR 2017",
        expects="[train/ test/] each with rain-N.png + norain-N.png, or rain/ + norain/ folders",
        forms=(Form((".",), (".",), ("rain-{key}",), ("norain-{key}",)),
               Form(("rain", "rainy"), ("norain",), ("rain-{key}", "{key}"), ("norain-{key}", "{key}")),
               Form(("rainy", "rain"), (".",), ("rain-{key}",), ("norain-{key}",))),
        train_hint="add the set's training pairs as DIR/train (Rain100L: RainTrainL, Rain100H: RainTrainH)",
    ),
    PairedLayout(
        name="rain1400", tasks=("derain",), dataset="Rain1400/Rain12600, Fu et al., CVPR 2017",
        expects="training/ + testing/, each rainy_image/N_k.jpg + ground_truth/N.jpg",
        forms=(Form(("rainy_image", "rain", "rainy", "input"), ("ground_truth", "norain", "gt", "target"),
                    ("{key}_{n}",), ("{key}",)),),
        train=("training", "train"), test=("testing", "test"),
        train_hint="add the set's training pairs (Rain12600) as DIR/training",
    ),
    PairedLayout(
        name="lol", tasks=("lowlight",), dataset="LOL, Wei et al., BMVC 2018 (and LOL-v2)",
        expects="our485/ + eval15/, each low/ + high/ with the same names (LOL-v2: Train|Test/Low + Normal)",
        forms=(Form(("low",), ("high",)),
               Form(("low",), ("normal",), ("low{key}",), ("normal{key}",))),
        train=("our485", "train"), test=("eval15", "test"),
        train_hint="add LOL's training pairs as DIR/our485 (low/ + high/)",
    ),
    PairedLayout(
        name="uieb", tasks=("underwater",), dataset="UIEB, Li et al., TIP 2019",
        expects="raw-890/ + reference-890/ with the same names (no official split: the last fifth is test)",
        forms=(Form(("raw-890", "raw"), ("reference-890", "reference")),),
    ),
    PairedLayout(
        name="reside", tasks=("dehaze",), dataset="RESIDE ITS/OTS/SOTS, Li et al., TIP 2019",
        expects="ITS|OTS|train/ + SOTS|test/, each hazy/N_k[_beta].png + clear|gt/N.png",
        forms=(Form(("hazy",), ("clear", "gt"), ("{key}_{any}", "{key}")),),
        train=("train", "its", "ots"), test=("test", "sots", "hsts"), target_fit="centre",
        prefer=_reside_prefer,
        train_hint="add RESIDE's training set beside it: DIR/ITS (indoor) or DIR/OTS (outdoor), each hazy/ + clear/",
    ),
    SRLayout(
        name="div2k", tasks=("sr",), dataset="DIV2K, Agustsson & Timofte, CVPRW 2017", mode="div2k",
        expects="DIV2K_train_HR/ + DIV2K_valid_HR/ (NNNN.png), optional *_LR_bicubic/X{s}/NNNNxs.png",
        train_hint="add DIV2K_train_HR/ (and DIV2K_train_LR_bicubic/) beside it",
    ),
    SRLayout(
        name="hr_only", tasks=("sr",), dataset="Set5/Set14/B100/Urban100/Manga109, HR only", mode="hr_only",
        expects="train/ (or DIV2K_train_HR/) + Set5|Set14|B100|Urban100/ of HR images (LR: bicubic)",
        train_hint="add training HR images beside it as DIR/train/ or DIR/DIV2K_train_HR/ and pass --data DIR",
    ),
    PairedLayout(
        name="paired", dataset="your own pairs",
        expects="input/ + target/ with the same file names, optionally under train/ and test/",
        forms=(Form(("input",), ("target",)),),
        train_hint="add training pairs as DIR/train (input/ + target/)",
    ),
)}


def layouts_for(task: Task) -> list[Layout]:
    """The layouts ``task`` recognises from a tree: its field's and ``paired`` (only ``paired`` for a task
    that reads pairs only, like ``folder``)."""
    own = [] if task.requires_data else [lay for lay in LAYOUTS.values() if task.name in lay.tasks]
    return [*own, LAYOUTS["paired"]]


def in_all_tasks(task: Task) -> bool:
    """Whether ``--tasks all`` with ``--data`` runs ``task``: where the data is in a layout of the task's own
    field (``paired`` for a task that reads pairs only, like ``folder``), not every task on plain pairs."""
    source = task.data_source()
    if source is None:
        return True
    own = [lay.name for lay in layouts_for(task) if task.requires_data or lay.name != "paired"]
    return source.layout.name in own


def describe_layouts() -> list[str]:
    """``bench list layouts``."""
    from tabulate import tabulate

    rows = [(lay.name, ", ".join(lay.tasks) or "every task", lay.dataset, lay.expects) for lay in LAYOUTS.values()]
    table = tabulate(rows, tablefmt="plain")
    return ["layouts:  (--data DIR reads them; --layout NAME names one, else it is recognised from the tree)",
            *("  " + line for line in table.splitlines()), ""]
