"""The model catalogue (``models.toml``): model profiles and tier aliases.

Profiles say where and how each model runs; aliases such as ``helexa/small``
name a concrete model so clients can pick a tier without hard-coding ids.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import tomlkit
from msgspec import Struct, field

from cortex_core._toml import ConfigError, convert_section, convert_table, read_toml, toml_key
from cortex_core.ids import InvalidModelId, parse_model_id, qualify, validate_source_name
from cortex_core.tasks import Task
from cortex_core.units import GIB, PositiveGiB

__all__ = [
    "EDIT_LOCK_WAIT_S",
    "Catalogue",
    "CatalogueError",
    "ModelProfile",
    "ModelsFile",
    "load_catalogue",
    "save_alias",
]

EDIT_LOCK_WAIT_S = 30.0
"""How long an edit of ``models.toml`` waits for another one under way to finish."""


class CatalogueError(ValueError):
    """A catalogue that contradicts itself; ``key`` is where in ``models.toml``."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class ModelProfile(Struct, kw_only=True, forbid_unknown_fields=True):
    """One ``[[models]]`` entry: a model and the rules for placing it."""

    id: str
    """The concrete ``org/name`` id clients and neurons use."""
    source: str | None = None
    """The neuron source to load from; absent or ``""``: the neuron's default source."""
    nodes: list[str] | None = None
    """The neurons it may be placed on; absent: every neuron."""
    pinned: bool = False
    priority: int = 50
    memory_gb: PositiveGiB | None = None
    engine: dict[str, Any] = field(default_factory=dict)
    """Engine options passed to the neuron's load."""
    task: Task = "generate"
    """``generate`` (chat, completions, responses) or ``embed`` (embeddings, rerank, score)."""

    @property
    def qualified_id(self) -> str:
        """The id sent to a neuron's ``/models/load``: ``source:org/name`` or ``org/name``."""
        return qualify(self.id, self.source)

    @property
    def memory_bytes(self) -> int | None:
        """The operator's memory estimate in bytes, if given."""
        return None if self.memory_gb is None else int(self.memory_gb * GIB)

    def allowed_on(self, node: str) -> bool:
        """Whether this model may be placed on ``node``."""
        return self.nodes is None or node in self.nodes


class ModelsFile(Struct, kw_only=True, forbid_unknown_fields=True):
    """``models.toml`` as written."""

    aliases: dict[str, str] = field(default_factory=dict)
    models: list[ModelProfile] = field(default_factory=list)


class Catalogue:
    """A validated set of model profiles and aliases, looked up by id or alias."""

    __slots__ = ("_aliases", "_profiles")

    def __init__(
        self, models: Iterable[ModelProfile] = (), aliases: Mapping[str, str] | None = None
    ) -> None:
        """Validate and index; raise :class:`CatalogueError` on the first contradiction."""
        self._profiles: dict[str, ModelProfile] = {}
        for i, profile in enumerate(models):
            _validate_profile(i, profile)
            if profile.id in self._profiles:
                raise CatalogueError(f"models[{i}].id", f"duplicate model id {profile.id!r}")
            self._profiles[profile.id] = profile
        self._aliases = dict(aliases or {})
        for alias, target in self._aliases.items():
            key = f"aliases.{toml_key(alias)}"
            if not alias.strip():
                raise CatalogueError(key, "an alias name may not be empty")
            if alias in self._profiles:
                raise CatalogueError(key, f"alias {alias!r} hides the model with the same id")
            if target in self._aliases:
                raise CatalogueError(
                    key,
                    f"alias {alias!r} points at another alias {target!r}; "
                    f"point it at a model id (such as {self._aliases[target]!r})",
                )
            if target not in self._profiles:
                raise CatalogueError(
                    key, f"alias {alias!r} points at {target!r}, which is not a model in [[models]]"
                )

    @property
    def models(self) -> tuple[ModelProfile, ...]:
        """Every profile, in file order."""
        return tuple(self._profiles.values())

    @property
    def aliases(self) -> Mapping[str, str]:
        """Alias name to concrete id."""
        return dict(self._aliases)

    def resolve_alias(self, name: str) -> str:
        """The concrete id ``name`` stands for: its alias target, or ``name`` itself."""
        return self._aliases.get(name, name)

    def profile(self, model_id: str) -> ModelProfile | None:
        """The profile of a concrete id or alias, if the catalogue has one."""
        return self._profiles.get(self.resolve_alias(model_id))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._profiles or name in self._aliases)

    def __len__(self) -> int:
        return len(self._profiles)

    @classmethod
    def from_file(cls, file: ModelsFile) -> Catalogue:
        """Validate a parsed ``models.toml``."""
        return cls(file.models, file.aliases)


def _validate_profile(i: int, profile: ModelProfile) -> None:
    try:
        parsed = parse_model_id(profile.id)
    except InvalidModelId as exc:
        raise CatalogueError(f"models[{i}].id", exc.reason) from None
    if parsed.source is not None:
        raise CatalogueError(
            f"models[{i}].id",
            f"{profile.id!r} carries a source; write id = {parsed.concrete!r} "
            f"and source = {parsed.source!r}",
        )
    if profile.source:
        try:
            validate_source_name(profile.source)
        except ValueError as exc:
            raise CatalogueError(f"models[{i}].source", str(exc)) from None
    if profile.nodes is not None and not profile.nodes:
        raise CatalogueError(
            f"models[{i}].nodes", "an empty list places the model nowhere; leave the key out"
        )


def load_catalogue(path: str | Path) -> Catalogue:
    """Load and validate ``models.toml``; raise :class:`ConfigError` naming file and key."""
    path = Path(path)
    return _catalogue(read_toml(path), path)


def _catalogue(data: dict[str, Any], path: Path) -> Catalogue:
    aliases = data.pop("aliases", {})
    file = convert_section(data, ModelsFile, path)
    file.aliases = convert_table(aliases, str, path, "aliases")
    try:
        return Catalogue.from_file(file)
    except CatalogueError as exc:
        raise ConfigError(path, exc.key, exc.problem) from None


def save_alias(
    path: str | Path,
    alias: str,
    target: str | None,
    check: Callable[[Catalogue], None] | None = None,
) -> Catalogue:
    """Set (or, with ``target=None``, remove) an alias in ``models.toml``, keeping comments.

    Edits are serialised across processes (an exclusive lock on the file's
    folder, held from reading the file to replacing it), so concurrent edits
    each land. The edited file is validated (and given to ``check``, which may
    raise :class:`ConfigError` too) before it replaces the old one, atomically,
    through a temporary file of its own and with the old one's permissions; it
    is read back before the lock is let go. An edit that would make it invalid,
    or that did not land, raises :class:`ConfigError` and leaves the file as it was.
    """
    path = Path(path)
    with _edit_lock(path):
        catalogue = _edit_alias(path, alias, target, check)
        try:
            landed = tomlkit.parse(path.read_text(encoding="utf-8")).get("aliases", {})
        except (OSError, tomlkit.exceptions.ParseError) as exc:
            raise ConfigError(path, None, f"cannot read it back: {exc}") from None
        if landed.get(alias) != target:
            raise ConfigError(path, f"aliases.{toml_key(alias)}", "the edit did not land")
    return catalogue


@contextlib.contextmanager
def _edit_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive edit lock of ``path`` (a ``flock`` on its folder, which stays put).

    The file itself is replaced by each edit, so a lock on it would not keep
    the next writer out.
    """
    try:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ConfigError(path, None, f"cannot open its folder: {exc.strerror or exc}") from None
    try:
        deadline = time.monotonic() + EDIT_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ConfigError(
                        path,
                        None,
                        f"another edit has held it for {EDIT_LOCK_WAIT_S:.0f} s; try again",
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(folder)  # lets the lock go


def _edit_alias(
    path: Path, alias: str, target: str | None, check: Callable[[Catalogue], None] | None
) -> Catalogue:
    try:
        document = tomlkit.parse(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or exc}") from None
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(path, None, f"not valid TOML: {exc}") from None
    aliases = document.get("aliases")
    if aliases is None:
        aliases = tomlkit.table()
        document["aliases"] = aliases
    if target is None:
        if alias not in aliases:
            raise ConfigError(path, f"aliases.{toml_key(alias)}", "no such alias")
        del aliases[alias]
    else:
        aliases[alias] = target
    text = tomlkit.dumps(document)
    catalogue = _catalogue(tomlkit.parse(text).unwrap(), path)
    if check is not None:
        check(catalogue)
    _replace(path, text)
    return catalogue


def _replace(path: Path, text: str) -> None:
    """Put ``text`` in place of ``path`` at once, through a temporary file of this writer's own."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConfigError(path, None, f"cannot write: {exc.strerror or exc}") from None
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        shutil.copymode(path, tmp)
        with contextlib.suppress(OSError):  # the group (root:cortex); only root may set it
            stat = path.stat()
            os.chown(tmp, stat.st_uid, stat.st_gid)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(path, None, f"cannot write: {exc.strerror or exc}") from None
