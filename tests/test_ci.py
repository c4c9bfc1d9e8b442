"""What CI runs: `.ci/run` runs `make test`, which gates the gateway's quick coverage at 90 %."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
GATE = ("--cov=cortex_gateway", "--cov-fail-under=90", '-m "not slow"')


def make(*args: str) -> subprocess.CompletedProcess[str]:
    """``make ARGS`` at the repository's root, its output captured."""
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_ci_runs_make_test_and_make_test_runs_the_coverage_gate() -> None:
    """The quick tests that `make test` runs measure the gateway and refuse under 90 %."""
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    dry = make("-n", "test").stdout.splitlines()
    gated = [line for line in dry if " pytest " in line and all(g in line for g in GATE)]
    assert len(gated) == 1, dry


def test_the_gate_fails_a_run_under_90_percent() -> None:
    """The same quick run over a handful of tests (a few % of the gateway) fails."""
    run = make("test-fast", "PYTEST_ARGS=packages/cortex-gateway/tests/test_poller.py")
    assert run.returncode != 0
    assert "Required test coverage of 90% not reached" in run.stdout
