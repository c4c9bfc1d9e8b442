"""How often one request enters the pipeline and the lifecycle: the request sequence in one place.

A route hands its request over to the pipeline and the pipeline asks the
lifecycle for a lease; when a route drives the pipeline step by step, or the
pipeline the lifecycle, these counts grow. An entry is a fresh call (not a
coroutine or generator resuming) of a function of the module, made from
another module of the gateway; the event loop starting a task or a callback is
not one.
"""

from __future__ import annotations

import dis
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import pytest
from gateway_harness import serve

import cortex_gateway
from cortex_gateway.testing import ScriptedModel, ScriptedNode

pytestmark = pytest.mark.anyio

PACKAGE = Path(cortex_gateway.__file__).parent
WATCHED = {"pipeline": PACKAGE / "pipeline.py", "lifecycle": PACKAGE / "lifecycle.py"}
LIMITS = {"pipeline": 2, "lifecycle": 1}
CATALOGUE = '[[models]]\nid = "fake/small"\nmemory_gb = 4\n'
MODELS = [ScriptedModel("fake/small", memory_gib=4)]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class EntryCounter:
    """Counts fresh calls into each watched module from the rest of the gateway."""

    def __init__(self) -> None:
        self.entries: Counter[str] = Counter()
        self.calls: list[str] = []
        self._names = {str(path): name for name, path in WATCHED.items()}
        self._package = str(PACKAGE)
        self._starts: dict[CodeType, int] = {}

    def _start(self, code: CodeType) -> int:
        """Where a code object first runs (after a generator's preamble): a fresh call is there."""
        start = self._starts.get(code)
        if start is None:
            start = next(i.offset for i in dis.get_instructions(code) if i.opname == "RESUME")
            self._starts[code] = start
        return start

    def hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        code = frame.f_code
        name = self._names.get(code.co_filename)
        caller = frame.f_back
        if name is None or caller is None:
            return
        origin = caller.f_code.co_filename
        if origin == code.co_filename or not origin.startswith(self._package):
            return
        if frame.f_lasti > self._start(code):
            return  # a coroutine or generator resuming, not a new entry
        self.entries[name] += 1
        self.calls.append(f"{name}.{code.co_qualname} from {Path(origin).name}")

    @contextmanager
    def counting(self) -> Iterator[EntryCounter]:
        previous = sys.getprofile()
        sys.setprofile(self.hook)
        try:
            yield self
        finally:
            sys.setprofile(previous)


WALKS: dict[str, tuple[str, dict[str, object]]] = {
    "chat completion": ("/v1/chat/completions", {"messages": QUESTION}),
    "streamed chat completion": ("/v1/chat/completions", {"messages": QUESTION, "stream": True}),
    "Anthropic message": ("/v1/messages", {"messages": QUESTION, "max_tokens": 50}),
    "streamed Anthropic message": (
        "/v1/messages",
        {"messages": QUESTION, "max_tokens": 50, "stream": True},
    ),
}


@pytest.mark.parametrize("walk", list(WALKS))
async def test_one_request_enters_the_pipeline_twice_and_the_lifecycle_once(
    tmp_path: Path, walk: str
) -> None:
    """A request on a ready model: handed to the pipeline, which asks the lifecycle once."""
    path, body = WALKS[walk]
    async with serve(
        tmp_path, [ScriptedNode("beast", gpus=[24])], CATALOGUE, models=MODELS, poll_interval_s=3600
    ) as gw:
        assert (await gw.chat("fake/small")).status_code == 200  # loaded, endpoint known
        counter = EntryCounter()
        with counter.counting():
            answer = await gw.http.post(path, json={"model": "fake/small", **body})
        assert answer.status_code == 200, answer.text
    assert counter.entries["pipeline"] <= LIMITS["pipeline"], counter.calls
    assert counter.entries["lifecycle"] <= LIMITS["lifecycle"], counter.calls
