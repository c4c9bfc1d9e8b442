"""The gateway keeps the promises of the OpenAPI document it serves, whatever it is sent.

schemathesis generates requests from ``/openapi.json`` (valid ones, and ones
that break the schema) and sends them to the in-process gateway over a
scripted fleet: no answer may be a 5xx, and every answer must be a documented
status with a documented content type and body.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cortex_gateway.app import create_apps
from cortex_gateway.openapi import openapi_document
from cortex_gateway.testing import ScriptedFleet, ScriptedModel, ScriptedNode

CATALOGUE = '[aliases]\n"helexa/small" = "fake/a"\n[[models]]\nid = "fake/a"\nmemory_gb = 4\n'


def gateway_schema() -> schemathesis.BaseSchema:
    """The gateway over one scripted node with fake/a ready, as schemathesis sees it."""
    node = ScriptedNode("beast")
    node.put("fake/a", "ready", memory_gib=4)
    fleet = ScriptedFleet([node], [ScriptedModel("fake/a", memory_gib=4)])
    folder = Path(tempfile.mkdtemp(prefix="cortex-fuzzed-"))
    atexit.register(shutil.rmtree, folder, True)
    config = fleet.config(
        folder, CATALOGUE, gateway="poll_interval_s = 3600\nmax_body_bytes = 65536\n"
    )
    api, _, _ = create_apps(config, neurons=fleet, environ={})
    # The document the app serves; schemathesis starts the app's lifespan on its first call.
    loaded = schemathesis.openapi.from_dict(openapi_document())
    loaded.app = api
    return loaded


# Built at import: schemathesis' fixture loader relies on pytest internals 9.x dropped.
schema = gateway_schema()
pytestmark = pytest.mark.slow  # a thousand generated requests: about a minute


@schema.parametrize()
@settings(suppress_health_check=list(HealthCheck))
def test_the_gateway_keeps_its_openapi_promises(case: schemathesis.Case[Any]) -> None:
    """No 5xx; every status, content type and body is one the document names."""
    case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ]
    )


def test_the_document_describes_every_route() -> None:
    """Every API route is in the document, with its error statuses."""
    document = openapi_document()
    assert set(document["paths"]) == {
        "/health",
        "/v1/models",
        "/v1/models/{model}",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/responses/{response_id}",
        "/v1/embeddings",
        "/v1/rerank",
        "/v1/score",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/admin/fleet",
        "/admin/models/load",
        "/admin/models/unload",
        "/admin/usage",
        "/admin/reload",
    }
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"200", "400", "401", "404", "413", "502", "503", "504"} <= set(chat)
