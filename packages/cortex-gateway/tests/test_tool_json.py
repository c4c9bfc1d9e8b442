"""Tool-call argument text, streamed: kept a valid, repaired prefix of one JSON object."""

from __future__ import annotations

import itertools
import json
from typing import Any

from anthropic.types import ToolUseBlock
from hypothesis import given
from hypothesis import strategies as st
from jiter import from_json
from translate_support import (
    JSON_OBJECTS,
    Script,
    check_grammar,
    chunk,
    chunk_scripts,
    sdk_message,
    tool_delta,
    translate,
    wire,
)

from cortex_core import anthropic as an
from cortex_gateway.translate.anthropic import (
    parse_tool_arguments,
)


@given(
    script=chunk_scripts(
        arguments=st.text(alphabet='{}[]":,. \\\nabu0123456789-eEtrnl', max_size=30)
    )
)
def test_any_tool_argument_text_keeps_the_sdk_working(script: Script) -> None:
    """Whatever text the model writes as arguments, the SDK accumulates an object."""
    events = translate(script.chunks)
    check_grammar(wire(events))
    message = sdk_message(events)
    tools = [block for block in message.content if isinstance(block, ToolUseBlock)]
    assert [tool.name for tool in tools] == [name for name, _ in script.tools]
    assert all(isinstance(tool.input, dict) for tool in tools)


def cut_at_drawn_places(text: str, data: st.DataObject) -> list[str]:
    """``text`` cut at drawn places into non-empty pieces."""
    points = data.draw(st.lists(st.integers(0, len(text)), max_size=8))
    bounds = [0, *sorted(points), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if text[a:b]]


@given(data=st.data(), value=JSON_OBJECTS, spaced=st.booleans(), ascii_only=st.booleans())
def test_argument_pieces_rebuild_the_object(
    data: st.DataObject, value: dict[str, Any], spaced: bool, ascii_only: bool
) -> None:
    """A JSON object cut anywhere passes whole, and every passed prefix is one jiter accepts."""
    text = json.dumps(value, indent=1 if spaced else None, ensure_ascii=ascii_only)
    pieces = cut_at_drawn_places(text, data)
    events = translate(
        [
            chunk(tool_delta(0, id="call_1", name="f")),
            *(chunk(tool_delta(0, arguments=piece)) for piece in pieces),
            chunk({}, "tool_calls"),
        ]
    )
    passed = ""
    for event in events:
        if isinstance(event, an.ContentBlockDelta) and isinstance(event.delta, an.InputJsonDelta):
            passed += event.delta.partial_json
            from_json(passed.encode(), partial_mode=True)
    assert json.loads(passed) == value
    assert parse_tool_arguments(text) == value
