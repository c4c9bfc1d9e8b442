"""FakeHub speaks enough of the Hub's HTTP API for the real huggingface_hub client."""

from __future__ import annotations

import http.client
import json
import struct
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

from neuron.testing.hub import FakeHub, HubRequest

DTYPE_SIZES = {"BF16": 2, "F16": 2, "F32": 4}


pytestmark = pytest.mark.usefixtures("hub_env")  # conftest.py: huggingface_hub on loopback


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """Write a valid safetensors file of zeros: 8-byte LE header length, JSON header, data."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = DTYPE_SIZES[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(offset))


def write_text(path: Path, text: str) -> None:
    """Write a text file, creating its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A hub root with a single-file repo `acme/tiny` and a sharded repo `acme/sharded`."""
    root = tmp_path / "hub"
    tiny = root / "acme" / "tiny"
    write_text(tiny / "config.json", json.dumps({"model_type": "llama", "hidden_size": 8}))
    write_text(tiny / "tokenizer.json", json.dumps({"version": "1.0", "model": {}}))
    write_text(tiny / "original" / "params.json", "{}")
    write_safetensors(tiny / "model.safetensors", {"w": ("BF16", [4, 8])})

    sharded = root / "acme" / "sharded"
    write_text(sharded / "config.json", json.dumps({"model_type": "llama"}))
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    write_safetensors(sharded / shards[0], {"a": ("F32", [2, 3])})
    # Bigger than the client's first 100 kB read, so a whole-file GET would stand out.
    write_safetensors(sharded / shards[1], {"b": ("BF16", [4, 8]), "c": ("F32", [256, 256])})
    index = {
        "metadata": {"total_size": 24 + 64 + 262144},
        "weight_map": {"a": shards[0], "b": shards[1], "c": shards[1]},
    }
    write_text(sharded / "model.safetensors.index.json", json.dumps(index))
    return root


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (following the cache's symlinks), by relative POSIX path."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and ".cache" not in p.parts
    }


def weight_gets(requests: list[HubRequest]) -> list[HubRequest]:
    """The GET requests for a `.safetensors` file."""
    return [r for r in requests if r.method == "GET" and r.path.endswith(".safetensors")]


def test_snapshot_download_fetches_every_file_into_the_cache_dir(
    root: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with FakeHub(root) as hub:
        folder = Path(snapshot_download("acme/tiny", endpoint=hub.url, cache_dir=cache))
    assert folder.is_relative_to(cache)
    assert files_under(folder) == files_under(root / "acme" / "tiny")
    assert "original/params.json" in files_under(folder)


def test_snapshot_download_honours_allow_patterns(root: Path, tmp_path: Path) -> None:
    with FakeHub(root) as hub:
        folder = Path(
            snapshot_download(
                "acme/tiny", endpoint=hub.url, cache_dir=tmp_path / "c", allow_patterns=["*.json"]
            )
        )
        requests = hub.requests
    assert set(files_under(folder)) == {"config.json", "tokenizer.json", "original/params.json"}
    assert weight_gets(requests) == []


def test_hf_hub_download_fetches_one_file(root: Path, tmp_path: Path) -> None:
    with FakeHub(root) as hub:
        path = hf_hub_download(
            "acme/tiny", "config.json", endpoint=hub.url, cache_dir=tmp_path / "c", token=False
        )
        requests = hub.requests
    assert Path(path).read_bytes() == (root / "acme" / "tiny" / "config.json").read_bytes()
    assert Path(path).is_relative_to(tmp_path / "c")
    resolve = "/acme/tiny/resolve/main/config.json"
    assert [(r.method, r.path) for r in requests] == [("HEAD", resolve), ("GET", resolve)]


def test_model_info_lists_files_and_sizes(root: Path) -> None:
    with FakeHub(root) as hub:
        api = HfApi(endpoint=hub.url)
        info = api.model_info("acme/tiny", files_metadata=True)
        bare = api.model_info("acme/tiny")
        assert api.repo_exists("acme/tiny")
    assert info.id == "acme/tiny"
    assert info.sha is not None
    assert len(info.sha) == 40
    assert info.sha == bare.sha
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    on_disk = files_under(root / "acme" / "tiny")
    assert sizes == {name: len(data) for name, data in on_disk.items()}
    assert {s.rfilename: s.size for s in bare.siblings or []} == dict.fromkeys(on_disk)


def test_safetensors_metadata_of_a_single_file_reads_only_the_header(root: Path) -> None:
    with FakeHub(root) as hub:
        meta = HfApi(endpoint=hub.url).get_safetensors_metadata("acme/tiny")
        requests = hub.requests
    assert not meta.sharded
    tensor = meta.files_metadata["model.safetensors"].tensors["w"]
    assert (tensor.dtype, tensor.shape) == ("BF16", [4, 8])
    gets = weight_gets(requests)
    assert gets
    assert all(r.range is not None for r in gets)


def test_safetensors_metadata_of_a_sharded_repo_reads_only_headers(root: Path) -> None:
    with FakeHub(root) as hub:
        meta = HfApi(endpoint=hub.url).get_safetensors_metadata("acme/sharded")
        requests = hub.requests
    assert meta.sharded
    assert meta.weight_map["c"] == "model-00002-of-00002.safetensors"
    shapes = {
        name: (t.dtype, t.shape)
        for file in meta.files_metadata.values()
        for name, t in file.tensors.items()
    }
    assert shapes == {"a": ("F32", [2, 3]), "b": ("BF16", [4, 8]), "c": ("F32", [256, 256])}
    gets = weight_gets(requests)
    assert {r.path.rsplit("/", 1)[-1] for r in gets} == set(meta.files_metadata)
    assert all(r.range is not None for r in gets)


def test_unknown_repo_is_repository_not_found(root: Path, tmp_path: Path) -> None:
    with FakeHub(root) as hub:
        api = HfApi(endpoint=hub.url)
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("acme/nope", "config.json", endpoint=hub.url, cache_dir=tmp_path)
        with pytest.raises(RepositoryNotFoundError):
            snapshot_download("acme/nope", endpoint=hub.url, cache_dir=tmp_path)
        with pytest.raises(RepositoryNotFoundError):
            api.model_info("acme/nope")
        assert not api.repo_exists("acme/nope")
        assert not api.file_exists("acme/nope", "config.json")


def test_missing_file_is_entry_not_found(root: Path, tmp_path: Path) -> None:
    with FakeHub(root) as hub:
        api = HfApi(endpoint=hub.url)
        with pytest.raises(EntryNotFoundError):
            hf_hub_download("acme/tiny", "nope.json", endpoint=hub.url, cache_dir=tmp_path)
        assert not api.file_exists("acme/tiny", "nope.json")
        assert api.file_exists("acme/tiny", "original/params.json")


def test_token_is_checked(root: Path, tmp_path: Path) -> None:
    with FakeHub(root, token="secret") as hub:
        for token in ("wrong", False):
            with pytest.raises(HfHubHTTPError) as caught:
                hf_hub_download(
                    "acme/tiny", "config.json", endpoint=hub.url, cache_dir=tmp_path, token=token
                )
            assert caught.value.response.status_code == 401
        with pytest.raises(HfHubHTTPError):
            snapshot_download("acme/tiny", endpoint=hub.url, cache_dir=tmp_path, token="wrong")
        path = hf_hub_download(
            "acme/tiny", "config.json", endpoint=hub.url, cache_dir=tmp_path, token="secret"
        )
        folder = snapshot_download(
            "acme/tiny", endpoint=hub.url, cache_dir=tmp_path, token="secret"
        )
    assert Path(path).read_bytes() == (root / "acme" / "tiny" / "config.json").read_bytes()
    assert files_under(Path(folder)) == files_under(root / "acme" / "tiny")


def test_two_sources_with_their_own_cache_dirs_stay_apart(tmp_path: Path) -> None:
    roots = [tmp_path / "one", tmp_path / "two"]
    for n, one_root in enumerate(roots):
        write_text(one_root / "acme" / "tiny" / "config.json", json.dumps({"source": n}))
    with FakeHub(roots[0]) as first, FakeHub(roots[1]) as second:
        paths = [
            Path(hf_hub_download("acme/tiny", "config.json", endpoint=hub.url, cache_dir=cache))
            for hub, cache in ((first, tmp_path / "cache1"), (second, tmp_path / "cache2"))
        ]
    assert [json.loads(p.read_text())["source"] for p in paths] == [0, 1]
    assert paths[0].is_relative_to(tmp_path / "cache1")
    assert paths[1].is_relative_to(tmp_path / "cache2")


@pytest.mark.parametrize(
    ("range_header", "status", "body", "content_range"),
    [
        (None, 200, b"0123456789", None),
        ("bytes=2-4", 206, b"234", "bytes 2-4/10"),
        ("bytes=7-", 206, b"789", "bytes 7-9/10"),
        ("bytes=-3", 206, b"789", "bytes 7-9/10"),
        ("bytes=0-100000", 206, b"0123456789", "bytes 0-9/10"),
        ("bytes=10-", 416, None, "bytes */10"),
    ],
)
def test_resolve_serves_byte_ranges(
    tmp_path: Path, range_header: str | None, status: int, body: bytes | None, content_range: str
) -> None:
    write_text(tmp_path / "acme" / "r" / "data.bin", "0123456789")
    with FakeHub(tmp_path) as hub:
        conn = http.client.HTTPConnection(hub.url.removeprefix("http://"), timeout=10)
        try:
            headers = {} if range_header is None else {"Range": range_header}
            conn.request("GET", "/acme/r/resolve/main/data.bin", headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        assert hub.requests == [HubRequest("GET", "/acme/r/resolve/main/data.bin", range_header)]
    assert response.status == status
    assert response.getheader("Content-Range") == content_range
    if body is not None:
        assert data == body
        assert response.getheader("ETag", "").strip('"') != ""
        assert len(response.getheader("X-Repo-Commit", "")) == 40
