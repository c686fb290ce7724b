"""The house rules (DESIGN §7, issue 30), read from the sources with ``ast``: no import
circle between the plugin's modules, no function over 100 lines in the numeric rooms, no
module reaching for another's private names, and no QGIS or Qt in ``core/``, ``training/``
or the engine."""
import ast
from pathlib import Path
from typing import Dict, Iterator, Set

import pytest

from mamol import __file__ as _PACKAGE_INIT   # the sources under test (linked or installed)

ROOT = Path(_PACKAGE_INIT).resolve().parent
ROOMS = ("core", "training", "engine", "algorithms")
NUMERIC_ROOMS = ("core", "training", "engine")
MAX_FUNCTION_LINES = 100


def modules() -> Dict[str, Path]:
    """Dotted name (``core.grid``) -> file, for every module of the rooms present."""
    found = {}
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")) if (ROOT / room).is_dir() else ():
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path) -> Iterator[tuple]:
    """(the module it names, the node) of each ``from … import`` of the plugin's modules."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = package.split(".") if package else []
        base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
        target = ".".join(base + ([node.module] if node.module else []))
        yield target, node


def graph() -> Dict[str, Set[str]]:
    found = modules()
    edges = {}
    for name, path in found.items():
        edges[name] = set()
        for target, node in imports(name, path):
            if target in found:
                edges[name].add(target)
            for alias in node.names:     # from . import grid
                if f"{target}.{alias.name}" in found:
                    edges[name].add(f"{target}.{alias.name}")
    return edges


def test_the_import_graph_has_no_circle():
    edges = graph()
    state: Dict[str, int] = {}
    path = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert len(edges) > 40   # the walk saw the house, not an empty folder


def test_no_function_is_over_100_lines_in_the_numeric_rooms():
    long = []
    for name, path in modules().items():
        if name.split(".")[0] not in NUMERIC_ROOMS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


def test_no_module_imports_another_modules_private_names():
    found = modules()
    private = []
    for name, path in found.items():
        for target, node in imports(name, path):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    private.append(f"{name} imports {target}.{alias.name}")
    assert not private, private


@pytest.mark.parametrize("room", NUMERIC_ROOMS)
def test_the_numeric_rooms_never_import_qgis_or_qt(room):
    offenders = []
    for name, path in modules().items():
        if name.split(".")[0] != room:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level \
                else []
            offenders += [f"{name}: {n}" for n in names
                          if n.split(".")[0] in ("qgis", "PyQt5", "PyQt6", "processing")]
    assert not offenders, offenders
