"""The gateway's modules: no import cycle, no private name imported across modules."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import cortex_gateway

PACKAGE = Path(cortex_gateway.__file__).parent
NAME = "cortex_gateway"


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, str]]:
    """``(module, name)`` for every name ``path`` imports from the package (absolute imports)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in known:
                    found.append((full, ""))
                elif node.module in known:
                    found.append((node.module, alias.name))
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name in known]
    return found


def test_no_import_cycles_and_no_private_names_across_modules() -> None:
    """Each module depends on others only through their public names, and never in a circle."""
    known = modules()
    assert len(known) > 40
    graph: dict[str, set[str]] = {}
    private = []
    for module, path in known.items():
        graph[module] = set()
        for target, name in imports(path, known):
            if target == module:
                continue
            graph[module].add(target)
            if name.startswith("_") and not name.startswith("__"):
                private.append(f"{module} imports {name} from {target}")
    assert private == []
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle
