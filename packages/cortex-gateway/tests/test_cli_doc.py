"""docs/gateway.md shows every `cortex` subcommand with each option it takes, and every variable."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import click

from cortex_gateway import cli

GATEWAY_DOC = Path(__file__).parents[3] / "docs" / "gateway.md"


def leaves(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    """Every runnable subcommand, by its full name (``alias set``)."""
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from leaves(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def synopsis() -> list[str]:
    """The lines of the doc's first code block, which starts with ``cortex serve``."""
    block = GATEWAY_DOC.read_text().split("```\ncortex serve", 1)[1].split("```", 1)[0]
    return f"cortex serve{block}".splitlines()


def test_every_subcommand_and_option_is_in_the_synopsis() -> None:
    """One synopsis line per subcommand, naming each of its options and arguments."""
    lines = synopsis()
    for name, command in leaves(cli.main):
        matching = [line for line in lines if re.match(rf"cortex {name}( |$)", line)]
        assert len(matching) == 1, name
        documented = set(re.findall(r"--[a-z-]+|\b[A-Z]+\b", matching[0]))
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert set(param.opts + param.secondary_opts) <= documented, (name, param.opts)
            elif isinstance(param, click.Argument):
                assert (param.name or "").upper() in documented, (name, param.name)


def test_every_variable_the_command_reads_is_documented() -> None:
    """``$CORTEX_*`` read by cli.py appear in the doc's table of variables."""
    read = set(re.findall(r"\bCORTEX_[A-Z_]+\b", inspect.getsource(cli)))
    assert read >= {"CORTEX_CONFIG", "CORTEX_GATEWAY", "CORTEX_API_KEY", "CORTEX_ADMIN_KEY"}
    rows = re.findall(r"^\| `(CORTEX_[A-Z_]+)` \|", GATEWAY_DOC.read_text(), re.MULTILINE)
    assert set(rows) == read
