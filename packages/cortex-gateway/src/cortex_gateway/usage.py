"""Usage per key: requests and tokens by key name and model, since the gateway started.

Every inference request that ends is counted once (``Outcomes`` calls
:meth:`KeyAccounts.record`): under its key's name (``""`` for the unnamed
keys of ``api_keys``/``admin_keys``, and for every request when no key is
configured) and its model (a catalogue id, ``other`` for the rest, ``none``
before one was named), as a request with its status and, when the answer
carried a usage, its prompt, cached and completion tokens. The counts go to
the metrics (``cortex_key_requests_total``, ``cortex_key_tokens_total``) and
to a :class:`UsageBook`, which ``GET /admin/usage``, ``cortex usage`` and the
dashboard's keys panel read. Keys rotated under one name add up under it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter

from cortex_core.openai import Usage
from cortex_core.text import columns

__all__ = [
    "KeyAccounts",
    "KeyReport",
    "ModelReport",
    "UsageBook",
    "UsageReport",
    "merge_reports",
    "usage_table",
]


class ModelReport(msgspec.Struct, kw_only=True):
    """One key's use of one model."""

    model: str
    requests: int = 0
    """Requests that ended, however they ended."""
    errors: int = 0
    """Of those, the ones answered with a status of 400 or more (499: the client left)."""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens the engine took from its prefix cache (part of ``prompt_tokens``)."""
    completion_tokens: int = 0


class KeyReport(msgspec.Struct, kw_only=True):
    """One key's usage, by model."""

    name: str
    models: list[ModelReport] = msgspec.field(default_factory=list)


class UsageReport(msgspec.Struct, kw_only=True):
    """``GET /admin/usage``: every key's usage since ``since`` (Unix seconds)."""

    since: float
    keys: list[KeyReport] = msgspec.field(default_factory=list)


class UsageBook:
    """Counts by key name and model (pure: no clock but the start it is given)."""

    def __init__(self, since: float) -> None:
        self.since = since
        self._rows: dict[str, dict[str, ModelReport]] = {}

    def record(
        self, key: str, model: str, status: int, prompt: int, cached: int, completion: int
    ) -> None:
        """Count one request that ended with ``status`` and used these tokens."""
        self.add(
            key,
            ModelReport(
                model=model,
                requests=1,
                errors=int(status >= 400),
                prompt_tokens=prompt,
                cached_tokens=cached,
                completion_tokens=completion,
            ),
        )

    def add(self, key: str, counts: ModelReport) -> None:
        """Add ``counts`` to what ``key`` used of ``counts.model``."""
        models = self._rows.setdefault(key, {})
        row = models.get(counts.model)
        if row is None:
            row = models[counts.model] = ModelReport(model=counts.model)
        row.requests += counts.requests
        row.errors += counts.errors
        row.prompt_tokens += counts.prompt_tokens
        row.cached_tokens += counts.cached_tokens
        row.completion_tokens += counts.completion_tokens

    def report(self) -> UsageReport:
        """Everything counted, keys and models sorted by name."""
        return UsageReport(
            since=self.since,
            keys=[
                KeyReport(
                    name=name,
                    models=[msgspec.structs.replace(m) for _, m in sorted(models.items())],
                )
                for name, models in sorted(self._rows.items())
            ],
        )


def merge_reports(reports: Iterable[UsageReport]) -> UsageReport:
    """Several processes' reports as one: counts added, the earliest start kept."""
    reports = list(reports)
    book = UsageBook(min((r.since for r in reports), default=time.time()))
    for report in reports:
        for key in report.keys:
            for counts in key.models:
                book.add(key.name, counts)
    return book.report()


def usage_table(report: UsageReport) -> str:
    """``report`` as the table ``cortex usage`` prints: a row per key and model, then the total."""
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.since))
    counted = [
        (
            key.name or "(unnamed)",
            m.model,
            (m.requests, m.errors, m.prompt_tokens, m.cached_tokens, m.completion_tokens),
        )
        for key in report.keys
        for m in key.models
    ]
    if not counted:
        return f"since {started}: no inference requests"
    totals = tuple(sum(column) for column in zip(*(c for _, _, c in counted), strict=True))
    header = ("KEY", "MODEL", "REQUESTS", "ERRORS", "PROMPT", "CACHED", "COMPLETION")
    rows = [(key, model, *map(str, c)) for key, model, c in [*counted, ("TOTAL", "", totals)]]
    # Names to the left, figures to the right.
    return "\n".join([f"since {started}", *columns([header, *rows], left=2)])


class KeyAccounts:
    """Usage per key in the metrics and in a book, counted as requests end."""

    def __init__(self, registry: CollectorRegistry, since: float | None = None) -> None:
        self.book = UsageBook(time.time() if since is None else since)
        self.requests = Counter(
            "cortex_key_requests",
            "Inference requests by key name (unnamed keys: empty), model and status",
            ["key", "model", "status"],
            registry=registry,
        )
        self.tokens = Counter(
            "cortex_key_tokens",
            "Tokens by key name, model and kind (prompt, cached, completion), from the answers'"
            " usage",
            ["key", "model", "kind"],
            registry=registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any, Any]] = {}

    def record(self, key: str, model: str, status: int, usage: Usage | None) -> None:
        """Count one request of ``key`` on ``model`` (a bounded label) ending with ``status``."""
        prompt = usage.prompt_tokens if usage is not None else 0
        completion = usage.completion_tokens if usage is not None else 0
        cached = usage.cached_tokens if usage is not None else 0
        self.book.record(key, model, status, prompt, cached, completion)
        children = self._children.get((key, model, status))
        if children is None:
            # Key names come from the config and models are bounded labels: so is this cache.
            children = self._children[(key, model, status)] = (
                self.requests.labels(key, model, str(status)),
                self.tokens.labels(key, model, "prompt"),
                self.tokens.labels(key, model, "cached"),
                self.tokens.labels(key, model, "completion"),
            )
        requests, prompt_c, cached_c, completion_c = children
        requests.inc()
        if usage is not None:
            prompt_c.inc(prompt)
            cached_c.inc(cached)
            completion_c.inc(completion)
