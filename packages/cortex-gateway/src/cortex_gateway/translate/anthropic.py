"""Anthropic Messages in front of an OpenAI chat completions server (vLLM): pure translation.

Nothing here does I/O. The HTTP layer decodes the client's body into a
:class:`~cortex_core.anthropic.MessagesRequest`, sends :func:`to_openai` of it to
the neuron, and turns the answer back with :func:`from_openai`, or, for a
stream, splits the neuron's bytes with :class:`SseDecoder`, feeds every payload
to a :class:`StreamTranslator` and writes each event with :func:`sse_event`.

Choices this module makes, where the two APIs differ:

* Thinking blocks in earlier assistant turns go to the model as the assistant
  message's ``reasoning`` (vLLM hands it to the chat template as
  ``reasoning_content`` too); their signatures are dropped. Redacted thinking
  is dropped. A request's ``thinking`` becomes the chat template's
  ``enable_thinking``; ``budget_tokens`` has no OpenAI counterpart and is not
  passed on; no ``thinking`` leaves the model's default.
* Thinking blocks produced here carry an empty ``signature``: there is no
  signature to give, and clients send the blocks back only to this gateway.
  No ``signature_delta`` is streamed; the Anthropic SDK does not need one.
* Tool arguments are checked as they arrive: only text that keeps them a
  prefix of one JSON object is passed on, raw control characters inside
  strings are escaped and unpaired surrogate escapes become U+FFFD. A whole
  response whose arguments are not a JSON object gets ``input: {}``; a stream
  cannot take back what it already sent, so a client keeps the well-formed part
  that came before the first bad character.
* Upstream tool call ids are kept when Anthropic would accept them
  (``[A-Za-z0-9_-]+``, which vLLM's ``chatcmpl-tool-...`` ids are); others, and
  missing ones, get a fresh ``toolu_...`` id.
* An error after a stream has started is one bare ``error`` event, as
  Anthropic's API sends it: the open block is not closed and no
  ``message_stop`` follows.
* Whitespace at the start of a text or thinking block is dropped (Qwen3 puts
  two newlines after its reasoning), so whitespace alone makes no block.
* OpenAI streams each tool call's pieces one call after another; a piece for a
  call whose block was already closed is dropped.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from typing import Any, Literal

from cortex_core import anthropic as an
from cortex_core import openai as oa
from cortex_core.wire import WireError, decode, encode, to_builtins

__all__ = [
    "SseDecoder",
    "StreamTranslator",
    "error_type_for_status",
    "from_openai",
    "new_message_id",
    "new_tool_use_id",
    "openai_messages_for_tokenize",
    "parse_tool_arguments",
    "sse_event",
    "to_openai",
]

ErrorType = an.ErrorType
StopReason = an.StopReason

_TOOL_ID = re.compile(r"[A-Za-z0-9_-]+")
_IS_ERROR_PREFIX = "Error: "
"""Put before a tool result flagged ``is_error``: OpenAI tool messages have no such flag."""


def new_message_id() -> str:
    """A fresh Anthropic message id: ``msg_`` and 24 URL-safe random characters."""
    return "msg_" + secrets.token_urlsafe(18)


def new_tool_use_id() -> str:
    """A fresh Anthropic tool use id: ``toolu_`` and 24 URL-safe random characters."""
    return "toolu_" + secrets.token_urlsafe(18)


def _tool_use_id(upstream: str | None) -> str:
    return upstream if upstream and _TOOL_ID.fullmatch(upstream) else new_tool_use_id()


# --- requests ----------------------------------------------------------------------------------


def to_openai(
    request: an.MessagesRequest | an.CountTokensRequest, model: str
) -> oa.ChatCompletionRequest:
    """The OpenAI chat request for ``request`` with ``model`` as its model; never raises."""
    messages: list[oa.ChatMessage] = []
    system = _system_text(request.system)
    if system:
        messages.append(oa.SystemMessage(content=system))
    for message in request.messages:
        if message.role == "user":
            messages.extend(_user_messages(message.content))
        else:
            assistant = _assistant_message(message.content)
            if assistant is not None:
                messages.append(assistant)

    tools = [
        oa.ToolDefinition(
            function=oa.FunctionDefinition(
                name=tool.name, description=tool.description, parameters=tool.input_schema
            )
        )
        for tool in request.tools or ()
        if tool.input_schema is not None
    ]
    out = oa.ChatCompletionRequest(model=model, messages=messages)
    if tools:
        out.tools = tools
        out.tool_choice, out.parallel_tool_calls = _tool_choice(request.tool_choice)
    if isinstance(request.thinking, an.ThinkingEnabled | an.ThinkingAdaptive):
        out.chat_template_kwargs = {"enable_thinking": True}
    elif isinstance(request.thinking, an.ThinkingDisabled):
        out.chat_template_kwargs = {"enable_thinking": False}
    if isinstance(request, an.MessagesRequest):
        out.max_tokens = request.max_tokens
        out.stop = list(request.stop_sequences) if request.stop_sequences else None
        out.temperature = request.temperature
        out.top_p = request.top_p
        out.top_k = request.top_k
        if request.metadata is not None and request.metadata.user_id:
            out.user = request.metadata.user_id
        if request.stream:
            out.stream = True
            out.stream_options = oa.StreamOptions(include_usage=True)
    return out


def openai_messages_for_tokenize(
    request: an.MessagesRequest | an.CountTokensRequest,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The chat messages and tools of ``request`` as plain dicts, for a neuron's ``/tokenize``."""
    translated = to_openai(request, request.model)
    messages: list[dict[str, Any]] = to_builtins(translated.messages)
    tools: list[dict[str, Any]] | None = to_builtins(translated.tools) if translated.tools else None
    return messages, tools


def _system_text(system: str | list[an.TextBlock] | None) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    return "\n".join(block.text for block in system)


def _image_part(source: an.ImageSource) -> oa.ContentPart:
    if isinstance(source, an.Base64ImageSource):
        url = f"data:{source.media_type};base64,{source.data}"
        return oa.ImageUrlPart(image_url=oa.ImageUrl(url=url))
    if isinstance(source, an.UrlImageSource):
        return oa.ImageUrlPart(image_url=oa.ImageUrl(url=source.url))
    return oa.TextPart(text=f"[image file {source.file_id} is not available here]")


def _document_text(block: an.DocumentBlock) -> str:
    source = block.source
    kind = source.get("type")
    text: str | None = None
    if kind == "text" and isinstance(source.get("data"), str):
        text = source["data"]
    elif kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = "\n".join(
                str(item.get("text", ""))
                for item in content
                if isinstance(item, dict) and item.get("type") == "text"
            )
    if text is None:
        what = source.get("media_type") or source.get("url") or kind or "unknown"
        return f"[document ({what}) is not supported here]"
    return f"{block.title}\n{text}" if block.title else text


def _part(block: an.TextBlock | an.ImageBlock | an.DocumentBlock) -> oa.ContentPart:
    if isinstance(block, an.TextBlock):
        return oa.TextPart(text=block.text)
    if isinstance(block, an.ImageBlock):
        return _image_part(block.source)
    return oa.TextPart(text=_document_text(block))


def _user_content(parts: list[oa.ContentPart]) -> str | list[oa.ContentPart]:
    if len(parts) == 1 and isinstance(parts[0], oa.TextPart):
        return parts[0].text
    return parts


def _user_messages(content: str | list[an.ContentBlock]) -> list[oa.ChatMessage]:
    """Tool results first (as ``tool`` messages), then one user message with everything else."""
    if isinstance(content, str):
        return [oa.UserMessage(content=content)]
    tool_messages: list[oa.ChatMessage] = []
    tool_images: list[oa.ContentPart] = []
    parts: list[oa.ContentPart] = []
    for block in content:
        if isinstance(block, an.ToolResultBlock):
            message, images = _tool_result(block)
            tool_messages.append(message)
            if images:
                tool_images.append(
                    oa.TextPart(text=f"Image returned by tool call {block.tool_use_id}:")
                )
                tool_images.extend(images)
        elif isinstance(block, an.TextBlock | an.ImageBlock | an.DocumentBlock):
            parts.append(_part(block))
        # tool_use, thinking and redacted thinking blocks have no place in a user turn.
    parts = tool_images + parts
    if parts:
        tool_messages.append(oa.UserMessage(content=_user_content(parts)))
    return tool_messages


def _tool_result(block: an.ToolResultBlock) -> tuple[oa.ToolMessage, list[oa.ContentPart]]:
    texts: list[str] = []
    images: list[oa.ContentPart] = []
    if isinstance(block.content, str):
        texts.append(block.content)
    elif block.content is not None:
        for item in block.content:
            if isinstance(item, an.ImageBlock):
                images.append(_image_part(item.source))
            elif isinstance(item, an.TextBlock):
                texts.append(item.text)
            else:
                texts.append(_document_text(item))
    text = "\n".join(texts)
    if block.is_error:
        text = _IS_ERROR_PREFIX + text
    return oa.ToolMessage(content=text, tool_call_id=block.tool_use_id), images


def _assistant_message(content: str | list[an.ContentBlock]) -> oa.AssistantMessage | None:
    if isinstance(content, str):
        return oa.AssistantMessage(content=content) if content else None
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[oa.ToolCall] = []
    for block in content:
        if isinstance(block, an.TextBlock):
            texts.append(block.text)
        elif isinstance(block, an.ThinkingBlock):
            thoughts.append(block.thinking)
        elif isinstance(block, an.ToolUseBlock):
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append(
                oa.ToolCall(
                    id=block.id, function=oa.FunctionCall(name=block.name, arguments=arguments)
                )
            )
    text = "\n".join(texts)
    reasoning = "\n".join(thoughts)
    if not (text or calls or reasoning):
        return None
    return oa.AssistantMessage(
        content=text or None, tool_calls=calls or None, reasoning=reasoning or None
    )


def _tool_choice(
    choice: an.ToolChoice | None,
) -> tuple[oa.ToolChoice | None, bool | None]:
    if choice is None:
        return None, None
    if isinstance(choice, an.NoneToolChoice):
        return "none", None
    parallel = False if choice.disable_parallel_tool_use else None
    if isinstance(choice, an.AutoToolChoice):
        return "auto", parallel
    if isinstance(choice, an.AnyToolChoice):
        return "required", parallel
    named = oa.NamedToolChoice(function=oa.FunctionName(name=choice.name))
    return named, parallel


# --- tool arguments ----------------------------------------------------------------------------

_START, _OBJ_FIRST, _OBJ_KEY, _COLON, _VALUE, _ARR_FIRST, _AFTER = range(7)
_STRING, _ESCAPE, _UNICODE, _HIGH, _NUMBER, _LITERAL, _END = range(7, 14)
_SKIPS_SPACE = frozenset({_START, _OBJ_FIRST, _OBJ_KEY, _COLON, _VALUE, _ARR_FIRST, _AFTER})
_N_SIGN, _N_ZERO, _N_INT, _N_DOT, _N_FRAC, _N_E, _N_ESIGN, _N_EXP = range(8)
_NUMBER_ENDS = frozenset({_N_ZERO, _N_INT, _N_FRAC, _N_EXP})
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_STRING_RUN = re.compile(r'[^"\\\x00-\x1f]+')
_SIMPLE_ESCAPES = frozenset('"\\/bfnrt')
_HEX = frozenset("0123456789abcdefABCDEF")
_CONTROL_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_REPLACEMENT = "\\ufffd"
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}


def _number_step(state: int, ch: str) -> int | None:
    digit = "0" <= ch <= "9"
    if state == _N_SIGN:
        return _N_ZERO if ch == "0" else _N_INT if digit else None
    if state in (_N_ZERO, _N_INT):
        if digit:
            return _N_INT if state == _N_INT else None
        return _N_DOT if ch == "." else _N_E if ch in ("e", "E") else None
    if state in (_N_DOT, _N_FRAC):
        if digit:
            return _N_FRAC
        return _N_E if state == _N_FRAC and ch in ("e", "E") else None
    if state == _N_E:
        return _N_ESIGN if ch in ("+", "-") else _N_EXP if digit else None
    return _N_EXP if digit else None


class _ObjectScanner:
    """Follows text, piece by piece, while it stays a prefix of one JSON object.

    :meth:`feed` answers the part of each piece that may be passed on, with raw
    control characters in strings escaped and unpaired surrogate escapes
    replaced; an escape sequence is held back until it is whole. Leading
    whitespace and anything after the object's closing brace are dropped; once
    the text breaks the grammar, nothing more is passed on.
    """

    def __init__(self) -> None:
        self._state = _START
        self._stack: list[str] = []
        self._in_key = False
        self._held = ""
        self._high = ""
        self._number = _N_SIGN
        self._literal = ""
        self.broken = False

    @property
    def complete(self) -> bool:
        """Whether one whole JSON object has been read."""
        return self._state == _END

    def feed(self, text: str) -> str:
        """The part of ``text`` that keeps what was passed on a valid, repaired JSON prefix."""
        out: list[str] = []
        self._scan(text, out)
        return "".join(out)

    def _scan(self, text: str, out: list[str]) -> None:
        i, n = 0, len(text)
        while i < n and not self.broken and self._state != _END:
            if self._state == _STRING:
                run = _STRING_RUN.match(text, i)
                if run is not None:
                    out.append(run.group())
                    i = run.end()
                    continue
                ch = text[i]
                i += 1
                if ch == '"':
                    out.append(ch)
                    if self._in_key:
                        self._state = _COLON
                    else:
                        self._after_value()
                elif ch == "\\":
                    self._held = ch
                    self._state = _ESCAPE
                else:
                    out.append(_CONTROL_ESCAPES.get(ch) or f"\\u{ord(ch):04x}")
                continue
            if self._step(text[i], out):
                i += 1

    def _after_value(self) -> None:
        self._state = _AFTER if self._stack else _END

    def _open(self, ch: str, out: list[str]) -> None:
        out.append(ch)
        self._stack.append(ch)
        self._state = _OBJ_FIRST if ch == "{" else _ARR_FIRST

    def _close(self, ch: str, out: list[str]) -> None:
        out.append(ch)
        self._stack.pop()
        self._after_value()

    def _step(self, ch: str, out: list[str]) -> bool:
        """Take one character outside a string run; False when it must be read again."""
        state = self._state
        if state in _SKIPS_SPACE and ch in " \t\n\r":
            if state != _START:
                out.append(ch)
            return True
        if state == _START:
            if ch == "{":
                self._open(ch, out)
            else:
                self.broken = True
        elif state in (_OBJ_FIRST, _OBJ_KEY):
            if ch == '"':
                out.append(ch)
                self._in_key = True
                self._state = _STRING
            elif ch == "}" and state == _OBJ_FIRST:
                self._close(ch, out)
            else:
                self.broken = True
        elif state == _COLON:
            if ch == ":":
                out.append(ch)
                self._state = _VALUE
            else:
                self.broken = True
        elif state in (_VALUE, _ARR_FIRST):
            self._value(ch, out)
        elif state == _AFTER:
            top = self._stack[-1]
            if ch == ",":
                out.append(ch)
                self._state = _OBJ_KEY if top == "{" else _VALUE
            elif (ch == "}" and top == "{") or (ch == "]" and top == "["):
                self._close(ch, out)
            else:
                self.broken = True
        elif state == _NUMBER:
            following = _number_step(self._number, ch)
            if following is not None:
                out.append(ch)
                self._number = following
            elif self._number in _NUMBER_ENDS:
                self._after_value()
                return False
            else:
                self.broken = True
        elif state == _LITERAL:
            if ch == self._literal[0]:
                out.append(ch)
                self._literal = self._literal[1:]
                if not self._literal:
                    self._after_value()
            else:
                self.broken = True
        else:
            return self._escape(ch, out)
        return True

    def _value(self, ch: str, out: list[str]) -> None:
        if ch == "]" and self._state == _ARR_FIRST:
            self._close(ch, out)
        elif ch in ("{", "["):
            self._open(ch, out)
        elif ch == '"':
            out.append(ch)
            self._in_key = False
            self._state = _STRING
        elif ch == "-" or "0" <= ch <= "9":
            out.append(ch)
            self._number = _N_SIGN if ch == "-" else _N_ZERO if ch == "0" else _N_INT
            self._state = _NUMBER
        elif ch in _LITERALS:
            out.append(ch)
            self._literal = _LITERALS[ch]
            self._state = _LITERAL
        else:
            self.broken = True

    def _escape(self, ch: str, out: list[str]) -> bool:
        """Escape sequences, held back until whole; a bad one keeps its backslash as text."""
        state = self._state
        if state == _HIGH:  # a high surrogate escape waits for "\uDC00".."\uDFFF"
            if ch == "\\":
                self._held = ch
                self._state = _ESCAPE
                return True
            self._drop_high(out)
            self._state = _STRING
            return False
        if state == _ESCAPE:
            if ch == "u":
                self._held += ch
                self._state = _UNICODE
                return True
            self._drop_high(out)
            self._state = _STRING
            if ch in _SIMPLE_ESCAPES:
                out.append(self._held + ch)
                self._held = ""
                return True
            out.append("\\\\")
            self._held = ""
            return False
        # _UNICODE
        if ch not in _HEX:
            self._drop_high(out)
            out.append("\\\\" + self._held[1:])
            self._held = ""
            self._state = _STRING
            return False
        self._held += ch
        if len(self._held) == 6:
            self._unicode_done(out)
        return True

    def _drop_high(self, out: list[str]) -> None:
        if self._high:
            out.append(_REPLACEMENT)
            self._high = ""

    def _unicode_done(self, out: list[str]) -> None:
        code = int(self._held[2:], 16)
        held, self._held = self._held, ""
        self._state = _STRING
        if self._high and 0xDC00 <= code <= 0xDFFF:
            out.append(self._high + held)
            self._high = ""
            return
        self._drop_high(out)
        if 0xD800 <= code <= 0xDBFF:
            self._high = held
            self._state = _HIGH
        elif 0xDC00 <= code <= 0xDFFF:
            out.append(_REPLACEMENT)
        else:
            out.append(held)


def parse_tool_arguments(arguments: str) -> dict[str, Any]:
    """The JSON object ``arguments`` holds (repaired as a stream would be), else ``{}``."""
    scanner = _ObjectScanner()
    text = scanner.feed(arguments)
    if not scanner.complete:
        return {}
    try:
        value = json.loads(text)
    except ValueError:  # pragma: no cover - the scanner passed it
        return {}
    return value if isinstance(value, dict) else {}


# --- responses ---------------------------------------------------------------------------------


def _stop(
    finish_reason: str | None,
    upstream_stop: int | str | None,
    used_tools: bool,
    stop_sequences: Sequence[str] | None,
) -> tuple[StopReason, str | None]:
    if finish_reason == "length":
        return "max_tokens", None
    if used_tools:
        return "tool_use", None
    if finish_reason == "content_filter":
        return "refusal", None
    if isinstance(upstream_stop, str) and stop_sequences and upstream_stop in stop_sequences:
        return "stop_sequence", upstream_stop
    return "end_turn", None


def _input_tokens(usage: oa.Usage) -> tuple[int, int | None]:
    """Uncached prompt tokens and cache reads, as Anthropic counts them separately."""
    details = usage.prompt_tokens_details
    cached = details.cached_tokens if details is not None and details.cached_tokens else 0
    cached = min(cached, usage.prompt_tokens)
    return usage.prompt_tokens - cached, (cached or None)


def from_openai(
    response: oa.ChatCompletion, model: str, stop_sequences: Sequence[str] | None = None
) -> an.Message:
    """The Anthropic message for the first choice of ``response``, named ``model``.

    ``stop_sequences`` are the request's: a vLLM ``stop_reason`` among them gives
    ``stop_reason: "stop_sequence"``.
    """
    content: list[an.ResponseBlock] = []
    finish_reason: str | None = None
    upstream_stop: int | str | None = None
    used_tools = False
    if response.choices:
        choice = response.choices[0]
        finish_reason, upstream_stop = choice.finish_reason, choice.stop_reason
        message = choice.message
        reasoning = (
            message.reasoning if message.reasoning is not None else message.reasoning_content
        )
        reasoning = (reasoning or "").lstrip()
        if reasoning:
            content.append(an.ThinkingBlock(thinking=reasoning, signature=""))
        text = (message.content or message.refusal or "").lstrip()
        if text:
            content.append(an.TextBlock(text=text))
        for call in message.tool_calls or ():
            content.append(
                an.ToolUseBlock(
                    id=_tool_use_id(call.id),
                    name=call.function.name,
                    input=parse_tool_arguments(call.function.arguments),
                )
            )
            used_tools = True
    stop_reason, stop_sequence = _stop(finish_reason, upstream_stop, used_tools, stop_sequences)
    usage = an.Usage()
    if response.usage is not None:
        usage.input_tokens, usage.cache_read_input_tokens = _input_tokens(response.usage)
        usage.output_tokens = response.usage.completion_tokens
    return an.Message(
        id=new_message_id(),
        model=model,
        content=content,
        stop_reason=stop_reason,
        stop_sequence=stop_sequence,
        usage=usage,
    )


# --- streams -----------------------------------------------------------------------------------


class _ToolCall:
    """One OpenAI tool call (by its ``index``) on its way to becoming a tool_use block."""

    __slots__ = ("block", "closed", "id", "name", "pending", "scanner")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.pending: list[str] = []
        self.block: int | None = None
        self.closed = False
        self.scanner = _ObjectScanner()


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
        self, model: str, *, input_tokens: int = 0, stop_sequences: list[str] | None = None
    ) -> None:
        """Translate for a response named ``model``; ``input_tokens`` goes in message_start."""
        self.model = model
        self.message_id = new_message_id()
        self._input_tokens = input_tokens
        self._stop_sequences = list(stop_sequences or ())
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
        """The events one SSE data payload brings.

        ``[DONE]`` finishes the stream; an OpenAI error object, or a payload that
        is no chunk, fails it with a generic message (never the upstream's text).
        """
        if payload == "[DONE]":
            return self.finish()
        try:
            chunk = decode(payload, oa.ChatCompletionChunk)
        except WireError:
            return self.fail(*_stream_error(payload))
        return self.feed(chunk)

    def finish(self) -> list[an.StreamEvent]:
        """Close the open block, start and close tool calls still waiting, then end the message."""
        if self._done:
            return []
        events = self.start()
        events += self._close()
        events += self._flush_calls()
        stop_reason, stop_sequence = _stop(
            self._finish_reason, self._upstream_stop, self._tool_blocks > 0, self._stop_sequences
        )
        usage = an.MessageDeltaUsage(output_tokens=self._content_chunks)
        if self._usage is not None:
            usage.output_tokens = self._usage.completion_tokens
            usage.input_tokens, usage.cache_read_input_tokens = _input_tokens(self._usage)
        self._done = True
        body = an.MessageDeltaBody(stop_reason=stop_reason, stop_sequence=stop_sequence)
        return [*events, an.MessageDelta(delta=body, usage=usage), an.MessageStop()]

    def fail(self, message: str, error_type: ErrorType = "api_error") -> list[an.StreamEvent]:
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
        call.id = _tool_use_id(call.id)
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


def _stream_error(payload: str) -> tuple[str, ErrorType]:
    try:
        body = json.loads(payload)
    except ValueError:
        return "the model server sent an unreadable stream event", "api_error"
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, int) and not isinstance(code, bool):
        return f"the model server failed mid-stream (status {code})", error_type_for_status(code)
    return "the model server failed mid-stream", "api_error"


def error_type_for_status(status: int) -> ErrorType:
    """The Anthropic error type for an HTTP status an OpenAI server answered."""
    return _ERROR_TYPES.get(status, "api_error")


_ERROR_TYPES: dict[int, ErrorType] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


# --- server-sent events ------------------------------------------------------------------------


def sse_event(event: an.StreamEvent) -> bytes:
    """``event`` as one SSE message: ``event: <type>``, ``data: <json>`` and a blank line."""
    tag = event.__struct_config__.tag
    return b"event: " + str(tag).encode() + b"\ndata: " + encode(event) + b"\n\n"


class SseDecoder:
    r"""Splits a server-sent event byte stream into its ``data`` payloads, however it is cut.

    Lines may end in ``\n``, ``\r\n`` or ``\r``; an event's ``data`` lines are
    joined with newlines; comments and other fields are skipped; a byte order
    mark at the start is dropped. The payload ``[DONE]`` is reported as the
    literal ``"[DONE]"`` and ends the stream: nothing after it is read. An
    event not ended by a blank line when the bytes run out is never reported.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data: list[str] = []
        self._first_line = True
        self._skip_newline = False
        self._done = False

    @property
    def done(self) -> bool:
        """Whether ``[DONE]`` has been read."""
        return self._done

    def feed(self, data: bytes) -> list[str]:
        """The payloads of every event that ``data`` completes, in order."""
        if self._done or not data:
            return []
        buffer = self._buffer
        searched = len(buffer)  # what is already buffered holds no line break
        buffer += data
        if self._skip_newline and buffer[0] == 0x0A:  # the "\n" of a "\r\n" cut in two
            del buffer[0]
        self._skip_newline = False
        end = max(buffer.rfind(b"\n", searched), buffer.rfind(b"\r", searched))
        if end < 0:
            return []
        cut = end - 1 if buffer[end] == 0x0A and end > 0 and buffer[end - 1] == 0x0D else end
        self._skip_newline = buffer[end] == 0x0D and end + 1 == len(buffer)
        text = bytes(buffer[:cut]).decode("utf-8", errors="replace")
        del buffer[: end + 1]
        if self._first_line:
            self._first_line = False
            text = text.removeprefix("\ufeff")
        lines = _LINE_BREAK.split(text) if "\r" in text else text.split("\n")
        pending = self._data
        payloads: list[str] = []
        for line in lines:
            if line.startswith("data: "):  # the usual shape, first
                pending.append(line[6:])
            elif line:
                field, colon, value = line.partition(":")
                if field == "data":
                    pending.append(value.removeprefix(" ") if colon else "")
                # comments (":...") and other fields (event, id, retry) are not needed
            elif pending:
                payload = pending[0] if len(pending) == 1 else "\n".join(pending)
                pending.clear()
                if payload.strip() == "[DONE]":
                    payloads.append("[DONE]")
                    self._done = True
                    buffer.clear()
                    break
                payloads.append(payload)
        return payloads
