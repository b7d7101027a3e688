"""``synthhost serve`` through HTTP: the official ``openai`` SDK against a real uvicorn
server on a loopback socket (sync, async and streaming), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import openai
import pytest
import sqlalchemy as sa

from synthhost import hookimpl
from synthhost.errors import Denied
from synthhost.gateway.keys import KEYS, create_key, revoke_key
from synthhost.host import Host
from tests.gateway_server import serving

MODEL = "echo/gpt-4o-mini"


class Gate:
    """Denies calls that ask for it (``extra_body={"deny": CODE}``), like a plugin would."""

    __name__ = "acme_gate"

    @hookimpl
    def pre_call(self, call: Any) -> None:
        code = call.request.params.get("deny")
        if code:
            raise Denied(code, f"denied ({code}) sk-live-SECRET", retry_after=1.2)


@pytest.fixture
def gateway(make_host: Any) -> Iterator[tuple[Host, str]]:
    host = make_host(Gate(), env={"SYNTHHOST_MAX_BODY_BYTES": "100000"})
    with serving(host) as url:
        yield host, url


_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def client(url: str, key: str, **kw: Any) -> openai.OpenAI:
    """A sync SDK client (no retries: each test sees the first answer), closed at teardown."""
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, **kw)
    _clients.append(sdk)
    return sdk


def runs_of(host: Host, workspace: str) -> int:
    host.wait_for_events()
    return host.count("runs", workspace_id=workspace)


def test_chat_completion_with_the_sync_sdk(gateway: tuple[Host, str]) -> None:
    host, url = gateway
    key, _ = create_key(host.engine, "team-a")
    reply = client(url, key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}])
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == MODEL
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == "echo: hello"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    # The workspace comes from the key, and nothing was written to any other.
    assert runs_of(host, "team-a") == 1
    assert runs_of(host, "default") == 0


@pytest.mark.anyio
async def test_chat_completion_with_the_async_sdk(gateway: tuple[Host, str]) -> None:
    host, url = gateway
    key, _ = create_key(host.engine, "team-b")
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as aclient:
        replies: list[str] = []
        async with anyio.create_task_group() as tg:
            async def one(i: int) -> None:
                r = await aclient.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"n{i}"}])
                replies.append(r.choices[0].message.content or "")

            for i in range(5):
                tg.start_soon(one, i)
    assert sorted(replies) == [f"echo: n{i}" for i in range(5)]
    assert runs_of(host, "team-b") == 5


def test_streaming_sends_chunks_then_usage_then_done(gateway: tuple[Host, str]) -> None:
    host, url = gateway
    key, _ = create_key(host.engine, "team-a")
    text = "a longer answer, so that it arrives in more than one chunk of the stream " * 3
    stream = client(url, key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True,
        stream_options={"include_usage": True}, extra_body={"echo_reply": text})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_raw_wire_ends_with_done(gateway: tuple[Host, str]) -> None:
    host, url = gateway
    key, _ = create_key(host.engine, "team-a")
    with httpx.stream("POST", url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all("usage" not in c for c in chunks)  # no include_usage: no usage field at all
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "echo: hi"


@pytest.mark.anyio
async def test_streaming_with_the_async_sdk(gateway: tuple[Host, str]) -> None:
    host, url = gateway
    key, _ = create_key(host.engine, "team-a")
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as aclient:
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "streamed"}], stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts) == "echo: streamed"


def test_models_lists_something_callable(gateway: tuple[Host, str]) -> None:
    host, url = gateway
    key, _ = create_key(host.engine, "team-a")
    sdk = client(url, key)
    ids = [m.id for m in sdk.models.list()]
    assert ids == ["echo/echo-1"]
    assert sdk.chat.completions.create(model=ids[0], messages=[{"role": "user", "content": "m"}]).choices


# -- keys ------------------------------------------------------------------------------


def test_missing_bad_and_revoked_keys_get_401(gateway: tuple[Host, str]) -> None:
    host, url = gateway
    messages = [{"role": "user", "content": "x"}]
    for bad in ("sk-sh-not-a-key", "not even the prefix", "sk-sh-" + "A" * 500):
        with pytest.raises(openai.AuthenticationError) as info:
            client(url, bad).chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
        assert info.value.status_code == 401
        body: Any = info.value.body
        assert body["type"] == "authentication_error" and body["code"] == "invalid_api_key"
    r = httpx.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": messages})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert r.headers["www-authenticate"] == "Bearer"

    key, info_ = create_key(host.engine, "team-a")
    sdk = client(url, key)
    assert sdk.chat.completions.create(model=MODEL, messages=messages).choices  # type: ignore[arg-type]
    assert revoke_key(host.engine, info_.id)
    # Seen within the refresh bound (0.2 s here); the loop only bounds a broken build.
    deadline = time.monotonic() + 30
    while True:
        try:
            sdk.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
        except openai.AuthenticationError:
            break
        assert time.monotonic() < deadline, "a revoked key was still accepted after 30 s"
        time.sleep(0.05)


def test_keys_are_stored_as_hashes_only(gateway: tuple[Host, str]) -> None:
    host, _ = gateway
    key, info = create_key(host.engine, "team-a", "admin", "ci")
    with host.engine.connect() as conn:
        row = conn.execute(sa.select(KEYS)).one()
    assert key not in json.dumps([str(v) for v in row])
    assert row.prefix == key[:12] and len(row.key_hash) == 64 and row.role == "admin"
    assert info.workspace == "team-a"


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "status", "error"), [
    ("RATE_LIMITED", 429, openai.RateLimitError),
    ("POLICY_DENIED", 403, openai.PermissionDeniedError),
    ("GUARDRAIL_VIOLATION", 403, openai.PermissionDeniedError),
    ("SIMILARITY_BLOCKED", 403, openai.PermissionDeniedError),
])
def test_denials_map_to_openai_errors(gateway: tuple[Host, str], code: str, status: int,
                                      error: type[openai.APIStatusError]) -> None:
    host, url = gateway
    key, _ = create_key(host.engine, "team-a")
    with pytest.raises(error) as info:
        client(url, key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                 extra_body={"deny": code})
    assert info.value.status_code == status
    body: Any = info.value.body
    assert body["code"] == code and body["message"].startswith(f"denied ({code})")
    assert "SECRET" not in info.value.response.text or "sk-live-SECRET" not in info.value.response.text
    if status == 429:
        assert info.value.response.headers["retry-after"] == "2"  # 1.2 s, rounded up
    else:
        assert "retry-after" not in info.value.response.headers


@pytest.mark.parametrize(("fail", "status", "code"), [
    ("auth", 502, "PROVIDER_AUTH"),
    ("bad_request", 400, "PROVIDER_BAD_REQUEST"),
    (["server_error"] * 3, 502, "PROVIDER_ERROR"),
    (["timeout"] * 3, 504, "PROVIDER_TIMEOUT"),
    (["rate_limit"] * 3, 503, "PROVIDER_RATE_LIMITED"),
])
def test_provider_failures_map_to_5xx(gateway: tuple[Host, str], fail: Any, status: int, code: str) -> None:
    host, url = gateway
    key, _ = create_key(host.engine, "team-a")
    with pytest.raises(openai.APIStatusError) as info:
        client(url, key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                 extra_body={"echo_fail": fail if isinstance(fail, list) else [fail]})
    assert info.value.status_code == status
    body: Any = info.value.body
    assert body["code"] == code
    if code == "PROVIDER_RATE_LIMITED":
        assert info.value.response.headers["retry-after"] == "1"


@pytest.mark.parametrize(("payload", "param"), [
    ({"model": MODEL}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
    ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ([1, 2], None),
])
def test_invalid_requests_get_400(gateway: tuple[Host, str], payload: Any, param: str | None) -> None:
    host, url = gateway
    key, _ = create_key(host.engine, "team-a")
    r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=payload)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_malformed_json_is_400_and_a_big_body_is_413(gateway: tuple[Host, str]) -> None:
    host, url = gateway
    key, _ = create_key(host.engine, "team-a")
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    for raw in (b"{not json", b"[" * 10_000 + b"]" * 10_000, b"\xff\xfe{}"):
        r = httpx.post(url + "/v1/chat/completions", headers=auth, content=raw)
        assert r.status_code == 400, raw[:20]
        assert r.json()["error"]["type"] == "invalid_request_error"
    big = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 200_000}]})
    r = httpx.post(url + "/v1/chat/completions", headers=auth, content=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(20):
            yield b" " * 10_000

    r = httpx.post(url + "/v1/chat/completions", headers=auth, content=chunks())
    assert r.status_code == 413
    with pytest.raises(openai.APIStatusError) as info:
        client(url, key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "y" * 200_000}])
    assert info.value.status_code == 413


def test_unknown_routes_and_methods_are_json(gateway: tuple[Host, str]) -> None:
    _, url = gateway
    r = httpx.get(url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(url + "/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_a_denied_stream_is_an_error_status_not_a_broken_stream(gateway: tuple[Host, str]) -> None:
    host, url = gateway
    key, _ = create_key(host.engine, "team-a")
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(url, key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                 stream=True, extra_body={"deny": "POLICY_DENIED"})
    assert info.value.status_code == 403


class Leaky:
    """A provider whose errors quote its credentials (some upstreams do)."""

    __name__ = "acme_leaky"

    @hookimpl
    def register_providers(self, register: Any) -> None:
        register("leaky", lambda host: self)

    async def complete(self, request: Any, *, call: Any) -> Any:
        from synthhost.errors import ProviderError

        raise ProviderError(f"upstream refused key {call.host.settings.env['LEAKY_API_KEY']}", retryable=False)


def test_provider_secrets_never_reach_the_response(make_host: Any, caplog: Any) -> None:
    secret = "lk-0123456789abcdef0123"
    host = make_host(Leaky(), env={"LEAKY_API_KEY": secret})
    with serving(host) as url:
        key, _ = create_key(host.engine, "team-a")
        with caplog.at_level("DEBUG"):
            r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": "leaky/m", "messages": [{"role": "user", "content": "x"}]})
        host.wait_for_events()
        with host.engine.connect() as conn:
            stored = " ".join(str(v) for row in conn.execute(sa.text("SELECT * FROM spans")) for v in row)
    assert r.status_code == 502 and r.json()["error"]["code"] == "PROVIDER_ERROR"
    assert "upstream refused key" in r.text and secret not in r.text
    assert secret not in caplog.text and secret not in stored
