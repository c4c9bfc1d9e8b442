"""Refuse a distribution name that PyPI already gives another project.

    python3 scripts/dist_names.py [ROOT]      (default ROOT: this checkout)

Reads each workspace member's ``[project] name`` (the members listed in
ROOT/pyproject.toml's ``[tool.uv.workspace]``) and the names pinned in
``pypi-taken-names.txt`` beside this script, compares them as PyPI does
(PEP 503: case, ``-``, ``_`` and ``.`` do not count), and exits 1 with one
line per pyproject.toml whose name is taken. No network call: the pinned
file says when and how its names were checked.

Standard library only, so ``scripts/build-dists.sh`` and
``scripts/release-srpms.sh`` run it with any Python 3.11 or newer.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

__all__ = ["TAKEN", "clashes", "distributions", "main", "normalize", "taken_names"]

TAKEN = Path(__file__).with_name("pypi-taken-names.txt")
"""The names PyPI gives projects that are not ours, one a line (``#`` starts a comment)."""


def normalize(name: str) -> str:
    """The name as PyPI compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def taken_names(path: Path = TAKEN) -> frozenset[str]:
    """The pinned names, normalized."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return frozenset(normalize(line) for line in lines if line)


def distributions(root: Path) -> dict[Path, str]:
    """Each workspace member's pyproject.toml and the ``[project] name`` it declares."""
    workspace = tomllib.loads((root / "pyproject.toml").read_text())
    members = workspace["tool"]["uv"]["workspace"]["members"]
    found: dict[Path, str] = {}
    for member in members:
        for folder in sorted(root.glob(member)):
            pyproject = folder / "pyproject.toml"
            if pyproject.is_file():
                found[pyproject] = tomllib.loads(pyproject.read_text())["project"]["name"]
    return found


def clashes(root: Path, taken: frozenset[str]) -> list[str]:
    """One line per member whose name is taken: file, key and problem."""
    return [
        f"{pyproject.relative_to(root)}: project.name: {name!r} is taken on PyPI by another"
        f" project ({TAKEN.name}); choose a name that is free there"
        for pyproject, name in distributions(root).items()
        if normalize(name) in taken
    ]


def main(argv: list[str]) -> int:
    """Check the checkout at ``argv[0]`` (default: this script's); 1 if a name is taken."""
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent
    problems = clashes(root, taken_names())
    for problem in problems:
        print(f"names: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
