"""Faults for real: neuron processes stopped, killed and restarted under a real gateway.

Each test asserts the bound the gateway promises (an error event instead of a
hang, no failed request when a replica remains, a pinned model back, bounded
memory, nothing leaked: connections, tasks, file descriptors).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from cortex_core.testing import free_port
from tests.support import Fleet, NeuronSpec, StartFleet, fake_model, until

pytestmark = pytest.mark.slow

ANSWER = "The capital of France is Paris."
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CATALOGUE = '[[models]]\nid = "fake/small"\nmemory_gb = 4\n'


@pytest.fixture
def models_root(tmp_path: Path) -> Path:
    """A fake model of 3 GiB for scripted engines."""
    root = tmp_path / "models"
    fake_model(root, "fake/small", 3)
    return root


def gateway_process(fleet: Fleet) -> psutil.Process:
    """The gateway's process."""
    return psutil.Process(fleet.gateway.pid)


def connections_to(process: psutil.Process, url: str) -> int:
    """Connections ``process`` holds open on the port of ``url`` (it listens there)."""
    port = int(url.rsplit(":", 1)[1])
    return sum(
        1
        for c in process.net_connections("tcp")
        if c.status != psutil.CONN_LISTEN and c.laddr.port == port
    )


def client_connections(fleet: Fleet) -> int:
    """Connections clients hold open to the gateway's API port."""
    return connections_to(gateway_process(fleet), fleet.url)


def upstream_connections(fleet: Fleet) -> int:
    """Connections the gateway holds open to neurons (polls included)."""
    port = int(fleet.url.rsplit(":", 1)[1])
    process = gateway_process(fleet)
    return sum(
        1
        for c in process.net_connections("tcp")
        if c.status != psutil.CONN_LISTEN and c.laddr.port != port and c.raddr
    )


def gauge(fleet: Fleet, name: str) -> float:
    """A gauge from the gateway's /metrics."""
    text = httpx.get(f"{fleet.metrics_url}/metrics").text
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def node_up(fleet: Fleet, name: str) -> bool:
    """Whether the gateway sees ``name`` up."""
    nodes: list[dict[str, Any]] = fleet.fleet_state()["nodes"]  # type: ignore[assignment]
    return any(n["name"] == name and n["up"] for n in nodes)


def load(fleet: Fleet, model: str, node: str) -> None:
    """Load ``model`` on ``node`` through the admin API."""
    with fleet.http() as client:
        answer = client.post("/admin/models/load", json={"model": model, "node": node})
        assert answer.status_code == 200, answer.text


def test_a_stopped_neuron_ends_its_streams_with_an_error_not_a_hang(
    start_fleet: StartFleet, models_root: Path
) -> None:
    """SIGSTOP mid-stream: the stream ends with an error event once the poll finds the node down.

    Its idle timeout is far away; the gateway keeps answering meanwhile.
    """
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24])],
        CATALOGUE,
        models_root=models_root,
        gateway="stream_idle_timeout_s = 600\nfirst_byte_timeout_s = 600",
        env={"NEURON_TEST_CHUNK_DELAY": "1.0"},
    )
    load(fleet, "fake/small", "beast")
    neuron = fleet.neurons["beast"]
    body = {"model": "fake/small", "messages": QUESTION, "stream": True}
    try:
        with (
            httpx.Client(base_url=fleet.url, timeout=60) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            os.kill(neuron.pid, signal.SIGSTOP)
            assert httpx.get(f"{fleet.url}/health").status_code == 200
            rest = [line for line in lines if line.startswith("data: ")]
        error = json.loads(rest[-1][6:])["error"]
        assert error["message"] == "the model server stopped answering"
        with fleet.http() as client:
            assert client.get("/admin/fleet").json()["in_flight"] == []
    finally:
        os.kill(neuron.pid, signal.SIGCONT)


def test_a_killed_replica_costs_no_request(start_fleet: StartFleet, models_root: Path) -> None:
    """A model ready on two nodes, one SIGKILLed: every request is served by the other."""
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24]), NeuronSpec("benjy", "127.0.0.3", [24])],
        CATALOGUE,
        models_root=models_root,
    )
    load(fleet, "fake/small", "beast")
    load(fleet, "fake/small", "benjy")
    fleet.neurons["beast"].kill()
    served = []
    with fleet.http() as client:
        for _ in range(20):
            answer = client.post(
                "/v1/chat/completions", json={"model": "fake/small", "messages": QUESTION}
            )
            assert answer.status_code == 200, answer.text
            served.append(answer.headers["x-cortex-node"])
    assert set(served) == {"benjy"}


def test_a_restarted_neuron_gets_its_pinned_model_back(
    start_fleet: StartFleet, models_root: Path
) -> None:
    """A pinned model's only node crashes and comes back: the model is loaded there again."""
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24])],
        '[[models]]\nid = "fake/small"\nmemory_gb = 4\npinned = true\n',
        models_root=models_root,
    )
    until(lambda: fleet.loaded().get("beast") == ["fake/small"])
    neuron = fleet.neurons["beast"]
    neuron.kill()
    until(lambda: not node_up(fleet, "beast"))
    neuron.start()
    until(lambda: fleet.loaded().get("beast") == ["fake/small"])
    with fleet.http() as client:
        answer = client.post(
            "/v1/chat/completions", json={"model": "fake/small", "messages": QUESTION}
        )
        assert answer.status_code == 200


def _address(server: socketserver.BaseServer) -> tuple[str, int]:
    host, port = server.server_address[:2]  # type: ignore[index,str-unpack]
    return str(host), int(port)


class _Misbehaving(BaseHTTPRequestHandler):
    """A neuron whose model answers with garbage, or with megabytes and no event boundary."""

    protocol_version = "HTTP/1.1"
    mode = "garbage"
    models_body: bytes | None = None
    """What /models answers, when set (else one model, ready)."""

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _json(self, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        """The management API: one model, ready."""
        if self.path == "/health":
            self._json({"status": "ok", "name": "odd", "version": "9"})
        elif self.path == "/devices":
            self._json({"devices": []})
        elif self.path == "/models" and (body := type(self).models_body) is not None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the gateway may hang up: what it should do
                self.wfile.write(body)
        elif self.path == "/models":
            self._json({"models": [{"id": "fake/odd", "state": "ready"}]})
        elif self.path.endswith("/endpoint"):
            host, port = _address(self.server)
            self._json({"url": f"http://{host}:{port}/v1"})
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        """Inference: a stream that is not one."""
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        try:
            if type(self).mode == "garbage":
                for piece in (b"data: {not json\n\n", bytes(range(256)), b"\n\ndata: [DONE]\n\n"):
                    self.wfile.write(piece)
            else:
                chunk = b"x" * (1 << 20)
                self.wfile.write(b"data: ")
                for _ in range(60):
                    self.wfile.write(chunk)
        except OSError:
            pass  # the gateway hung up: what it should do


@pytest.fixture
def misbehaving() -> Iterator[ThreadingHTTPServer]:
    """The misbehaving neuron on 127.0.0.9."""
    server = ThreadingHTTPServer(("127.0.0.9", free_port("127.0.0.9")), _Misbehaving)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_garbage_and_boundless_streams_fail_cleanly(
    start_fleet: StartFleet, models_root: Path, misbehaving: ThreadingHTTPServer
) -> None:
    """Garbage passes as bytes; 60 MB without an event boundary is cut, not buffered."""
    host, port = _address(misbehaving)
    fleet = start_fleet(
        [], "", models_root=models_root, extra_neurons=[("odd", f"http://{host}:{port}")]
    )
    gateway = gateway_process(fleet)
    body = {"model": "fake/odd", "messages": QUESTION, "stream": True}
    with fleet.http() as client:
        garbage = client.post("/v1/chat/completions", json=body)
        assert garbage.status_code == 200
        assert "data: [DONE]" in garbage.text
        rss_before = gateway.memory_info().rss
        _Misbehaving.mode = "boundless"
        boundless = client.post("/v1/chat/completions", json=body)
        assert boundless.status_code == 200
        assert len(boundless.content) < 1 << 20
        assert "the model server stopped answering" in boundless.text
        assert client.get("/health").status_code == 200
    assert gateway.memory_info().rss - rss_before < 64 << 20


def _slow_client(url: str, declared: int, sent: bytes) -> bytes:
    """POST with a body shorter than its Content-Length; what comes back."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\n"
            f"content-type: application/json\r\ncontent-length: {declared}\r\n\r\n"
        )
        sock.sendall(head.encode() + sent)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and b"}" in answer:
                break
        return answer


def test_short_and_slow_bodies_are_answered_408_and_let_go(
    start_fleet: StartFleet, models_root: Path
) -> None:
    """A hundred bodies shorter than they said: 408 each, and the gateway keeps nothing."""
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24])],
        CATALOGUE,
        models_root=models_root,
        gateway="body_timeout_s = 1.0",
    )
    gateway = gateway_process(fleet)
    httpx.get(f"{fleet.url}/health")
    fds_before = gateway.num_fds()
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(_slow_client(fleet.url, 100, b'{"mo')))
        for _ in range(100)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 100
    assert all(r.startswith(b"HTTP/1.1 408") for r in results), results[0][:200].decode()
    until(lambda: client_connections(fleet) == 0, within_s=15)
    until(lambda: gateway.num_fds() <= fds_before + 2, within_s=15)


async def _stream(client: httpx.AsyncClient, leave: bool) -> str:
    body = {"model": "fake/small", "messages": QUESTION, "stream": True}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            text = "" if response.status_code == 200 else f"HTTP {response.status_code}: "
            async for chunk in response.aiter_text():
                text += chunk
                if leave:
                    return "left"
            return text
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"


def test_five_hundred_streams_with_a_third_leaving_leak_nothing(
    start_fleet: StartFleet, models_root: Path
) -> None:
    """500 concurrent streams, every third client leaving early: nothing leaks.

    Afterwards the gateway holds no request, connection, task or file
    descriptor more than before.
    """
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24])],
        CATALOGUE,
        models_root=models_root,
        env={"NEURON_TEST_CHUNK_DELAY": "0.05"},
    )
    load(fleet, "fake/small", "beast")
    gateway = gateway_process(fleet)
    with fleet.http() as client:
        client.get("/health")
    fds_before = gateway.num_fds()
    upstream_before = upstream_connections(fleet)
    tasks_before = gauge(fleet, "cortex_event_loop_tasks")

    async def burst() -> list[str]:
        limits = httpx.Limits(max_connections=500)
        async with httpx.AsyncClient(base_url=fleet.url, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(_stream(client, i % 3 == 0) for i in range(500)))

    outcomes = asyncio.run(burst())
    assert outcomes.count("left") == 167
    unfinished = [o[-300:] for o in outcomes if o != "left" and not o.endswith("data: [DONE]\n\n")]
    problems = [line for line in fleet.gateway.log().splitlines() if "WARNING" in line]
    assert not unfinished, (unfinished[:3], problems[:5])
    until(lambda: not fleet.fleet_state()["in_flight"], within_s=30)
    until(lambda: client_connections(fleet) == 0, within_s=30)
    # Connections to the neuron stay pooled until aiohttp's keep-alive (15 s) lets them go.
    until(lambda: upstream_connections(fleet) <= upstream_before + 2, within_s=30)
    until(lambda: gateway.num_fds() <= fds_before + 2, within_s=30)
    until(lambda: gauge(fleet, "cortex_event_loop_tasks") <= tasks_before, within_s=30)
    neuron_models = httpx.get(f"{fleet.neurons['beast'].url}/models").json()["models"]
    assert sum(m["in_flight"] for m in neuron_models) == 0


def _get_twice(url: str, pause_s: float) -> list[bytes]:
    """Two GET /health on one connection, ``pause_s`` apart: the status lines."""
    host, port = url.removeprefix("http://").split(":")
    request = f"GET /health HTTP/1.1\r\nhost: {host}\r\n\r\n".encode()
    lines = []
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        reader = sock.makefile("rb")
        for wait in (0.0, pause_s):
            time.sleep(wait)
            sock.sendall(request)
            lines.append(reader.readline().strip())
            length = 0
            while (header := reader.readline().strip()) != b"":
                name, _, value = header.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            reader.read(length)
    return lines


def test_idle_connections_outlive_the_clients_pools(
    start_fleet: StartFleet, models_root: Path
) -> None:
    """A connection idle for longer than httpx's pools keep one (5 s) still serves.

    With hypercorn's default (5 s) a request sent as the server gave up on the
    connection was cut, even mid-answer; the gateway's pool to the neurons
    (15 s) is under the neuron's keep-alive for the same reason.
    """
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24])], CATALOGUE, models_root=models_root
    )
    urls = [fleet.url, fleet.neurons["beast"].url]
    with ThreadPoolExecutor(len(urls)) as pool:
        results = dict(zip(urls, pool.map(lambda url: _get_twice(url, 6.0), urls), strict=True))
    assert results == {url: [b"HTTP/1.1 200"] * 2 for url in urls}
    # Closed by the client, a connection is let go at once, not at the end of its idle timer.
    neuron = psutil.Process(fleet.neurons["beast"].pid)
    until(lambda: client_connections(fleet) == 0, within_s=3)
    until(lambda: connections_to(neuron, urls[1]) == 0, within_s=3)


def test_sighup_reloads_and_sigterm_drains(start_fleet: StartFleet, models_root: Path) -> None:
    """SIGHUP reloads models.toml; SIGTERM drains with /health 503, then cuts and exits cleanly.

    A stream still running at the grace ends with an error event.
    """
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24])],
        CATALOGUE,
        models_root=models_root,
        gateway="shutdown_grace_s = 2.0",
        env={"NEURON_TEST_CHUNK_DELAY": "1.0"},
    )
    load(fleet, "fake/small", "beast")
    (fleet.workdir / "models.toml").write_text(
        '[aliases]\n"helexa/small" = "fake/small"\n' + CATALOGUE
    )
    os.kill(fleet.gateway.pid, signal.SIGHUP)
    until(lambda: "catalogue reloaded" in fleet.gateway.log())
    with fleet.http() as client:
        alias = client.post(
            "/v1/chat/completions", json={"model": "helexa/small", "messages": QUESTION}
        )
        assert alias.status_code == 200
    body = {"model": "fake/small", "messages": QUESTION, "stream": True}
    with (
        httpx.Client(base_url=fleet.url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        os.kill(fleet.gateway.pid, signal.SIGTERM)
        until(lambda: httpx.get(f"{fleet.url}/health").status_code == 503, within_s=5)
        rest = [line for line in lines if line.startswith("data: ")]
    assert json.loads(rest[-1][6:])["error"]["message"] == "the gateway is shutting down"
    assert fleet.gateway.process is not None
    assert fleet.gateway.process.wait(30) == 0
    log = fleet.gateway.log()
    assert "requests cut at shutdown" in log
    assert "Traceback" not in log


class FlappingProxy:
    """A TCP proxy that accepts for ``period_s``, then refuses for as long, in turn, while flapping.

    Connections it accepted keep forwarding whatever the listener does.
    """

    def __init__(self, host: str, period_s: float = 0.2) -> None:
        self.host = host
        self.port = free_port(host)
        self.period_s = period_s
        self.target: tuple[str, int] | None = None
        self.flapping = threading.Event()
        self.refusals = 0
        """Windows in which connections were refused."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Where the proxy listens (when it does)."""
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        """Stop listening for good."""
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            with socket.create_server((self.host, self.port)) as server:
                server.settimeout(0.02)
                opened = time.monotonic()
                while not self._stop.is_set() and (
                    not self.flapping.is_set() or time.monotonic() - opened < self.period_s
                ):
                    try:
                        conn, _ = server.accept()
                    except TimeoutError:
                        continue
                    threading.Thread(target=self._forward, args=(conn,), daemon=True).start()
            if self.flapping.is_set():
                self.refusals += 1
                self._stop.wait(self.period_s)

    def _forward(self, conn: socket.socket) -> None:
        try:
            assert self.target is not None
            upstream = socket.create_connection(self.target, timeout=30)
        except (OSError, AssertionError):
            conn.close()
            return

        def pump(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for side in (source, sink):
                    with contextlib.suppress(OSError):
                        side.shutdown(socket.SHUT_RDWR)

        back = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
        back.start()
        pump(conn, upstream)
        back.join(30)
        conn.close()
        upstream.close()


@pytest.fixture
def flapping() -> Iterator[FlappingProxy]:
    """A flapping proxy on 127.0.0.20 (steady until told to flap)."""
    proxy = FlappingProxy("127.0.0.20")
    yield proxy
    proxy.close()


async def _streams_for(
    url: str, seconds: float, workers: int, started: threading.Event
) -> list[tuple[str, str]]:
    """``workers`` clients streaming one chat after another for ``seconds``: (node, text) each.

    ``started`` is set once every worker's first stream has begun.
    """
    body = {"model": "fake/small", "messages": QUESTION, "stream": True}
    deadline = time.monotonic() + seconds
    done: list[tuple[str, str]] = []
    first = asyncio.Semaphore(0)

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    text = ""
                    async for chunk in response.aiter_text():
                        if not text:
                            first.release()
                        text += chunk
                    done.append((response.headers.get("x-cortex-node", ""), text))
            except httpx.HTTPError as exc:
                done.append(("", f"{type(exc).__name__}: {exc}"))

    async def all_started() -> None:
        for _ in range(workers):
            await first.acquire()
        started.set()

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await asyncio.gather(all_started(), *(worker(client) for _ in range(workers)))
    return done


def test_a_flapping_neuron_beside_a_stable_replica_loses_no_stream(
    start_fleet: StartFleet, models_root: Path, flapping: FlappingProxy
) -> None:
    """A neuron whose management listener flaps every 200 ms: every stream finishes.

    Its streams go to the address it advertises, which stays up; its polls go
    through the proxy and fail about half the time. Before polls failing in a
    row counted as evidence (and quiet requests with them), the first failed
    poll cut every stream on that neuron.
    """
    fleet = start_fleet(
        [
            NeuronSpec("beast", "127.0.0.2", [24], management=flapping.url),
            NeuronSpec("benjy", "127.0.0.3", [24]),
        ],
        CATALOGUE,
        models_root=models_root,
        env={"NEURON_TEST_CHUNK_DELAY": "1.0"},
    )
    host, port = fleet.neurons["beast"].url.removeprefix("http://").split(":")
    flapping.target = (host, int(port))
    until(lambda: node_up(fleet, "beast"))
    load(fleet, "fake/small", "beast")
    load(fleet, "fake/small", "benjy")
    # The first streams spread over both nodes; the listener flaps as soon as they run.
    served = asyncio.run(_streams_for(fleet.url, 14.0, 6, flapping.flapping))
    flapping.flapping.clear()
    cut = [text[-300:] for _, text in served if not text.endswith("data: [DONE]\n\n")]
    assert not cut, (len(cut), len(served), cut[:3])
    assert "error" not in "".join(text for _, text in served)
    on_beast = sum(1 for node, _ in served if node == "beast")
    assert on_beast >= 2, [node for node, _ in served]
    assert flapping.refusals >= 20
    assert "node poll failed" in fleet.gateway.log()


def _trickle(url: str, limit_s: float) -> float:
    """Send a request's headers a byte a second until the server hangs up: after how long."""
    host, port = url.removeprefix("http://").split(":")
    head = f"GET /health HTTP/1.1\r\nhost: {host}\r\nx-slow: ".encode() + b"a" * 200
    with socket.create_connection((host, int(port)), timeout=limit_s) as sock:
        sock.settimeout(1.0)
        started = time.monotonic()
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(1024) == b"":
                    break
            except TimeoutError:
                pass  # still open: another byte
            except OSError:
                break
            if time.monotonic() - started > limit_s:
                break
        return time.monotonic() - started


def test_a_header_trickle_is_cut_and_connections_past_the_cap_are_refused(
    start_fleet: StartFleet, models_root: Path
) -> None:
    """Slow headers are cut within 30 s (not at the 75 s keep-alive); past max_connections, 503.

    A connection let go makes room for the next.
    """
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24])],
        CATALOGUE,
        models_root=models_root,
        gateway="max_connections = 8",
    )
    assert _trickle(fleet.url, 40.0) < 30.0
    host, port = fleet.url.removeprefix("http://").split(":")
    until(lambda: client_connections(fleet) == 0, within_s=10)
    held = [socket.create_connection((host, int(port))) for _ in range(8)]
    try:
        until(lambda: client_connections(fleet) == 8, within_s=10)
        with socket.create_connection((host, int(port)), timeout=10) as extra:
            extra.sendall(f"GET /health HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
            answer = extra.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer[:200]
        assert b"retry-after: 1" in answer
        held.pop().close()
        until(lambda: client_connections(fleet) <= 7, within_s=10)
        assert httpx.get(f"{fleet.url}/health").status_code == 200
    finally:
        for sock in held:
            sock.close()
    assert "connections refused: too many open" in fleet.gateway.log()


def _large_catalogue(models: int) -> str:
    """A models.toml of ``models`` profiles more than CATALOGUE's (about 63 bytes each)."""
    return CATALOGUE + "".join(
        f'\n[[models]]\nid = "org/model-{i:05d}"\nmemory_gb = 4\npriority = {i % 100}\n'
        for i in range(models)
    )


class _HealthProbe:
    """A thread asking /health over and over on one connection: the slowest answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst = 0.0
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                assert client.get("/health").status_code == 200
                self.worst = max(self.worst, time.monotonic() - started)
                self.count += 1
                time.sleep(0.005)


def test_a_large_reload_leaves_health_answering_and_an_empty_one_is_refused(
    start_fleet: StartFleet, models_root: Path
) -> None:
    """4 MB of models.toml reloads without holding /health up; an empty file is refused.

    bench/dashboard.py prints the figures (the issue's target: /health under
    100 ms); the bound here tells a stall from normal work: on main the file
    was parsed on the event loop and /health waited for it (1.2 s here).
    """
    fleet = start_fleet(
        [NeuronSpec("beast", "127.0.0.2", [24])],
        '[aliases]\n"helexa/small" = "fake/small"\n' + CATALOGUE,
        models_root=models_root,
    )
    models_toml = fleet.workdir / "models.toml"
    large = '[aliases]\n"helexa/small" = "fake/small"\n' + _large_catalogue(66_000)
    assert len(large) > 4_000_000
    models_toml.write_text(large)
    with _HealthProbe(fleet.url) as probe, fleet.http() as client:
        answer = client.post("/admin/reload", json={})
        time.sleep(1.0)  # and the polls after it, with 66,001 models in force
    assert answer.status_code == 200, answer.text
    assert answer.json()["models"] == 66_001
    assert probe.count > 10
    print(f"/health at worst {probe.worst * 1000:.0f} ms during the reload")
    assert probe.worst < 0.5, probe.worst
    models_toml.write_text("")
    os.kill(fleet.gateway.pid, signal.SIGHUP)
    until(lambda: "it would remove every model (66001 in force)" in fleet.gateway.log())
    with fleet.http() as client:
        refused = client.post("/admin/reload", json={})
        assert refused.status_code == 409
        assert client.get("/v1/models/helexa%2Fsmall").status_code == 200


def test_a_40_mb_models_answer_marks_the_node_bad_without_stalling_the_loop(
    start_fleet: StartFleet,
    models_root: Path,
    misbehaving: ThreadingHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A neuron answering /models with 40 MB: it is down ("answer too large"), /health answers.

    On main every poll read and decoded the 40 MB on the event loop (the
    node then looked up, with 680,000 models) and /health waited for it.
    """
    models = [{"id": f"fake/m{i:06d}", "state": "ready", "memory_bytes": 1} for i in range(680_000)]
    body = json.dumps({"models": models}).encode()
    assert 38 << 20 < len(body) <= 40 << 20
    monkeypatch.setattr(_Misbehaving, "models_body", body + b" " * ((40 << 20) - len(body)))
    host, port = _address(misbehaving)
    fleet = start_fleet(
        [], "", models_root=models_root, extra_neurons=[("odd", f"http://{host}:{port}")]
    )

    def refused() -> bool:
        nodes: list[dict[str, Any]] = fleet.fleet_state()["nodes"]  # type: ignore[assignment]
        return not nodes[0]["up"] and "answer too large" in (nodes[0]["error"] or "")

    with _HealthProbe(fleet.url) as probe:
        until(refused, within_s=30)
        time.sleep(2.0)  # a few more polls of the 40 MB
    assert probe.count > 10
    assert probe.worst < 0.5, probe.worst
