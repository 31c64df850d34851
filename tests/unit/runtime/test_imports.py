"""runtime/ as a package: its modules import each other without cycles.

Every import counts, also the ones inside functions and under ``TYPE_CHECKING``: a module
that needs a name from one that imports it back means a concept sits in the wrong module.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, List, Set

RUNTIME = Path(__file__).resolve().parents[3] / "runtime"


def runtime_imports() -> Dict[str, Set[str]]:
    """module -> the runtime modules it imports anywhere in its source."""
    modules = {p.stem for p in RUNTIME.glob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name in sorted(modules):
        tree = ast.parse((RUNTIME / f"{name}.py").read_text())
        found: Set[str] = set()
        for node in ast.walk(tree):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                parts = t.split(".")
                if parts[0] == "runtime" and len(parts) > 1 and parts[1] in modules:
                    found.add(parts[1])
        graph[name] = found - {name}
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    found: List[List[str]] = []
    done: Set[str] = set()

    def visit(node: str, path: List[str]) -> None:
        if node in path:
            found.append([*path[path.index(node) :], node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return found


def test_runtime_modules_import_each_other_without_cycles() -> None:
    graph = runtime_imports()
    assert "errors" in graph and graph["errors"] == set()
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_drift_reads_the_layout_not_the_release_commands() -> None:
    graph = runtime_imports()
    assert "layout" in graph["drift"] and "release" not in graph["drift"]


def test_no_runtime_module_shadows_a_standard_library_module() -> None:
    # runtime/select.py once did: with runtime/ itself on sys.path (python3 runtime/x.py,
    # a zip's directory) ``import select`` inside subprocess would have found it.
    modules = {p.stem for p in RUNTIME.glob("*.py")} - {"__init__"}
    assert modules & sys.stdlib_module_names == set()
