"""The import rules of docs/DEVELOPING.md, checked from the source: folders, cycles, importlib.

``python -m tests.unit.test_layers`` prints the graph's numbers (modules, import levels,
cycles) and every edge between folders.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# bundler's floor: error kinds, atomic writes and hashing, messages, where shipped trees live.
FLOOR = frozenset({"bundler", "bundler.errors", "bundler.fsio", "bundler.console", "bundler.paths"})
# What each folder of bundler/ may import besides itself and the floor (docs/DEVELOPING.md).
MAY_IMPORT: Mapping[str, frozenset[str]] = {
    "floor": frozenset(),
    "ssh": frozenset(),
    "bundle": frozenset({"ssh"}),
    "sources": frozenset(),
    "engine": frozenset(),
    "project": frozenset({"ssh", "bundle", "sources"}),
    "evidence": frozenset({"ssh", "bundle"}),
    "pipeline": frozenset({"ssh", "bundle", "sources", "project", "engine", "evidence"}),
    "demo": frozenset({"ssh", "bundle", "sources", "project", "engine", "evidence", "pipeline"}),
    "cli": frozenset(
        {"ssh", "bundle", "sources", "project", "engine", "evidence", "pipeline", "demo"}
    ),
    "main": frozenset({"cli"}),  # bundler/__main__.py
}
# The far-side modules bundler/ may use: the bundle format reader (with the typed view of
# the manifest's components), the error kinds and ggml's CPU variant scoring.
RUNTIME_FOR_BUNDLER = frozenset(
    {"runtime.bundle", "runtime.unpack", "runtime.components", "runtime.errors", "runtime.variants"}
)


@dataclass(frozen=True)
class Graph:
    modules: Mapping[str, Path]
    edges: Mapping[str, frozenset[str]]
    hidden: tuple[str, ...]  # importlib.import_module / __import__ calls


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def load_graph(tops: Iterable[str] = ("bundler", "runtime")) -> Graph:
    """Every module under ``tops`` and the project modules each one imports (any depth)."""
    modules = {
        module_name(p): p
        for top in tops
        for p in sorted((REPO / top).rglob("*.py"))
        if "__pycache__" not in p.parts
    }
    edges: dict[str, frozenset[str]] = {}
    hidden: list[str] = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([base] if base else [])])
                # ``from pkg import mod`` imports the module; ``from mod import name`` the module
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            elif isinstance(node, ast.Call):
                func = node.func
                called = getattr(func, "attr", getattr(func, "id", ""))
                if called in ("import_module", "__import__"):
                    hidden.append(f"{path.relative_to(REPO)}:{node.lineno}")
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != name:
                    found.add(resolved)
        edges[name] = frozenset(found)
    return Graph(modules=modules, edges=edges, hidden=tuple(hidden))


def _resolve(target: str, modules: Mapping[str, Path]) -> str | None:
    """The module ``target`` names (``from a import b`` may name a module or a name in ``a``)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def folder(module: str) -> str:
    """The folder a bundler module belongs to (``floor`` for the floor modules)."""
    if module in FLOOR:
        return "floor"
    if module == "bundler.__main__":
        return "main"
    parts = module.split(".")
    # bundler/derivation.py (models made at build time) is a step of the pipeline
    return "pipeline" if parts[1] in ("pipeline", "derivation") else parts[1]


def cycles(edges: Mapping[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def levels(edges: Mapping[str, frozenset[str]]) -> int:
    """Import levels: modules on the longest import chain (a module importing nothing is 1)."""
    depth: dict[str, int] = {}

    def level(v: str, seen: frozenset[str]) -> int:
        if v not in depth:
            below = [level(w, seen | {v}) for w in edges.get(v, ()) if w not in seen]
            depth[v] = 1 + max(below, default=0)
        return depth[v]

    return max((level(v, frozenset()) for v in edges), default=0)


def rule_breaks(graph: Graph) -> list[str]:
    """Every import that breaks the folder rules, as ``importer -> imported: why``."""
    out = []
    for name, targets in sorted(graph.edges.items()):
        for target in sorted(targets):
            why = _why_not(name, target)
            if why:
                out.append(f"{name} -> {target}: {why}")
    return out


def _why_not(name: str, target: str) -> str | None:
    if name.startswith("runtime"):
        if not target.startswith("runtime"):
            return "runtime/ runs on the hosts and imports nothing from bundler/"
        return None
    if target.startswith("runtime"):
        if target not in RUNTIME_FOR_BUNDLER:
            return "bundler/ takes from runtime/ only " + ", ".join(sorted(RUNTIME_FOR_BUNDLER))
        return None
    src, dst = folder(name), folder(target)
    if dst in ("floor", src) or dst in MAY_IMPORT[src]:
        return None
    allowed = ", ".join(sorted(MAY_IMPORT[src] | {"floor"}))
    return f"{src}/ may import only {allowed}"


@pytest.fixture(scope="module")
def graph() -> Graph:
    return load_graph()


def test_every_bundler_module_is_in_a_known_folder(graph: Graph) -> None:
    unknown = sorted(
        m for m in graph.modules if m.startswith("bundler") and folder(m) not in MAY_IMPORT
    )
    assert unknown == [], "add the folder to MAY_IMPORT and to docs/DEVELOPING.md"


def test_no_import_cycles(graph: Graph) -> None:
    assert cycles(graph.edges) == []


def test_no_hidden_imports(graph: Graph) -> None:
    assert graph.hidden == (), "import modules with import statements, not importlib"


def test_imports_follow_the_folder_rules(graph: Graph) -> None:
    assert rule_breaks(graph) == []


def test_drift_reads_the_layout_not_the_release_commands(graph: Graph) -> None:
    assert "runtime.layout" in graph.edges["runtime.drift"]
    assert "runtime.release" not in graph.edges["runtime.drift"]


def test_no_module_shadows_a_standard_library_module(graph: Graph) -> None:
    # runtime/select.py once did: with runtime/ itself on sys.path (python3 runtime/x.py, a
    # zip's directory) ``import select`` inside subprocess would have found it.
    leaves = {m.rpartition(".")[2] for m in graph.modules} - {"__init__", "__main__"}
    assert leaves & sys.stdlib_module_names == set()


def test_the_checker_sees_a_cycle_and_a_rule_break() -> None:
    edges = {
        "bundler.bundle.pack": frozenset({"bundler.bundle.cosign"}),
        "bundler.bundle.cosign": frozenset({"bundler.bundle.pack"}),
        "bundler.ssh.trust": frozenset(),
    }
    assert cycles(edges) == [["bundler.bundle.cosign", "bundler.bundle.pack"]]
    assert levels({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset()}) == 3
    assert _why_not("bundler.ssh.trust", "bundler.bundle.pack") == "ssh/ may import only floor"
    assert _why_not("bundler.bundle.verify", "runtime.selection") is not None
    assert _why_not("runtime.unpack", "bundler.fsio") is not None
    assert _why_not("bundler.pipeline", "bundler.engine.llamacpp") is None


def _print_report() -> None:
    graph = load_graph()
    found = cycles(graph.edges)
    bundler = {m: e for m, e in graph.edges.items() if m.startswith("bundler")}
    runtime = {m: e for m, e in graph.edges.items() if m.startswith("runtime")}
    print(
        f"modules={len(graph.modules)} levels={levels(graph.edges)} "
        f"(bundler {levels(bundler)}, runtime {levels(runtime)}) cycles={len(found)} "
        f"hidden={len(graph.hidden)} rule_breaks={len(rule_breaks(graph))}"
    )
    for component in found:
        print("cycle:", " ".join(component))
    between: dict[tuple[str, str], int] = {}
    for name, targets in bundler.items():
        for t in targets:
            key = (folder(name), folder(t) if t.startswith("bundler") else t)
            if key[0] != key[1]:
                between[key] = between.get(key, 0) + 1
    for (src, dst), n in sorted(between.items()):
        print(f"  {src} -> {dst} ({n})")


if __name__ == "__main__":
    _print_report()
    sys.exit(0)
