"""The README's commands work as written (issue 18, item 7).

Every ``bench ...`` line of the README's fenced ``bash`` blocks is read here (``\\`` continuations joined,
comments dropped, ``cd DIR`` followed within its block) and checked:

- it parses with bench's own argparse parser (a renamed flag or a removed subcommand fails);
- every ``--task``/``--defense``/``--attack`` (and sweep's ``--tasks``/``--defenses``/``--attacks``) names
  an installed plugin, and every ``--set GROUP.KEY=VALUE`` a parameter that plugin (or, for a sweep, one
  plugin of that axis, or the profile) has;
- every file it names exists (grid files, ``--data``, ``--weights``, the module of ``--teacher``/``--student``
  and its factory), except in the commands listed in ``SKIPPED`` as needing the reader's own data;
- the cells it describes resolve (every plugin built with its parameters, budgets checked), without
  training, on the smoke profile;
- and the cheap ones (all but ``SKIPPED`` and ``NOT_RUN``) run end to end on the smoke profile in a
  temporary ``--home``.

Both lists name their commands exactly as the README writes them, with the reason; a stale entry fails,
so a command added to or changed in the README is either run here or listed with a reason.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: not run and not checked for their data files: they need what a reader brings (a cluster, own images)
SKIPPED = {
    "sweep grids/quick-all.yaml --backend dask --address tcp://scheduler:8786":
        "needs a dask scheduler at that address (tests/test_sweep.py runs the dask backend on a local cluster)",
    "run --task folder --data my_pairs/ --defense asvp":
        "my_pairs/ stands for the reader's own image pairs (tests/test_tasks.py runs the folder task)",
    "run --task folder --data my_pairs --teacher my_model:make_teacher --weights my_teacher.pt --defense asvp "
    "--set defense.h=2":
        "my_pairs/ and my_teacher.pt are written by examples/byom/train.py (tests/test_byom.py runs this path)",
    "run --task folder --data my_pairs --teacher my_model:make_teacher --weights my_teacher.pt --defense "
    "output_noise --budget 0.5":
        "my_pairs/ and my_teacher.pt are written by examples/byom/train.py",
    "sweep --tasks folder --data my_pairs --teacher my_model:make_teacher --weights my_teacher.pt --defenses "
    "none,asvp,output_noise --seeds 0-4 --n-jobs 2":
        "my_pairs/ and my_teacher.pt are written by examples/byom/train.py (tests/test_byom.py sweeps your model)",
    "run --task sr --weights 001_classicalSR_DF2K_s64w8_SwinIR-M_x2.pth --defense asvp":
        "a published checkpoint the reader downloads (tests/test_models.py runs --weights on detected state dicts)",
}
#: checked in full (parsed, named plugins and parameters, files, cells resolved) but not run: too slow here
NOT_RUN = {
    "sweep grids/smoke.yaml --n-jobs 2": "6 cells and 2 teachers in two worker processes (tests/test_sweep.py "
                                         "runs sweeps)",
    "sweep --tasks all --defenses none,asvp --seeds 0-2 --n-jobs 2": "30 cells",
    "sweep --tasks derain --defenses asvp --budgets 0.1,0.5,1.0":
        "three calibrations; the smoke teacher is too small for calibrated ASVP budgets (README)",
    "calibrate --task derain --defense mad --budget 0.5": "MAD's calibration trains its surrogate: ~40 s on smoke",
    "run --task derain --defense mad --budget 0.5": "calibrates first, as above (tests/test_calibrate.py)",
    "run --task derain --teacher my_model:make_teacher --student my_model:make_student --defense asvp":
        "trains the example's U-Net teacher: ~40 s on smoke (tests/test_byom.py trains a user's architecture)",
}
#: options whose value is a file or folder that must exist (outputs such as --home and --out are not); an
#: option a command does not have is passed over
INPUT_PATHS = ("data", "input", "target", "split_file", "weights")
PLUGIN_AXES = {"task": "tasks", "defense": "defenses", "attack": "attacks"}


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    cwd: Path
    line: int

    @property
    def text(self) -> str:
        return " ".join(self.argv)


def readme_commands(text: str | None = None) -> list[Command]:
    """Every ``bench`` command of the README's ``bash`` blocks, in order (``a && bench b``: ``bench b``)."""
    lines = (README.read_text() if text is None else text).splitlines()
    out: list[Command] = []
    block = False
    cwd = ROOT
    pending, start = "", 0
    for number, line in enumerate(lines, 1):
        if line.strip().startswith("```"):
            block = line.strip() == "```bash" and not block
            cwd = ROOT
            continue
        if not block:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        words = shlex.split(pending + line, comments=True)
        pending = ""
        segment: list[str] = []
        for word in [*words, "&&"]:
            if word not in ("&&", ";", "||"):
                segment.append(word)
                continue
            if segment[:1] == ["cd"] and len(segment) == 2:
                cwd = (cwd / segment[1]).resolve()
            elif segment and (segment[0] == "bench" or segment[0].endswith("/bench")):
                out.append(Command(tuple(segment[1:]), cwd, start))
            segment = []
    return out


COMMANDS = readme_commands()


def _parse(argv: tuple[str, ...] | list[str]) -> argparse.Namespace:
    from bench.cli import build_parser

    try:
        return build_parser().parse_args(list(argv))
    except SystemExit as exc:
        raise AssertionError(f"bench {' '.join(argv)}: argparse refused it (exit {exc.code})") from None


def _names(value: str | None, registry) -> list[str]:
    if value is None or value == "all":
        return registry.names()
    return [v.strip() for v in value.split(",") if v.strip()]


def _fields(registry, name: str) -> set[str]:
    from bench.params import describe

    return {f.name for f in describe(registry.get(name).Params)}


def _plugins_and_sets(args: argparse.Namespace) -> list[str]:
    """What is wrong with the plugin names and --set keys of a parsed run/calibrate/sweep command."""
    from bench.params import describe, parse_sets
    from bench.profiles import Profile
    from bench.registry import ATTACKS, DEFENSES, TASKS

    registries = {"task": TASKS, "defense": DEFENSES, "attack": ATTACKS}
    problems = []
    named: dict[str, list[str]] = {}
    for group, registry in registries.items():
        if args.command == "sweep":
            given = getattr(args, PLUGIN_AXES[group])
            named[group] = _names(given, registry) if given is not None else []
        else:
            named[group] = [getattr(args, group)]
        for name in named[group]:
            if name not in registry.names():
                problems.append(f"{group} '{name}' is not installed (bench list {PLUGIN_AXES[group]})")
    for group, keys in parse_sets(args.sets).items():
        if group == "profile":
            fields = {f.name for f in describe(Profile)}
            problems += [f"--set profile.{k}: no such profile field" for k in keys if k not in fields]
            continue
        owners = [n for n in named[group] if n in registries[group].names()] or registries[group].names()
        for key in keys:
            if not any(key in _fields(registries[group], n) for n in owners):
                problems.append(f"--set {group}.{key}: no {group} of {', '.join(owners)} has it")
    return problems


def _files(args: argparse.Namespace, cwd: Path, *, user_data: bool) -> list[str]:
    """Files the command reads that are not there (paths relative to the block's working directory)."""
    problems = []
    if getattr(args, "grid", None) and not (cwd / args.grid).is_file():
        problems.append(f"grid file {args.grid} not found in {cwd}")
    for option in INPUT_PATHS if not user_data else ():
        value = getattr(args, option, None)
        if value and not (cwd / value).exists():
            problems.append(f"--{option.replace('_', '-')} {value}: not found in {cwd}")
    for option in ("teacher", "student"):
        value = getattr(args, option, None)
        if not value:
            continue
        if ":" not in value:  # an architecture of the field by name (bench.models.field)
            from bench import BenchError
            from bench.models.field import parse_name

            try:
                parse_name(value, option)
            except BenchError as exc:
                problems.append(str(exc))
            continue
        module, _, factory = value.partition(":")
        source = cwd / (module.replace(".", "/") + ".py")
        if not source.is_file():
            spec = importlib.util.find_spec(module.split(".")[0])
            source = Path(spec.origin) if spec and spec.origin else None
        if source is None:
            problems.append(f"--{option} {value}: no module {module} in {cwd} or installed")
            continue
        defined = {n.name for n in ast.walk(ast.parse(source.read_text()))
                   if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        if factory not in defined:
            problems.append(f"--{option} {value}: {source.name} defines no {factory}")
    return problems


def _needs_models(args: argparse.Namespace) -> bool:
    """The command names an architecture of the field or a checkpoint to detect: it needs spandrel (the models
    environment), and is run there only."""
    teacher, student = getattr(args, "teacher", None), getattr(args, "student", None)
    named = [v for v in (teacher, student) if v and ":" not in v]
    return bool(named) or bool(getattr(args, "weights", None) and not teacher)


def _models_missing(args: argparse.Namespace) -> bool:
    from bench.models.field import spandrel_problem

    return _needs_models(args) and spandrel_problem() is not None


def _smoke(argv: tuple[str, ...], home: Path) -> list[str]:
    """The command as this test runs it: on the smoke profile (run, calibrate, sweep), in ``home``."""
    argv = list(argv)
    options = {}
    if argv[0] in ("run", "calibrate", "sweep", "report"):
        options["--home"] = str(home)
    if argv[0] == "report":
        options["--out"] = str(home / "report-out")
    if argv[0] in ("run", "calibrate", "sweep"):
        options["--profile"] = "smoke"
    for option, value in options.items():
        if option in argv:
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
    return argv


def test_the_readme_has_commands_and_every_listed_one_is_still_there():
    texts = [c.text for c in COMMANDS]
    assert len(texts) >= 15 and any(t.startswith("run ") for t in texts), texts
    stale = [t for t in (*SKIPPED, *NOT_RUN) if t not in texts]
    assert not stale, f"listed here but no longer in README.md: {stale}"
    assert not set(SKIPPED) & set(NOT_RUN)


@pytest.mark.parametrize("command", COMMANDS, ids=[f"L{c.line}:{c.text[:60]}" for c in COMMANDS])
def test_a_readme_command_parses_and_names_what_exists(command, monkeypatch):
    from bench.cli import spec_from_args, sweep_specs, teacher_seeds
    from bench.pipeline import resolve

    args = _parse(command.argv)
    if args.command not in ("run", "calibrate", "sweep"):
        return
    skipped = command.text in SKIPPED
    problems = _plugins_and_sets(args) + _files(args, command.cwd, user_data=skipped)
    assert not problems, f"README line {command.line}: bench {command.text}: " + "; ".join(problems)
    if skipped or _models_missing(args):  # the field's models resolve only where spandrel imports
        return
    # the cells it describes, built and validated as bench would before training anything
    monkeypatch.chdir(command.cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))  # a --teacher module's folder is not left on the path
    args = _parse(_smoke(command.argv, command.cwd / "unused-home"))
    specs = sweep_specs(args) if args.command == "sweep" else [spec_from_args(args, t) for t in teacher_seeds(args)]
    assert specs
    for spec in specs:
        resolve(spec)


def test_cheap_readme_commands_run_on_the_smoke_profile(tmp_path, monkeypatch, capsys):
    from bench.cli import main

    home = tmp_path / "runs"
    done: set[tuple[str, ...]] = set()
    ran = []
    for command in COMMANDS:
        if command.text in SKIPPED or command.text in NOT_RUN:
            continue
        argv = _smoke(command.argv, home)
        if tuple(argv) in done or _models_missing(_parse(argv)):
            continue
        done.add(tuple(argv))
        monkeypatch.chdir(command.cwd)
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse refused it (the parse test names the line too)
            code = exc.code
        out, err = capsys.readouterr()
        assert code == 0, f"README line {command.line}: bench {' '.join(argv)} exited {code}:\n{err[-2000:]}"
        if argv[0] == "run":
            assert f"stored in {home / 'results.sqlite'}" in out, out
        if argv[0] == "report":
            assert re.search(r"report in .*leaderboard\.md", out), out
        ran.append(argv[0])
    # the README's own first steps: cells run, the plugins listed, the report written
    assert {"run", "list", "report"} <= set(ran), ran


def test_the_readme_layouts_table_names_every_layout_for_its_tasks():
    """The "Your datasets as they lie on disk" table lists each known layout once, under the tasks that
    recognise it (``any`` for one every task reads), and its one command reads that layout's task."""
    from bench.layouts import LAYOUTS

    text = README.read_text()
    start = text.index("### Your datasets as they lie on disk")
    rows = [line for line in text[start:].split("\n\n", 3)[2].splitlines() if line.startswith("| ")][1:]
    assert rows, "the layouts table is gone from README.md"
    table = {}
    for row in rows:
        task, layout, *_, command = [cell.strip() for cell in row.strip("|").split("|")]
        name = layout.strip("`")
        assert name not in table, f"layout {name} listed twice"
        table[name] = (task, command.strip("`"))
    assert set(table) == set(LAYOUTS), f"README lists {sorted(table)}, the suite knows {sorted(LAYOUTS)}"
    for name, (task, command) in table.items():
        tasks = LAYOUTS[name].tasks
        assert (task == "any") if not tasks else (task in tasks), f"{name}: README says {task}, layout says {tasks}"
        argv = shlex.split(command)
        assert argv[:2] == ["bench", "run"], command
        assert not tasks or argv[argv.index("--task") + 1] in tasks, f"{name}: {command} runs another task"
        _parse(argv[1:])  # its flags exist


EXAMPLE = ROOT / "examples" / "bench-blur-defense"


def _fenced(text: str, language: str, first_line: str) -> list[str]:
    """The lines of the README's ``language`` block whose first line starts with ``first_line``, that line
    left out."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line == f"```{language}" and lines[i + 1].startswith(first_line):
            end = lines.index("```", i + 1)
            return lines[i + 2:end]
    raise AssertionError(f"README.md has no ```{language} block starting with {first_line!r}")


def test_the_add_a_defense_snippet_is_the_shipped_example():
    """Issue 33, item 8: the README showed ``strength_range = (0.0, 0.8)``, which the example does not set. Its
    snippet is the example's module as shipped (its docstring left out), and its TOML the example's entry
    point, line for line."""
    text = README.read_text()
    source = (EXAMPLE / "bench_blur_defense" / "__init__.py").read_text()
    docstring = ast.parse(source).body[0]
    assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)
    code = source.splitlines()[docstring.end_lineno:]
    while code and not code[0].strip():
        code = code[1:]
    snippet = _fenced(text, "python", "# bench_blur_defense/__init__.py")
    assert snippet == code, ("README.md's add-a-defense snippet differs from "
                             "examples/bench-blur-defense/bench_blur_defense/__init__.py: make them equal")
    toml = _fenced(text, "toml", "# pyproject.toml of your package")
    pyproject = (EXAMPLE / "pyproject.toml").read_text().splitlines()
    start = pyproject.index(toml[0])
    assert pyproject[start:start + len(toml)] == toml, "README.md's entry point differs from the example's pyproject"
