"""The neuron API's wire types carry exactly the shapes SPEC.md shows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cortex_core import neuron_api as api
from cortex_core.wire import decode, encode, to_builtins

SPEC_BODIES: list[tuple[type[Any], dict[str, Any]]] = [
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
                    "error": None,
                    "phase": None,
                    "phase_seconds": {
                        "preflight": 0.05,
                        "fetching": 0.01,
                        "starting": 4.2,
                        "serving": 1.9,
                    },
                    "host_memory_bytes": 0,
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
                    "error": None,
                    "phase": None,
                    "phase_seconds": {"waking": 1.6},
                    "host_memory_bytes": 8053063680,
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
                    "error": "engine exited during start",
                    "phase": None,
                    "phase_seconds": {},
                    "host_memory_bytes": 0,
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


@pytest.mark.parametrize(("type_", "body"), SPEC_BODIES, ids=lambda v: getattr(v, "__name__", ""))
def test_spec_bodies_round_trip(type_: type[Any], body: dict[str, Any]) -> None:
    """Each SPEC.md body decodes and encodes back to itself, every field included."""
    value = decode(json.dumps(body).encode(), type_)
    assert json.loads(encode(value)) == body


def test_load_request_defaults() -> None:
    """A bare load waits, on devices the neuron picks, with no options."""
    request = decode(b'{"model": "Qwen/Qwen3-8B"}', api.LoadRequest)
    assert (request.devices, request.options, request.wait) == (None, {}, True)


def test_error_statuses() -> None:
    """Each error code maps to the status SPEC.md gives it; unknown codes are 500."""
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
