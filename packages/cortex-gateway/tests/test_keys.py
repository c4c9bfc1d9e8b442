"""Named keys in-process: who a key is, what it may use, its limits, its usage, its engine tags."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from gateway_harness import QUESTION, Harness, openai_error, serve, until

from cortex_gateway.testing import JsonAnswer, ScriptedModel, ScriptedNode, StreamAnswer, chat_chunk
from cortex_gateway.testing.live import key_tables

pytestmark = pytest.mark.anyio

CATALOGUE = """
[aliases]
"helexa/small" = "fake/small"
"helexa/other" = "other/model"

[[models]]
id = "fake/small"
memory_gb = 4

[[models]]
id = "other/model"
memory_gb = 4

[[models]]
id = "fake/embedder"
memory_gb = 1
task = "embed"
"""
MODELS = [
    ScriptedModel("fake/small", memory_gib=4),
    ScriptedModel("other/model", memory_gib=4),
    ScriptedModel("fake/embedder"),
]
ENVIRON = {"KEY_ALICE": "alice-secret", "KEY_BATCH": "batch-secret", "KEY_ALICE_NEW": "alice-2"}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat_body(model: str = "fake/small", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": QUESTION, **extra}


async def chat(
    gw: Harness, headers: dict[str, str], model: str = "fake/small", **extra: Any
) -> httpx.Response:
    """``POST /v1/chat/completions`` with one question, as the key in ``headers``."""
    return await gw.http.post(
        "/v1/chat/completions", json=chat_body(model, **extra), headers=headers
    )


def usage_answer(prompt: int, cached: int, completion: int) -> JsonAnswer:
    """A chat completion whose usage says ``cached`` of its prompt came from the prefix cache."""
    body = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "fake/small",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Paris."},
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }
    return JsonAnswer(json.dumps(body).encode())


async def usage_of(gw: Harness, admin: str = "root") -> dict[str, dict[str, Any]]:
    """``GET /admin/usage`` as ``{key: {model: row}}``."""
    answer = await gw.http.get("/admin/usage", headers=bearer(admin))
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert set(report) == {"since", "keys"}
    return {k["name"]: {m["model"]: m for m in k["models"]} for k in report["keys"]}


def node() -> ScriptedNode:
    return ScriptedNode("beast", gpus=[48])


async def test_named_keys_admit_by_env_or_digest_and_unnamed_keys_still_work(
    tmp_path: Path,
) -> None:
    """A key from key_env, one from key_sha256 and an api_keys key all work; others are 401."""
    keys: list[dict[str, object]] = [
        {"name": "alice", "key_env": "KEY_ALICE"},
        {"name": "bob", "key_sha256": sha("bob-secret")},
    ]
    async with serve(
        tmp_path, [node()], CATALOGUE, models=MODELS, keys=keys, environ=ENVIRON, api_keys=["old"]
    ) as gw:
        for key in ("alice-secret", "bob-secret", "old"):
            answer = await chat(gw, bearer(key))
            assert answer.status_code == 200, (key, answer.text)
        for headers in ({}, bearer("KEY_ALICE"), bearer(sha("bob-secret")), bearer("alice")):
            answer = await gw.http.post("/v1/chat/completions", json=chat_body(), headers=headers)
            assert answer.status_code == 401
        anthropic_key = {"x-api-key": "bob-secret"}
        body = {"model": "fake/small", "max_tokens": 10, "messages": QUESTION}
        assert (await gw.http.post("/v1/messages", json=body, headers=anthropic_key)).is_success


async def test_roles_an_admin_key_is_one_whichever_way_it_is_given(tmp_path: Path) -> None:
    """A role = "admin" key admits /admin like admin_keys; a named user key there is a 403."""
    keys: list[dict[str, object]] = [
        {"name": "alice", "key_env": "KEY_ALICE"},
        {"name": "ops", "key_sha256": sha("ops-secret"), "role": "admin"},
    ]
    async with serve(
        tmp_path, [node()], CATALOGUE, models=MODELS, keys=keys, environ=ENVIRON
    ) as gw:
        assert (await gw.http.get("/admin/fleet", headers=bearer("ops-secret"))).status_code == 200
        assert (
            await gw.http.get("/admin/fleet", headers=bearer("alice-secret"))
        ).status_code == 403
        assert (await gw.http.get("/admin/fleet")).status_code == 401
        assert (
            await gw.http.get("/admin/usage", headers=bearer("alice-secret"))
        ).status_code == 403
        answer = await chat(gw, bearer("ops-secret"))
        assert answer.status_code == 200


async def test_usage_per_key_and_model_with_cached_tokens(tmp_path: Path) -> None:
    """Requests, errors and tokens (prompt, cached, completion) add up per key and model."""
    keys: list[dict[str, object]] = [
        {"name": "alice", "key_env": "KEY_ALICE"},
        {"name": "batch", "key_env": "KEY_BATCH", "priority": "batch"},
        {"name": "root", "key_sha256": sha("root"), "role": "admin"},
    ]
    async with serve(
        tmp_path, [node()], CATALOGUE, models=MODELS, keys=keys, environ=ENVIRON, api_keys=["anon"]
    ) as gw:
        alice, batch = bearer("alice-secret"), bearer("batch-secret")
        await chat(gw, alice)
        gw.node("beast").answers.append(usage_answer(100, 64, 7))
        await chat(gw, alice)
        # A stream's usage (asked for by the gateway, not the client) counts too.
        events = [
            chat_chunk("fake/small", {"content": "Paris"}),
            b'data: {"id":"x","object":"chat.completion.chunk","created":0,"model":"fake/small",'
            b'"choices":[],"usage":{"prompt_tokens":50,"completion_tokens":2,"total_tokens":52,'
            b'"prompt_tokens_details":{"cached_tokens":32}}}\n\n',
            b"data: [DONE]\n\n",
        ]
        gw.node("beast").answers.append(StreamAnswer(events))
        answer = await chat(gw, alice, "helexa/small", stream=True)
        assert b"usage" not in answer.content  # the client did not ask for it
        await chat(gw, alice, "no/such")
        await chat(gw, batch, "other/model")
        await chat(gw, bearer("anon"))
        usage = await usage_of(gw)
        small = usage["alice"]["fake/small"]
        assert small == {
            "model": "fake/small",
            "requests": 3,
            "errors": 0,
            "prompt_tokens": 3 + 100 + 50,
            "cached_tokens": 64 + 32,
            "completion_tokens": 6 + 7 + 2,
        }
        assert usage["alice"]["other"]["errors"] == 1  # a model outside the catalogue: bounded
        assert usage["batch"]["other/model"]["requests"] == 1
        assert usage[""]["fake/small"]["requests"] == 1  # the unnamed api_keys key
        assert "root" not in usage  # /admin/usage itself is no inference
        assert await gw.metric("cortex_key_tokens_total", key="alice", kind="cached") == 96
        assert (
            await gw.metric(
                "cortex_key_requests_total", key="alice", model="fake/small", status="200"
            )
            == 3
        )
        assert await gw.metric("cortex_key_requests_total", key="", status="200") == 1


async def test_a_rotated_key_is_one_tenant(tmp_path: Path) -> None:
    """Two entries with one name: both keys work, their usage and limits add up under it."""
    keys: list[dict[str, object]] = [
        {"name": "alice", "key_env": "KEY_ALICE", "max_concurrent": 1},
        {"name": "alice", "key_env": "KEY_ALICE_NEW", "max_concurrent": 1},
        {"name": "root", "key_sha256": sha("root"), "role": "admin"},
    ]
    async with serve(
        tmp_path, [node()], CATALOGUE, models=MODELS, keys=keys, environ=ENVIRON
    ) as gw:
        gw.node("beast").answers.append(JsonAnswer(b"{}", delay_s=0.5))
        first = asyncio.ensure_future(chat(gw, bearer("alice-secret")))
        await until(lambda: gw.node("beast").open_requests == 1)
        second = await chat(gw, bearer("alice-2"))
        assert second.status_code == 429  # the old key's request counts against the new key
        assert (await first).status_code == 200
        ok = await chat(gw, bearer("alice-2"))
        assert ok.status_code == 200
        assert (await usage_of(gw))["alice"]["fake/small"]["requests"] == 3


async def test_max_concurrent_answers_429_with_retry_after_in_both_envelopes(
    tmp_path: Path,
) -> None:
    """Over max_concurrent: 429, Retry-After, OpenAI's rate_limit_exceeded, Anthropic's type."""
    keys: list[dict[str, object]] = [{"name": "alice", "key_env": "KEY_ALICE", "max_concurrent": 1}]
    async with serve(
        tmp_path, [node()], CATALOGUE, models=MODELS, keys=keys, environ=ENVIRON
    ) as gw:
        alice = bearer("alice-secret")
        gw.node("beast").answers.append(JsonAnswer(b"{}", delay_s=1.0))
        held = asyncio.ensure_future(chat(gw, alice))
        await until(lambda: gw.node("beast").open_requests == 1)
        refused = await chat(gw, alice)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "rate_limit_exceeded"
        assert error["type"] == "rate_limit_error"
        assert "max_concurrent = 1" in error["message"]
        body = {"model": "helexa/small", "max_tokens": 10, "messages": QUESTION}
        message = await gw.http.post(
            "/v1/messages", json=body, headers={"x-api-key": "alice-secret"}
        )
        assert message.status_code == 429
        assert message.headers["retry-after"] == "1"
        assert message.json() == {
            "type": "error",
            "error": {"type": "rate_limit_error", "message": message.json()["error"]["message"]},
        }
        for path, extra in (
            ("/v1/embeddings", {"input": "hi"}),
            ("/v1/responses", {"input": "hi"}),
        ):
            model = "fake/embedder" if path == "/v1/embeddings" else "fake/small"
            answer = await gw.http.post(path, json={"model": model, **extra}, headers=alice)
            assert answer.status_code == 429, path
        count = {"model": "fake/small", "messages": QUESTION}
        counted = await gw.http.post(
            "/v1/messages/count_tokens", json=count, headers={"x-api-key": "alice-secret"}
        )
        assert counted.status_code == 429
        assert (await held).status_code == 200
        assert (await chat(gw, alice)).is_success
        assert await gw.metric("cortex_request_errors_total", kind="rate_limited") == 5
        assert await gw.metric("cortex_key_requests_total", key="alice", status="429") == 5


async def test_the_sdks_see_a_rate_limit_error(tmp_path: Path) -> None:
    """The official SDKs raise their rate-limit errors, with Retry-After (Claude Code retries)."""
    keys: list[dict[str, object]] = [
        {"name": "alice", "key_env": "KEY_ALICE", "tokens_per_minute": 5}
    ]
    async with serve(
        tmp_path, [node()], CATALOGUE, models=MODELS, keys=keys, environ=ENVIRON
    ) as gw:
        transport = httpx2.ASGITransport(app=gw.api)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as http:
            client = openai.AsyncOpenAI(
                base_url="http://gateway/v1",
                api_key="alice-secret",
                http_client=http,
                max_retries=0,
            )
            await client.chat.completions.create(model="fake/small", messages=QUESTION)  # type: ignore[arg-type]
            with pytest.raises(openai.RateLimitError) as refused:
                await client.chat.completions.create(model="fake/small", messages=QUESTION)  # type: ignore[arg-type]
            assert refused.value.code == "rate_limit_exceeded"
            retry_after = int(refused.value.response.headers["retry-after"])
            assert 1 <= retry_after <= 61
            claude = anthropic.AsyncAnthropic(
                base_url="http://gateway", api_key="alice-secret", http_client=http, max_retries=0
            )
            with pytest.raises(anthropic.RateLimitError) as limited:
                await claude.messages.create(
                    model="helexa/small",
                    max_tokens=10,
                    messages=QUESTION,  # type: ignore[arg-type]
                )
            assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


async def test_allow_lists_hide_models(tmp_path: Path) -> None:
    """A model outside a key's models is 404 for it and absent from its /v1/models."""
    keys: list[dict[str, object]] = [
        {"name": "alice", "key_env": "KEY_ALICE", "models": ["helexa/small"]},
        {"name": "batch", "key_env": "KEY_BATCH", "models": ["other/*"]},
    ]
    async with serve(
        tmp_path, [node()], CATALOGUE, models=MODELS, keys=keys, environ=ENVIRON
    ) as gw:
        alice, batch = bearer("alice-secret"), bearer("batch-secret")
        listed = (await gw.http.get("/v1/models", headers=alice)).json()["data"]
        assert {m["id"] for m in listed} == {"helexa/small"}
        listed = (await gw.http.get("/v1/models", headers=batch)).json()["data"]
        assert {m["id"] for m in listed} == {"other/model", "helexa/other"}
        ok = await chat(gw, alice, "helexa/small")
        assert ok.status_code == 200
        # An id allowed lets its aliases through (other/*); an alias allowed, only itself.
        via = await chat(gw, batch, "helexa/other")
        assert via.status_code == 200
        direct = await chat(gw, alice, "fake/small")
        assert direct.status_code == 404
        refused = await chat(gw, alice, "other/model")
        assert refused.status_code == 404
        assert openai_error(refused)["message"] == "model 'other/model' does not exist"
        assert (await gw.http.get("/v1/models/other%2Fmodel", headers=alice)).status_code == 404
        assert (await gw.http.get("/v1/models/other%2Fmodel", headers=batch)).status_code == 200
        body = {"model": "fake/small", "max_tokens": 10, "messages": QUESTION}
        message = await gw.http.post(
            "/v1/messages", json=body, headers={"x-api-key": "batch-secret"}
        )
        assert message.status_code == 404
        assert message.json()["error"]["type"] == "not_found_error"
        sent = [r.body["model"] for r in gw.node("beast").requests]
        assert sent == ["fake/small", "other/model"]  # nothing refused reached a node


async def test_priority_and_cache_salt_reach_the_neuron_only_as_configured(tmp_path: Path) -> None:
    """Batch keys send priority 1, isolated keys a salt from their name; clients set neither."""
    keys: list[dict[str, object]] = [
        {"name": "alice", "key_env": "KEY_ALICE"},
        {"name": "batch", "key_env": "KEY_BATCH", "priority": "batch", "isolate_cache": True},
    ]
    async with serve(
        tmp_path, [node()], CATALOGUE, models=MODELS, keys=keys, environ=ENVIRON, api_keys=["anon"]
    ) as gw:
        sneaky = {"priority": -100, "cache_salt": "someone-else"}
        requests = gw.node("beast").requests
        for key in ("alice-secret", "anon", "batch-secret"):
            await gw.http.post(
                "/v1/chat/completions", json={**chat_body(), **sneaky}, headers=bearer(key)
            )
        alice, anon, batch = (r.body for r in requests[-3:])
        for body in (alice, anon):
            assert "priority" not in body  # vLLM's default: 0
            assert "cache_salt" not in body
        assert batch["priority"] == 1
        salt = batch["cache_salt"]
        assert len(salt) == 64
        assert "batch-secret" not in salt
        assert salt != sha("batch-secret")
        # The same salt on every surface the key uses, never the key.
        message = {"model": "fake/small", "max_tokens": 10, "messages": QUESTION}
        await gw.http.post("/v1/messages", json=message, headers={"x-api-key": "batch-secret"})
        embed = {"model": "fake/embedder", "input": "hi", "priority": 5}
        await gw.http.post("/v1/embeddings", json=embed, headers=bearer("batch-secret"))
        await gw.http.post(
            "/v1/responses",
            json={"model": "fake/small", "input": "hi"},
            headers=bearer("batch-secret"),
        )
        for request in requests[-3:]:
            assert (request.body["priority"], request.body["cache_salt"]) == (1, salt), request.path
        await gw.http.post("/v1/embeddings", json=embed, headers=bearer("alice-secret"))
        assert "priority" not in requests[-1].body
        for request in requests:
            assert "secret" not in json.dumps(request.body) + json.dumps(dict(request.headers))


async def test_an_isolated_keys_prefixes_are_its_own(tmp_path: Path) -> None:
    """Prefix routing sends a shared prompt back to its node, except across an isolated key."""
    keys: list[dict[str, object]] = [
        {"name": "alice", "key_env": "KEY_ALICE"},
        {"name": "bob", "key_sha256": sha("bob-secret")},
        {"name": "batch", "key_env": "KEY_BATCH", "isolate_cache": True},
    ]
    long = [{"role": "user", "content": "The same long document. " * 200}]
    nodes = [ScriptedNode("a", gpus=[24]), ScriptedNode("b", gpus=[24])]
    async with serve(tmp_path, nodes, CATALOGUE, models=MODELS, keys=keys, environ=ENVIRON) as gw:
        for name in ("a", "b"):
            load = {"model": "fake/small", "node": name}
            loaded = await gw.http.post(
                "/admin/models/load", json=load, headers=bearer("bob-secret")
            )
            assert loaded.status_code == 200

        async def where(key: str) -> str:
            answer = await gw.http.post(
                "/v1/chat/completions",
                json={"model": "fake/small", "messages": long},
                headers=bearer(key),
            )
            return answer.headers["x-cortex-node"]

        first = await where("alice-secret")
        assert await where("bob-secret") == first  # a prefix another key sent: its node
        assert await where("batch-secret") != first  # an isolated key's prompt is new


async def test_keys_reload_with_the_catalogue(tmp_path: Path) -> None:
    """POST /admin/reload reads keys again; an unset key_env is refused, the keys in force stay."""
    environ = dict(ENVIRON)
    keys: list[dict[str, object]] = [
        {"name": "alice", "key_env": "KEY_ALICE"},
        {"name": "root", "key_sha256": sha("root"), "role": "admin"},
    ]
    async with serve(
        tmp_path, [node()], CATALOGUE, models=MODELS, keys=keys, environ=environ
    ) as gw:
        path = gw.state.config.path
        written = path.read_text()
        path.write_text(written + key_tables([{"name": "carol", "key_env": "KEY_CAROL"}]))
        refused = await gw.http.post("/admin/reload", json={}, headers=bearer("root"))
        assert refused.status_code == 422
        message = openai_error(refused)["message"]
        for named in ("keys[2].key_env", "'carol'", "$KEY_CAROL"):
            assert named in message

        async def status(key: str) -> int:
            answer = await chat(gw, bearer(key))
            return answer.status_code

        assert await status("alice-secret") == 200
        assert await status("carol-secret") == 401
        environ["KEY_CAROL"] = "carol-secret"
        assert (
            await gw.http.post("/admin/reload", json={}, headers=bearer("root"))
        ).status_code == 200
        assert await status("carol-secret") == 200
        # Alice's entry removed: her key stops working at once.
        path.write_text(
            written.replace(
                'name = "alice"\nkey_env = "KEY_ALICE"\n',
                'name = "alice2"\nkey_sha256 = "' + "0" * 64 + '"\n',
            )
        )
        assert (
            await gw.http.post("/admin/reload", json={}, headers=bearer("root"))
        ).status_code == 200
        assert await status("alice-secret") == 401
        assert await status("carol-secret") == 401  # not in the file any more either
        assert (await gw.http.get("/admin/usage", headers=bearer("root"))).status_code == 200
