"""``cortex alias``: edits models.toml as ``cortex check`` accepts it, keeping its comments."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from cortex_core.testing import free_port
from cortex_gateway.cli import main

CORTEX = """\
[[neurons]]
name = "beast"
endpoint = "http://127.0.0.1:13131"
"""
MODELS = """\
# Tiers our clients use. Keep helexa/small cheap.
[aliases]
"helexa/small" = "fake/a"   # the cheap one

# The models we serve.
[[models]]
id = "fake/a"
memory_gb = 4

[[models]]
id = "fake/b"
memory_gb = 8
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """cortex.toml and models.toml beside it."""
    (tmp_path / "models.toml").write_text(MODELS)
    (tmp_path / "cortex.toml").write_text(CORTEX)
    return tmp_path / "cortex.toml"


def cortex(*args: str) -> tuple[int, str, str]:
    """Run ``cortex ARGS``: exit code, stdout, stderr."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_set_keeps_comments_and_layout(config: Path) -> None:
    models = config.parent / "models.toml"
    models.chmod(0o640)
    code, out, _ = cortex(
        "alias", "set", "--config", str(config), "--no-reload", "helexa/small", "fake/b"
    )
    assert code == 0, out
    assert f"helexa/small -> fake/b in {models}" in out
    text = models.read_text()
    assert text == MODELS.replace('"helexa/small" = "fake/a"', '"helexa/small" = "fake/b"')
    assert stat.S_IMODE(models.stat().st_mode) == 0o640
    code, out, _ = cortex("alias", "list", "--config", str(config))
    assert out == "helexa/small -> fake/b\n"


def test_set_adds_and_rm_removes(config: Path) -> None:
    models = config.parent / "models.toml"
    assert (
        cortex("alias", "set", "--config", str(config), "--no-reload", "helexa/big", "fake/b")[0]
        == 0
    )
    _, listed, _ = cortex("alias", "list", "--config", str(config))
    assert listed.splitlines() == ["helexa/small -> fake/a", "helexa/big   -> fake/b"]
    assert cortex("alias", "rm", "--config", str(config), "--no-reload", "helexa/small")[0] == 0
    assert '"helexa/small" =' not in models.read_text()
    assert "# Tiers our clients use." in models.read_text()


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (
            ("set", "helexa/small", "fake/nope"),
            "aliases.\"helexa/small\": alias 'helexa/small' points at",
        ),
        (("set", "tier/x", "helexa/small"), "points at another alias"),
        (("rm", "helexa/none"), 'aliases."helexa/none": no such alias'),
    ],
)
def test_an_edit_cortex_check_would_refuse_changes_nothing(
    config: Path, args: tuple[str, ...], problem: str
) -> None:
    models = config.parent / "models.toml"
    verb, *rest = args
    code, _, err = cortex("alias", verb, "--config", str(config), "--no-reload", *rest)
    assert code == 2
    assert err.startswith(f"cortex: {models}: ")
    assert problem in err
    assert models.read_text() == MODELS
    assert not list(config.parent.glob(".models.toml*"))


def test_nodes_must_name_a_defined_neuron(config: Path) -> None:
    """The whole file is checked as ``cortex check`` checks it, not only the alias."""
    models = config.parent / "models.toml"
    broken = MODELS + '\n[[models]]\nid = "fake/c"\nnodes = ["ghost"]\n'
    models.write_text(broken)
    code, _, err = cortex("alias", "set", "--config", str(config), "--no-reload", "x/y", "fake/c")
    assert code == 2
    assert "names neuron 'ghost'" in err
    assert models.read_text() == broken


def test_an_unreachable_gateway_is_said_after_the_file_is_saved(config: Path) -> None:
    gateway = f"http://127.0.0.1:{free_port()}"
    code, out, err = cortex(
        "alias", "set", "--config", str(config), "--gateway", gateway, "helexa/small", "fake/b"
    )
    assert code == 1
    assert "helexa/small -> fake/b" in out
    assert f"cannot reach the gateway at {gateway}" in err
    assert '"helexa/small" = "fake/b"' in (config.parent / "models.toml").read_text()


def test_list_says_when_there_are_none(config: Path) -> None:
    (config.parent / "models.toml").write_text("# nothing yet\n")
    code, out, _ = cortex("alias", "list", "--config", str(config))
    assert (code, out) == (0, f"no aliases in {config.parent / 'models.toml'}\n")


def test_removing_the_last_alias_takes_force(config: Path) -> None:
    """As the gateway's reload would refuse it: exit 2 and nothing changed, unless --force."""
    models = config.parent / "models.toml"
    code, _, err = cortex("alias", "rm", "--config", str(config), "--no-reload", "helexa/small")
    assert code == 2
    assert "it would remove every alias (1 in force); --force to do it anyway" in err
    assert models.read_text() == MODELS
    code, out, _ = cortex(
        "alias", "rm", "--config", str(config), "--no-reload", "--force", "helexa/small"
    )
    assert code == 0
    assert "helexa/small removed" in out
    assert '"helexa/small" =' not in models.read_text()
