"""The counts ``workers = N`` share: kept by the supervisor, asked for by the workers.

Each worker has one link to its supervisor: a Unix socket pair made when the
worker starts, its end passed to the worker (``--shared-fd``). On it the
worker asks to admit a request of a limited key (:class:`Admit`, answered by
a :class:`Verdict`: one round trip, only for keys with a limit), counts the
request out with its tokens (:class:`Release`, no answer), and asks for the
usage of the whole gateway (:class:`AskUsage`), which the supervisor gathers
by asking every worker for its own (the same message the other way) and
merging the answers. So a limit holds for the gateway as a whole, and
``GET /admin/usage`` on any worker shows every worker's requests.

The supervisor's :class:`Coordinator` keeps one
:class:`~cortex_gateway.quotas.Limits`; a worker that dies has its requests
counted out when its link closes. A worker whose link breaks counts alone
from then on (logged once), as a single gateway would. Frames are a 4-byte
length and a msgpack message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Literal

import msgspec

from cortex_gateway.background import Background
from cortex_gateway.quotas import Admission, Limits, LocalQuotas, Refusal
from cortex_gateway.tenants import Tenant
from cortex_gateway.usage import UsageReport, merge_reports

__all__ = ["Coordinator", "WorkerLink"]

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 5.0
"""How long a worker waits for its supervisor before it counts alone."""
GATHER_TIMEOUT_S = 2.0
"""How long the supervisor waits for each worker's usage (a worker starting answers later)."""
MAX_FRAME = 16 << 20


class Admit(msgspec.Struct, tag=True):
    id: int
    name: str
    max_concurrent: int
    tokens_per_minute: int


class Verdict(msgspec.Struct, tag=True):
    id: int
    limit: Literal["max_concurrent", "tokens_per_minute"] | None = None
    retry_after_s: int = 0


class Release(msgspec.Struct, tag=True):
    name: str
    tokens: int


class AskUsage(msgspec.Struct, tag=True):
    id: int


class Usage(msgspec.Struct, tag=True):
    id: int
    report: UsageReport


Message = Admit | Verdict | Release | AskUsage | Usage
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)
_LENGTH = struct.Struct(">I")


def _frame(message: Message) -> bytes:
    body = _encoder.encode(message)
    return _LENGTH.pack(len(body)) + body


async def _read(reader: asyncio.StreamReader) -> Message:
    (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if size > MAX_FRAME:
        raise ValueError(f"a frame of {size} bytes")
    message: Message = _decoder.decode(await reader.readexactly(size))
    return message


class _Peer:
    """One end of a link: frames out, answers to our questions matched by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Message]] = {}

    def send(self, message: Message) -> None:
        self.writer.write(_frame(message))

    async def ask(self, make: Callable[[int], Message], within_s: float) -> Message:
        """Send the question ``make(id)`` and wait for the answer with that id."""
        ask_id = next(self._ids)
        answer = self._waiting[ask_id] = asyncio.get_running_loop().create_future()
        try:
            self.send(make(ask_id))
            return await asyncio.wait_for(answer, within_s)
        finally:
            self._waiting.pop(ask_id, None)

    def answered(self, message: Verdict | Usage) -> None:
        """An answer came: to the question waiting for it, if one still does."""
        waiting = self._waiting.get(message.id)
        if waiting is not None and not waiting.done():
            waiting.set_result(message)

    def close(self) -> None:
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(ConnectionError("the link closed"))
        self.writer.close()


def _paired_socket() -> tuple[socket.socket, int]:
    """A connected pair: our end, and the other end's descriptor for a child to inherit."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.set_inheritable(True)
    return ours, theirs.detach()


# --- the supervisor's side ------------------------------------------------------------


class Coordinator:
    """The supervisor's counts, and its links to the workers."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.limits = Limits()
        self._clock = clock
        self._links: dict[int, _Peer] = {}
        self.background = Background()

    def link(self, worker: int) -> int:
        """A new link for worker ``worker`` (starting, or started again): the fd to pass it.

        The caller closes that fd once the worker has it.
        """
        ours, theirs = _paired_socket()
        self.background.spawn(self._serve(worker, ours))
        return theirs

    async def _serve(self, worker: int, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        peer = _Peer(reader, writer)
        self._links[worker] = peer
        held: Counter[str] = Counter()
        try:
            while True:
                message = await _read(reader)
                if isinstance(message, Admit):
                    peer.send(self._admit(message, held))
                elif isinstance(message, Release):
                    held[message.name] -= 1
                    self.limits.release(message.name, message.tokens, self._clock())
                elif isinstance(message, AskUsage):
                    self.background.spawn(self._gather(peer, message.id))
                elif isinstance(message, Usage | Verdict):
                    peer.answered(message)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, msgspec.DecodeError):
            pass  # the worker is gone (or spoke nonsense): its requests end with it
        finally:
            if self._links.get(worker) is peer:
                del self._links[worker]
            for name, count in held.items():
                for _ in range(count):
                    self.limits.release(name, 0, self._clock())
            peer.close()

    def _admit(self, asked: Admit, held: Counter[str]) -> Verdict:
        refusal = self.limits.admit(
            asked.name, asked.max_concurrent, asked.tokens_per_minute, self._clock()
        )
        if refusal is not None:
            return Verdict(asked.id, refusal.limit, refusal.retry_after_s)
        held[asked.name] += 1
        return Verdict(asked.id)

    async def _gather(self, asker: _Peer, ask_id: int) -> None:
        """Every worker's usage, merged, to the worker that asked."""

        async def one(peer: _Peer) -> UsageReport | None:
            try:
                answer = await peer.ask(AskUsage, GATHER_TIMEOUT_S)
            except (TimeoutError, OSError):
                return None
            return answer.report if isinstance(answer, Usage) else None

        reports = await asyncio.gather(*(one(p) for p in list(self._links.values())))
        merged = merge_reports(r for r in reports if r is not None)
        with contextlib.suppress(ConnectionError):
            asker.send(Usage(ask_id, merged))

    async def close(self) -> None:
        """Close every link."""
        for peer in list(self._links.values()):
            peer.close()
        await self.background.close()


# --- a worker's side --------------------------------------------------------------------


class _Shared:
    """A request counted in by the supervisor."""

    __slots__ = ("_link", "_name")

    def __init__(self, link: WorkerLink, name: str) -> None:
        self._link = link
        self._name = name

    def release(self, tokens: int) -> None:
        self._link.send(Release(self._name, tokens))


class WorkerLink:
    """A worker's link to its supervisor: the shared counts, and the gateway's whole usage."""

    def __init__(self, fd: int, local_usage: Callable[[], UsageReport]) -> None:
        """The link on the inherited ``fd``; ``local_usage`` says this worker's own usage."""
        self._fd = fd
        self._local_usage = local_usage
        self._peer: _Peer | None = None
        self._opening: asyncio.Task[_Peer] | None = None
        """The link being opened: every request that needs it meanwhile waits for this one."""
        self._reading: asyncio.Task[None] | None = None
        self._alone: LocalQuotas | None = None

    def quotas(self) -> WorkerLink:
        """Itself, as the gateway's quotas (what ``create_apps`` takes is a factory)."""
        return self

    async def _connect(self) -> _Peer:
        if self._peer is not None:
            return self._peer
        # Opened once however many requests ask at once (a second opening of the same
        # descriptor fails, and the worker would count alone), and not abandoned when
        # the request that started it goes.
        if self._opening is None:
            self._opening = asyncio.create_task(self._open())
        return await asyncio.shield(self._opening)

    async def _open(self) -> _Peer:
        sock = socket.socket(fileno=self._fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        peer = self._peer = _Peer(reader, writer)
        self._reading = asyncio.create_task(self._read(peer))
        return peer

    async def _read(self, peer: _Peer) -> None:
        try:
            while True:
                message = await _read(peer.reader)
                if isinstance(message, AskUsage):
                    peer.send(Usage(message.id, self._local_usage()))
                elif isinstance(message, Verdict | Usage):
                    peer.answered(message)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, msgspec.DecodeError):
            self._lost("the supervisor closed the link")

    def _lost(self, why: str) -> LocalQuotas:
        if self._alone is None:
            log.error(
                "shared limits unavailable: this worker counts its own requests alone",
                extra={"error": why},
            )
            self._alone = LocalQuotas()
            if self._peer is not None:
                self._peer.close()
        return self._alone

    def send(self, message: Message) -> None:
        """Tell the supervisor (nothing, once the link is lost)."""
        if self._alone is None and self._peer is not None:
            self._peer.send(message)

    async def admit(self, tenant: Tenant) -> Admission | Refusal:
        """Count a request of ``tenant`` in, across every worker (or alone, the link lost)."""
        if self._alone is not None:
            return self._alone.admit_now(tenant)
        try:
            peer = await self._connect()
            answer = await peer.ask(
                lambda i: Admit(i, tenant.name, tenant.max_concurrent, tenant.tokens_per_minute),
                ASK_TIMEOUT_S,
            )
        except (TimeoutError, OSError) as exc:  # ConnectionError is an OSError
            return self._lost(repr(exc)).admit_now(tenant)
        assert isinstance(answer, Verdict)
        if answer.limit is not None:
            return Refusal(answer.limit, answer.retry_after_s)
        return _Shared(self, tenant.name)

    async def usage(self) -> UsageReport:
        """Every worker's usage, merged (this worker's alone, the link lost)."""
        if self._alone is None:
            try:
                answer = await (await self._connect()).ask(AskUsage, ASK_TIMEOUT_S)
            except (TimeoutError, OSError) as exc:
                self._lost(repr(exc))
            else:
                assert isinstance(answer, Usage)
                return answer.report
        return self._local_usage()

    async def close(self) -> None:
        """Close the link."""
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        if self._peer is not None:
            self._peer.close()
