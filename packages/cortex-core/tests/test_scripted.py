"""The scripted answers both sides' test doubles give: shaped as the clients decode them."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from cortex_core.embeddings import EmbeddingList, RerankResponse, ScoreResponse
from cortex_core.responses_api import Response
from cortex_core.scripted import (
    EMBEDDING_DIMENSIONS,
    embedding,
    embeddings_answer,
    rerank_answer,
    response_events,
    response_object,
    score_answer,
)
from cortex_core.wire import decode

REQUEST = {"model": "m", "instructions": "Be brief.", "input": "What is the capital?"}


def test_a_response_object_decodes_with_its_usage() -> None:
    """The whole answer: one message with the reply, one token per word in and out."""
    answer = decode(json.dumps(response_object(REQUEST, "Paris it is.")), Response)
    assert answer.status == "completed"
    assert answer.output[0]["content"][0]["text"] == "Paris it is."
    assert answer.usage is not None
    usage = answer.usage.as_usage()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (6, 3, 9)


def test_response_events_are_numbered_and_end_completed() -> None:
    """Named events, numbered from 0, a delta per word, then response.completed."""
    events = [e.decode() for e in response_events(REQUEST, "Paris it is.")]
    kinds = [e.split("\n", 1)[0].removeprefix("event: ") for e in events]
    data = [json.loads(e.split("data: ", 1)[1]) for e in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert [d["type"] for d in data] == kinds
    assert [d["sequence_number"] for d in data] == list(range(len(events)))
    deltas = [d["delta"] for d in data if d["type"] == "response.output_text.delta"]
    assert deltas == ["Paris", " it", " is."]


def test_embeddings_as_floats_or_base64() -> None:
    """Unit vectors per text, the same text the same vector; base64 is little-endian float32."""
    floats = decode(
        json.dumps(embeddings_answer({"model": "m", "input": ["a", "b"]})), EmbeddingList
    )
    assert [d.embedding for d in floats.data] == [embedding("a"), embedding("b")]
    assert sum(v * v for v in embedding("a")) == pytest.approx(1.0)
    packed = embeddings_answer({"model": "m", "input": "a", "encoding_format": "base64"})
    raw = base64.b64decode(packed["data"][0]["embedding"])
    unpacked = struct.unpack(f"<{EMBEDDING_DIMENSIONS}f", raw)
    assert list(unpacked) == pytest.approx(embedding("a"), abs=1e-6)


def test_rerank_orders_by_similarity_and_score_keeps_order() -> None:
    """Rerank sorts the documents best first (top_n of them); score keeps their order."""
    request = {"model": "m", "query": "q", "documents": ["x", "y", "z"], "top_n": 2}
    ranked = decode(json.dumps(rerank_answer(request)), RerankResponse)
    scores = [r.relevance_score for r in ranked.results]
    assert len(scores) == 2
    assert scores == sorted(scores, reverse=True)
    scored = decode(
        json.dumps(score_answer({"model": "m", "text_1": "q", "text_2": ["x", "y"]})), ScoreResponse
    )
    assert [d.index for d in scored.data] == [0, 1]
