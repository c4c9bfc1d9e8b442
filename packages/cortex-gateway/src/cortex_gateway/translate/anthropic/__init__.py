"""Anthropic Messages in front of an OpenAI chat completions server (vLLM): pure translation.

Nothing here does I/O. The Anthropic routes decode the client's body into a
:class:`~cortex_core.anthropic.MessagesRequest`, send :func:`to_openai` of it to
the neuron, and turn the answer back with :func:`from_openai`, or, for a
stream, :func:`relay` the upstream's bytes: every SSE payload through a
:class:`StreamTranslator`, each event written with :func:`sse_event`.

- ``requests``: Messages requests → OpenAI chat requests (and ``/tokenize`` input)
- ``responses``: complete OpenAI answers → Anthropic messages; stop reasons, ids
- ``stream``: OpenAI chunk streams → Anthropic stream events
- ``relay``: the chunk loop: an upstream SSE byte stream through the translator, pings, metering
- ``tool_json``: tool-call argument text kept a valid, repaired JSON object prefix
- ``claude_code``: Claude Code's billing block (dropped) and session header

Each module's docstring lists the choices it makes where the two APIs differ.
"""

from cortex_gateway.translate.anthropic.claude_code import (
    BILLING_PREFIX,
    SESSION_HEADER,
    without_billing_header,
)
from cortex_gateway.translate.anthropic.relay import PING, relay
from cortex_gateway.translate.anthropic.requests import openai_messages_for_tokenize, to_openai
from cortex_gateway.translate.anthropic.responses import (
    from_openai,
    new_message_id,
    new_tool_use_id,
)
from cortex_gateway.translate.anthropic.stream import StreamTranslator, sse_event
from cortex_gateway.translate.anthropic.tool_json import parse_tool_arguments

__all__ = [
    "BILLING_PREFIX",
    "PING",
    "SESSION_HEADER",
    "StreamTranslator",
    "from_openai",
    "new_message_id",
    "new_tool_use_id",
    "openai_messages_for_tokenize",
    "parse_tool_arguments",
    "relay",
    "sse_event",
    "to_openai",
    "without_billing_header",
]
