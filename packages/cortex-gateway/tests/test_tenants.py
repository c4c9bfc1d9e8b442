"""Who a key is: the ring built from cortex.toml and the environment, as plain data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cortex_core.config import ConfigError, load_cortex_config
from cortex_gateway.tenants import (
    ANONYMOUS,
    BATCH,
    INTERACTIVE,
    KeyRing,
    cache_secret,
    read_keys,
)

SECRET = b"s" * 32


def ring_of(
    tmp_path: Path, text: str, environ: dict[str, str] | None = None, secret: bytes = SECRET
) -> KeyRing:
    path = tmp_path / "cortex.toml"
    path.write_text(text)
    return read_keys(path, load_cortex_config(path), environ or {}, secret)


def test_keys_are_found_by_their_digest_whichever_way_they_are_given(tmp_path: Path) -> None:
    """key_env, key_sha256 (any case), api_keys and admin_keys all find their tenant."""
    digest = hashlib.sha256(b"bob-key").hexdigest().upper()
    ring = ring_of(
        tmp_path,
        '[gateway]\napi_keys = ["anon"]\nadmin_keys = ["root"]\n'
        '[[keys]]\nname = "alice"\nkey_env = "A"\npriority = "batch"\nmax_concurrent = 2\n'
        f'[[keys]]\nname = "bob"\nkey_sha256 = "{digest}"\nrole = "admin"\n',
        {"A": " alice-key\n"},
    )
    alice, bob = ring.find("alice-key"), ring.find("bob-key")
    assert alice is not None
    assert bob is not None
    assert (alice.name, alice.admin, alice.priority, alice.limited) == ("alice", False, BATCH, True)
    assert (bob.name, bob.admin, bob.priority, bob.limited) == ("bob", True, INTERACTIVE, False)
    assert ring.find("anon") is ANONYMOUS
    root = ring.find("root")
    assert root is not None
    assert (root.admin, root.name) == (True, "")
    assert ring.find("A") is None
    assert ring.find(digest) is None
    assert (ring.users, ring.admins, ring.keyed) == (True, True, True)
    assert ring.names() == ["alice", "bob"]
    assert b"alice-key" not in repr(ring).encode()


def test_a_missing_key_env_names_the_key_and_the_variable(tmp_path: Path) -> None:
    """An unset or empty key_env is one ConfigError naming the entry, its name and the variable."""
    text = '[[keys]]\nname = "alice"\nkey_env = "CORTEX_KEY_ALICE"\n'
    for environ in ({}, {"CORTEX_KEY_ALICE": "  "}):
        with pytest.raises(ConfigError) as info:
            ring_of(tmp_path, text, environ)
        assert info.value.key == "keys[0].key_env"
        assert "'alice'" in info.value.problem
        assert "$CORTEX_KEY_ALICE" in info.value.problem


def test_one_key_given_twice_is_refused(tmp_path: Path) -> None:
    """The same key as an api_keys entry and a named key: who would it be? Refused."""
    with pytest.raises(ConfigError) as info:
        ring_of(
            tmp_path,
            '[gateway]\napi_keys = ["same"]\n[[keys]]\nname = "alice"\nkey_env = "A"\n',
            {"A": "same"},
        )
    assert info.value.key == "keys[0] (alice)"
    assert "gateway.api_keys[0]" in info.value.problem
    assert "same" not in str(info.value).replace("the same key", "")


def test_a_rotation_is_one_tenant(tmp_path: Path) -> None:
    """Two entries sharing a name are the same tenant object: limits and usage add up."""
    ring = ring_of(
        tmp_path,
        '[[keys]]\nname = "alice"\nkey_env = "A"\nmax_concurrent = 1\n'
        '[[keys]]\nname = "alice"\nkey_env = "B"\nmax_concurrent = 1\n',
        {"A": "old", "B": "new"},
    )
    assert ring.find("old") is ring.find("new") is not None
    assert ring.names() == ["alice"]


def test_cache_salts_come_from_the_name_and_the_secret_never_the_key(tmp_path: Path) -> None:
    """Only isolate_cache keys have a salt; it follows the name and the secret, not the key."""
    text = (
        '[[keys]]\nname = "alice"\nkey_env = "A"\nisolate_cache = true\n'
        '[[keys]]\nname = "bob"\nkey_env = "B"\n'
    )
    ring = ring_of(tmp_path, text, {"A": "one", "B": "two"})
    again = ring_of(tmp_path, text, {"A": "rotated", "B": "two"})
    other = ring_of(tmp_path, text, {"A": "one", "B": "two"}, secret=b"t" * 32)
    alice, bob, rotated, moved = (
        ring.find("one"),
        ring.find("two"),
        again.find("rotated"),
        other.find("one"),
    )
    assert alice is not None
    assert bob is not None
    assert rotated is not None
    assert moved is not None
    assert bob.cache_salt is None
    salt = alice.cache_salt
    assert salt is not None
    assert len(salt) == 64
    assert rotated.cache_salt == salt
    assert moved.cache_salt != salt
    assert hashlib.sha256(b"one").hexdigest() != salt


def test_cache_secret_from_the_environment_or_random() -> None:
    """$CORTEX_CACHE_SECRET when set (salts survive a restart), else a new one each time."""
    assert cache_secret({"CORTEX_CACHE_SECRET": "fixed"}) == b"fixed"
    assert cache_secret({}) != cache_secret({})


@pytest.mark.parametrize(
    ("globs", "asked", "model", "allowed"),
    [
        ([], "anything", "anything", True),
        (["helexa/small"], "helexa/small", "Qwen/Qwen3-1.7B", True),
        (["helexa/small"], "Qwen/Qwen3-1.7B", "Qwen/Qwen3-1.7B", False),
        (["Qwen/*"], "helexa/small", "Qwen/Qwen3-1.7B", True),
        (["Qwen/Qwen3-?.7B"], "Qwen/Qwen3-1.7B", "Qwen/Qwen3-1.7B", True),
        (["Qwen/*"], "Qwen", "Qwen", False),
        (["a", "b/*"], "b/c", "b/c", True),
        (["qwen/*"], "Qwen/x", "Qwen/x", False),
    ],
)
def test_allow_lists(
    tmp_path: Path, globs: list[str], asked: str, model: str, allowed: bool
) -> None:
    """A model is allowed when the name asked or its concrete id matches a glob (case counts)."""
    models = ", ".join(f'"{g}"' for g in globs)
    ring = ring_of(
        tmp_path, f'[[keys]]\nname = "k"\nkey_env = "K"\nmodels = [{models}]\n', {"K": "k"}
    )
    tenant = ring.find("k")
    assert tenant is not None
    assert tenant.allows(asked, model) is allowed
