"""Which routes serve which task, and the words of the 400 for the wrong one."""

from __future__ import annotations

import pytest

from cortex_core.tasks import TASK_ROUTES, TASKS, route_task, wrong_task


@pytest.mark.parametrize(
    ("path", "task"),
    [
        ("/chat/completions", "generate"),
        ("/v1/chat/completions", "generate"),
        ("/v1/completions", "generate"),
        ("/v1/responses", "generate"),
        ("/embeddings", "embed"),
        ("/v1/embeddings", "embed"),
        ("/v1/rerank", "embed"),
        ("/v1/score", "embed"),
    ],
)
def test_each_route_has_its_task(path: str, task: str) -> None:
    """With or without ``/v1``, a route names the task of the models that serve it."""
    assert route_task(path) == task


def test_every_route_names_a_known_task() -> None:
    """The table holds only tasks the catalogue accepts."""
    assert set(TASK_ROUTES.values()) == TASKS == {"generate", "embed"}


def test_the_right_task_passes() -> None:
    """A model serving its own routes is not refused."""
    assert wrong_task("a/chat", "generate", "/chat/completions") is None
    assert wrong_task("a/embed", "embed", "/v1/embeddings") is None


def test_an_embedding_model_asked_to_chat() -> None:
    """The message names the model, its task, what it serves, and what the route needs."""
    message = wrong_task("BAAI/bge-m3", "embed", "/chat/completions")
    assert message == (
        "model 'BAAI/bge-m3' is an embedding model (task = \"embed\"): it serves"
        " /v1/embeddings, /v1/rerank and /v1/score, not /v1/chat/completions,"
        ' which needs a model with task = "generate"'
    )


def test_a_generating_model_asked_to_embed() -> None:
    """Embeddings on a generating model say which task they need."""
    message = wrong_task("Qwen/Qwen3-8B", "generate", "/v1/embeddings")
    assert message is not None
    assert message.startswith("model 'Qwen/Qwen3-8B' generates text (task = \"generate\")")
    assert message.endswith('not /v1/embeddings, which needs a model with task = "embed"')


def test_a_task_from_a_newer_neuron_is_let_through() -> None:
    """A task this version does not know is for the engine behind it to judge."""
    assert wrong_task("a/b", "classify", "/v1/chat/completions") is None
