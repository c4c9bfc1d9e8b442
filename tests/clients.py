"""Real clients from npm for the tests: Claude Code and Codex CLI, pinned, installed into a cache.

Each pinned package is installed once with the machine's npm into its own
folder under ``$CORTEX_CLIENT_CACHE`` (default ``.cache/clients`` in the
repository, which git ignores) and reused by later runs; a lock file keeps
two test processes from installing the same one at once. Nothing is ever
committed and nothing is fetched at run time but from the npm registry.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["CLAUDE_CODE", "CODEX", "NpmClient", "npm_client"]

REPO = Path(__file__).parents[1]


class NpmClient:
    """A pinned CLI from npm: the package, its version and the command it installs."""

    def __init__(self, package: str, version: str, command: str) -> None:
        self.package = package
        self.version = version
        self.command = command

    @property
    def spec(self) -> str:
        """What ``npm install`` is given."""
        return f"{self.package}@{self.version}"


CLAUDE_CODE = NpmClient("@anthropic-ai/claude-code", "2.1.328", "claude")
CODEX = NpmClient("@openai/codex", "0.169.0", "codex")


def cache_root() -> Path:
    """Where installed clients are kept between runs."""
    return Path(os.environ.get("CORTEX_CLIENT_CACHE", REPO / ".cache" / "clients"))


def npm_client(client: NpmClient) -> Path:
    """The path of ``client``'s command, installing it first if this cache lacks it.

    Skips the test when npm is not on this machine (CI's machines have it).
    """
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the real client cannot be installed")
    folder = cache_root() / f"{client.package.replace('/', '+')}@{client.version}"
    binary = folder / "node_modules" / ".bin" / client.command
    folder.mkdir(parents=True, exist_ok=True)
    with (folder.parent / f"{folder.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            subprocess.run(
                [npm, "install", "--prefix", str(folder), client.spec, "--no-audit", "--no-fund"],
                check=True,
                capture_output=True,
                timeout=900,
            )
    check = subprocess.run(
        [str(binary), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=True,
    )
    assert client.version in check.stdout, check.stdout
    return binary
