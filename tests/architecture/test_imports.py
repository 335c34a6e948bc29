"""sisa's modules import one way: no cycles, and no layer reaches up to a layer above it.

Imports inside functions count too: a lazy import that closes a cycle is still a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sisa"

# Bottom to top; a module may import only from its own layer or the layers below.
LAYERS = [
    {"sisa", "sisa.errors", "sisa.registry", "sisa.faults", "sisa.ids", "sisa.settings", "sisa.models",
     "sisa.aggregation"},
    {"sisa.workspace"},
    {"sisa.data"},
    {"sisa.training"},
    {"sisa.ops"},
    {"sisa.research", "sisa.estimator"},
    {"sisa.serve"},
    {"sisa.cli", "sisa.__main__"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every sisa module that ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "sisa"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sisa":
            for a in node.names:  # `from sisa.ops import delete` imports the module sisa.ops.delete
                child = f"{node.module}.{a.name}"
                found.add(child if (PACKAGE.parent / (child.replace(".", "/") + ".py")).exists() else node.module)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(p) if m in modules and m != name} for name, p in modules.items()}


def layer(module: str) -> int:
    for i, members in enumerate(LAYERS):
        if module in members or any(module.startswith(m + ".") for m in members if m != "sisa"):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    edges = graph()
    assert len(edges) > 30
    assert find_cycle(edges) == []


def test_imports_go_down_the_layers():
    # The package's __init__ re-exports lazily, by name, from above; that is its job.
    upward = sorted(f"{a} imports {b}" for a, targets in graph().items() for b in targets
                    if a != "sisa" and layer(b) > layer(a))
    assert upward == []


def test_every_module_has_a_layer():
    for name in graph():
        layer(name)


@pytest.mark.parametrize("statement", [
    "import sisa; sisa.Settings(); sisa.SisaError",
    "from sisa.settings import Settings; Settings(model='cnn').slice_epochs",
    "import sisa.serve.client",
])
def test_light_imports_leave_torch_out(statement):
    code = f"import sys; {statement}; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]"
    subprocess.run([sys.executable, "-c", code], check=True)
