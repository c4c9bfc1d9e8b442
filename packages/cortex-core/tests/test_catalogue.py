"""The catalogue: alias resolution, profile lookups, and comment-preserving edits."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cortex_core.catalogue import (
    Catalogue,
    CatalogueError,
    ModelProfile,
    load_catalogue,
    save_alias,
)
from cortex_core.config import ConfigError
from cortex_core.units import GIB

Write = Callable[[str, str], Path]

MODELS = """\
# The tiers clients choose from.
[aliases]
"helexa/small" = "Qwen/Qwen3-1.7B"  # fast

[[models]]
id = "Qwen/Qwen3-1.7B"
memory_gb = 6.5
[models.engine]
max_model_len = 8192

[[models]]
id = "Qwen/Qwen3-8B"
source = "helexa"
nodes = ["beast"]
priority = 10
"""


def test_resolve_alias() -> None:
    """An alias resolves to its target; anything else resolves to itself."""
    catalogue = Catalogue(
        [ModelProfile(id="Qwen/Qwen3-1.7B"), ModelProfile(id="Qwen/Qwen3-8B")],
        {"helexa/small": "Qwen/Qwen3-1.7B"},
    )
    assert catalogue.resolve_alias("helexa/small") == "Qwen/Qwen3-1.7B"
    assert catalogue.resolve_alias("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"
    assert catalogue.resolve_alias("unknown/model") == "unknown/model"
    assert "helexa/small" in catalogue
    assert "Qwen/Qwen3-8B" in catalogue
    assert "unknown/model" not in catalogue


def test_profile_lookup_and_fields(write: Write) -> None:
    """Profiles are found by id or alias, with their qualified id, memory and nodes."""
    catalogue = load_catalogue(write("models.toml", MODELS))
    small = catalogue.profile("helexa/small")
    assert small is not None
    assert small.id == "Qwen/Qwen3-1.7B"
    assert small.qualified_id == "Qwen/Qwen3-1.7B"
    assert small.memory_bytes == int(6.5 * GIB)
    assert small.engine == {"max_model_len": 8192}
    assert small.allowed_on("anywhere")
    big = catalogue.profile("Qwen/Qwen3-8B")
    assert big is not None
    assert big.qualified_id == "helexa:Qwen/Qwen3-8B"
    assert big.memory_bytes is None
    assert big.allowed_on("beast")
    assert not big.allowed_on("benjy")
    assert catalogue.profile("Qwen/Nope") is None
    assert [m.id for m in catalogue.models] == ["Qwen/Qwen3-1.7B", "Qwen/Qwen3-8B"]


def test_empty_source_loads_with_neuron_default() -> None:
    """`source = ""` is no source: the neuron's default source applies."""
    assert ModelProfile(id="Qwen/Qwen3-8B", source="").qualified_id == "Qwen/Qwen3-8B"


def test_catalogue_errors_direct() -> None:
    """Building a Catalogue in code validates like loading a file does."""
    with pytest.raises(CatalogueError, match=r"aliases\.small: alias 'small' points at 'x/y'"):
        Catalogue([ModelProfile(id="a/b")], {"small": "x/y"})
    with pytest.raises(CatalogueError, match=r"models\[1\]\.id: duplicate model id 'a/b'"):
        Catalogue([ModelProfile(id="a/b"), ModelProfile(id="a/b")])


def test_save_alias_keeps_comments(write: Write) -> None:
    """Setting and removing aliases rewrites models.toml with the operator's comments intact."""
    path = write("models.toml", MODELS)
    catalogue = save_alias(path, "helexa/balanced", "Qwen/Qwen3-8B")
    assert catalogue.resolve_alias("helexa/balanced") == "Qwen/Qwen3-8B"
    text = path.read_text()
    assert "# The tiers clients choose from." in text
    assert '"helexa/small" = "Qwen/Qwen3-1.7B"  # fast' in text
    assert load_catalogue(path).resolve_alias("helexa/balanced") == "Qwen/Qwen3-8B"
    save_alias(path, "helexa/small", None)
    assert "helexa/small" not in load_catalogue(path)
    assert "# The tiers clients choose from." in path.read_text()


def test_save_alias_creates_table(write: Write) -> None:
    """A models.toml without [aliases] gets one."""
    path = write("models.toml", '# mine\n[[models]]\nid = "a/b"\n')
    save_alias(path, "tier/one", "a/b")
    assert load_catalogue(path).aliases == {"tier/one": "a/b"}
    assert path.read_text().startswith("# mine\n")


def test_save_alias_refuses_invalid_edit(write: Write) -> None:
    """An edit that would break the catalogue is refused and the file is left as it was."""
    path = write("models.toml", MODELS)
    with pytest.raises(ConfigError, match="which is not a model in"):
        save_alias(path, "helexa/huge", "Qwen/Nope")
    with pytest.raises(ConfigError, match="points at another alias"):
        save_alias(path, "helexa/tiny", "helexa/small")
    with pytest.raises(ConfigError, match="no such alias"):
        save_alias(path, "helexa/none", None)
    assert path.read_text() == MODELS


def _set_alias(path: Path, index: int) -> None:
    """One writer's edit (run in a process of its own)."""
    save_alias(path, f"tier/{index}", "Qwen/Qwen3-8B")


def test_concurrent_edits_from_many_processes_all_land(write: Write) -> None:
    """Twenty processes set twenty aliases at once: all twenty are in the file afterwards.

    Without the lock, each read-modify-write raced the others (and all shared
    one temporary file): most edits were lost, though every writer succeeded.
    """
    path = write("models.toml", MODELS)
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_set_alias, args=(path, i)) for i in range(20)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert [w.exitcode for w in writers] == [0] * 20
    aliases = load_catalogue(path).aliases
    assert {f"tier/{i}" for i in range(20)} <= set(aliases)
    assert "# The tiers clients choose from." in path.read_text()
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_an_edit_waits_for_the_one_under_way(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    """While another holds the lock, an edit waits; past EDIT_LOCK_WAIT_S it gives up, saying so."""
    path = write("models.toml", MODELS)
    monkeypatch.setattr("cortex_core.catalogue.EDIT_LOCK_WAIT_S", 0.2)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match="another edit has held it"):
            save_alias(path, "tier/late", "Qwen/Qwen3-8B")
    finally:
        os.close(folder)
    assert path.read_text() == MODELS
    save_alias(path, "tier/late", "Qwen/Qwen3-8B")
    assert "tier/late" in load_catalogue(path).aliases


@pytest.fixture
def write(write_file: Write) -> Write:
    """Shorthand for the shared file writer."""
    return write_file
