"""The planner and the runner key every stage with the same functions (bench.stages): a tiny smoke sweep
(derain; none, asvp and nasty_teacher, so a defense fit runs; one seed) stores nothing the planner did not
plan, and a second plan of the finished store has nothing left to do."""

from __future__ import annotations

import dataclasses
import json

import torch

from bench.grid import make_grid
from bench.params import parse_sets
from bench.scheduler import plan, run_sweep
from bench.store import Store


def _specs():
    sets = parse_sets(["profile.teacher_steps=4", "profile.student_steps=4"])
    specs = make_grid(tasks="derain", defenses="none,asvp,nasty_teacher", seeds="0", profile="smoke",
                      sets=sets).specs()
    return [dataclasses.replace(s, threads=1, device="cpu") for s in specs]


def test_the_runner_stores_only_what_the_planner_planned(tmp_path):
    specs = _specs()
    planned = plan(specs, Store(tmp_path))
    jobs = {stage: {j.key for j in js} for stage, js in planned.jobs.items()}
    assert jobs["defense fits"], "nasty_teacher's fit is planned"
    planned_keys = set().union(*jobs.values()) | set(planned.cells)

    threads = torch.get_num_threads()
    try:
        result = run_sweep(specs, home=tmp_path, n_jobs=1, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert result.ok, result.failures

    stored_cells = {row["key"] for row in Store(tmp_path).cells()}
    assert stored_cells == set(planned.cells) == jobs["cells"]
    for row in Store(tmp_path).cells():
        assert row["metrics"]["teacher_key"] in jobs["teachers"]

    fit_artifacts = 0
    for folder in (tmp_path / "artifacts").iterdir():
        if folder.name in planned_keys:
            continue
        # what a defense's fit trains is keyed by the defense's own config under the teacher's key
        # (bench.stages.fit_defense): it must hang below a planned teacher, for a cell with a planned fit job
        config = json.loads((folder / "config.json").read_text())["config"]
        assert config.get("teacher") in jobs["teachers"], f"unplanned artifact {folder.name}: {config}"
        fit_artifacts += 1
    assert fit_artifacts >= 1  # the nasty teacher's changed copy
    for stage in ("teachers", "reference students", "ground-truth students"):
        for key in jobs[stage]:
            assert (tmp_path / "artifacts" / key / "model.pt").exists(), f"planned {stage} {key} was not stored"

    again = plan(specs, Store(tmp_path))
    assert set(again.cached) == set(planned.cells) and again.n_jobs == 0


def test_no_import_circle_among_bench_modules():
    """No bench module imports (at module level or inside a function; type-only imports aside) a module that
    imports it back, directly or through others."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    mods = {}
    for p in (root / "bench").rglob("*.py"):
        parts = p.relative_to(root).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p

    def imports(path: Path) -> set[str]:
        out: set[str] = set()

        def visit(node: ast.AST) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.dump(child.test):
                    continue
                if isinstance(child, ast.Import):
                    out.update(a.name for a in child.names)
                elif isinstance(child, ast.ImportFrom) and child.module:
                    out.add(child.module)
                    out.update(f"{child.module}.{a.name}" for a in child.names)
                visit(child)

        visit(ast.parse(path.read_text()))
        return {m for m in out if m in mods and m != "bench"}

    graph = {m: imports(p) - {m} for m, p in mods.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def dfs(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, f"import circle: {' -> '.join(path[path.index(d):] + [d])}"
            if d not in state:
                dfs(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m, [m])
