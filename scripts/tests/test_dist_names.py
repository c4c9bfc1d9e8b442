"""No distribution of the workspace takes a name PyPI gives another project; the builds refuse one.

The names come from ``scripts/pypi-taken-names.txt`` (pinned, checked by hand
against PyPI): nothing here reaches the network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.dist_names import TAKEN, clashes, distributions, main, normalize, taken_names

ROOT = Path(__file__).resolve().parents[2]
OURS = ("cortex-core", "helexa-cortex", "helexa-neuron")
"""The three distributions' names (README.md), free on PyPI when the list was checked."""
NO_BUILD = {**os.environ, "UV": "false"}
"""The scripts' environment: any build they reached would fail (uv is ``false``)."""


def test_no_distribution_takes_a_name_pypi_gives_another_project() -> None:
    """Every workspace member's [project] name is off the pinned list of taken names."""
    found = distributions(ROOT)
    assert set(found) == set(ROOT.glob("packages/*/pyproject.toml"))
    assert clashes(ROOT, taken_names()) == []
    assert main([str(ROOT)]) == 0


def test_the_pinned_list_holds_the_clashes_we_know_and_none_of_our_names() -> None:
    taken = taken_names()
    assert {"cortex-gateway", "neuron"} <= taken  # why the gateway and the neuron are helexa-*
    assert not taken & set(OURS)


@pytest.mark.parametrize("name", ["cortex-gateway", "Cortex_Gateway", "cortex.gateway", "NEURON"])
def test_a_taken_name_is_found_however_it_is_spelled(tmp_path: Path, name: str) -> None:
    root = _workspace(tmp_path, gateway_name=name)
    assert clashes(root, taken_names()) == [
        f"packages/cortex-gateway/pyproject.toml: project.name: {name!r} is taken on PyPI by"
        f" another project ({TAKEN.name}); choose a name that is free there"
    ]


def test_normalize_is_pep_503() -> None:
    assert normalize("Helexa__Cortex.-x") == "helexa-cortex-x"


def test_the_check_exits_1_naming_the_file(tmp_path: Path) -> None:
    root = _workspace(tmp_path, gateway_name="cortex-gateway")
    done = _refused(sys.executable, ROOT / "scripts" / "dist_names.py", root)
    assert done.stderr.startswith("names: packages/cortex-gateway/pyproject.toml: project.name: ")
    assert done.stdout == ""


def test_build_dists_refuses_a_taken_name_and_builds_nothing(tmp_path: Path) -> None:
    """scripts/build-dists.sh (make dist, COPR's make_srpm) stops before building anything."""
    root = _workspace(tmp_path, gateway_name="cortex-gateway", scripts=True)
    done = _refused(root / "scripts" / "build-dists.sh", root / "dist")
    assert "'cortex-gateway' is taken on PyPI" in done.stderr
    assert "dist: nothing built" in done.stderr
    assert not (root / "dist").exists()


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_release_srpms_refuses_a_tag_with_a_taken_name(tmp_path: Path) -> None:
    """scripts/release-srpms.sh checks the tagged tree before it builds anything."""
    root = _workspace(tmp_path, gateway_name="neuron", scripts=True)
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for args in (["init", "--quiet"], ["add", "."], ["commit", "--quiet", "-m", "x"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    subprocess.run([*git, "tag", "v9.9.9"], check=True)
    done = _refused(root / "scripts" / "release-srpms.sh", "v9.9.9", root / "out")
    assert "'neuron' is taken on PyPI" in done.stderr
    assert "release: v9.9.9 not built" in done.stderr
    assert not (root / "out").exists()


def _refused(*command: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a check or a script that must refuse (exit 1): what it said."""
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=NO_BUILD)
    assert done.returncode == 1, done.stdout + done.stderr
    return done


def _workspace(tmp_path: Path, *, gateway_name: str, scripts: bool = False) -> Path:
    """A copy of the workspace's pyproject files, the gateway's renamed; with the scripts."""
    root = tmp_path / "repo"
    for pyproject in [ROOT / "pyproject.toml", *distributions(ROOT)]:
        copy = root / pyproject.relative_to(ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(pyproject, copy)
    gateway = root / "packages" / "cortex-gateway" / "pyproject.toml"
    declared = f'name = "{distributions(root)[gateway]}"'
    gateway.write_text(gateway.read_text().replace(declared, f'name = "{gateway_name}"', 1))
    if scripts:
        (root / "scripts").mkdir()
        for name in ("build-dists.sh", "release-srpms.sh", "dist_names.py", TAKEN.name):
            shutil.copy(ROOT / "scripts" / name, root / "scripts" / name)
    return root
