"""The code's layout, as the README and tune/search/__init__.py describe it: only the search imports Ray, the
commands that make a submission load neither Ray nor Optuna, and no module of `tune` imports itself in a circle."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBMISSION = ("tune.export", "tune.ensemble", "tune.train", "tune.predict", "tune.score")


def imports(path: Path) -> set[str]:
    """The modules `path` imports, at any depth of its code (a lazy import counts too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_only_the_search_package_imports_ray():
    outside = {module(p): sorted(m for m in imports(p) if m.split(".")[0] == "ray")
               for p in (ROOT / "tune").rglob("*.py") if "search" not in p.relative_to(ROOT / "tune").parts}
    assert {m: found for m, found in outside.items() if found} == {}
    assert any(m.split(".")[0] == "ray" for m in imports(ROOT / "tune" / "search" / "run.py"))  # the test sees it


def test_the_submission_commands_load_neither_ray_nor_optuna():
    code = (f"import sys; import {', '.join(SUBMISSION)}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'optuna'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
    # nor timm, where nothing trains: a model is built when one is loaded (timm's import took 3.4 s of tune
    # predict's 10-s start on a 2-core host)
    code = "import sys, tune.export, tune.ensemble, tune.predict, tune.score; print('timm' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stdout + done.stderr


def test_no_import_cycle_between_the_modules_of_tune():
    """At module level (what Python runs on import); a cycle makes the import order matter."""
    graph = {}
    for path in (ROOT / "tune").rglob("*.py"):
        top = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                top |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                top |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[module(path)] = top
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "open":
            raise AssertionError(" -> ".join([*trail[trail.index(name):], name]))
        if state.get(name) == "done":
            return
        state[name] = "open"
        for dep in sorted(graph[name]):
            visit(dep, [*trail, name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])
