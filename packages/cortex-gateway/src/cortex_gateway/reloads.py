"""Reading ``models.toml`` again while the gateway serves: off the loop, bounded, and guarded.

A reload reads and checks the file (and ``cortex.toml``'s keys, which reload
with it) in a thread of its own, so a large file
costs the event loop nothing and a file on a hung file system blocks that
thread, never the loop: the reload gives up after ``RELOAD_TIMEOUT_S`` and
the catalogue in force stays. The file's size is capped where every config
file is read (``cortex_core``'s ``MAX_CONFIG_BYTES``).

A catalogue read well may still be a mistake: one that would remove every
model or every alias (an empty file), or drop a pinned model that is loaded or
serving, is refused unless the reload is forced (``POST /admin/reload`` with
``{"force": true}``, ``cortex alias ... --force``); SIGHUP never forces.
:func:`guard` is that rule, pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from cortex_core.catalogue import Catalogue, load_catalogue
from cortex_core.config import ConfigError, GatewayConfig, check_catalogue_nodes
from cortex_gateway.tenants import KeyRing

__all__ = ["MAX_STUCK", "RELOAD_TIMEOUT_S", "CatalogueReader", "Read", "Refusal", "guard"]

RELOAD_TIMEOUT_S = 10.0
"""How long reading and checking ``models.toml`` may take before the reload gives up."""
MAX_STUCK = 4
"""Reads that never finished (a hung file system) before further reloads are refused at once."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a reload did not happen: the HTTP status ``POST /admin/reload`` answers, and why."""

    status: int
    """422: the file is broken; 409: the guard refused it; 503: it could not be read in time."""
    message: str


@dataclass(frozen=True, slots=True)
class Read:
    """What a reload read: the catalogue, and the keys ``cortex.toml`` now gives."""

    catalogue: Catalogue
    keys: KeyRing


def guard(old: Catalogue, new: Catalogue, in_use: Collection[str]) -> str | None:
    """Why replacing ``old`` by ``new`` needs forcing, if it does.

    ``in_use`` holds the models loaded somewhere or with requests in flight.
    """
    if len(old) and not len(new):
        return f"it would remove every model ({len(old)} in force)"
    if old.aliases and not new.aliases:
        return f"it would remove every alias ({len(old.aliases)} in force)"
    dropped = [
        p.id for p in old.models if p.pinned and p.id in in_use and new.profile(p.id) is None
    ]
    if dropped:
        return f"it would drop the pinned model(s) {', '.join(dropped)}, loaded and in use"
    return None


class CatalogueReader:
    """Reads and checks ``models.toml`` in a daemon thread, waiting for it a bounded time."""

    def __init__(self, timeout_s: float = RELOAD_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._unfinished = 0
        """Reads whose thread has not returned (stuck ones included)."""

    async def read(
        self, config: GatewayConfig, read_keys: Callable[[Path], KeyRing]
    ) -> Read | Refusal:
        """The catalogue ``config.models_path`` now holds, checked against ``cortex.toml``.

        ``read_keys(cortex_path)`` reads the keys again, in the same thread.
        """
        if self._unfinished >= MAX_STUCK:
            return Refusal(
                503, f"{self._unfinished} earlier reads of {config.models_path} never finished"
            )
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Read] = loop.create_future()

        def settle(result: Read | ConfigError) -> None:
            self._unfinished -= 1
            if answer.done():
                return
            if isinstance(result, ConfigError):
                answer.set_exception(result)
            else:
                answer.set_result(result)

        def work() -> None:
            try:
                result: Read | ConfigError = _read(config, read_keys)
            except ConfigError as exc:
                result = exc
            # The loop may be gone (the gateway stopped meanwhile): nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, result)

        self._unfinished += 1
        # A daemon thread, not the loop's executor: one stuck in the kernel must not hold
        # up the executor's shutdown when the gateway stops.
        threading.Thread(target=work, name="cortex-reload", daemon=True).start()
        try:
            await asyncio.wait({answer}, timeout=self.timeout_s)
        finally:
            if not answer.done():
                answer.cancel()  # what the thread finds later is dropped
        if answer.cancelled():
            return Refusal(
                503,
                f"{config.models_path} was not read within {self.timeout_s:g} s"
                " (a hung file system?)",
            )
        try:
            return answer.result()
        except ConfigError as exc:
            return Refusal(422, str(exc))


def _read(config: GatewayConfig, read_keys: Callable[[Path], KeyRing]) -> Read:
    catalogue = load_catalogue(config.models_path)
    check_catalogue_nodes(config.path, config.models_path, config.cortex, catalogue)
    return Read(catalogue, read_keys(config.path))
