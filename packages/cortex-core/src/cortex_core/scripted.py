"""Scripted answers of the Responses, embeddings, rerank and score APIs, shaped as vLLM 0.32's.

The neuron's scripted engine (``neuron.testing.scripted``) and the gateway's
scripted fleet (``cortex_gateway.testing``) answer with these, so tests on
either side see what a real engine sends without running a model: a fixed
reply (word by word when streamed), token counts of one per word, and
embeddings derived from each text's hash (the same text, the same vector).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "EMBEDDING_DIMENSIONS",
    "embedding",
    "embeddings_answer",
    "rerank_answer",
    "response_events",
    "response_object",
    "score_answer",
]

EMBEDDING_DIMENSIONS = 8
RESPONSE_ID = "resp_scripted"
MESSAGE_ID = "msg_scripted"


def _tokens(text: str) -> int:
    return len(text.split())


def _input_tokens(request: Mapping[str, Any]) -> int:
    """One token per word of the instructions and every text in the input."""
    found = [str(request.get("instructions") or "")]
    given = request.get("input")
    if isinstance(given, str):
        found.append(given)
    elif isinstance(given, list):
        for item in given:
            content = item.get("content") if isinstance(item, dict) else None
            if isinstance(content, str):
                found.append(content)
            elif isinstance(content, list):
                found += [str(p.get("text", "")) for p in content if isinstance(p, dict)]
    return sum(_tokens(t) for t in found)


def _message(text: str, status: str) -> dict[str, Any]:
    part: dict[str, Any] = {
        "type": "output_text",
        "text": text,
        "annotations": [],
        "logprobs": None,
    }
    return {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [part] if text or status == "completed" else [],
    }


def response_object(
    request: Mapping[str, Any], reply: str, *, status: str = "completed"
) -> dict[str, Any]:
    """The response object answering ``request`` with ``reply`` (``output_text`` is the reply)."""
    done = status != "in_progress"
    prompt, output = _input_tokens(request), _tokens(reply) if done else 0
    return {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": int(time.time()),
        "model": request.get("model"),
        "status": status,
        "output": [_message(reply, "completed")] if done else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "store": False,
        "previous_response_id": None,
        "incomplete_details": None,
        "error": None,
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + output,
        }
        if done
        else None,
    }


def _event(kind: str, number: int, **fields: Any) -> bytes:
    data = json.dumps({"type": kind, "sequence_number": number, **fields})
    return f"event: {kind}\ndata: {data}\n\n".encode()


def response_events(request: Mapping[str, Any], reply: str) -> list[bytes]:
    """The stream answering ``request``: created, one text delta per word, completed."""
    words = [w if i == 0 else f" {w}" for i, w in enumerate(reply.split(" "))]
    place = {"item_id": MESSAGE_ID, "output_index": 0, "content_index": 0}
    empty: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": None}
    steps: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": response_object(request, "", status="in_progress")}),
        ("response.in_progress", {"response": response_object(request, "", status="in_progress")}),
        ("response.output_item.added", {"output_index": 0, "item": _message("", "in_progress")}),
        ("response.content_part.added", {**place, "part": empty}),
        *(("response.output_text.delta", {**place, "delta": w, "logprobs": []}) for w in words),
        ("response.output_text.done", {**place, "text": reply, "logprobs": []}),
        ("response.content_part.done", {**place, "part": {**empty, "text": reply}}),
        ("response.output_item.done", {"output_index": 0, "item": _message(reply, "completed")}),
        ("response.completed", {"response": response_object(request, reply)}),
    ]
    return [_event(kind, n, **fields) for n, (kind, fields) in enumerate(steps)]


def embedding(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """A unit vector derived from ``text``'s hash: equal texts, equal vectors."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:dimensions]]
    norm = sum(v * v for v in raw) ** 0.5 or 1.0
    return [v / norm for v in raw]


def _texts(given: object) -> list[str]:
    if isinstance(given, str):
        return [given]
    if isinstance(given, list) and given and all(isinstance(i, int) for i in given):
        return [" ".join(map(str, given))]  # one prompt of token ids
    if isinstance(given, list):
        return [t if isinstance(t, str) else " ".join(map(str, t)) for t in given]
    return []


def _usage(texts: Sequence[str]) -> dict[str, int]:
    tokens = sum(max(_tokens(t), 1) for t in texts)
    return {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}


def embeddings_answer(request: Mapping[str, Any]) -> dict[str, Any]:
    """The embeddings of every input text, as floats or (``encoding_format``) base64."""
    texts = _texts(request.get("input"))
    dimensions = request.get("dimensions") or EMBEDDING_DIMENSIONS
    data = []
    for index, text in enumerate(texts):
        vector: list[float] | str = embedding(text, dimensions)
        if request.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"index": index, "object": "embedding", "embedding": vector})
    return {
        "id": "embd-scripted",
        "object": "list",
        "created": int(time.time()),
        "model": request.get("model"),
        "data": data,
        "usage": _usage(texts),
    }


def _similarity(a: str, b: str) -> float:
    return sum(x * y for x, y in zip(embedding(a), embedding(b), strict=True))


def rerank_answer(request: Mapping[str, Any]) -> dict[str, Any]:
    """The documents by cosine similarity of their scripted embeddings to the query's."""
    query = str(request.get("query", ""))
    documents = _texts(request.get("documents"))
    scores = sorted(((_similarity(query, d), i) for i, d in enumerate(documents)), reverse=True)
    results = [
        {"index": i, "document": {"text": documents[i]}, "relevance_score": score}
        for score, i in scores
    ]
    top = request.get("top_n") or len(results)
    return {
        "id": "rerank-scripted",
        "model": request.get("model"),
        "results": results[:top],
        "usage": _usage([query, *documents]),
    }


def score_answer(request: Mapping[str, Any]) -> dict[str, Any]:
    """Each document's (or ``text_2``'s) similarity to the one query (``text_1``)."""
    queries = _texts(request.get("queries", request.get("text_1")))
    documents = _texts(request.get("documents", request.get("text_2")))
    query = queries[0] if queries else ""
    return {
        "id": "score-scripted",
        "object": "list",
        "created": int(time.time()),
        "model": request.get("model"),
        "data": [
            {"index": i, "object": "score", "score": _similarity(query, d)}
            for i, d in enumerate(documents)
        ],
        "usage": _usage([query, *documents]),
    }
