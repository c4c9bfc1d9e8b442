"""Embeddings, reranking and scoring on the wire: what models with ``task = "embed"`` serve.

``POST /v1/embeddings`` is OpenAI's; ``/v1/rerank`` (Jina's and Cohere's
shape) and ``/v1/score`` are vLLM's, served for the same models. The gateway
forwards these bodies as they came but for ``model``; the types say what the
fields are (``/openapi.json``) and let test doubles answer as vLLM 0.32 does.
"""

from __future__ import annotations

from typing import Literal

from msgspec import Struct

from cortex_core.openai import Usage

__all__ = [
    "Embedding",
    "EmbeddingList",
    "EmbeddingRequest",
    "RerankDocument",
    "RerankRequest",
    "RerankResponse",
    "RerankResult",
    "ScoreData",
    "ScoreRequest",
    "ScoreResponse",
]


class _Request(Struct, kw_only=True, omit_defaults=True):
    """Base of the requests: unset optional fields are left out when encoded."""


class EmbeddingRequest(_Request):
    """``POST /v1/embeddings``: a text, texts, or token ids to embed."""

    model: str
    input: str | list[str | int | list[int]]
    encoding_format: Literal["float", "base64"] | str | None = None
    """``float`` (lists of numbers) or ``base64`` (little-endian float32, the SDK's default)."""
    dimensions: int | None = None
    user: str | None = None
    truncate_prompt_tokens: int | None = None


class Embedding(Struct, kw_only=True):
    index: int
    embedding: list[float] | str
    object: Literal["embedding"] | str = "embedding"


class EmbeddingList(Struct, kw_only=True):
    data: list[Embedding]
    model: str | None = None
    object: Literal["list"] | str = "list"
    usage: Usage | None = None
    """``prompt_tokens`` and ``total_tokens``: an embedding generates nothing."""


class RerankRequest(_Request):
    """``POST /v1/rerank``: documents ordered by relevance to a query."""

    model: str
    query: str
    documents: list[str]
    top_n: int | None = None


class RerankDocument(Struct, kw_only=True):
    text: str | None = None


class RerankResult(Struct, kw_only=True):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(Struct, kw_only=True):
    id: str
    model: str
    results: list[RerankResult]
    usage: Usage | None = None


class ScoreRequest(_Request):
    """``POST /v1/score``: the similarity of queries to documents (``text_1``/``text_2`` too)."""

    model: str
    queries: str | list[str] | None = None
    documents: str | list[str] | None = None
    text_1: str | list[str] | None = None
    text_2: str | list[str] | None = None


class ScoreData(Struct, kw_only=True):
    index: int
    score: float
    object: Literal["score"] | str = "score"


class ScoreResponse(Struct, kw_only=True):
    id: str
    model: str
    data: list[ScoreData]
    object: Literal["list"] | str = "list"
    usage: Usage | None = None
