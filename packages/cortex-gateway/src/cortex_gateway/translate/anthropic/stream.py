"""OpenAI chat completion chunks as Anthropic Messages stream events: pure translation.

* An error after a stream has started is one bare ``error`` event, as
  Anthropic's API sends it: the open block is not closed and no
  ``message_stop`` follows.
* OpenAI streams each tool call's pieces one call after another; a piece for a
  call whose block was already closed is dropped.
* No ``signature_delta`` is streamed; the Anthropic SDK does not need one.
* With ``thinking.display: "omitted"``, a thinking block opens and closes with
  no ``thinking_delta`` in between.
"""

from __future__ import annotations

import json
from typing import Literal

from cortex_core import anthropic as an
from cortex_core import openai as oa
from cortex_core.wire import WireError, decode, encode
from cortex_gateway.errors import anthropic_type
from cortex_gateway.sse import named_event
from cortex_gateway.translate.anthropic.responses import (
    map_stop,
    new_message_id,
    split_input_tokens,
    tool_use_id,
)
from cortex_gateway.translate.anthropic.tool_json import ObjectScanner

__all__ = ["StreamTranslator", "sse_event"]


class _ToolCall:
    """One OpenAI tool call (by its ``index``) on its way to becoming a tool_use block."""

    __slots__ = ("block", "closed", "id", "name", "pending", "scanner")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.pending: list[str] = []
        self.block: int | None = None
        self.closed = False
        self.scanner = ObjectScanner()


class StreamTranslator:
    """Turns one OpenAI chat completion chunk stream into Anthropic Messages stream events.

    Call :meth:`start` once, :meth:`feed` for every chunk (or :meth:`feed_payload`
    for every SSE payload), then :meth:`finish`, or :meth:`fail` when the
    upstream breaks. Only the first choice (index 0) is read. Reasoning becomes
    a thinking block, content a text block and every tool call a tool_use block,
    in the order they arrive; one block is open at a time and a change of kind
    closes it. A tool call's block starts when its name is known and its first
    argument text arrives (so a name split over chunks is whole), when a later
    call starts, or at the end.
    """

    def __init__(
        self,
        model: str,
        *,
        input_tokens: int = 0,
        stop_sequences: list[str] | None = None,
        omit_thinking: bool = False,
    ) -> None:
        """Translate for a response named ``model``; ``input_tokens`` goes in message_start."""
        self.model = model
        self.message_id = new_message_id()
        self._input_tokens = input_tokens
        self._stop_sequences = list(stop_sequences or ())
        self._omit_thinking = omit_thinking
        self._started = False
        self._done = False
        self._next_index = 0
        self._open: int | None = None
        self._open_kind: Literal["text", "thinking", "tool_use"] | None = None
        self._open_call: _ToolCall | None = None
        self._calls: dict[int, _ToolCall] = {}
        self._tool_blocks = 0
        self._finish_reason: str | None = None
        self._upstream_stop: int | str | None = None
        self._usage: oa.Usage | None = None
        self._content_chunks = 0

    @property
    def done(self) -> bool:
        """Whether the stream has ended, by :meth:`finish` or :meth:`fail`."""
        return self._done

    def start(self) -> list[an.StreamEvent]:
        """``message_start`` (no content yet) and a ``ping``; nothing if already started."""
        if self._started:
            return []
        self._started = True
        message = an.Message(
            id=self.message_id,
            model=self.model,
            content=[],
            usage=an.Usage(input_tokens=self._input_tokens, output_tokens=0),
        )
        return [an.MessageStart(message=message), an.Ping()]

    def feed(self, chunk: oa.ChatCompletionChunk) -> list[an.StreamEvent]:
        """The events one chunk brings (starting the stream first if needed)."""
        if self._done:
            return []
        events = self.start()
        if chunk.usage is not None:
            self._usage = chunk.usage
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            thinking = delta.thinking
            text = delta.content or delta.refusal
            if thinking or text or delta.tool_calls:
                self._content_chunks += 1
            if thinking:
                events += self._text("thinking", thinking)
            if text:
                events += self._text("text", text)
            for call in delta.tool_calls or ():
                events += self._tool_delta(call)
            if choice.finish_reason is not None:
                self._finish_reason = choice.finish_reason
                self._upstream_stop = choice.stop_reason
        return events

    def feed_payload(self, payload: str) -> list[an.StreamEvent]:
        """The events one SSE data payload brings (see :meth:`feed_data`)."""
        return self.feed_data(payload.encode())[0]

    def feed_data(self, data: bytes) -> tuple[list[an.StreamEvent], oa.ChatCompletionChunk | None]:
        """The events one SSE event's data brings, and the chunk it was (decoded once).

        ``[DONE]`` finishes the stream; an OpenAI error object, or data that is
        no chunk, fails it with a generic message (never the upstream's text).
        """
        if data.strip() == b"[DONE]":
            return self.finish(), None
        try:
            chunk = decode(data, oa.ChatCompletionChunk)
        except WireError:
            return self.fail(*_stream_error(data.decode("utf-8", errors="replace"))), None
        return self.feed(chunk), chunk

    def finish(self) -> list[an.StreamEvent]:
        """Close the open block, start and close tool calls still waiting, then end the message."""
        if self._done:
            return []
        events = self.start()
        events += self._close()
        events += self._flush_calls()
        stop_reason, stop_sequence = map_stop(
            self._finish_reason, self._upstream_stop, self._tool_blocks > 0, self._stop_sequences
        )
        usage = an.MessageDeltaUsage(output_tokens=self._content_chunks)
        if self._usage is not None:
            usage.output_tokens = self._usage.completion_tokens
            usage.input_tokens, usage.cache_read_input_tokens = split_input_tokens(self._usage)
        self._done = True
        body = an.MessageDeltaBody(stop_reason=stop_reason, stop_sequence=stop_sequence)
        return [*events, an.MessageDelta(delta=body, usage=usage), an.MessageStop()]

    def fail(self, message: str, error_type: an.ErrorType = "api_error") -> list[an.StreamEvent]:
        """One bare ``error`` event that ends the stream; nothing if it already ended."""
        if self._done:
            return []
        self._done = True
        return [an.ErrorEvent(error=an.ErrorBody(type=error_type, message=message))]

    # --- blocks ---

    def _begin(
        self, block: an.ResponseBlock, kind: Literal["text", "thinking", "tool_use"]
    ) -> an.ContentBlockStart:
        index = self._next_index
        self._next_index += 1
        self._open, self._open_kind = index, kind
        return an.ContentBlockStart(index=index, content_block=block)

    def _open_index(self) -> int:
        return self._open if self._open is not None else self._next_index - 1

    def _close(self) -> list[an.StreamEvent]:
        if self._open is None:
            return []
        index = self._open
        if self._open_call is not None:
            self._open_call.closed = True
        self._open, self._open_kind, self._open_call = None, None, None
        return [an.ContentBlockStop(index=index)]

    def _text(self, kind: Literal["text", "thinking"], text: str) -> list[an.StreamEvent]:
        events: list[an.StreamEvent] = []
        if self._open_kind != kind:
            text = text.lstrip()
            if not text:
                return events
            events += self._close()
            block: an.ResponseBlock
            block = (
                an.TextBlock(text="")
                if kind == "text"
                else an.ThinkingBlock(thinking="", signature="")
            )
            events.append(self._begin(block, kind))
        if kind == "thinking" and self._omit_thinking:
            return events
        delta: an.TextDelta | an.ThinkingDelta
        delta = an.TextDelta(text=text) if kind == "text" else an.ThinkingDelta(thinking=text)
        events.append(an.ContentBlockDelta(index=self._open_index(), delta=delta))
        return events

    def _tool_delta(self, delta: oa.ToolCallDelta) -> list[an.StreamEvent]:
        call = self._calls.get(delta.index)
        if call is None:
            call = self._calls[delta.index] = _ToolCall()
        if call.closed:
            return []
        arguments = delta.function.arguments if delta.function is not None else None
        if call.block is None:
            if delta.id and not call.id:
                call.id = delta.id
            if delta.function is not None and delta.function.name:
                call.name += delta.function.name
            if arguments:
                call.pending.append(arguments)
            if not (call.pending and call.name):
                return []
            return self._flush_calls(below=delta.index) + self._start_tool(call)
        return self._arguments(call, arguments) if arguments else []

    def _flush_calls(self, below: int | None = None) -> list[an.StreamEvent]:
        """Start and close, in index order, named calls still waiting (those below ``below``)."""
        events: list[an.StreamEvent] = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if below is not None and index >= below:
                break
            if call.block is None and call.name:
                events += self._start_tool(call)
                events += self._close()
        return events

    def _start_tool(self, call: _ToolCall) -> list[an.StreamEvent]:
        events = self._close()
        call.id = tool_use_id(call.id)
        block = an.ToolUseBlock(id=call.id, name=call.name, input={})
        events.append(self._begin(block, "tool_use"))
        call.block = self._open
        self._open_call = call
        self._tool_blocks += 1
        pending = "".join(call.pending)
        call.pending.clear()
        return events + self._arguments(call, pending)

    def _arguments(self, call: _ToolCall, arguments: str) -> list[an.StreamEvent]:
        piece = call.scanner.feed(arguments)
        if not piece or call.block is None:
            return []
        return [an.ContentBlockDelta(index=call.block, delta=an.InputJsonDelta(partial_json=piece))]


def _stream_error(payload: str) -> tuple[str, an.ErrorType]:
    try:
        body = json.loads(payload)
    except ValueError:
        return "the model server sent an unreadable stream event", "api_error"
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, int) and not isinstance(code, bool):
        return f"the model server failed mid-stream (status {code})", anthropic_type(code)
    return "the model server failed mid-stream", "api_error"


def sse_event(event: an.StreamEvent) -> bytes:
    """``event`` as one SSE message: ``event: <type>``, ``data: <json>`` and a blank line."""
    return named_event(str(event.__struct_config__.tag), encode(event))
