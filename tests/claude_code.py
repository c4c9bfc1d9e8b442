"""The real Claude Code CLI in print mode, for the tests; and recording what it sends.

:func:`run_claude` runs the pinned CLI (``tests.clients``) non-interactively
against a base URL: a scratch ``HOME``, its own working folder, stdin from
``/dev/null``, and the variables that keep it off the network but for the
API it is pointed at. Its JSON result is returned.

``python -m tests.claude_code record`` re-records the fixtures the gateway's
fast tests replay (``packages/cortex-gateway/tests/fixtures/claude_code``):
the CLI runs two print-mode turns (a first one and ``--continue``) against
:class:`Recorder`, a tiny Anthropic look-alike of this module's own on
loopback that answers with a fixed message and keeps what it was sent.
:func:`sanitise` then replaces what is this machine's or this run's (home and
working folders, the session and device ids, the key, the OS version, the
date) with stable placeholders, and the interactive variants are made from
the first turn with a billing block whose ``cch=`` differs.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.clients import CLAUDE_CODE, npm_client

__all__ = [
    "FIXTURES",
    "Recorder",
    "claude_env",
    "interactive",
    "run_claude",
    "sanitise",
]

FIXTURES = Path(__file__).parents[1] / "packages" / "cortex-gateway" / "tests" / "fixtures"
FIXTURES = FIXTURES / "claude_code"
PROMPTS = ("What is the capital of France?", "And of Germany?")
SESSION = "00000000-0000-4000-8000-000000000000"
DEVICE = "0" * 64
HOME = "/home/user"
PROJECT = "/home/user/project"
KEPT_HEADERS = (
    "anthropic-beta",
    "anthropic-version",
    "anthropic-dangerous-direct-browser-access",
    "content-type",
    "accept",
    "user-agent",
    "x-app",
    "x-claude-code-session-id",
    "x-stainless-lang",
    "x-stainless-package-version",
    "x-stainless-retry-count",
    "x-stainless-timeout",
)
"""Headers worth replaying; the key, host, lengths and the machine's runtime are left out."""


def claude_env(home: Path, base_url: str, model: str) -> dict[str, str]:
    """The environment of one CLI run: its own HOME, the gateway, the model, no extras."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "sk-cortex-test",
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_SMALL_FAST_MODEL": model,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
    }


def run_claude(
    prompt: str, env: dict[str, str], cwd: Path, *, resume: bool = False, timeout: float = 600
) -> dict[str, Any]:
    """One print-mode turn (``--continue`` with ``resume``): the CLI's JSON result."""
    command = [str(npm_client(CLAUDE_CODE)), "-p", prompt, "--output-format", "json"]
    if resume:
        command.append("--continue")
    done = subprocess.run(
        command,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError as exc:
        raise AssertionError(
            f"claude exited {done.returncode} without a JSON result:\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        ) from exc
    return result


class Recorder(http.server.ThreadingHTTPServer):
    """An Anthropic Messages look-alike on loopback that answers ``Paris.`` and keeps requests."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.requests.append({"path": self.path, "headers": headers, "body": body})
        if body.get("stream"):
            self._send("text/event-stream", _stream(body.get("model", "")))
        else:
            self._send("application/json", json.dumps(_message(body.get("model", ""))).encode())

    def _send(self, media_type: str, data: bytes) -> None:
        self.send_response(200)
        self.send_header("content-type", media_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _message(model: str) -> dict[str, Any]:
    return {
        "id": "msg_recorded",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Paris."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 2},
    }


def _stream(model: str) -> bytes:
    start = {**_message(model), "content": [], "stop_reason": None}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Paris."},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 2},
        },
        {"type": "message_stop"},
    ]
    return b"".join(
        f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode() for event in events
    )


@contextmanager
def recording() -> Iterator[Recorder]:
    """A :class:`Recorder` serving in a thread until the block ends."""
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def sanitise(record: dict[str, Any], *, home: Path, cwd: Path, session: str) -> dict[str, Any]:
    """``record`` with this machine's and this run's particulars replaced by placeholders."""
    headers = {k: v for k, v in record["headers"].items() if k in KEPT_HEADERS}
    text = json.dumps({**record, "headers": headers})
    replacements = [
        (str(cwd), PROJECT),
        (str(cwd).replace("/", "-"), PROJECT.replace("/", "-")),
        (str(home), HOME),
        (session, SESSION),
    ]
    for old, new in replacements:
        text = text.replace(old, new)
    text = re.sub(
        r'\\"device_id\\":\\"[0-9a-f]+\\"', f'\\\\"device_id\\\\":\\\\"{DEVICE}\\\\"', text
    )
    text = re.sub(r"OS Version: [^\\]+", "OS Version: Linux 6.0.0", text)
    text = re.sub(r"Today's date is \d{4}-\d{2}-\d{2}", "Today's date is 2026-01-01", text)
    clean: dict[str, Any] = json.loads(text)
    return clean


def interactive(record: dict[str, Any], cch: str) -> dict[str, Any]:
    """``record`` as an interactive session sends it: its billing block carrying ``cch``."""
    body = json.loads(json.dumps(record["body"]))
    billing = body["system"][0]
    billing["text"] = billing["text"].replace("cc_entrypoint=sdk-cli;", "cc_entrypoint=cli;")
    billing["text"] += f" cch={cch};"
    headers = {
        **record["headers"],
        "user-agent": record["headers"]["user-agent"].replace("sdk-cli", "cli"),
    }
    return {**record, "headers": headers, "body": body}


def record(out: Path) -> list[Path]:
    """Run both turns against a :class:`Recorder`; write the sanitised fixtures into ``out``."""
    written = []
    with tempfile.TemporaryDirectory() as scratch, recording() as server:
        home, cwd = Path(scratch) / "home", Path(scratch) / "project"
        home.mkdir()
        cwd.mkdir()
        env = claude_env(home, server.url, "helexa/small")
        results = [run_claude(PROMPTS[0], env, cwd), run_claude(PROMPTS[1], env, cwd, resume=True)]
        session = str(results[0]["session_id"])
        turns = [r for r in server.requests if r["path"].startswith("/v1/messages")]
        clean = [sanitise(r, home=home, cwd=cwd, session=session) for r in turns]
    out.mkdir(parents=True, exist_ok=True)
    named = {"print_turn1.json": clean[0], "print_turn2.json": clean[-1]}
    named |= {
        f"interactive_turn1_{cch}.json": interactive(clean[0], cch) for cch in ("0a1b2", "f3e4d")
    }
    for name, value in named.items():
        path = out / name
        path.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n")
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    """``record [DIR]``: write the fixtures (default: the gateway's tests' folder)."""
    if not argv or argv[0] != "record":
        print("usage: python -m tests.claude_code record [DIR]", file=sys.stderr)
        return 2
    for path in record(Path(argv[1]) if len(argv) > 1 else FIXTURES):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
