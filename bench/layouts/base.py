"""The layout base class: what a layout reads, for which tasks, and how a tree's train and test parts are
found and its test set chosen (finding the pairs is the subclasses': :mod:`bench.layouts.paired`,
:mod:`bench.layouts.sr`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import BenchError
from bench.layouts.images import subdirs
from bench.layouts.pairs import FindContext, Pair, Plan, part_label
from bench.layouts.splitting import test_only


@dataclass(frozen=True, kw_only=True)
class Layout:
    """A dataset layout: what it reads, for which tasks, and how (subclasses: the finding)."""

    name: str
    #: tasks that recognise it from the tree; () = every task
    tasks: tuple[str, ...] = ()
    #: the sets it reads and where they come from
    dataset: str = ""
    #: the tree, in one line (errors and ``bench list layouts``)
    expects: str = ""
    #: what to add when the tree has test pairs only
    train_hint: str = "add the set's training part beside its test part"
    #: how the clean image may exceed ``scale`` x the degraded one: exact, modcrop (SR) or centre (RESIDE)
    target_fit: str = "exact"
    #: names of train and test part folders (any case)
    train: tuple[str, ...] = ("train",)
    test: tuple[str, ...] = ("test",)
    #: of several test sets (labels), the one a train part implies (e.g. RESIDE: ITS -> SOTS/indoor)
    prefer: Callable[[list[str], list[str]], str | None] | None = None

    def plan(self, root: Path, test_set: str = "") -> Plan | None:
        """The parts of ``root`` if it looks like this layout, else None (cheap: names and a first pair);
        ``test_set`` names a test folder the layout would not recognise by its name."""
        raise NotImplementedError

    def pairs_in(self, folder: Path, part: str, where: str, ctx: FindContext) -> list[Pair]:
        raise NotImplementedError

    def missing(self, root: Path) -> str:
        """The one-line error for a tree this layout does not recognise."""
        return f"{root} does not hold the {self.name} layout ({self.dataset}): expected {self.expects}."

    def find(self, root: Path, ctx: FindContext) -> list[Pair]:
        plan = self.plan(root, ctx.test_set)
        if plan is None:
            raise BenchError(self.missing(root))
        if plan.single is not None:
            if ctx.test_set:
                raise BenchError(f"--set task.test_set={ctx.test_set}: {root} is one set without test sets (layout "
                                 f"{self.name}); choose its test pairs with --split-file instead.")
            return self.pairs_in(plan.single, "", "", ctx)
        if plan.test and not plan.train and not ctx.split_file:
            raise BenchError(test_only(root, self))
        pairs = []
        for folder in plan.train:
            pairs += self.pairs_in(folder, "train", part_label(root, folder), ctx)
        chosen = self.choose_test(root, plan, ctx)
        if chosen is not None:
            pairs += self.pairs_in(chosen, "test", part_label(root, chosen), ctx)
        elif ctx.test_set:
            raise BenchError(f"--set task.test_set={ctx.test_set}: {root} has no test set (layout {self.name} "
                             f"expects {self.expects}).")
        return pairs

    def choose_test(self, root: Path, plan: Plan, ctx: FindContext) -> Path | None:
        if not plan.test:
            return None
        labels = [part_label(root, f) or f.name for f in plan.test]
        if ctx.test_set:
            want = ctx.test_set.strip("/").lower()
            hits = [f for f, lab in zip(plan.test, labels) if want in (lab.lower(), f.name.lower())]
            if len(hits) != 1:
                raise BenchError(f"--set task.test_set={ctx.test_set} names no test set of {root} (layout "
                                 f"{self.name}); its test sets: {', '.join(labels)}.")
            chosen, ctx.test_chosen = hits[0], True
        elif len(plan.test) == 1:
            chosen = plan.test[0]
        else:
            pick = self.prefer(labels, [f.name for f in plan.train]) if self.prefer else None
            if pick is None:
                raise BenchError(f"{root} holds several test sets ({', '.join(labels)}; layout {self.name}); choose "
                                 "one with --set task.test_set=NAME.")
            chosen, ctx.test_chosen = plan.test[labels.index(pick)], True
        ctx.test_label = part_label(root, chosen) or chosen.name
        return chosen

    def _parts(self, root: Path, holds: Callable[[Path], bool]) -> Plan | None:
        """Train/test part folders of ``root`` (each holding the layout itself, or subsets that do), the root
        as a lone part when its own name is a part's, or the root as one folder without a split."""
        def expand(folder: Path) -> list[Path]:
            return [folder] if holds(folder) else [k for k in subdirs(folder) if holds(k)]

        train_names = {n.lower() for n in self.train}
        test_names = {n.lower() for n in self.test}
        kids = subdirs(root)
        train = [f for k in kids if k.name.lower() in train_names for f in expand(k)]
        test = [f for k in kids if k.name.lower() in test_names for f in expand(k)]
        if train or test:
            return Plan(train=train, test=test)
        own = root.name.lower()
        if own in test_names or own in train_names:
            sets = expand(root)
            if sets:
                return Plan(test=sets) if own in test_names else Plan(train=sets)
        if holds(root):
            return Plan(single=root)
        return None
