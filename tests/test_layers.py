"""The package's layers, as the README's Layout section states them: no import circle, no import upwards.

Every import counts, also one inside a function: a lazy import upwards is
still a circle in the design.  The graph is read from the source (ast), not
from what happens to be imported at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stardist_host"

#: Bottom up; a module may import from its own layer and the layers below it.
LAYERS = (
    ("errors", "resources"),
    ("host", "schema", "console"),
    ("io",),
    ("segmentation",),
    ("runs",),
    ("analyses", "training", "testing", "operator", "doctor", "napari"),
    ("cli", ""),  # "": the package's __init__, which gathers the public names
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its source, named relative to the package."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and node.module.split(".")[0] == "stardist_host":
                target = node.module.partition(".")[2]
            else:
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}" if target else alias.name
                found.add(full if full in modules else target)
        elif isinstance(node, ast.Import):
            found.update(a.name.partition(".")[2] for a in node.names if a.name.split(".")[0] == "stardist_host")
    return {m for m in found if m in modules and m != name}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for level, names in enumerate(LAYERS):
        if top in names:
            return level
    raise AssertionError(f"stardist_host.{module} is in no layer: add its folder to LAYERS and to the README")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_graph_is_read_from_the_source(graph):
    # the oracle for the reader itself: imports we know are there, relative and absolute, lazy and not
    assert {"segmentation.engine", "segmentation.models"} <= graph["segmentation.segment"]
    assert "runs.child" in graph["runs.local"]  # imported inside run()
    assert "errors" in graph["host"]


def test_no_module_imports_from_a_higher_layer(graph):
    upwards = sorted(f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
                     for m, deps in graph.items() for d in deps if _layer(d) > _layer(m))
    assert upwards == []


def test_io_knows_nothing_of_segmentation(graph):
    assert sorted((m, d) for m, deps in graph.items() if m.startswith("io") for d in deps
                  if d.split(".")[0] in ("segmentation", "runs")) == []


def test_no_import_circle(graph):
    """Tarjan's strongly connected components: any component of more than one module is a circle."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in graph[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert circles == []
