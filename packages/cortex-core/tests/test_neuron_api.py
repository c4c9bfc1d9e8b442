"""The neuron API's wire types carry exactly the shapes docs/neuron.md ("HTTP API") shows."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cortex_core import neuron_api as api
from cortex_core.wire import decode, encode, to_builtins

DOCUMENTED_BODIES: list[tuple[type[Any], dict[str, Any]]] = [
    (
        api.Health,
        {"status": "ok", "name": "beast", "version": "0.1.0", "started_at": 1750000000.5},
    ),
    (
        api.DevicesResponse,
        {
            "devices": [
                {
                    "index": 0,
                    "name": "NVIDIA GeForce RTX 4090",
                    "uuid": "GPU-5d2c3a4e-1b6f-4c8e-9a1d-2f3e4b5c6d7e",
                    "memory_total": 25757220864,
                    "memory_used": 1048576000,
                    "memory_free": 24708644864,
                    "utilization": 37.0,
                }
            ]
        },
    ),
    (api.DevicesResponse, {"devices": []}),
    (
        api.ModelsResponse,
        {
            "models": [
                {
                    "id": "Qwen/Qwen3-8B",
                    "source": "helexa",
                    "state": "ready",
                    "devices": [0, 1],
                    "memory_bytes": 18253611008,
                    "loaded_at": 1763900000.25,
                    "last_used": 1763900300.5,
                    "in_flight": 2,
                    "max_model_len": 16384,
                    "max_num_seqs": 256,
                    "error": None,
                    "phase": None,
                    "phase_seconds": {
                        "preflight": 0.05,
                        "fetching": 0.01,
                        "starting": 4.2,
                        "serving": 1.9,
                    },
                    "host_memory_bytes": 0,
                    "task": "generate",
                },
                {
                    "id": "Qwen/Qwen3-4B",
                    "source": "helexa",
                    "state": "sleeping",
                    "devices": [0],
                    "memory_bytes": 9663676416,
                    "loaded_at": 1763900000.25,
                    "last_used": 1763900100.0,
                    "in_flight": 0,
                    "max_model_len": 8192,
                    "max_num_seqs": 256,
                    "error": None,
                    "phase": None,
                    "phase_seconds": {"waking": 1.6},
                    "host_memory_bytes": 8053063680,
                    "task": "generate",
                },
                {
                    "id": "Qwen/Qwen3-1.7B",
                    "source": None,
                    "state": "failed",
                    "devices": [],
                    "memory_bytes": 0,
                    "loaded_at": None,
                    "last_used": None,
                    "in_flight": 0,
                    "max_model_len": None,
                    "max_num_seqs": None,
                    "error": "engine exited during start",
                    "phase": None,
                    "phase_seconds": {},
                    "host_memory_bytes": 0,
                    "task": "embed",
                },
            ]
        },
    ),
    (
        api.LoadRequest,
        {
            "model": "helexa:Qwen/Qwen3-8B",
            "devices": [0],
            "options": {"max_model_len": 8192},
            "wait": False,
            "task": "generate",
        },
    ),
    (api.UnloadRequest, {"model": "Qwen/Qwen3-8B", "sleep": False}),
    (
        api.UnloadResponse,
        {
            "id": "Qwen/Qwen3-8B",
            "state": "unloaded",
            "freed_bytes": 18253611008,
            "host_memory_bytes": 0,
        },
    ),
    (
        api.UnloadResponse,
        {
            "id": "Qwen/Qwen3-4B",
            "state": "sleeping",
            "freed_bytes": 9100000000,
            "host_memory_bytes": 8053063680,
        },
    ),
    (api.EndpointResponse, {"url": "http://localhost:13131/v1"}),
    (
        api.TokenizeRequest,
        {
            "model": "Qwen/Qwen3-8B",
            "messages": [{"role": "user", "content": "hi"}],
            "prompt": None,
            "tools": None,
            "add_generation_prompt": True,
            "chat_template_kwargs": {"enable_thinking": False},
        },
    ),
    (api.TokenizeResponse, {"count": 9, "max_model_len": 16384, "tokens": None}),
    (
        api.ErrorResponse,
        {
            "error": {
                "code": "insufficient_memory",
                "message": "Qwen/Qwen3-8B needs 18.0 GiB; device 0 has 10.0 GiB free",
                "details": {
                    "needed_bytes": 19327352832,
                    "devices": [{"index": 0, "free_bytes": 10737418240}],
                },
            }
        },
    ),
]


@pytest.mark.parametrize(
    ("type_", "body"), DOCUMENTED_BODIES, ids=lambda v: getattr(v, "__name__", "")
)
def test_documented_bodies_round_trip(type_: type[Any], body: dict[str, Any]) -> None:
    """Each documented body decodes and encodes back to itself, every field included."""
    value = decode(json.dumps(body).encode(), type_)
    assert json.loads(encode(value)) == body


def _http_api_doc() -> str:
    """The "HTTP API" section of docs/neuron.md."""
    doc = (Path(__file__).parents[3] / "docs" / "neuron.md").read_text()
    return doc.split("\n## HTTP API\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize(
    ("route", "type_"),
    [
        ("GET /health", api.Health),
        ("GET /devices", api.Device),
        ("GET /models", api.ModelInfo),
        ("POST /models/load", api.LoadRequest),
        ("POST /models/unload", api.UnloadRequest),
        ("POST /models/unload", api.UnloadResponse),
        ("GET /models/{id}/endpoint", api.EndpointResponse),
        ("POST /tokenize", api.TokenizeRequest),
        ("POST /tokenize", api.TokenizeResponse),
    ],
)
def test_the_http_api_doc_names_every_field(route: str, type_: type[Any]) -> None:
    """docs/neuron.md's row for each route names every field of its wire type."""
    row = next(line for line in _http_api_doc().splitlines() if line.startswith(f"| `{route}`"))
    missing = [f.name for f in msgspec.structs.fields(type_) if f'"{f.name}"' not in row]
    assert missing == []


def test_the_http_api_doc_gives_every_error_code_its_status() -> None:
    """docs/neuron.md lists each error code with the status it is sent with, and no other."""
    errors = _http_api_doc().split("Errors on the management routes", 1)[1].split("\n\n", 1)[0]
    documented = {code: int(status) for code, status in re.findall(r"`(\w+)` (\d{3})", errors)}
    assert documented == api.ERROR_STATUS
    details = [f.name for f in msgspec.structs.fields(api.InsufficientMemoryDetails)]
    details += [f.name for f in msgspec.structs.fields(api.DeviceFree)]
    assert [name for name in details if f'"{name}"' not in errors] == []


def test_load_request_defaults() -> None:
    """A bare load waits, on devices the neuron picks, with no options."""
    request = decode(b'{"model": "Qwen/Qwen3-8B"}', api.LoadRequest)
    assert (request.devices, request.options, request.wait) == (None, {}, True)
    assert request.task == "generate"


def test_error_statuses() -> None:
    """Each error code maps to the status docs/neuron.md gives it; unknown codes are 500."""
    expected: dict[api.ErrorCode, int] = {
        "invalid_model_id": 422,
        "unknown_source": 422,
        "model_not_found": 404,
        "unsupported_model": 422,
        "insufficient_memory": 409,
        "load_failed": 500,
    }
    for code, status in expected.items():
        assert api.error_response(code, "x").status == status
    unknown = decode(b'{"error": {"code": "new_code", "message": "m"}}', api.ErrorResponse)
    assert unknown.status == 500
    assert unknown.error.details == {}


def test_insufficient_memory_details() -> None:
    """The insufficient_memory details decode into their own type."""
    sent = api.InsufficientMemoryDetails(
        needed_bytes=10, devices=[api.DeviceFree(index=0, free_bytes=4)]
    )
    error = api.error_response("insufficient_memory", "does not fit", to_builtins(sent))
    received = decode(encode(error), api.ErrorResponse)
    assert received.status == 409
    details = decode(encode(received.error.details), api.InsufficientMemoryDetails)
    assert details.needed_bytes == 10
    assert details.devices == [api.DeviceFree(index=0, free_bytes=4)]
