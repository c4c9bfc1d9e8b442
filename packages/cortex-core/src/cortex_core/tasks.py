"""What a model is for: generating text or embedding it, and which OpenAI routes each serves.

A model's task is set per model in ``models.toml`` (``task = "embed"``; the
default is ``"generate"``), travels to the neuron in its load request and
comes back in ``GET /models``. Both daemons refuse a request whose route is
not for its model's task with the same 400 message, written here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, get_args

__all__ = ["TASKS", "TASK_ROUTES", "Task", "route_task", "wrong_task"]

Task = Literal["generate", "embed"]
TASKS: Final[frozenset[str]] = frozenset(get_args(Task))

TASK_ROUTES: Final[Mapping[str, Task]] = {
    "/chat/completions": "generate",
    "/completions": "generate",
    "/responses": "generate",
    "/embeddings": "embed",
    "/rerank": "embed",
    "/score": "embed",
}
"""The OpenAI-style routes (under ``/v1``) and the task of the models they serve."""

_SERVES: Final[Mapping[str, str]] = {
    "generate": "/v1/chat/completions, /v1/completions, /v1/responses and /v1/messages",
    "embed": "/v1/embeddings, /v1/rerank and /v1/score",
}
_WHAT: Final[Mapping[str, str]] = {
    "generate": "generates text",
    "embed": "is an embedding model",
}


def route_task(path: str) -> Task:
    """The task of the models ``path`` (``/embeddings``, with or without ``/v1``) serves."""
    return TASK_ROUTES.get(path.removeprefix("/v1"), "generate")


def wrong_task(model: str, task: str, path: str) -> str | None:
    """Why a model of ``task`` cannot serve ``path``; ``None`` when it can.

    A task this version does not know (a newer neuron's) is let through: the
    engine behind it answers for itself.
    """
    needed = route_task(path)
    if task == needed or task not in TASKS:
        return None
    route = "/v1" + path.removeprefix("/v1")
    return (
        f"model '{model}' {_WHAT[task]} (task = \"{task}\"): it serves {_SERVES[task]},"
        f' not {route}, which needs a model with task = "{needed}"'
    )
