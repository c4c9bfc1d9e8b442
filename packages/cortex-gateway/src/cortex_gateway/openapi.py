"""The gateway's API as an OpenAPI 3.1 document, built from the wire types themselves.

Request and response bodies are the msgspec structs the gateway and the
neurons decode and encode (``msgspec.json.schema_components``), so the
document cannot drift from the code. ``GET /openapi.json`` serves it; the
tests fuzz the gateway against it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from cortex_core import anthropic as an
from cortex_core import embeddings as em
from cortex_core import openai as oa
from cortex_core import responses_api as ra
from cortex_gateway import __version__
from cortex_gateway.catalogue_view import FleetModel, FleetModelList
from cortex_gateway.usage import UsageReport

__all__ = ["AdminAnswer", "AdminRequest", "ReloadAnswer", "ReloadRequest", "openapi_document"]

REF = "#/components/schemas/{name}"


class AdminRequest(msgspec.Struct):
    """``POST /admin/models/load|unload``."""

    model: str
    node: str | None = None


class AdminAnswer(msgspec.Struct):
    """What ``/admin/models/load`` and ``/admin/models/unload`` answer."""

    model: str
    state: str
    node: str | None = None
    nodes: list[str] | None = None


class ReloadRequest(msgspec.Struct):
    """``POST /admin/reload`` (an empty body is ``{"force": false}``)."""

    force: bool = False
    """Reload a catalogue that removes every model or alias, or drops a pinned model in use."""


class ReloadAnswer(msgspec.Struct):
    """What ``/admin/reload`` answers: the file read, and the catalogue now in force."""

    reloaded: str
    models: int
    aliases: dict[str, str]


class Health(msgspec.Struct):
    """``GET /health``."""

    status: str
    version: str


_ERRORS = {
    400: "malformed JSON, a missing or ill-typed field, a route not for the model's task"
    " (an embedding model's chat, say), or a request the model server refused",
    401: "a missing or wrong key",
    403: "a key that may not use this route, or a load outside the catalogue",
    404: "an unknown model",
    408: "the request body did not arrive in time",
    413: "the request body is too large",
    415: "the body is not declared JSON",
    409: "the new models.toml would remove every model or alias, or drop a pinned model in"
    " use: not reloaded unless forced",
    422: "models.toml is broken: not reloaded, the catalogue in force stays",
    429: "too many requests wait for this model to load (see Retry-After)",
    500: "an internal error",
    502: "the model server could not be reached or failed",
    503: "no node can serve or place the model now",
    504: "the model server did not answer in time",
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API port."""
    types: list[Any] = [
        oa.ChatCompletionRequest,
        oa.ChatCompletion,
        oa.CompletionRequest,
        oa.Completion,
        oa.ErrorEnvelope,
        ra.ResponsesRequest,
        ra.Response,
        em.EmbeddingRequest,
        em.EmbeddingList,
        em.RerankRequest,
        em.RerankResponse,
        em.ScoreRequest,
        em.ScoreResponse,
        an.MessagesRequest,
        an.Message,
        an.CountTokensRequest,
        an.CountTokensResponse,
        an.ErrorEnvelope,
        FleetModelList,
        FleetModel,
        AdminRequest,
        AdminAnswer,
        ReloadRequest,
        ReloadAnswer,
        UsageReport,
        Health,
    ]
    refs, components = msgspec.json.schema_components(types, ref_template=REF)
    ref = dict(zip(types, refs, strict=True))

    def json_body(schema: dict[str, Any]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    def answers(
        ok: dict[str, Any], error: dict[str, Any], statuses: list[int], stream: bool = False
    ) -> dict[str, Any]:
        content: dict[str, Any] = {"application/json": {"schema": ok}}
        if stream:
            content["text/event-stream"] = {"schema": {"type": "string"}}
        found: dict[str, Any] = {"200": {"description": "the answer", "content": content}}
        for status in statuses:
            found[str(status)] = {
                "description": _ERRORS[status],
                "content": {"application/json": {"schema": error}},
            }
        return found

    inference = [400, 401, 404, 408, 413, 415, 429, 500, 502, 503, 504]

    def pooling(summary: str, request: Any, answer: Any) -> dict[str, Any]:
        """A route of the models with ``task = "embed"``."""
        return {
            "post": {
                "summary": f'{summary}, by a model with task = "embed"',
                "requestBody": json_body(ref[request]),
                "responses": answers(ref[answer], openai_error, inference),
            }
        }

    listing = [401, 500]
    admin = [400, 401, 403, 404, 408, 413, 415, 500, 502, 503, 504]
    openai_error, anthropic_error = ref[oa.ErrorEnvelope], ref[an.ErrorEnvelope]
    keyed: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "summary": "Liveness (503 while the gateway drains)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "serving",
                        "content": {"application/json": {"schema": ref[Health]}},
                    },
                    "503": {
                        "description": "draining",
                        "content": {"application/json": {"schema": ref[Health]}},
                    },
                },
            }
        },
        "/v1/models": {
            "get": {
                "summary": "The catalogue merged with what the fleet has loaded, and aliases",
                "responses": answers(ref[FleetModelList], openai_error, listing),
            }
        },
        "/v1/models/{model}": {
            "get": {
                "summary": "One model or alias",
                "parameters": [
                    {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": answers(ref[FleetModel], openai_error, [*listing, 404]),
            }
        },
        "/v1/chat/completions": {
            "post": {
                "summary": "OpenAI chat completions, routed by model",
                "requestBody": json_body(ref[oa.ChatCompletionRequest]),
                "responses": answers(ref[oa.ChatCompletion], openai_error, inference, True),
            }
        },
        "/v1/completions": {
            "post": {
                "summary": "OpenAI legacy completions, routed by model",
                "requestBody": json_body(ref[oa.CompletionRequest]),
                "responses": answers(ref[oa.Completion], openai_error, inference, True),
            }
        },
        "/v1/responses": {
            "post": {
                "summary": "OpenAI Responses (Codex CLI), routed by model; no response is kept:"
                " store: true, background and previous_response_id are refused (400)",
                "requestBody": json_body(ref[ra.ResponsesRequest]),
                "responses": answers(ref[ra.Response], openai_error, inference, True),
            }
        },
        "/v1/responses/{response_id}": {
            "get": {
                "summary": "A stored response: none is kept, so always 404",
                "parameters": [
                    {
                        "name": "response_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": answers({"type": "object"}, openai_error, [401, 404]),
            }
        },
        "/v1/embeddings": pooling("OpenAI embeddings", em.EmbeddingRequest, em.EmbeddingList),
        "/v1/rerank": pooling(
            "Documents by relevance to a query", em.RerankRequest, em.RerankResponse
        ),
        "/v1/score": pooling("The similarity of text pairs", em.ScoreRequest, em.ScoreResponse),
        "/v1/messages": {
            "post": {
                "summary": "Anthropic Messages, translated to the neurons' OpenAI API",
                "requestBody": json_body(ref[an.MessagesRequest]),
                "responses": answers(ref[an.Message], anthropic_error, inference, True),
            }
        },
        "/v1/messages/count_tokens": {
            "post": {
                "summary": "Anthropic token counting, by the routed model's own tokenizer",
                "requestBody": json_body(ref[an.CountTokensRequest]),
                "responses": answers(ref[an.CountTokensResponse], anthropic_error, inference),
            }
        },
        "/admin/fleet": {
            "get": {
                "summary": "Nodes, devices, models, loads and requests in flight",
                "responses": answers({"type": "object"}, openai_error, [401, 403, 500]),
            }
        },
        "/admin/models/load": {
            "post": {
                "summary": "Load a catalogue model (where it fits, or on node) and wait",
                "requestBody": json_body(ref[AdminRequest]),
                "responses": answers(ref[AdminAnswer], openai_error, admin),
            }
        },
        "/admin/models/unload": {
            "post": {
                "summary": "Unload a model from one node or everywhere",
                "requestBody": json_body(ref[AdminRequest]),
                "responses": answers(ref[AdminAnswer], openai_error, admin),
            }
        },
        "/admin/usage": {
            "get": {
                "summary": "Requests and tokens per key and model since the gateway started",
                "responses": answers(ref[UsageReport], openai_error, [401, 403, 500]),
            }
        },
        "/admin/reload": {
            "post": {
                "summary": "Read models.toml (aliases and profiles) and the keys of cortex.toml"
                " again, as SIGHUP does",
                "requestBody": {**json_body(ref[ReloadRequest]), "required": False},
                "responses": answers(
                    ref[ReloadAnswer], openai_error, [400, 401, 403, 409, 415, 422, 500, 503]
                ),
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "cortex gateway", "version": __version__},
        "paths": paths,
        "security": keyed,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }
