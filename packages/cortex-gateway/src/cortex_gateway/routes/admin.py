"""The admin API: the fleet as ``cortex status`` shows it, and loads and unloads on demand."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cortex_core.catalogue import ModelProfile
from cortex_core.ids import InvalidModelId, parse_model_id
from cortex_core.text import printable
from cortex_core.wire import to_builtins
from cortex_gateway.calls import Call
from cortex_gateway.errors import ErrorKind, GatewayError, Surface
from cortex_gateway.incoming import decode_body, read_body
from cortex_gateway.openapi import AdminRequest, ReloadAnswer, ReloadRequest
from cortex_gateway.responses import json_response
from cortex_gateway.routes.endpoint import Handler, endpoint
from cortex_gateway.state import Gateway

__all__ = ["AdminRoutes"]

FRESH_WITHIN_S = 2.0
"""How long ``/admin/fleet`` waits for the neurons' answers before it shows what it has."""
_REFUSALS = {409: ErrorKind.CONFLICT, 503: ErrorKind.UNAVAILABLE}
"""A refused reload's kind by status (else a broken file: a bad request)."""


class AdminRoutes:
    """``/admin/...`` over a :class:`~cortex_gateway.state.Gateway`'s lifecycle."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def routes(self) -> list[Route]:
        """The routes, wrapped."""

        def r(path: str, handler: str, work: Handler, method: str) -> Route:
            wrapped = endpoint(self.gateway, handler, Surface.OPENAI, work, admin=True)
            return Route(path, wrapped, methods=[method])

        return [
            r("/admin/fleet", "admin_fleet", self.fleet, "GET"),
            r("/admin/models/load", "admin_load", self.load, "POST"),
            r("/admin/models/unload", "admin_unload", self.unload, "POST"),
            r("/admin/reload", "admin_reload", self.reload, "POST"),
            r("/admin/usage", "admin_usage", self.usage, "GET"),
        ]

    async def fleet(self, request: Request, call: Call) -> Response:
        """``GET /admin/fleet``: what ``cortex status`` shows."""
        life = self.gateway.lifecycle
        # People read this: show now, not the last poll (a node slow to answer shows as last seen).
        await life.refresh_all(within_s=FRESH_WITHIN_S)
        status = life.status()
        nodes = [
            {
                "name": node.name,
                "endpoint": node.endpoint,
                "up": node.up,
                "version": node.version,
                "last_seen": node.last_seen,
                "error": node.error,
                "devices": to_builtins(list(node.devices)),
                "sleeping_bytes": node.sleeping_bytes,
                "models": to_builtins(list(node.models)),
            }
            for node in status.fleet.nodes.values()
        ]
        in_flight = [
            {"node": node, "model": model, "count": count}
            for (node, model), count in status.in_flight.items()
        ]
        now = time.time()
        backoff = [
            {"node": node, "model": model, "failures": state.failures, "until": state.until}
            for (node, model), state in status.backoffs.items()
            if state.until > now
        ]
        waiting = [{"model": model, "count": count} for model, count in status.waiting.items()]
        return json_response(
            {
                "nodes": nodes,
                "loading": sorted(status.loading),
                "in_flight": in_flight,
                "waiting": waiting,
                "backoff": backoff,
            }
        )

    async def usage(self, request: Request, call: Call) -> Response:
        """``GET /admin/usage``: requests and tokens per key and model since the start."""
        return json_response(await self.gateway.usage())

    async def reload(self, request: Request, call: Call) -> Response:
        """``POST /admin/reload``: read ``models.toml`` and the keys again, as SIGHUP does.

        The body may be empty, or ``{"force": true}``. A broken file answers
        422 naming file, key and problem; one that would remove every model or
        alias, or drop a pinned model in use, 409 unless forced; one not read
        in time, 503. The catalogue in force stays.
        """
        gateway = self.gateway
        raw = await read_body(request, gateway.settings)
        force = decode_body(raw, ReloadRequest).force if raw.strip() else False
        if refusal := await gateway.reload(force=force):
            kind = _REFUSALS.get(refusal.status, ErrorKind.BAD_REQUEST)
            raise GatewayError(refusal.status, kind, f"not reloaded: {refusal.message}")
        if gateway.on_reloaded is not None:
            gateway.on_reloaded(force)
        config = self.gateway.config
        answer = ReloadAnswer(
            str(config.models_path), len(config.catalogue), dict(config.catalogue.aliases)
        )
        return json_response(answer)

    async def load(self, request: Request, call: Call) -> Response:
        """``POST /admin/models/load``: place (or put on ``node``) and wait until ready."""
        gateway = self.gateway
        body = decode_body(await read_body(request, gateway.settings), AdminRequest)
        catalogue = gateway.config.catalogue
        try:
            model = parse_model_id(call.name(catalogue, body.model))
        except InvalidModelId as exc:
            raise GatewayError(400, ErrorKind.BAD_REQUEST, printable(str(exc), 500)) from exc
        catalogued = catalogue.profile(model.concrete)
        profile = catalogued or ModelProfile(id=model.concrete, source=model.source)
        if model.source and profile.source != model.source:
            profile = ModelProfile(id=model.concrete, source=model.source, engine=profile.engine)
            catalogued = None
        if catalogued is None and not gateway.settings.allow_uncatalogued_loads:
            raise GatewayError(
                403,
                ErrorKind.FORBIDDEN,
                f"'{printable(body.model)}' is not in the catalogue"
                " (allow_uncatalogued_loads is off)",
            )
        if body.node is not None:
            if body.node not in gateway.lifecycle.status().fleet.nodes:
                raise GatewayError(
                    404, ErrorKind.NOT_FOUND, f"no neuron named '{printable(body.node)}'"
                )
            profile = ModelProfile(
                id=profile.id,
                source=profile.source,
                engine=profile.engine,
                nodes=[body.node],
                priority=profile.priority,
                memory_gb=profile.memory_gb,
            )
        # An operator asks: its failed loads are forgotten, and it is tried now.
        node = call.node = await gateway.lifecycle.load(profile)
        return json_response(
            {"model": model.concrete, "node": node, "state": "ready"}, headers=call.headers()
        )

    async def unload(self, request: Request, call: Call) -> Response:
        """``POST /admin/models/unload``: from ``node``, or everywhere it is loaded."""
        gateway = self.gateway
        body = decode_body(await read_body(request, gateway.settings), AdminRequest)
        model_id = call.name(gateway.config.catalogue, body.model)
        nodes = await gateway.lifecycle.unload(model_id, body.node)
        if not nodes:
            raise GatewayError(
                404, ErrorKind.NOT_FOUND, f"model '{printable(model_id)}' is not loaded"
            )
        return json_response({"model": model_id, "nodes": nodes, "state": "unloaded"})
