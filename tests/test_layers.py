"""The import graph, read from the source: the stages import only what lies below them, and no module imports
itself back through others at import time (lazy imports inside functions are allowed to point anywhere down)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mergemix"
ABOVE_THE_STAGES = (
    "mergemix.pipeline",
    "mergemix.cli",
    "mergemix.commands",
    "mergemix.analysis",
    "mergemix.api",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, top_level_only: bool) -> set[str]:
    """The modules `path` imports (`from a import b` counts as a and a.b); with `top_level_only`, those run when it
    is imported: not inside functions, not under `if TYPE_CHECKING`."""
    names: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:  # the package uses absolute imports only
                names.update([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
            elif top_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            elif top_level_only and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
            else:
                visit(ast.iter_child_nodes(node))

    visit(ast.parse(path.read_text()).body)
    return names


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_stages_import_nothing_above_them():
    stages = {n: p for n, p in MODULES.items() if n.startswith("mergemix.stages")}
    assert len(stages) >= 10
    upward = {
        n: sorted(m for m in imported(p, top_level_only=False) if m.startswith(ABOVE_THE_STAGES))
        for n, p in stages.items()
    }
    assert not {n: m for n, m in upward.items() if m}


def test_no_import_cycles_at_import_time():
    graph = {
        n: {m for m in imported(p, top_level_only=True) if m in MODULES and m != n}
        for n, p in MODULES.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles
    assert "mergemix.stages.data" in graph["mergemix.pipeline"]  # the graph is read at all
