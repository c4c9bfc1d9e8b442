"""The admin API: the fleet as ``cortex status`` shows it, and loads and unloads on demand."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from cortex_core.catalogue import ModelProfile
from cortex_core.ids import InvalidModelId, parse_model_id
from cortex_core.wire import WireError, decode, to_builtins
from cortex_gateway.app import Gateway, _json
from cortex_gateway.lifecycle import RouteError

__all__ = ["AdminRequest", "AdminRoutes"]


class AdminRequest(msgspec.Struct):
    """``POST /admin/models/load|unload``."""

    model: str
    node: str | None = None


class AdminRoutes:
    """``/admin/...`` over a :class:`Gateway`'s lifecycle."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def fleet(self, request: Request) -> Response:
        """``GET /admin/fleet``: what ``cortex status`` shows."""
        life = self.gateway.life
        await life.refresh_all()  # people read this: show now, not the last poll
        nodes = []
        for node in life.fleet.nodes.values():
            nodes.append(
                {
                    "name": node.name,
                    "endpoint": node.endpoint,
                    "up": node.up,
                    "version": node.version,
                    "last_seen": node.last_seen,
                    "error": node.error,
                    "devices": to_builtins(list(node.devices)),
                    "models": to_builtins(list(node.models)),
                }
            )
        in_flight = [
            {"node": node, "model": model, "count": count}
            for (node, model), count in life.in_flight.items()
        ]
        return _json({"nodes": nodes, "loading": sorted(life.loading), "in_flight": in_flight})

    async def load(self, request: Request) -> Response:
        """``POST /admin/models/load``: place (or put on ``node``) and wait until ready."""
        try:
            body = decode(await request.body(), AdminRequest)
            model = parse_model_id(self.gateway.life.catalogue.resolve_alias(body.model))
        except (WireError, InvalidModelId) as exc:
            return self.gateway.fail(400, str(exc), "invalid_request_error", handler="admin_load")
        profile = self.gateway.life.catalogue.profile(model.concrete) or ModelProfile(
            id=model.concrete, source=model.source
        )
        if model.source and profile.source != model.source:
            profile = ModelProfile(id=model.concrete, source=model.source, engine=profile.engine)
        if body.node is not None:
            if body.node not in self.gateway.life.clients:
                return self.gateway.fail(
                    404, f"no neuron named {body.node!r}", "not_found_error", handler="admin_load"
                )
            profile = ModelProfile(
                id=profile.id,
                source=profile.source,
                engine=profile.engine,
                nodes=[body.node],
                priority=profile.priority,
                memory_gb=profile.memory_gb,
            )
        try:
            node = await self.gateway.life.ensure_loaded(profile)
        except RouteError as exc:
            return self.gateway.fail(
                exc.status,
                exc.message,
                "service_unavailable",
                handler="admin_load",
                model=model.concrete,
            )
        return _json({"model": model.concrete, "node": node, "state": "ready"}, node=node)

    async def unload(self, request: Request) -> Response:
        """``POST /admin/models/unload``: from ``node``, or everywhere it is loaded."""
        try:
            body = decode(await request.body(), AdminRequest)
        except WireError as exc:
            return self.gateway.fail(
                400, exc.message, "invalid_request_error", handler="admin_unload"
            )
        model_id = self.gateway.life.catalogue.resolve_alias(body.model)
        nodes = [body.node] if body.node else self.gateway.life.fleet.locations(model_id)
        nodes = [
            n
            for n in nodes
            if n in self.gateway.life.clients and self.gateway.life.fleet.nodes[n].model(model_id)
        ]
        if not nodes:
            return self.gateway.fail(
                404,
                f"model {model_id!r} is not loaded",
                "not_found_error",
                handler="admin_unload",
                model=model_id,
            )
        try:
            for node in nodes:
                await self.gateway.life.unload(node, model_id, "admin")
        except RouteError as exc:
            return self.gateway.fail(
                exc.status, exc.message, "upstream_error", handler="admin_unload", model=model_id
            )
        return _json({"model": model_id, "nodes": nodes, "state": "unloaded"})
