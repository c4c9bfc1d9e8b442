"""A request on its node: sent, its answer awaited within its deadlines, read or streamed.

The node is the one its :class:`~cortex_gateway.leases.Lease` holds; what the
request learns of the node (its endpoint, reached or not, the model gone) goes
back through the lease. The answer must start within ``first_byte_timeout_s``
and a stream may not fall silent for ``stream_idle_timeout_s``; a lease taken
back (the node went down, the gateway stops) ends the request at once. A
request that failed before anything came back is :class:`Unsent`: another
node may take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cortex_core.config import GatewaySection
from cortex_core.text import printable
from cortex_gateway.bodies import context_overflow, relayable_message
from cortex_gateway.calls import Call
from cortex_gateway.errors import (
    ErrorKind,
    GatewayError,
    context_length_exceeded,
    upstream_refusal,
)
from cortex_gateway.leases import Lease
from cortex_gateway.metering import Meter
from cortex_gateway.neurons import NeuronCallError, Neurons, Upstream, UpstreamError
from cortex_gateway.responses import REQUEST_ID_HEADER

__all__ = [
    "BROKEN_STREAM",
    "Connection",
    "Opening",
    "Unsent",
    "Upstreams",
]

UNREACHABLE = "the model server could not be reached"
BROKEN_STREAM = "the model server stopped answering"
NO_ANSWER = "the model server did not answer in time"
SILENT = "the model server went silent"


@dataclass(eq=False)
class Connection:
    """An inference request open on a neuron: the lease it holds and the answer on its way."""

    lease: Lease
    upstream: Upstream

    def __post_init__(self) -> None:
        # A node that goes down (or a gateway that stops) drops the connection: the
        # reader then fails at once instead of waiting out a timeout.
        self.lease.on_abort(self.upstream.close)

    def close(self) -> None:
        """Drop the upstream request (if still open) and release the lease."""
        try:
            self.upstream.close()
        finally:
            self.lease.release()


class Unsent(Exception):
    """Nothing reached the model server's client side yet: another node may take the request.

    ``error`` is what to answer if no other node does.
    """

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


def _refusal(status: int, data: bytes, relayable: bool) -> GatewayError:
    """The client's error for a neuron's error answer (its words only where it allows)."""
    if not relayable:
        return upstream_refusal(status, None)
    if status == 400 and (overflow := context_overflow(data)) is not None:
        return context_length_exceeded(*overflow, upstream_status=status)
    relayed = relayable_message(data)
    return upstream_refusal(status, relayed and printable(relayed, 500))


class Upstreams:
    """Requests to the neurons' OpenAI APIs, within the gateway's deadlines."""

    def __init__(self, neurons: Neurons, settings: GatewaySection) -> None:
        self.neurons = neurons
        self.settings = settings

    async def open(self, call: Call, lease: Lease, path: str, body: bytes) -> Connection:
        """Send ``body`` to ``path`` of the model's OpenAI API on the lease's node.

        Answers once the upstream's status is in and is a success; the lease
        is released on every failure, which is :class:`Unsent` when another
        node may take the request, else a :class:`GatewayError`.
        """
        try:
            try:
                base = await lease.endpoint()
            except NeuronCallError as exc:
                error = GatewayError(
                    502,
                    ErrorKind.UPSTREAM,
                    UNREACHABLE,
                    error=str(exc),
                    upstream_status=exc.upstream_status,
                )
                raise Unsent(error) from exc
            call.url = url = f"{base.rstrip('/')}{path}"
            upstream = await self._first_byte(lease, url, body, call.request_id)
        except BaseException:
            lease.release()
            raise
        if upstream.status < 400:
            lease.reached()
            return Connection(lease, upstream)
        try:
            data = await self._read(upstream)
        finally:
            lease.release()
        error = _refusal(upstream.status, data, upstream.relayable)
        if upstream.status == 404:
            # The model left the node after it was routed there.
            await lease.moved()
            raise Unsent(error)
        raise error

    async def _first_byte(self, lease: Lease, url: str, body: bytes, request_id: str) -> Upstream:
        """Open the upstream request, bounded by ``first_byte_timeout_s`` and by the lease."""
        headers = {"content-type": "application/json", REQUEST_ID_HEADER: request_id}
        opening = asyncio.ensure_future(self.neurons.open(lease.node, url, body, headers))
        lease.on_abort(opening.cancel)
        try:
            done, _ = await asyncio.wait({opening}, timeout=self.settings.first_byte_timeout_s)
        except BaseException:
            _abandon(opening)
            raise
        if not done:
            _abandon(opening)
            raise GatewayError(
                504,
                ErrorKind.TIMEOUT,
                NO_ANSWER,
                timeout_s=self.settings.first_byte_timeout_s,
            )
        if opening.cancelled():  # the lease was aborted: the node went down, or we stop
            reason = lease.aborted or BROKEN_STREAM
            if lease.stopping:
                raise GatewayError(503, ErrorKind.UNAVAILABLE, reason)
            raise Unsent(GatewayError(502, ErrorKind.UPSTREAM, reason))
        try:
            return opening.result()
        except UpstreamError as exc:
            await lease.unreachable()
            error = GatewayError(502, ErrorKind.UPSTREAM, UNREACHABLE, error=str(exc))
            raise Unsent(error) from exc

    async def _read(self, upstream: Upstream) -> bytes:
        try:
            return await upstream.read()
        except UpstreamError as exc:
            raise GatewayError(
                502, ErrorKind.UPSTREAM, "the model server failed while answering", error=str(exc)
            ) from exc

    async def read(self, conn: Connection) -> bytes:
        """The whole answer of a connection (then released)."""
        try:
            return await self._read(conn.upstream)
        finally:
            conn.lease.release()

    async def chunks(self, conn: Connection) -> AsyncIterator[bytes]:
        """A streaming answer as it arrives, bounded by ``stream_idle_timeout_s`` between chunks.

        A break, a silence or an aborted lease is a :class:`GatewayError`.
        """
        idle = self.settings.stream_idle_timeout_s
        lease = conn.lease
        source = conn.upstream.chunks()
        watch = _Silence(idle)
        try:
            while True:
                watch.waiting()
                try:
                    chunk = await anext(source)
                except StopAsyncIteration:
                    break
                lease.heard()
                if lease.prefill:  # the first chunk: the node has computed the prompt
                    lease.prefilled()
                # No deadline while the client takes the chunk: only the neuron is timed.
                watch.waiting_for = None
                yield chunk
        except asyncio.CancelledError:
            if not watch.fired:
                raise
            watch.task.uncancel()
            raise GatewayError(504, ErrorKind.TIMEOUT, SILENT, idle_s=idle) from None
        except UpstreamError as exc:
            aborted = conn.lease.aborted
            if aborted is not None and conn.lease.stopping:
                raise GatewayError(503, ErrorKind.UNAVAILABLE, aborted) from exc
            raise GatewayError(
                502, ErrorKind.UPSTREAM, aborted or BROKEN_STREAM, error=str(exc)
            ) from exc
        finally:
            watch.stop()
            await source.aclose()  # type: ignore[attr-defined]


class Opening:
    """A connection still on its way (routing, a cold load, the first byte), read as a stream.

    For a stream that starts before its model is ready: :meth:`chunks` gives an
    empty chunk every ``heartbeat_s`` while the connection is awaited (the
    surface's keep-alive), then the answer's chunks.
    """

    def __init__(
        self,
        connecting: asyncio.Future[Connection],
        upstreams: Upstreams,
        meter: Meter,
        heartbeat_s: float,
    ) -> None:
        self.connecting = connecting
        self._upstreams = upstreams
        self._meter = meter
        self._heartbeat_s = heartbeat_s

    async def settle(self, within_s: float, call: Call) -> None:
        """Wait for the connection, up to ``within_s`` unless its node was chosen by then.

        A request routed at once waits for its answer to start, so that a
        refusal or a failure is a real status; one still waiting for its model
        after ``within_s`` starts streaming. A failure by then is raised.
        """
        connecting = self.connecting
        await asyncio.wait({connecting}, timeout=within_s)
        if not connecting.done() and call.routed is not None:
            await asyncio.wait({connecting})
        if connecting.done():
            connecting.result()

    async def chunks(self) -> AsyncIterator[bytes]:
        """Empty chunks while the connection is awaited, then the answer's chunks."""
        connecting = self.connecting
        while not connecting.done():
            await asyncio.wait({connecting}, timeout=self._heartbeat_s)
            if not connecting.done():
                yield b""
        conn = connecting.result()
        self._meter.first_byte = time.monotonic()
        async for chunk in self._upstreams.chunks(conn):
            yield chunk

    def close(self) -> None:
        """Give back what the stream held: the wait (a load carries on) or the connection."""
        connecting = self.connecting
        if not connecting.done():
            connecting.cancel()
        elif not connecting.cancelled() and connecting.exception() is None:
            connecting.result().close()
        else:
            with contextlib.suppress(BaseException):
                connecting.exception()  # retrieved: no "never retrieved" warning


class _Silence:
    """The idle deadline of a stream, for the price of reading the clock once per chunk.

    A timer that is re-armed for every chunk costs two timer operations per
    chunk; this one fires at most once per ``limit`` and looks at when the
    current wait began. A silence of ``limit`` while the neuron is waited on
    cancels the streaming task, with :attr:`fired` set to tell it why.
    """

    __slots__ = ("fired", "handle", "limit", "loop", "task", "waiting_for")

    def __init__(self, limit: float) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "streams are read by a task"
        self.task = task
        self.limit = limit
        self.fired = False
        self.waiting_for: float | None = None
        """When the wait for the current chunk began; None while the client takes one."""
        self.handle = self.loop.call_later(limit, self._check)

    def waiting(self) -> None:
        self.waiting_for = self.loop.time()

    def _check(self) -> None:
        since = self.waiting_for
        now = self.loop.time()
        if since is not None and now - since >= self.limit:
            self.fired = True
            self.task.cancel()
            return
        due = since + self.limit if since is not None else now + self.limit
        self.handle = self.loop.call_at(due, self._check)

    def stop(self) -> None:
        self.handle.cancel()


def _abandon(opening: asyncio.Future[Upstream]) -> None:
    """Stop waiting for an upstream; if it still arrives, drop it."""
    opening.cancel()

    def drop(done: asyncio.Future[Upstream]) -> None:
        if not done.cancelled() and done.exception() is None:
            done.result().close()

    opening.add_done_callback(drop)
