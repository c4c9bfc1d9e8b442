"""Where model files come from: hub-compatible servers and local directories.

``scheme:org/name`` picks a source from ``[sources.*]``; ids without a scheme
use ``default_source``. Hub sources go through ``huggingface_hub`` with the
source's own endpoint, token and cache directory, so two sources never share
files. Everything here blocks: callers run it in a thread.

A repository with safetensors weights is read as such. One with GGUF files
and no safetensors (or any repository, when the load names ``gguf_file``) is
sized by the one GGUF file chosen, its config read from the file's header
(``config.json`` where the repository has one wins), and only that file is
fetched.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cortex_core.config import NeuronConfig, SourceConfig
from cortex_core.ids import ModelId
from neuron.errors import NeuronError
from neuron.gguf import GgufError, config_from_gguf, read_header

__all__ = ["HubSource", "ModelMetadata", "PathSource", "Source", "Sources", "choose_gguf"]

log = logging.getLogger(__name__)

# What an engine needs from a repo: config, tokenizer, chat template, weights.
SIDE_FILES = ["*.json", "*.model", "*.txt", "*.jinja", "*.py", "tokenizer*"]
FETCH_PATTERNS = [*SIDE_FILES, "*.safetensors"]
WEIGHT_SUFFIXES = (".safetensors",)
GGUF_SUFFIX = ".gguf"


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """What preflight reads without downloading weights."""

    config: Mapping[str, Any]
    """The model's ``config.json``."""
    weights_bytes: int
    """The size of its safetensors weights, or of its one GGUF file."""
    gguf_file: str | None = None
    """The GGUF file the engine loads (a path in the repository); none: safetensors."""


class Source(Protocol):
    """A place models come from."""

    name: str

    def metadata(self, model: ModelId, gguf_file: str | None = None) -> ModelMetadata:
        """Read config and weight sizes; raise ``NeuronError`` (``model_not_found``, ...)."""
        ...

    def fetch(self, model: ModelId, gguf_file: str | None = None) -> Path:
        """Make the model's files available locally and return their directory."""
        ...


def choose_gguf(model: ModelId, found: list[str], asked: str | None) -> str:
    """The GGUF file to load: the one asked for, or the only one there."""
    listed = ", ".join(found) or "none"
    if asked is not None:
        if asked not in found:
            raise NeuronError(
                "invalid_option",
                f"gguf_file {asked!r} is not in {model.concrete} (GGUF files: {listed})",
                {"option": "gguf_file", "gguf_files": found},
            )
        return asked
    if len(found) > 1:
        raise NeuronError(
            "invalid_option",
            f"{model.concrete} holds {len(found)} GGUF files: choose one with the engine"
            f" option gguf_file ({listed})",
            {"option": "gguf_file", "gguf_files": found},
        )
    return found[0]


def _gguf_config(model: ModelId, file: Any, config: Mapping[str, Any] | None) -> dict[str, Any]:
    try:
        header = read_header(file)
    except GgufError as exc:
        raise NeuronError("unsupported_model", f"{model.concrete}: GGUF file: {exc}") from None
    derived = config_from_gguf(header, model.concrete)
    return {**derived, **(config or {})}


class PathSource:
    """A directory in which model ``org/name`` is ``<path>/org/name``."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path

    def _dir(self, model: ModelId) -> Path:
        return self.path / model.org / model.name

    def metadata(self, model: ModelId, gguf_file: str | None = None) -> ModelMetadata:
        """Read ``config.json`` (or a GGUF header) and stat the weights in the model's directory."""
        directory = self._dir(model)
        config_path = directory / "config.json"
        ggufs = (
            sorted(str(p.relative_to(directory)) for p in directory.rglob(f"*{GGUF_SUFFIX}"))
            if directory.is_dir()
            else []
        )
        weights = sum(
            p.stat().st_size for p in directory.rglob("*") if p.name.endswith(WEIGHT_SUFFIXES)
        )
        if gguf_file is not None or (ggufs and not weights):
            name = choose_gguf(model, ggufs, gguf_file)
            json_config = _read_config(config_path, model) if config_path.is_file() else None
            with (directory / name).open("rb") as file:
                config = _gguf_config(model, file, json_config)
            size = (directory / name).stat().st_size
            return ModelMetadata(config=config, weights_bytes=size, gguf_file=name)
        if not config_path.is_file():
            raise NeuronError(
                "model_not_found",
                f"{model.concrete} is not in source {self.name!r}: no {config_path}",
                {"source": self.name},
            )
        return ModelMetadata(config=_read_config(config_path, model), weights_bytes=weights)

    def fetch(self, model: ModelId, gguf_file: str | None = None) -> Path:
        """The model's directory, as it is."""
        return self._dir(model)


class HubSource:
    """A hub-compatible server reached through ``huggingface_hub``."""

    def __init__(self, name: str, endpoint: str, token: str | None, cache_dir: Path) -> None:
        self.name = name
        self.endpoint = endpoint.rstrip("/")
        self.token = token
        self.cache_dir = cache_dir

    def _errors(self, model: ModelId, exc: Exception) -> NeuronError:
        from huggingface_hub import errors

        details = {"source": self.name, "endpoint": self.endpoint}
        if isinstance(exc, errors.RepositoryNotFoundError | errors.RevisionNotFoundError):
            return NeuronError(
                "model_not_found",
                f"{model.concrete} is not in source {self.name!r} (or needs a token it lacks)",
                details,
            )
        # Not the local-cache miss (also an EntryNotFoundError) an unreachable hub causes.
        if isinstance(exc, errors.RemoteEntryNotFoundError):
            return NeuronError(
                "unsupported_model",
                f"{model.concrete} has no config.json in {self.name!r}",
                details,
            )
        log.warning(
            "source unreachable",
            extra={"model": model.qualified, "url": self.endpoint, "error": repr(exc)},
        )
        return NeuronError(
            "source_unavailable",
            f"source {self.name!r} could not be read: {type(exc).__name__}",
            details,
        )

    def metadata(self, model: ModelId, gguf_file: str | None = None) -> ModelMetadata:
        """Fetch ``config.json`` (or a GGUF header) and the repo's file sizes; no weights."""
        from huggingface_hub import HfApi, HfFileSystem

        api = HfApi(endpoint=self.endpoint, token=self.token or False)
        try:
            info = api.model_info(model.concrete, files_metadata=True)
        except Exception as exc:
            raise self._errors(model, exc) from exc
        files = {s.rfilename: s.size or 0 for s in info.siblings or []}
        weights = sum(size for name, size in files.items() if name.endswith(WEIGHT_SUFFIXES))
        ggufs = sorted(name for name in files if name.endswith(GGUF_SUFFIX))
        if gguf_file is not None or (ggufs and not weights):
            name = choose_gguf(model, ggufs, gguf_file)
            json_config = self._config(model) if "config.json" in files else None
            hub = HfFileSystem(endpoint=self.endpoint, token=self.token or False)
            try:
                with hub.open(f"{model.concrete}/{name}", "rb", block_size=4 << 20) as file:
                    config = _gguf_config(model, file, json_config)
            except NeuronError:
                raise
            except Exception as exc:
                raise self._errors(model, exc) from exc
            return ModelMetadata(config=config, weights_bytes=files[name], gguf_file=name)
        return ModelMetadata(config=self._config(model), weights_bytes=weights)

    def _config(self, model: ModelId) -> Mapping[str, Any]:
        from huggingface_hub import hf_hub_download

        try:
            config_path = hf_hub_download(
                model.concrete,
                "config.json",
                cache_dir=self.cache_dir,
                endpoint=self.endpoint,
                token=self.token or False,
            )
        except Exception as exc:
            raise self._errors(model, exc) from exc
        return _read_config(Path(config_path), model)

    def fetch(self, model: ModelId, gguf_file: str | None = None) -> Path:
        """Download what an engine needs into this source's cache (resuming what is there)."""
        from huggingface_hub import snapshot_download

        patterns = [*SIDE_FILES, gguf_file] if gguf_file else FETCH_PATTERNS
        try:
            path = snapshot_download(
                model.concrete,
                cache_dir=self.cache_dir,
                endpoint=self.endpoint,
                token=self.token or False,
                allow_patterns=patterns,
            )
        except Exception as exc:
            raise self._errors(model, exc) from exc
        return Path(path)


def _read_config(path: Path, model: ModelId) -> Mapping[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NeuronError(
            "unsupported_model", f"{model.concrete}: config.json is unreadable: {exc}"
        ) from None
    if not isinstance(config, dict):
        raise NeuronError("unsupported_model", f"{model.concrete}: config.json is not an object")
    return config


class Sources:
    """The neuron's configured sources, by name."""

    def __init__(self, config: NeuronConfig, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.default = config.neuron.default_source
        cache_root = Path(config.neuron.cache_dir)
        self._sources: dict[str, Source] = {
            name: _make(name, source, cache_root, env) for name, source in config.sources.items()
        }

    @property
    def names(self) -> list[str]:
        """Every configured source name."""
        return sorted(self._sources)

    def for_model(self, model: ModelId) -> Source:
        """The source ``model`` names, or the default; ``unknown_source`` if not configured."""
        name = model.source or self.default
        source = self._sources.get(name)
        if source is None:
            raise NeuronError(
                "unknown_source",
                f"source {name!r} is not configured on this neuron"
                f" (configured: {', '.join(self.names)})",
                {"source": name, "configured": self.names},
            )
        return source


def _make(name: str, source: SourceConfig, cache_root: Path, env: Mapping[str, str]) -> Source:
    if source.path is not None:
        return PathSource(name, Path(source.path))
    assert source.endpoint is not None  # config validation guarantees one of the two
    token = env.get(source.token_env) if source.token_env else None
    # One cache folder per source: `helexa:X` and `huggingface:X` never share files.
    return HubSource(name, source.endpoint, token or None, cache_root / "sources" / name)
