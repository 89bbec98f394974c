"""bench: compare defenses against knowledge-distillation attacks on image restoration models.

Every user error is one line on stderr and a non-zero exit (2), never a traceback; ``--debug``
(or ``BENCH_DEBUG=1``) shows the traceback for bug reports.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import BenchError


class DefaultsOnceFormatter(argparse.HelpFormatter):
    """Shows an option's default once: appended as ``(default: X)`` where its help does not already say
    it in its own words (``default none``, ``auto (default: CUDA where ...)``), and not at all where there
    is nothing to say (no value, a flag that is off, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or default is None or default is argparse.SUPPRESS or default is False
                or default == [] or action.required):
            return text
        return f"{text} (default: %(default)s)"


def _common_cell_args(p: argparse.ArgumentParser, *, calibrating: bool = False) -> None:
    p.add_argument("--task", required=True, help="task name (bench list tasks)")
    p.add_argument("--defense", default="none", help="defense name (bench list defenses); default none")
    p.add_argument("--attack", default="vanilla_kd", help="attack name (bench list attacks)")
    p.add_argument("--profile", default="quick", help="smoke, quick (default) or paper")
    p.add_argument("--seed", type=int, default=0, help="cell seed: students, data order, defense randomness")
    p.add_argument("--teacher-seed", "--teacher-seeds", dest="teacher_seeds", default="0", metavar="SEEDS",
                   help="teacher seed(s): 0 (default), 0,1 or 0-1; bench run runs one cell per teacher seed")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="GROUP.KEY=VALUE",
                   help="override a parameter, e.g. --set defense.h=1.5 --set attack.steps=200 (repeatable)")
    _data_args(p)
    p.add_argument("--teacher", metavar="ARCH|PACKAGE.MODULE:FACTORY",
                   help="the teacher: an architecture of the field (bench list models: nafnet-w16, swinir-light, ...) "
                        "or your own, FACTORY() returning the nn.Module (default: the reference teacher)")
    p.add_argument("--weights", metavar="FILE",
                   help="the teacher's state dict, used as is: for --teacher, or alone a checkpoint whose "
                        "architecture spandrel detects (without it the suite trains the teacher)")
    p.add_argument("--student", metavar="ARCH|PACKAGE.MODULE:FACTORY",
                   help="the attacker's student architecture, named as --teacher (default: the reference student)")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto (default: CUDA where available, else CPU), cpu, cuda or cuda:N; part of every "
                        "result's key (a GPU's numbers are not a CPU's)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="torch threads (default: every core); part of every trained model's key, since thread "
                        "counts change trained models; a parallel sweep trains with 1 per job")
    p.add_argument("--home", help="store location (default $BENCH_HOME or ./runs)")
    p.add_argument("--force", action="store_true", help="recompute even if cached")
    if calibrating:
        # required, but checked in cmd_calibrate: one line of error, not argparse's usage block
        p.add_argument("--budget", type=float, metavar="DB",
                       help="required: the teacher cost to calibrate to; the strength whose served teacher loses "
                            "DB dB PSNR on the calib split is found and stored")
    else:
        p.add_argument("--budget", type=float, metavar="DB",
                       help="run the defense at the strength that costs the teacher DB dB PSNR on the calib split "
                            "(stored calibration, calibrated first if there is none); default: as set")


def _data_args(p: argparse.ArgumentParser) -> None:
    """The flags naming data read from disk (bench.layouts): the same on run, calibrate and sweep."""
    p.add_argument("--data", metavar="DIR",
                   help="a dataset as it lies on disk, read instead of the bundled photographs: each task's standard "
                        "layouts (Rain100, LOL, UIEB, RESIDE, DIV2K, ...: bench list layouts), or DIR/input + "
                        "DIR/target (--task folder)")
    p.add_argument("--layout", metavar="NAME", help="the layout of --data (default: recognised from the tree)")
    p.add_argument("--input", metavar="DIR", help="degraded images paired by file name with --target (instead of "
                                                  "--data)")
    p.add_argument("--target", metavar="DIR", help="clean images paired by file name with --input")
    p.add_argument("--split-file", metavar="FILE",
                   help="NAME POOL lines (POOL: train, test, owner, attacker, calib) choosing the data's pools")
    p.add_argument("--scene-pattern", metavar="REGEX",
                   help="names a pair's scene from its file name (group 'scene', or the first group): a scene's "
                        "pairs stay in one pool")


def _data_sets(args: argparse.Namespace) -> dict[str, str]:
    """The data flags given, as task parameters (--split-file -> split_file)."""
    names = ("data", "layout", "input", "target", "split_file", "scene_pattern")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _home(args: argparse.Namespace) -> Path:
    from bench.store import default_home

    return Path(args.home) if getattr(args, "home", None) else default_home()


def teacher_seeds(args: argparse.Namespace) -> list[int]:
    from bench.grid import parse_seeds

    return parse_seeds(args.teacher_seeds, "--teacher-seeds")


def spec_from_args(args: argparse.Namespace, teacher_seed: int | None = None) -> Any:
    """The cell the flags describe (with the first of ``--teacher-seeds`` unless ``teacher_seed`` is given)."""
    from bench.numerics import resolve_device
    from bench.params import parse_sets
    from bench.pipeline import CellSpec

    if teacher_seed is None:
        teacher_seed = teacher_seeds(args)[0]
    groups = parse_sets(args.sets)
    task_params = dict(groups.get("task", {}))
    task_params.update(_data_sets(args))
    return CellSpec(task=args.task, defense=args.defense, attack=args.attack, seed=args.seed,
                    profile=args.profile, task_params=task_params,
                    defense_params=groups.get("defense", {}), attack_params=groups.get("attack", {}),
                    profile_params=groups.get("profile", {}), teacher_seed=teacher_seed,
                    teacher=getattr(args, "teacher", None), weights=getattr(args, "weights", None),
                    student=getattr(args, "student", None), budget_db=args.budget,
                    device=resolve_device(args.device), threads=_threads(args))


def _threads(args: argparse.Namespace) -> int:
    """``--threads N``: applied to this process now, since the cell's key says it ran with N."""
    import torch

    n = int(getattr(args, "threads", 0) or 0)
    if n < 0:
        raise BenchError(f"--threads must be >= 1 (or 0: every core), got {n}.")
    if n:
        torch.set_num_threads(n)
    return n


def _task_scale(row: dict[str, Any]) -> int:
    """The super-resolution scale of a row's task (its input is shown upsampled, bicubic, when > 1): from the
    task's identity in the row's config, else from the task as registered with its default parameters."""
    params = (((row.get("config") or {}).get("task") or {}).get("params")) or {}
    if "scale" in params:
        return int(params["scale"])
    try:
        from bench.params import build
        from bench.registry import TASKS

        cls = TASKS.get(row["task"])
        return int(cls(build(cls.Params, {}, owner=f"task '{row['task']}'"), profile=None).scale)
    except Exception:  # noqa: BLE001 - a label only: a task that cannot be built shows its input as degraded
        return 1


def format_cell(row: dict[str, Any], *, has_sets: bool = False) -> str:
    """One cell's result as ``bench run`` prints it: scores, drops, notes, and a remark on any result that
    looks wrong and is not (:mod:`bench.remarks`); ``has_sets``: the run had --set flags (named in a hint)."""
    from tabulate import tabulate

    from bench.calibrate import transfer_warning
    from bench.remarks import cell_remarks

    m = row["metrics"]
    rows = [
        ("input (bicubic)" if _task_scale(row) > 1 else "input (degraded)", m["input_psnr"], m["input_ssim"]),
        ("teacher", m["teacher_psnr"], m["teacher_ssim"]),
        ("served teacher", m["served_psnr"], m["served_ssim"]),
        ("student (undefended)", m["student_ref_psnr"], m["student_ref_ssim"]),
        ("student (defended)", m["student_psnr"], m["student_ssim"]),
    ]
    if "student_gt_psnr" in m:  # the attack trained on the attacker pool's ground truth
        rows.append(("student (ground truth)", m["student_gt_psnr"], m["student_gt_ssim"]))
    teacher_seed = (row.get("config") or {}).get("teacher_seed", 0)
    head = (f"{row['task']} · {row['defense']} · {row['attack']} · profile {row['profile']} · "
            f"seed {row['seed']} · teacher seed {teacher_seed}")
    table = tabulate(rows, headers=("", "PSNR (dB)", "SSIM"), floatfmt=(".2f", ".2f", ".4f"))
    drops = tabulate([("teacher_drop_db", f"{m['teacher_drop_db']:.3f}"),
                      *([("attacker_query_drop_db", f"{m['attacker_query_drop_db']:.3f}  (the attacker's queries)")]
                        if "attacker_query_drop_db" in m else []),
                      *([("worst_teacher_drop_db", f"{m['worst_teacher_drop_db']:.3f}  (the worst test image)"),
                         ("served_fidelity_db", f"{m['served_fidelity_db']:.2f}  (served vs teacher answers, PSNR)")]
                        if "worst_teacher_drop_db" in m else []),
                      ("student_drop_db", f"{m['student_drop_db']:.3f}"),
                      ("student_ssim_drop_pct", f"{m['student_ssim_drop_pct']:.2f}")],
                     tablefmt="plain")
    trace = ""
    if "trace_z" in m:  # a defense that marks its answers: is the stolen student traced, are clean ones not?
        from bench.api import TRACE_ALPHA

        clean = ", ".join(f"{name} z {m[f'trace_z{who}']:.1f} (p {m[f'trace_p{who}']:.2g})"
                          for who, name in (("_ref", "reference"), ("_gt", "ground truth")) if f"trace_z{who}" in m)
        trace = (f"\n\ntraced: {'yes' if m['traced'] else 'no'} at {TRACE_ALPHA:.0%} false-positive rate: stolen "
                 f"student z {m['trace_z']:.1f} (p {m['trace_p']:.2g})"
                 + (f"; clean students {clean}" if clean else ""))
    notes = [f"queries used {m['queries_used']}", f"channels touched: {m['channels']}"]
    for role in ("teacher", "student"):
        user = row.get("config", {}).get(f"{role}_model")
        if user:
            weights = f", weights {user['weights']}" if user.get("weights") else ""
            family = f"{user['architecture']}, " if user.get("architecture") else ""  # the field's (spandrel)
            head += f"\n{role} {user['factory']} ({family}architecture {user['arch']}{weights})"
    if row.get("cached"):
        notes.append("result from the store (use --force to recompute)")
    else:
        notes.append(f"wall {row['wall_s']:.1f} s")
        if (row.get("config", {}).get("teacher_model") or {}).get("weights"):
            notes.append("teacher from --weights")
        else:
            notes.append("teacher cached" if m.get("teacher_cached") else f"teacher trained in {m['teacher_s']:.1f} s")
    if m.get("strength_param"):
        notes.append(f"budget {row['budget']:g} dB: {m['strength_param']} = {m['strength']:.4g} "
                     f"(costs {m['calib_drop_db']:.3f} dB on calib)")
    if m.get("answer_bits"):
        notes.append(f"answers served as {m['answer_bits']}-bit images")
    if m.get("strength_param"):
        warning = transfer_warning(float(row["budget"]), float(m["teacher_drop_db"]))
        if warning:
            print(f"warning: {row['task']} · {row['defense']}: {warning}", file=sys.stderr)
    if m.get("student_shortcut"):
        notes.append("answers unchanged for this attack: defended student = reference student")
    remarks = "".join(f"\nremark: {r}" for r in cell_remarks(m, task=row["task"], defense=row["defense"],
                                                              profile=row["profile"], has_sets=has_sets))
    return f"{head}\n\n{table}\n\n{drops}{trace}\n\n" + " · ".join(notes) + remarks + f"\nkey {row['key']}"


def cmd_run(args: argparse.Namespace) -> int:
    from bench.pipeline import resolve, run_cell

    cells = [resolve(spec_from_args(args, t)) for t in teacher_seeds(args)]  # all validated before any runs
    for i, cell in enumerate(cells):
        row = run_cell(cell, home=_home(args), force=args.force, progress=True)
        print(("\n" if i else "") + format_cell(row, has_sets=bool(args.sets))
              + f"\nstored in {_home(args) / 'results.sqlite'} (bench report --home {_home(args)} for tables "
              "and plots)")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from bench.cache import Artifacts
    from bench.calibrate import calibrate, default_tol
    from bench.numerics import on_device
    from bench.pipeline import get_teacher, resolve
    from bench.store import Store

    if args.budget is None:
        raise BenchError("bench calibrate needs --budget DB (the teacher cost to calibrate to, in dB).")
    if args.tol is not None and not 0 < args.tol:
        raise BenchError(f"--tol must be > 0 dB, got {args.tol}.")
    cell = resolve(spec_from_args(args))
    store = Store(_home(args))
    artifacts = Artifacts(store.home)
    with on_device(cell.spec.device, precision=cell.profile.precision):
        teacher, teacher_key, _ = get_teacher(cell.task, cell.profile, cell.spec.teacher_seed, artifacts,
                                              numerics_=cell.teacher_numerics, progress=True,
                                              user_model=cell.teacher_model)
        cal = calibrate(cell, teacher, teacher_key, artifacts, store, progress=True, force=args.force,
                        tol=args.tol)
    print(f"{cell.task.name} · " + cal.describe(cell.defense.name))
    tol = default_tol(cal.budget_db) if args.tol is None else args.tol
    if abs(cal.achieved_db - cal.budget_db) > tol:
        print(f"warning: not within {tol:g} dB of the budget after {cal.evaluations} evaluations",
              file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from bench.layouts import describe_data_params, describe_layouts
    from bench.params import describe, type_name
    from bench.registry import REGISTRIES

    kinds = [args.kind] if args.kind else [*REGISTRIES, "layouts", "profiles", "models"]
    out = []
    for kind in kinds:
        if kind == "models":  # parameter counts build every preset: only when asked for by name
            from bench.models.field import listing

            out += [*listing(counts=bool(args.kind)), ""]
            continue
        if kind == "profiles":
            out += _profiles_listing()
            continue
        if kind == "layouts":
            out += describe_layouts()
            continue
        reg = REGISTRIES[kind]
        out.append(f"{kind}:")
        for info in reg.survey():
            if isinstance(info, tuple):  # broken: listed as such, the others still listed
                out.append(f"  {info[0]}  [BROKEN]  {info[1]}")
                continue
            extra = []
            if getattr(info.cls, "access", None) and kind == "attacks":
                extra.append(f"access: {info.cls.access}")
            if kind == "defenses" and getattr(info.cls, "strength", None):
                extra.append(f"strength: {info.cls.strength}")
            doc = (info.cls.__doc__ or sys.modules[info.cls.__module__].__doc__ or "").strip()
            first = doc.splitlines()[0] if doc else ""
            out.append(f"  {info.name}  [{info.origin}]" + (f"  ({'; '.join(extra)})" if extra else "")
                       + (f"  {first}" if first else ""))
            fields = describe(info.cls.Params)
            if fields:
                rows = [(f.name, type_name(f.type) if f.choices is None else "one of " + "|".join(map(str, f.choices)),
                         repr(f.default), f.doc) for f in fields]
                table = tabulate(rows, tablefmt="plain")
                out.extend("      " + line for line in table.splitlines())
        if kind == "tasks":
            out += describe_data_params()
        out.append("")
    print("\n".join(out).rstrip())
    return 0


def _profiles_listing() -> list[str]:
    """Every profile with every field's value, and each field's meaning (one table)."""
    from tabulate import tabulate

    from bench.params import describe
    from bench.profiles import PROFILES, Profile

    names = list(PROFILES)
    rows = [(f.name, *[repr(getattr(PROFILES[n], f.name)) for n in names], f.doc)
            for f in describe(Profile) if f.name != "name"]
    table = tabulate(rows, headers=("field", *names, "meaning"), tablefmt="plain")
    return ["profiles:  (quick is the default; change a field with --set profile.FIELD=VALUE)",
            *("  " + line for line in table.splitlines()), ""]


def sweep_specs(args: argparse.Namespace) -> list[Any]:
    """The cells (``CellSpec``) that ``bench sweep`` with these flags would run, in grid order; checks the
    grid's size, trains nothing."""
    import dataclasses

    from bench.grid import MAX_CELLS, load_file, make_grid
    from bench.numerics import resolve_device
    from bench.params import parse_sets

    sets = parse_sets(args.sets)
    if _data_sets(args):
        sets.setdefault("task", {}).update(_data_sets(args))
    grid = make_grid(load_file(args.grid) if args.grid else None, tasks=args.tasks, defenses=args.defenses,
                     attacks=args.attacks, seeds=args.seeds, budgets=args.budgets, profile=args.profile,
                     teacher_seeds=args.teacher_seeds, sets=sets, teacher=args.teacher, weights=args.weights,
                     student=args.student)
    grid.check_size(args.max_cells or MAX_CELLS)
    device = resolve_device(args.device)
    return [dataclasses.replace(s, device=device) for s in grid.specs()]


def sweep_timeout(args: argparse.Namespace) -> float | None:
    """The job time limit: --job-timeout, else the grid file's job_timeout, else the scheduler's default."""
    from bench.grid import load_file, parse_timeout
    from bench.scheduler import DEFAULT_JOB_TIMEOUT_S

    given = parse_timeout(args.job_timeout, "--job-timeout")
    if given is None and args.grid:
        given = parse_timeout(load_file(args.grid).get("job_timeout"), "job_timeout")
    return DEFAULT_JOB_TIMEOUT_S if given is None else given


def _strength_of(defense: str) -> str | None:
    from bench.registry import DEFENSES

    return DEFENSES.get(defense).strength


def cmd_sweep(args: argparse.Namespace) -> int:
    from bench.scheduler import format_summary, run_sweep

    specs = sweep_specs(args)
    def sweep(cells: list[Any], force: bool) -> Any:
        return run_sweep(cells, home=_home(args), n_jobs=args.n_jobs, backend=args.backend, address=args.address,
                         force=force, progress=True, jobs_per_gpu=args.jobs_per_gpu,
                         job_timeout_s=sweep_timeout(args), skip_done=args.skip_done or ())

    if args.refine < 0:
        raise BenchError(f"--refine must be a number of rounds >= 0, got {args.refine}.")
    result = sweep(specs, args.force)
    for round_ in range(1, args.refine + 1):
        from bench.refine import proposals

        added = proposals(result)
        if not added:
            print(f"refine: no reading crosses a wide bracket after round {round_ - 1}; done", file=sys.stderr)
            break
        values = sorted({f"{s.defense}.{k}={v:g}" for s in added for k, v in s.defense_params.items()
                         if k == _strength_of(s.defense)})
        print(f"refine round {round_}: {len(added)} cells at {', '.join(values)}", file=sys.stderr)
        specs = specs + added
        result = sweep(specs, False)  # finished cells are cached: only the new strengths run
    print(format_summary(result))
    return 0 if result.ok else 1


def cmd_report(args: argparse.Namespace) -> int:
    from reports import build_report, parse_formats

    formats = parse_formats(args.format)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks else None
    if args.cells and args.home:
        raise BenchError("bench report reads one source: --home DIR (a store) or --cells FILE (reports' cells.csv, "
                         "repeatable); --grid picks one grid's cells from either.")
    home = None if args.cells else _home(args)
    report = build_report(home, args.out, formats, progress=True, tasks=tasks, grid=args.grid,
                          csv_files=args.cells or ())
    for message in report.messages:
        print(f"note: {message}", file=sys.stderr)
    print(f"report in {report.out}: " + ", ".join(str(p.relative_to(report.out)) for p in report.files))
    return 0


def cmd_verdict(args: argparse.Namespace) -> int:
    from bench.cache import atomic_write_bytes
    from reports.build import only_tasks
    from reports.verdict import load_cells, replace_section, verdict_markdown

    cells, source = load_cells(args.home, args.cells, grid=args.grid)
    if args.tasks:
        cells = only_tasks(cells, tuple(t.strip() for t in args.tasks.split(",") if t.strip()))
    text = verdict_markdown(cells, source=source)
    if args.out:
        atomic_write_bytes(Path(args.out), ("# The claims, per task\n\n" + text).encode())
        Path(args.out).chmod(0o644)  # the atomic temporary file is private; a verdict is for sharing
    if args.readme:
        path = Path(args.readme)
        try:
            old, mode = path.read_text(), path.stat().st_mode
        except OSError as exc:
            raise BenchError(f"--readme {path}: {exc.strerror}; pass the README to update.") from None
        atomic_write_bytes(path, replace_section(old, text, str(path)).encode())
        path.chmod(mode)
        print(f"verdict written into {path}", file=sys.stderr)
    print(text, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="run one cell: teacher, defense, attack, scores",
                       description="Run one cell of the benchmark: train (or load) the task's teacher, serve it "
                                   "behind the defense, let the attack steal a student from it, and score teacher "
                                   "and students on the test split. The result is stored (--home) and printed.",
                       formatter_class=DefaultsOnceFormatter)
    _common_cell_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="run a grid of cells in stages, in parallel, resuming from the store",
                       description="Run every cell of a grid (flags, or a YAML grid file: see grids/). "
                                   "Finished cells are skipped; a failed cell is stored with its error and the "
                                   "sweep goes on (exit 1 lists them).",
                       formatter_class=DefaultsOnceFormatter)
    p.add_argument("grid", nargs="?", help="YAML grid file (flags given here replace its axes)")
    p.add_argument("--tasks", help="comma-separated task names, or all (default: all)")
    p.add_argument("--defenses", help="comma-separated defense names, or all (default: all)")
    p.add_argument("--attacks", help="comma-separated attack names, or all (default: vanilla_kd)")
    p.add_argument("--seeds", help="cell seeds: 0,1,2 or 0-4 or all (= 0,1,2); default 0")
    p.add_argument("--budgets", help="calibrated teacher costs in dB: 0.1,0.5 or all (= 0.1,0.5,1.0); "
                                     "none: the strength as set (default)")
    p.add_argument("--profile", help="smoke, quick (default) or paper")
    p.add_argument("--teacher-seeds", "--teacher-seed", dest="teacher_seeds", metavar="SEEDS",
                   help="teacher seeds: 0 (default), 0,1 or 0-1; intervals then span (teacher, student) seed pairs")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="GROUP.KEY=VALUE",
                   help="set a parameter of every plugin on that axis that has it, e.g. --set defense.h=2 "
                        "(repeatable)")
    _data_args(p)
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto (default: CUDA where available, else CPU), cpu, cuda or cuda:N; part of every "
                        "result's key (a GPU's numbers are not a CPU's)")
    p.add_argument("--teacher", metavar="ARCH|PACKAGE.MODULE:FACTORY",
                   help="the teacher of every cell: an architecture of the field (bench list models) or your own, "
                        "FACTORY() returning the nn.Module (default: the reference)")
    p.add_argument("--weights", metavar="FILE", help="the teacher's state dict, used as is: for --teacher, or alone "
                                                     "a checkpoint whose architecture spandrel detects (without it "
                                                     "the suite trains the teacher, per task and teacher seed)")
    p.add_argument("--student", metavar="ARCH|PACKAGE.MODULE:FACTORY",
                   help="the attackers' student architecture for every cell, named as --teacher (default: the "
                        "reference student)")
    p.add_argument("--n-jobs", type=int, default=1, help="parallel workers on the CPU (default 1; -1: every core)")
    p.add_argument("--skip-done", metavar="FILE", action="append",
                   help="a committed report's cells.csv: its done cells (of the current code) are not run again, "
                        "so a grid can be run slice by slice across sessions whose stores do not survive "
                        "(repeatable; report the slices together with bench report --cells)")
    p.add_argument("--refine", type=int, default=0, metavar="ROUNDS",
                   help="after the sweep, add strengths where a curve's reading at a matched cost crosses a wide "
                        "bracket (reports.matched.wide_gap), up to ROUNDS rounds of at most 2 per defense (default 0)")
    p.add_argument("--job-timeout", type=float, metavar="SECONDS",
                   help="seconds one job (a teacher, a student, a cell) may run before it fails with that reason and "
                        "the sweep goes on (default: the grid file's job_timeout, else 12 h; 0: no limit)")
    p.add_argument("--max-cells", type=int, metavar="N",
                   help="refuse grids of more than N cells (default 20000: a guard against typos in ranges)")
    p.add_argument("--jobs-per-gpu", type=int, metavar="K",
                   help="on a CUDA device: K workers share each GPU (default 4), each pinned to its GPU")
    p.add_argument("--backend", default="loky", choices=["loky", "dask"], help="loky (default) or dask")
    p.add_argument("--address", help="dask scheduler (tcp://HOST:PORT); default: a local cluster of --n-jobs")
    p.add_argument("--home", help="store location (default $BENCH_HOME or ./runs); shared by all workers")
    p.add_argument("--force", action="store_true", help="recompute every cell, teacher and student once")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("calibrate", help="find and store the defense strength that costs the teacher "
                                         "--budget dB on the calib split",
                       description="Find the strength of the defense at which the served teacher loses --budget dB "
                                   "PSNR on the calib split (a search that does not assume the cost is monotone), "
                                   "and store it for bench run/sweep --budget.",
                       formatter_class=DefaultsOnceFormatter)
    _common_cell_args(p, calibrating=True)
    p.add_argument("--tol", type=float, metavar="DB",
                   help="stop when the cost is this close to the budget (default: 0.02 dB or a tenth of the "
                        "budget, whichever is smaller)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("list", help="list plugins with their parameters, the profiles, or the models",
                       description="List the installed plugins (defenses, attacks, tasks) with their origin and "
                                   "parameters, the profiles with every field (override with --set profile.F=V), or "
                                   "the field's architectures for --teacher / --student (models).",
                       formatter_class=DefaultsOnceFormatter)
    p.add_argument("kind", nargs="?", choices=["defenses", "attacks", "tasks", "layouts", "profiles", "models"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("report", help="leaderboards, plots and an HTML page from the store",
                       description="Write the leaderboards (Markdown, LaTeX), cells.csv, plots (PNG, PDF, SVG) and "
                                   "an HTML page from the finished cells of a store.",
                       formatter_class=DefaultsOnceFormatter)
    p.add_argument("--home", help="store location (default $BENCH_HOME or ./runs)")
    p.add_argument("--out", help="output folder (default HOME/report)")
    p.add_argument("--format", help="comma-separated subset of md,latex,csv,plots,html (default: all)")
    p.add_argument("--tasks", help="comma-separated tasks to report (default: every task in the store), e.g. the "
                                   "finished part of a grid that is still running")
    p.add_argument("--grid", metavar="FILE", help="only the cells of this grid file (a store that serves several "
                                                  "grids, e.g. runs/claims-v3, reports one of them; with "
                                                  "--cells, the rows of those files this grid names); What is "
                                                  "missing then lists the grid's cells that have no result")
    p.add_argument("--cells", metavar="FILE", action="append",
                   help="committed reports' cells.csv instead of a store (repeat it: a grid committed in slices, "
                        "one per session, reads as one table); needs --out; no visual grids (no sample images)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("verdict", help="the ASVP paper's claims judged per task (README section, verdict.md)",
                       description="Judge the ASVP paper's four claims per task from a store or a report's cells.csv, "
                                   "with the leaderboard's own test, family and baseline, and print the verdict as "
                                   "Markdown; --readme FILE rewrites FILE's section between the verdict markers.",
                       formatter_class=DefaultsOnceFormatter)
    p.add_argument("--home", help="a store (a claims grid's)")
    p.add_argument("--cells", metavar="FILE", action="append",
                   help="a report's cells.csv instead of a store, e.g. docs/results/claims-v2/cells.csv; repeat it "
                        "to read several as one table (a grid committed in slices)")
    p.add_argument("--tasks", help="comma-separated tasks (default: every task)")
    p.add_argument("--grid", metavar="FILE", help="only the cells of this grid file (of a store, or of the --cells "
                                                  "files: a file holding another grid's cells too gives only these)")
    p.add_argument("--out", metavar="FILE", help="also write the verdict to FILE (e.g. a report's verdict.md)")
    p.add_argument("--readme", metavar="FILE", help="rewrite FILE's generated section (between '<!-- bench verdict: "
                                                    "start -->' and '<!-- bench verdict: end -->')")
    p.set_defaults(func=cmd_verdict)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler or ``kill`` stopping the run): handled like Ctrl-C."""


def _stop_on_sigterm() -> None:
    import signal
    import threading

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from bench.allocator import keep_freed_memory

    keep_freed_memory()  # CPU forwards stop page-faulting (only speed changes; see bench/allocator.py)
    debug = args.debug or os.environ.get("BENCH_DEBUG") == "1"
    func: Callable[[argparse.Namespace], int] = args.func
    start = time.time()
    _stop_on_sigterm()
    try:
        return func(args)
    except BrokenPipeError:  # the reader went away (bench list | head): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except BenchError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        how = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"\n{how} after {time.time() - start:.0f} s; finished results are kept in the store "
              "and a re-run continues from them.", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except MemoryError as exc:
        if debug:
            raise
        print(f"error: out of memory{': ' + str(exc) if str(exc) else ''}; run fewer jobs at once (--n-jobs), a "
              "smaller profile, or smaller images.", file=sys.stderr)
        return 1
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        print(f"error: {type(exc).__name__}: {msg} (re-run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
