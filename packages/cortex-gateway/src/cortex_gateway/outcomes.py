"""How each request ended, recorded once: its metrics, the dashboard's charts, one log line.

A success by :meth:`Outcomes.finish`, a failure by :meth:`Outcomes.fail`
(answered in the surface's envelope by :meth:`Outcomes.error_response`), a
client gone by :meth:`Outcomes.gone`. A stream's outcome is known only when it
ends: :meth:`Outcomes.stream` turns a failure while streaming into the
surface's error event and records whichever way it ended.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import Response

from cortex_core.openai import Usage
from cortex_gateway.activity import ALL, Series
from cortex_gateway.calls import INFERENCE_ROUTES, Call
from cortex_gateway.errors import ErrorKind, GatewayError, internal_error
from cortex_gateway.metering import Meter
from cortex_gateway.metrics import GatewayMetrics, Labels
from cortex_gateway.responses import ClosingStream, json_response
from cortex_gateway.sse import EventTooLarge
from cortex_gateway.upstream import BROKEN_STREAM
from cortex_gateway.usage import KeyAccounts

__all__ = ["CLIENT_GONE", "Outcomes"]

log = logging.getLogger(__name__)

CHARTED_ROUTES = INFERENCE_ROUTES - {"count_tokens"}
"""Routes the dashboard's activity counts: those that run a model."""
CLIENT_GONE = 499
"""nginx's status for a client that went away before its answer: nobody reads it."""


def _series_key(label: str) -> str:
    return ALL if label == "none" else label


class Outcomes:
    """Records every request's outcome in the metrics, the series and the log."""

    def __init__(self, metrics: GatewayMetrics, series: Series, accounts: KeyAccounts) -> None:
        self.metrics = metrics
        self.series = series
        """The last minutes of inference requests, per model: the dashboard's charts."""
        self.accounts = accounts
        """Usage per key (``/admin/usage`` and the ``cortex_key_*`` metrics)."""

    def _account(self, call: Call, labels: Labels, status: int, usage: Usage | None) -> None:
        """The call's key: counted out of its limits, its usage counted (inference routes)."""
        admission, call.admission = call.admission, None
        if admission is not None:
            admission.release(usage.prompt_tokens + usage.completion_tokens if usage else 0)
        if labels.route != "other":
            self.accounts.record(call.tenant.name, labels.model, status, usage)

    def finish(self, call: Call, status: int, meter: Meter) -> None:
        """Record an answered request: its metrics and its one log line."""
        labels = self.metrics.labels(call.model, call.alias, call.node, call.route)
        latency = time.monotonic() - call.started
        waited = (call.routed or call.started) - call.started
        self.metrics.observe_success(labels, status, meter, latency, waited)
        usage = meter.usage
        self._account(call, labels, status, usage)
        if labels.route in CHARTED_ROUTES:
            tokens = usage.completion_tokens if usage else 0
            self.series.record(_series_key(labels.model), ok=True, tokens=tokens, ttft=meter.ttft)
        log.info(
            "request",
            extra={
                "request_id": call.request_id,
                "handler": call.handler,
                **call.fields(),
                "status": status,
                "prompt_tokens": usage.prompt_tokens if usage else None,
                "cached_tokens": usage.cached_tokens if usage else None,
                "completion_tokens": usage.completion_tokens if usage else None,
                "ttft_s": round(meter.ttft, 3) if meter.ttft is not None else None,
                "latency_s": round(latency, 3),
            },
        )

    def fail(self, call: Call, error: GatewayError) -> None:
        """Record a failed request: its metrics and its one log line."""
        labels = self.metrics.labels(call.model, call.alias, call.node, call.route)
        self.metrics.observe_failure(labels, error.status, error.kind)
        self._account(call, labels, error.status, None)
        if labels.route in CHARTED_ROUTES:
            self.series.record(_series_key(labels.model), ok=False)
        fields: dict[str, Any] = {
            "request_id": call.request_id,
            "handler": call.handler,
            **call.fields(),
            "status": error.status,
            "kind": error.kind.value,
            "error": error.message,
        }
        if call.url:
            fields["url"] = call.url
        fields.update(error.log)
        if error.kind is ErrorKind.INTERNAL:
            log.error("request failed", extra=fields, exc_info=error.__cause__)
        else:
            log.warning("request failed", extra=fields)

    def error_response(self, call: Call, error: GatewayError) -> Response:
        """Record ``error`` as the call's outcome and answer it in the call's surface."""
        self.fail(call, error)
        headers = {**call.headers(), **error.headers}
        return json_response(error.envelope(call.surface), error.status, headers)

    def gone(self, call: Call) -> Response:
        """Record a client that left before its answer (nothing was sent on for it)."""
        labels = self.metrics.labels(call.model, call.alias, call.node, call.route)
        self.metrics.observe_gone(labels)
        self._account(call, labels, CLIENT_GONE, None)
        log.info(
            "client gone",
            extra={"request_id": call.request_id, "handler": call.handler, **call.fields()},
        )
        return Response(status_code=CLIENT_GONE)

    def stream(
        self,
        call: Call,
        events: AsyncIterator[bytes],
        meter: Meter,
        *,
        render: Callable[[GatewayError], bytes],
        close: Callable[[], None],
    ) -> ClosingStream:
        """Answer with ``events`` as a stream that ends well whatever happens.

        A :class:`GatewayError` raised while streaming becomes the surface's
        error event (``render``) and is recorded as the request's failure;
        ``close`` then gives back what the stream held (upstream, lease).
        """
        failure: list[GatewayError] = []

        async def body() -> AsyncIterator[bytes]:
            try:
                async for piece in events:
                    yield piece
            except GatewayError as exc:
                failure.append(exc)
                yield render(exc)
            except EventTooLarge as exc:
                error = GatewayError(502, ErrorKind.UPSTREAM, BROKEN_STREAM, error=str(exc))
                failure.append(error)
                yield render(error)
            except Exception as exc:
                error = internal_error()
                error.__cause__ = exc
                failure.append(error)
                yield render(error)
            finally:
                await events.aclose()  # type: ignore[attr-defined]

        async def done() -> None:
            close()
            if failure:
                self.fail(call, failure[0])
            else:
                self.finish(call, 200, meter)

        return ClosingStream(body(), call.headers(), done)
