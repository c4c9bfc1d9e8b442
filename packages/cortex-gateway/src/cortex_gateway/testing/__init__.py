"""Test doubles and helpers shipped with the gateway, for its tests and for embedders.

- :class:`ScriptedFleet` and friends (``testing.fleet``): neurons in-process at
  the gateway's ``Neurons`` seam; ``create_apps(config, neurons=fleet)``.
- :class:`GatewayProcess` (``testing.process``): a real ``cortex serve`` child process.
"""

from cortex_gateway.testing.fleet import (
    ANSWER,
    Hang,
    JsonAnswer,
    Refuse,
    ScriptedAnswer,
    ScriptedFleet,
    ScriptedModel,
    ScriptedNode,
    ScriptedRequest,
    StreamAnswer,
    chat_chunk,
)
from cortex_gateway.testing.process import GatewayProcess, free_port

__all__ = [
    "ANSWER",
    "GatewayProcess",
    "Hang",
    "JsonAnswer",
    "Refuse",
    "ScriptedAnswer",
    "ScriptedFleet",
    "ScriptedModel",
    "ScriptedNode",
    "ScriptedRequest",
    "StreamAnswer",
    "chat_chunk",
    "free_port",
]
