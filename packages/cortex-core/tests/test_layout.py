"""cortex-core's two halves: the contracts, and the daemons' runtime that no contract needs."""

from __future__ import annotations

import ast
from pathlib import Path

import cortex_core

PACKAGE = Path(cortex_core.__file__).parent


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_contract_imports_the_runtime() -> None:
    """Wire structs, ids, catalogue and config load without hypercorn, uvloop or sockets."""
    contracts = list(PACKAGE.glob("*.py"))
    assert len(contracts) > 5
    leaks = {
        p.name: sorted(n for n in imported(p) if n.startswith("cortex_core.runtime"))
        for p in contracts
    }
    assert {name: found for name, found in leaks.items() if found} == {}


def test_the_runtime_is_its_own_family() -> None:
    """serving, loops, sockets and logs live under cortex_core.runtime, and only there."""
    runtime = {p.stem for p in (PACKAGE / "runtime").glob("*.py")} - {"__init__"}
    assert runtime == {"serving", "loops", "sockets", "logs"}
    assert not any((PACKAGE / f"{name}.py").exists() for name in runtime)
