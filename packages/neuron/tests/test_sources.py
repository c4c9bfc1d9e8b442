"""Model sources: local directories, hub-compatible servers (a loopback FakeHub), and lookup."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from cortex_core.config import NeuronConfig, NeuronSection, SourceConfig
from cortex_core.ids import ModelId
from neuron.errors import NeuronError
from neuron.sources import HubSource, PathSource, Sources
from neuron.testing.gguf import write_gguf
from neuron.testing.hub import FakeHub, HubRequest

pytestmark = pytest.mark.usefixtures("hub_env")

TINY = ModelId("acme", "tiny")
SHARDED = ModelId("acme", "sharded")
CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "torch_dtype": "bfloat16",
}
TINY_WEIGHTS = 4096
SHARD_SIZES = (3000, 200_000)  # the second is bigger than the client's first read


def write(path: Path, data: str | bytes) -> None:
    """Write a file, creating its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)


def make_repos(root: Path, marker: str = "") -> Path:
    """Under ``root``: ``acme/tiny`` (one weights file) and ``acme/sharded`` (two shards)."""
    tiny = root / "acme" / "tiny"
    write(tiny / "config.json", json.dumps({**CONFIG, "marker": marker}))
    write(tiny / "tokenizer.json", json.dumps({"version": "1.0", "model": {}}))
    write(tiny / "tokenizer_config.json", json.dumps({"chat_template": "{{ messages }}"}))
    write(tiny / "generation_config.json", json.dumps({"do_sample": True}))
    write(tiny / "model.safetensors", marker.encode() + bytes(TINY_WEIGHTS - len(marker)))
    write(tiny / "README.md", "# tiny\n")
    write(tiny / "original" / "consolidated.00.pth", bytes(512))

    sharded = root / "acme" / "sharded"
    write(sharded / "config.json", json.dumps(CONFIG))
    names = [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    for name, size in zip(names, SHARD_SIZES, strict=True):
        write(sharded / name, bytes(size))
    index = {"metadata": {"total_size": sum(SHARD_SIZES)}, "weight_map": {"a": names[0]}}
    write(sharded / "model.safetensors.index.json", json.dumps(index))
    return root


def weight_gets(requests: list[HubRequest]) -> list[HubRequest]:
    """The GET requests for a ``.safetensors`` file."""
    return [r for r in requests if r.method == "GET" and r.path.endswith(".safetensors")]


def real_files(folder: Path) -> set[Path]:
    """The files a folder's entries resolve to (a hub cache links snapshots to blobs)."""
    return {p.resolve() for p in folder.rglob("*") if p.is_file()}


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def neuron_config(cache_dir: Path, sources: dict[str, SourceConfig], default: str) -> NeuronConfig:
    """A neuron.toml with these sources."""
    section = NeuronSection(name="beast", cache_dir=str(cache_dir), default_source=default)
    return NeuronConfig(neuron=section, sources=sources)


# --- PathSource ------------------------------------------------------------------------------


def test_path_source_reads_config_and_weight_sizes(tmp_path: Path) -> None:
    """A local model's config.json is read and its safetensors sizes summed."""
    source = PathSource("local", make_repos(tmp_path / "models"))
    meta = source.metadata(TINY)
    assert meta.config["architectures"] == ["LlamaForCausalLM"]
    assert meta.config["num_key_value_heads"] == 2
    assert meta.weights_bytes == TINY_WEIGHTS


def test_path_source_sums_every_shard(tmp_path: Path) -> None:
    """Sharded weights count every shard, not the index file."""
    source = PathSource("local", make_repos(tmp_path / "models"))
    assert source.metadata(SHARDED).weights_bytes == sum(SHARD_SIZES)


def test_path_source_fetch_is_the_model_directory(tmp_path: Path) -> None:
    """Fetching from a directory copies nothing: the answer is <path>/org/name."""
    root = make_repos(tmp_path / "models")
    assert PathSource("local", root).fetch(TINY) == root / "acme" / "tiny"


@pytest.mark.parametrize("layout", ["no-folder", "no-config"])
def test_path_source_missing_model_is_model_not_found(tmp_path: Path, layout: str) -> None:
    """A model folder without config.json is model_not_found (404) naming the source."""
    root = tmp_path / "models"
    if layout == "no-config":
        write(root / "acme" / "ghost" / "model.safetensors", bytes(16))
    else:
        root.mkdir()
    with pytest.raises(NeuronError) as caught:
        PathSource("local", root).metadata(ModelId("acme", "ghost"))
    assert caught.value.code == "model_not_found"
    assert caught.value.status == 404
    assert caught.value.details == {"source": "local"}
    assert "acme/ghost" in caught.value.message


@pytest.mark.parametrize("text", ["{not json", '["LlamaForCausalLM"]', "null", "42"])
def test_path_source_bad_config_is_unsupported_model(tmp_path: Path, text: str) -> None:
    """A config.json that is not a JSON object is unsupported_model (422)."""
    root = tmp_path / "models"
    write(root / "acme" / "broken" / "config.json", text)
    with pytest.raises(NeuronError) as caught:
        PathSource("local", root).metadata(ModelId("acme", "broken"))
    assert caught.value.code == "unsupported_model"
    assert caught.value.status == 422
    assert "acme/broken" in caught.value.message


# --- HubSource -------------------------------------------------------------------------------


def test_hub_metadata_reads_config_and_sizes_without_downloading_weights(tmp_path: Path) -> None:
    """Metadata fetches config.json and file sizes; no weights file is downloaded."""
    root = make_repos(tmp_path / "hub")
    cache = tmp_path / "cache" / "sources" / "hub"
    with FakeHub(root) as hub:
        source = HubSource("hub", hub.url + "/", None, cache)
        tiny = source.metadata(TINY)
        sharded = source.metadata(SHARDED)
        requests = hub.requests
    assert tiny.config == {**CONFIG, "marker": ""}
    assert tiny.weights_bytes == TINY_WEIGHTS
    assert sharded.weights_bytes == sum(SHARD_SIZES)
    assert weight_gets(requests) == []
    assert not any(p.name.endswith(".safetensors") for p in cache.rglob("*"))


def test_hub_fetch_downloads_what_an_engine_needs_into_its_cache(tmp_path: Path) -> None:
    """Fetch puts config, tokenizer and weights under the source's cache dir, and nothing else."""
    root = make_repos(tmp_path / "hub")
    cache = tmp_path / "cache" / "sources" / "hub"
    with FakeHub(root) as hub:
        folder = HubSource("hub", hub.url, None, cache).fetch(TINY)
    assert folder.is_relative_to(cache)
    fetched = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert fetched == {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "model.safetensors",
    }
    assert (folder / "model.safetensors").read_bytes() == (
        root / "acme" / "tiny" / "model.safetensors"
    ).read_bytes()
    assert all(p.is_relative_to(cache.resolve()) for p in real_files(folder))


def test_hub_fetch_again_uses_the_cache(tmp_path: Path) -> None:
    """A second fetch of a complete model downloads no weights again."""
    root = make_repos(tmp_path / "hub")
    with FakeHub(root) as hub:
        source = HubSource("hub", hub.url, None, tmp_path / "cache")
        first = source.fetch(TINY)
        hub.clear_requests()
        second = source.fetch(TINY)
        requests = hub.requests
    assert first == second
    assert weight_gets(requests) == []


def test_two_hub_sources_never_share_files(tmp_path: Path) -> None:
    """The same model id from two sources lands in two caches with each source's own files."""
    cache_root = tmp_path / "cache"
    with (
        FakeHub(make_repos(tmp_path / "hub-a", marker="from-a")) as hub_a,
        FakeHub(make_repos(tmp_path / "hub-b", marker="from-b")) as hub_b,
    ):
        sources = Sources(
            neuron_config(
                cache_root,
                {
                    "alpha": SourceConfig(endpoint=hub_a.url),
                    "beta": SourceConfig(endpoint=hub_b.url),
                },
                "alpha",
            ),
            env={},
        )
        alpha = sources.for_model(TINY.with_source("alpha"))
        beta = sources.for_model(TINY.with_source("beta"))
        metas = [alpha.metadata(TINY), beta.metadata(TINY)]
        folders = [alpha.fetch(TINY), beta.fetch(TINY)]
    assert [m.config["marker"] for m in metas] == ["from-a", "from-b"]
    assert folders[0].is_relative_to(cache_root / "sources" / "alpha")
    assert folders[1].is_relative_to(cache_root / "sources" / "beta")
    assert [(f / "model.safetensors").read_bytes()[:6] for f in folders] == [b"from-a", b"from-b"]
    files_a, files_b = real_files(folders[0]), real_files(folders[1])
    assert files_a
    assert files_b
    assert files_a.isdisjoint(files_b)
    assert all(p.is_relative_to((cache_root / "sources" / "alpha").resolve()) for p in files_a)
    assert all(p.is_relative_to((cache_root / "sources" / "beta").resolve()) for p in files_b)


def test_one_hub_under_two_names_keeps_two_caches(tmp_path: Path) -> None:
    """Two source names for one endpoint still keep separate cache folders."""
    cache_root = tmp_path / "cache"
    with FakeHub(make_repos(tmp_path / "hub")) as hub:
        config = neuron_config(
            cache_root,
            {"one": SourceConfig(endpoint=hub.url), "two": SourceConfig(endpoint=hub.url)},
            "one",
        )
        sources = Sources(config, env={})
        folders = [sources.for_model(TINY.with_source(n)).fetch(TINY) for n in ("one", "two")]
    assert folders[0].is_relative_to(cache_root / "sources" / "one")
    assert folders[1].is_relative_to(cache_root / "sources" / "two")
    assert real_files(folders[0]).isdisjoint(real_files(folders[1]))


def test_hub_unknown_repo_is_model_not_found(tmp_path: Path) -> None:
    """A repo the hub does not have is model_not_found (404), for metadata and fetch alike."""
    with FakeHub(make_repos(tmp_path / "hub")) as hub:
        source = HubSource("hub", hub.url, None, tmp_path / "cache")
        for call in (source.metadata, source.fetch):
            with pytest.raises(NeuronError) as caught:
                call(ModelId("acme", "nope"))
            assert caught.value.code == "model_not_found"
            assert caught.value.status == 404
            assert caught.value.details == {"source": "hub", "endpoint": hub.url}


def test_hub_repo_without_config_is_unsupported_model(tmp_path: Path) -> None:
    """A repo with no config.json is unsupported_model."""
    root = tmp_path / "hub"
    write(root / "acme" / "bare" / "model.safetensors", bytes(64))
    with FakeHub(root) as hub, pytest.raises(NeuronError) as caught:
        HubSource("hub", hub.url, None, tmp_path / "cache").metadata(ModelId("acme", "bare"))
    assert caught.value.code == "unsupported_model"
    assert caught.value.status == 422


def test_hub_config_that_is_not_an_object_is_unsupported_model(tmp_path: Path) -> None:
    """A hub config.json that is not a JSON object is unsupported_model."""
    root = tmp_path / "hub"
    write(root / "acme" / "odd" / "config.json", "[1, 2, 3]")
    with FakeHub(root) as hub, pytest.raises(NeuronError) as caught:
        HubSource("hub", hub.url, None, tmp_path / "cache").metadata(ModelId("acme", "odd"))
    assert caught.value.code == "unsupported_model"


def test_unreachable_hub_is_source_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub endpoint that refuses connections is source_unavailable (502), not a model error."""
    from huggingface_hub import file_download

    # huggingface_hub retries a failed HEAD with 1+2+4+8+8 s of back-off; one try tells us enough.
    monkeypatch.setattr(file_download, "_DEFAULT_RETRY_ON_EXCEPTIONS", ())
    endpoint = f"http://127.0.0.1:{closed_port()}"
    source = HubSource("helexa", endpoint, None, tmp_path / "cache")
    started = time.monotonic()
    for call in (source.metadata, source.fetch):
        with pytest.raises(NeuronError) as caught:
            call(TINY)
        assert caught.value.code == "source_unavailable"
        assert caught.value.status == 502
        assert caught.value.details == {"source": "helexa", "endpoint": endpoint}
        assert "helexa" in caught.value.message
    assert time.monotonic() - started < 5


def test_hub_token_from_token_env_is_sent(tmp_path: Path) -> None:
    """A source's token, read from its token_env, opens a hub that requires it."""
    with FakeHub(make_repos(tmp_path / "hub"), token="hf_secret") as hub:
        sources = Sources(
            neuron_config(
                tmp_path / "cache",
                {"private": SourceConfig(endpoint=hub.url, token_env="PRIVATE_HUB_TOKEN")},
                "private",
            ),
            env={"PRIVATE_HUB_TOKEN": "hf_secret"},
        )
        source = sources.for_model(TINY)
        meta = source.metadata(TINY)
        folder = source.fetch(TINY)
    assert meta.weights_bytes == TINY_WEIGHTS
    assert (folder / "config.json").is_file()


@pytest.mark.parametrize("env", [{}, {"PRIVATE_HUB_TOKEN": ""}], ids=["unset", "empty"])
def test_hub_without_its_token_is_model_not_found(tmp_path: Path, env: dict[str, str]) -> None:
    """Without the token a private hub looks like it lacks the model: model_not_found."""
    with FakeHub(make_repos(tmp_path / "hub"), token="hf_secret") as hub:
        sources = Sources(
            neuron_config(
                tmp_path / "cache",
                {"private": SourceConfig(endpoint=hub.url, token_env="PRIVATE_HUB_TOKEN")},
                "private",
            ),
            env=env,
        )
        source = sources.for_model(TINY)
        for call in (source.metadata, source.fetch):
            with pytest.raises(NeuronError) as caught:
                call(TINY)
            assert caught.value.code == "model_not_found"
        requests = hub.requests
    assert requests
    assert weight_gets(requests) == []


# --- Sources -------------------------------------------------------------------------------


def configured(tmp_path: Path) -> Sources:
    """A neuron with two hub sources and a local directory, defaulting to huggingface."""
    config = neuron_config(
        tmp_path / "cache",
        {
            "huggingface": SourceConfig(endpoint="https://huggingface.co", token_env="HF_TOKEN"),
            "helexa": SourceConfig(endpoint="https://registry.helexa.ai/"),
            "local": SourceConfig(path=str(tmp_path / "models")),
        },
        "huggingface",
    )
    return Sources(config, env={"HF_TOKEN": "hf_abc"})


def test_sources_build_one_source_per_config_entry(tmp_path: Path) -> None:
    """Each [sources.*] entry becomes a source with its own cache folder, endpoint and token."""
    sources = configured(tmp_path)
    assert sources.names == ["helexa", "huggingface", "local"]
    hf = sources.for_model(ModelId("Qwen", "Qwen3-8B", "huggingface"))
    helexa = sources.for_model(ModelId("Qwen", "Qwen3-8B", "helexa"))
    local = sources.for_model(ModelId("Qwen", "Qwen3-8B", "local"))
    assert isinstance(hf, HubSource)
    assert isinstance(helexa, HubSource)
    assert isinstance(local, PathSource)
    assert (hf.name, hf.endpoint, hf.token) == ("huggingface", "https://huggingface.co", "hf_abc")
    assert hf.cache_dir == tmp_path / "cache" / "sources" / "huggingface"
    assert (helexa.endpoint, helexa.token) == ("https://registry.helexa.ai", None)
    assert helexa.cache_dir == tmp_path / "cache" / "sources" / "helexa"
    assert local.path == tmp_path / "models"


def test_model_without_source_uses_the_default(tmp_path: Path) -> None:
    """A concrete id (no source) goes to default_source."""
    assert configured(tmp_path).for_model(ModelId("Qwen", "Qwen3-8B")).name == "huggingface"


def test_explicit_source_is_used(tmp_path: Path) -> None:
    """A qualified id picks the source it names."""
    assert configured(tmp_path).for_model(ModelId("Qwen", "Qwen3-8B", "helexa")).name == "helexa"


def test_unknown_source_is_refused_listing_the_configured(tmp_path: Path) -> None:
    """A source the neuron does not define is unknown_source (422) naming the ones it does."""
    with pytest.raises(NeuronError) as caught:
        configured(tmp_path).for_model(ModelId("Qwen", "Qwen3-8B", "modelscope"))
    error = caught.value
    assert error.code == "unknown_source"
    assert error.status == 422
    assert error.details == {
        "source": "modelscope",
        "configured": ["helexa", "huggingface", "local"],
    }
    assert "modelscope" in error.message
    assert "helexa, huggingface, local" in error.message


def test_sources_read_tokens_from_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an explicit env, token_env is looked up in os.environ."""
    monkeypatch.setenv("HELEXA_TOKEN", "hx_123")
    config = neuron_config(
        tmp_path / "cache",
        {"helexa": SourceConfig(endpoint="https://registry.helexa.ai", token_env="HELEXA_TOKEN")},
        "helexa",
    )
    source = Sources(config).for_model(ModelId("Qwen", "Qwen3-8B"))
    assert isinstance(source, HubSource)
    assert source.token == "hx_123"


# --- GGUF repositories ------------------------------------------------------------------------

QUANTS = ModelId("acme", "quants")
LLAMA_GGUF: dict[str, object] = {
    "general.architecture": "llama",
    "llama.block_count": 2,
    "llama.context_length": 4096,
    "llama.embedding_length": 64,
    "llama.attention.head_count": 4,
    "llama.attention.head_count_kv": 2,
    "tokenizer.ggml.tokens": [f"t{i}" for i in range(5000)],
}
Q4_BYTES, Q8_BYTES = 300_000, 600_000


def make_gguf_repo(root: Path, *, two: bool) -> Path:
    """``acme/quants``: GGUF weights only (one quantisation, or two), and a tokenizer."""
    folder = root / "acme" / "quants"
    write_gguf(folder / "quants.Q4_K_M.gguf", LLAMA_GGUF, padding=Q4_BYTES)
    if two:
        write_gguf(folder / "quants.Q8_0.gguf", LLAMA_GGUF, padding=Q8_BYTES)
    write(folder / "tokenizer.json", json.dumps({"version": "1.0", "model": {}}))
    write(folder / "README.md", "# quants\n")
    return root


def gguf_size(folder: Path, name: str) -> int:
    """The size of a written GGUF file."""
    return (folder / "acme" / "quants" / name).stat().st_size


def test_path_source_sizes_the_only_gguf_and_reads_its_header(tmp_path: Path) -> None:
    root = make_gguf_repo(tmp_path / "models", two=False)
    meta = PathSource("local", root).metadata(QUANTS)
    assert meta.gguf_file == "quants.Q4_K_M.gguf"
    assert meta.weights_bytes == gguf_size(root, "quants.Q4_K_M.gguf")
    assert meta.config["architectures"] == ["LlamaForCausalLM"]
    assert meta.config["max_position_embeddings"] == 4096


def test_path_source_asks_which_of_several_ggufs(tmp_path: Path) -> None:
    root = make_gguf_repo(tmp_path / "models", two=True)
    with pytest.raises(NeuronError) as caught:
        PathSource("local", root).metadata(QUANTS)
    assert caught.value.code == "invalid_option"
    assert "holds 2 GGUF files: choose one with the engine option gguf_file" in str(
        caught.value.message
    )
    chosen = PathSource("local", root).metadata(QUANTS, "quants.Q8_0.gguf")
    assert chosen.weights_bytes == gguf_size(root, "quants.Q8_0.gguf")
    with pytest.raises(NeuronError, match=r"gguf_file 'nope\.gguf' is not in acme/quants"):
        PathSource("local", root).metadata(QUANTS, "nope.gguf")


def test_hub_gguf_header_is_read_with_ranges_and_only_that_file_fetched(tmp_path: Path) -> None:
    """Metadata reads the header's first blocks, not the file; fetch takes only the chosen one."""
    root = make_gguf_repo(tmp_path / "hub", two=True)
    cache = tmp_path / "cache" / "sources" / "hub"
    with FakeHub(root) as hub:
        source = HubSource("hub", hub.url, None, cache)
        meta = source.metadata(QUANTS, "quants.Q8_0.gguf")
        gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith(".gguf")]
        folder = source.fetch(QUANTS, meta.gguf_file)
    assert meta.weights_bytes == gguf_size(root, "quants.Q8_0.gguf")
    assert meta.config["num_key_value_heads"] == 2
    assert gets
    assert all(r.range is not None for r in gets)
    fetched = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert fetched == {"quants.Q8_0.gguf", "tokenizer.json"}


def test_a_safetensors_repo_is_read_as_before_even_with_a_gguf_beside_it(tmp_path: Path) -> None:
    root = make_repos(tmp_path / "models")
    write_gguf(root / "acme" / "tiny" / "tiny.gguf", LLAMA_GGUF)
    meta = PathSource("local", root).metadata(TINY)
    assert (meta.gguf_file, meta.weights_bytes) == (None, TINY_WEIGHTS)
