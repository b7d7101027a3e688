"""The OpenAI-compatible provider against a real loopback HTTP server."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any, cast

import pytest

from synthhost.call import Call, Request
from synthhost.errors import ErrorCode, ProviderError, UsageError
from synthhost.providers.openai import OpenAIProvider, factory, parse_retry_after

KEY = "sk-test-SECRET-0123456789abcdef"

pytestmark = pytest.mark.anyio


@dataclass
class Answer:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


def completion(text: str = "hello", **usage: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": usage or {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


class FakeOpenAI:
    """A scripted chat-completions server: answers from ``script`` in order, then 200s."""

    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.requests: list[Recorded] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                outer.requests.append(
                    Recorded(
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        json.loads(raw or b"null"),
                    )
                )
                answer = outer.script.pop(0) if outer.script else Answer(body=completion())
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                payload = (
                    answer.body.encode()
                    if isinstance(answer.body, str)
                    else json.dumps(answer.body).encode()
                )
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def fake_call(request: Request) -> Call:
    # The provider does not touch the host; a bare Call is enough.
    return Call(host=cast(Any, None), request=request)


def request(**params: Any) -> Request:
    return Request(
        model="gpt-4o-mini",
        provider="openai",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        params=params,
    )


async def run(provider: OpenAIProvider, req: Request) -> Any:
    try:
        return await provider.complete(req, call=fake_call(req))
    finally:
        await provider.aclose()


async def test_request_body_and_headers(server: FakeOpenAI) -> None:
    provider = OpenAIProvider(server.url, KEY, 5.0)
    req = request(
        temperature=0.2,
        max_tokens=50,
        top_p=0.9,
        stop=["\n\n"],
        seed=7,
        response_format={"type": "json_object"},
        fail_on_attempts=[1],  # a host/echo setting: must not reach the server
        retry=3,
    )
    response = await run(provider, req)

    [sent] = server.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert sent.body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "temperature": 0.2,
        "max_tokens": 50,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 7,
        "response_format": {"type": "json_object"},
    }
    assert response.text == "hello"
    assert response.model == "gpt-4o-mini-2024-07-18"
    assert response.provider == "openai"
    assert response.finish_reason == "stop"
    assert response.usage.input_tokens == 12
    assert response.usage.output_tokens == 3
    assert response.latency_s > 0


async def test_no_key_no_authorization_header(server: FakeOpenAI) -> None:
    await run(OpenAIProvider(server.url + "/", None, 5.0), request())
    [sent] = server.requests
    assert sent.path == "/v1/chat/completions"  # trailing slash on the base URL is fine
    assert "authorization" not in sent.headers


async def test_usage_with_cached_and_reasoning_tokens(server: FakeOpenAI) -> None:
    server.script.append(
        Answer(
            body=completion(
                "ok",
                prompt_tokens=2006,
                completion_tokens=300,
                total_tokens=2306,
                prompt_tokens_details={"cached_tokens": 1920, "audio_tokens": 0},
                completion_tokens_details={"reasoning_tokens": 256, "audio_tokens": 0},
            )
        )
    )
    response = await run(OpenAIProvider(server.url, KEY, 5.0), request())
    usage = response.usage
    # Conventions of synthhost.call: totals include cached / reasoning tokens.
    assert (usage.input_tokens, usage.output_tokens) == (2006, 300)
    assert (usage.cache_read_tokens, usage.reasoning_tokens) == (1920, 256)
    assert usage.cache_write_tokens == 0


async def test_missing_usage_and_null_content(server: FakeOpenAI) -> None:
    body = completion()
    del body["usage"]
    body["choices"][0]["message"]["content"] = None
    body["choices"][0]["finish_reason"] = "length"
    server.script.append(Answer(body=body))
    response = await run(OpenAIProvider(server.url, KEY, 5.0), request())
    assert response.text == ""
    assert response.finish_reason == "length"
    assert response.usage.total_tokens == 0


def openai_error(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (400, ErrorCode.PROVIDER_BAD_REQUEST, False),
        (404, ErrorCode.PROVIDER_BAD_REQUEST, False),
        (422, ErrorCode.PROVIDER_BAD_REQUEST, False),
        (401, ErrorCode.PROVIDER_AUTH, False),
        (403, ErrorCode.PROVIDER_AUTH, False),
        (408, ErrorCode.PROVIDER_TIMEOUT, True),
        (429, ErrorCode.PROVIDER_RATE_LIMITED, True),
        (500, ErrorCode.PROVIDER_ERROR, True),
        (502, ErrorCode.PROVIDER_ERROR, True),
        (503, ErrorCode.PROVIDER_ERROR, True),
    ],
)
async def test_http_error_mapping(
    server: FakeOpenAI, status: int, code: ErrorCode, retryable: bool
) -> None:
    server.script.append(Answer(status, openai_error(f"server says {status}")))
    with pytest.raises(ProviderError) as info:
        await run(OpenAIProvider(server.url, KEY, 5.0), request())
    err = info.value
    assert err.code == code
    assert err.retryable is retryable
    assert err.status == status
    assert f"server says {status}" in err.message
    assert "\n" not in str(err)


async def test_429_retry_after_seconds(server: FakeOpenAI) -> None:
    server.script.append(
        Answer(429, openai_error("Rate limit reached", "requests"), {"Retry-After": "7"})
    )
    with pytest.raises(ProviderError) as info:
        await run(OpenAIProvider(server.url, KEY, 5.0), request())
    assert info.value.code == ErrorCode.PROVIDER_RATE_LIMITED
    assert info.value.retry_after == 7.0
    assert "Rate limit reached" in info.value.message


async def test_429_retry_after_ms_wins(server: FakeOpenAI) -> None:
    server.script.append(
        Answer(429, openai_error("slow down"), {"Retry-After": "2", "retry-after-ms": "1500"})
    )
    with pytest.raises(ProviderError) as info:
        await run(OpenAIProvider(server.url, KEY, 5.0), request())
    assert info.value.retry_after == 1.5


def test_retry_after_http_date() -> None:
    import httpx

    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    value = parse_retry_after(httpx.Headers({"Retry-After": when}))
    assert value is not None and 25 <= value <= 31
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"})) is None
    assert parse_retry_after(httpx.Headers({})) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"object": "error", "message": "vllm: model not found", "code": 404}, "vllm: model"),
        ({"error": "ollama: model 'x' not found"}, "ollama: model"),
        ("<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
    ],
)
async def test_error_message_shapes(server: FakeOpenAI, body: Any, expected: str) -> None:
    server.script.append(Answer(404, body))
    with pytest.raises(ProviderError) as info:
        await run(OpenAIProvider(server.url, KEY, 5.0), request())
    assert expected in info.value.message


async def test_timeout(server: FakeOpenAI) -> None:
    server.script.append(Answer(body=completion(), delay_s=1.0))
    with pytest.raises(ProviderError) as info:
        await run(OpenAIProvider(server.url, KEY, 0.2), request())
    assert info.value.code == ErrorCode.PROVIDER_TIMEOUT
    assert info.value.retryable is True
    assert info.value.status is None


async def test_connect_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = OpenAIProvider(f"http://127.0.0.1:{port}/v1", KEY, 2.0)
    with pytest.raises(ProviderError) as info:
        await run(provider, request())
    assert info.value.code == ErrorCode.PROVIDER_ERROR
    assert info.value.retryable is True
    assert f"127.0.0.1:{port}" in info.value.message


async def test_unreadable_success_body(server: FakeOpenAI) -> None:
    server.script.append(Answer(200, "not json"))
    with pytest.raises(ProviderError) as info:
        await run(OpenAIProvider(server.url, KEY, 5.0), request())
    assert info.value.code == ErrorCode.PROVIDER_ERROR
    assert info.value.retryable is False


async def test_key_never_in_errors(server: FakeOpenAI) -> None:
    """Servers sometimes echo the key back; it must not reach messages, str or repr."""
    errors: list[ProviderError] = []
    echoed = openai_error(f"Incorrect API key provided: {KEY}.", "invalid_api_key")
    for answer in (
        Answer(401, echoed),
        Answer(429, echoed),
        Answer(500, f"upstream failed for key {KEY}"),
        Answer(400, echoed),
        Answer(200, f"garbage {KEY}"),
        Answer(body=completion(), delay_s=1.0),
    ):
        server.script.append(answer)
        provider = OpenAIProvider(server.url, KEY, 0.3)
        with pytest.raises(ProviderError) as info:
            await run(provider, request())
        errors.append(info.value)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ProviderError) as info:
        await run(OpenAIProvider(f"http://127.0.0.1:{port}/v1", KEY, 1.0), request())
    errors.append(info.value)

    assert len(server.requests) == 6
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in server.requests)
    for err in errors:
        for text in (str(err), repr(err), err.message, repr(err.args)):
            assert KEY not in text
        assert err.__cause__ is None  # no httpx exception (with its request) attached
    assert "***" in errors[0].message
    provider = OpenAIProvider(server.url, KEY, 1.0)
    assert KEY not in repr(provider)
    await provider.aclose()


def host_with_env(env: dict[str, str]) -> Any:
    return SimpleNamespace(settings=SimpleNamespace(env=env))


async def test_factory_reads_env(server: FakeOpenAI) -> None:
    provider = factory(
        host_with_env({"OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": KEY, "OPENAI_TIMEOUT": "9"})
    )
    assert provider.timeout == 9.0
    await run(provider, request())
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


async def test_factory_defaults() -> None:
    provider = factory(host_with_env({}))
    try:
        assert provider.base_url == "https://api.openai.com/v1"
        assert provider.timeout == 60.0
        assert "api_key=none" in repr(provider)
    finally:
        await provider.aclose()


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"OPENAI_TIMEOUT": "soon"}, "OPENAI_TIMEOUT"),
        ({"OPENAI_TIMEOUT": "0"}, "OPENAI_TIMEOUT"),
        ({"OPENAI_BASE_URL": "localhost:8000/v1"}, "OPENAI_BASE_URL"),
    ],
)
def test_factory_bad_env(env: dict[str, str], needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        factory(host_with_env(env))
