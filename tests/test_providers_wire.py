"""The native Anthropic and Gemini providers, and the model list, against a loopback
server that speaks each provider's real wire format (bodies, headers, errors)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import genai_prices
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import synthhost_cost
from synthhost.agent import parse_agent
from synthhost.call import Call, Request
from synthhost.errors import ErrorCode, ProviderError, UsageError
from synthhost.models import ModelList
from synthhost.providers.anthropic import AnthropicProvider
from synthhost.providers.gemini import GeminiProvider
from synthhost_cost.models import COST_LOGS

KEY = "sk-wire-SECRET-0123456789abcdef"


@dataclass
class Answer:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any


def openai_body(model: str, prompt_tokens: int = 20, completion_tokens: int = 5, cached: int = 0) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "from openai"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens,
                      "prompt_tokens_details": {"cached_tokens": cached}}}


def anthropic_body(model: str, inp: int = 30, out: int = 7, cache_write: int = 0,
                   cache_read: int = 0) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "from anthropic"}], "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": inp, "output_tokens": out, "cache_creation_input_tokens": cache_write,
                      "cache_read_input_tokens": cache_read}}


def anthropic_error(status: int, kind: str, message: str) -> Answer:
    return Answer(status, {"type": "error", "error": {"type": kind, "message": message}})


def gemini_body(model: str, prompt: int = 40, out: int = 9, cached: int = 0, thoughts: int = 0) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": out,
                             "totalTokenCount": prompt + out + thoughts}
    if cached:
        usage["cachedContentTokenCount"] = cached
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": "from gemini"}]},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": usage, "modelVersion": model}


def gemini_error(code: int, status: str, message: str, details: list[Any] | None = None) -> Answer:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return Answer(code, {"error": error})


class Wire:
    """One loopback server for all three wire formats; scripted answers per path kind."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Answer]] = {"openai": [], "anthropic": [], "gemini": []}
        self.seen: list[Seen] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw or b"null")
                outer.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if self.path.endswith("/chat/completions"):
                    kind, default = "openai", Answer(body=openai_body(body["model"]))
                elif self.path.endswith("/v1/messages"):
                    kind, default = "anthropic", Answer(body=anthropic_body(body["model"]))
                elif ":generateContent" in self.path:
                    model = self.path.split("/models/")[1].split(":")[0]
                    kind, default = "gemini", Answer(body=gemini_body(model))
                else:
                    self.send_error(404)
                    return
                script = outer.scripts[kind]
                answer = script.pop(0) if script else default
                payload = json.dumps(answer.body).encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in answer.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def wire() -> Iterator[Wire]:
    server = Wire()
    yield server
    server.close()


def fake_call(request: Request) -> Call:
    return Call(host=cast(Any, SimpleNamespace()), request=request, workspace="w")


async def complete(provider: Any, request: Request) -> Any:
    try:
        return await provider.complete(request, call=fake_call(request))
    finally:
        await provider.aclose()


# -- Anthropic ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_anthropic_request_shape_and_cache_usage(wire: Wire) -> None:
    wire.scripts["anthropic"].append(Answer(body=anthropic_body("claude-sonnet-4-5", 10, 4, 100, 200)))
    request = Request(model="claude-sonnet-4-5", provider="anthropic", params={"temperature": 0.2, "stop": "END"},
                      messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                {"role": "user", "content": "there"}])
    response = await complete(AnthropicProvider(wire.url, api_key=KEY, max_tokens=321), request)
    seen = wire.seen[-1]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == KEY and seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    assert seen.body == {"model": "claude-sonnet-4-5", "max_tokens": 321, "system": "Be brief.",
                         "messages": [{"role": "user", "content": "Hi\nthere"}],
                         "temperature": 0.2, "stop_sequences": ["END"]}
    assert response.text == "from anthropic" and response.provider == "anthropic"
    # The host counts the whole prompt: input + cache writes + cache reads.
    assert response.usage.input_tokens == 310
    assert (response.usage.cache_write_tokens, response.usage.cache_read_tokens) == (100, 200)
    assert response.usage.output_tokens == 4 and response.finish_reason == "stop"


@pytest.mark.anyio
@pytest.mark.parametrize(("answer", "code", "retryable", "retry_after"), [
    (anthropic_error(529, "overloaded_error", "Overloaded"), ErrorCode.PROVIDER_OVERLOADED, True, None),
    (Answer(429, {"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens "
                                                                                 "has exceeded your rate limit"}},
            {"retry-after": "7"}), ErrorCode.PROVIDER_RATE_LIMITED, True, 7.0),
    (anthropic_error(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
     ErrorCode.PROVIDER_CONTEXT_TOO_LONG, False, None),
    (anthropic_error(401, "authentication_error", f"invalid x-api-key {KEY}"), ErrorCode.PROVIDER_AUTH, False, None),
    (anthropic_error(400, "invalid_request_error", "max_tokens: field required"),
     ErrorCode.PROVIDER_BAD_REQUEST, False, None),
    (anthropic_error(500, "api_error", "Internal server error"), ErrorCode.PROVIDER_ERROR, True, None),
])
async def test_anthropic_errors(wire: Wire, answer: Answer, code: str, retryable: bool,
                                retry_after: float | None) -> None:
    wire.scripts["anthropic"].append(answer)
    request = Request(model="claude-sonnet-4-5", provider="anthropic", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(ProviderError) as info:
        await complete(AnthropicProvider(wire.url, api_key=KEY), request)
    error = info.value
    assert (error.code, error.retryable, error.retry_after) == (code, retryable, retry_after)
    assert KEY not in str(error) and "\n" not in str(error)


# -- Gemini ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_gemini_request_shape_and_usage(wire: Wire) -> None:
    wire.scripts["gemini"].append(Answer(body=gemini_body("gemini-2.5-flash", 50, 8, cached=30, thoughts=12)))
    request = Request(model="gemini-2.5-flash", provider="gemini", params={"max_tokens": 64, "top_p": 0.9},
                      messages=[{"role": "system", "content": "Sys"}, {"role": "user", "content": "Q1"},
                                {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}])
    response = await complete(GeminiProvider(wire.url, api_key=KEY), request)
    seen = wire.seen[-1]
    assert seen.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert seen.headers["x-goog-api-key"] == KEY and "authorization" not in seen.headers
    assert seen.body == {
        "contents": [{"role": "user", "parts": [{"text": "Q1"}]}, {"role": "model", "parts": [{"text": "A1"}]},
                     {"role": "user", "parts": [{"text": "Q2"}]}],
        "systemInstruction": {"parts": [{"text": "Sys"}]},
        "generationConfig": {"maxOutputTokens": 64, "topP": 0.9},
    }
    assert response.text == "from gemini" and response.provider == "google"
    assert response.usage.input_tokens == 50 and response.usage.cache_read_tokens == 30
    assert response.usage.output_tokens == 20 and response.usage.reasoning_tokens == 12


@pytest.mark.anyio
@pytest.mark.parametrize(("answer", "code", "retryable", "retry_after"), [
    (gemini_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).",
                  [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "31s"}]),
     ErrorCode.PROVIDER_RATE_LIMITED, True, 31.0),
    (gemini_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
     ErrorCode.PROVIDER_OVERLOADED, True, None),
    (gemini_error(400, "INVALID_ARGUMENT",
                  "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."),
     ErrorCode.PROVIDER_CONTEXT_TOO_LONG, False, None),
    (gemini_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
     ErrorCode.PROVIDER_BAD_REQUEST, False, None),
    (gemini_error(403, "PERMISSION_DENIED", "Permission denied"), ErrorCode.PROVIDER_AUTH, False, None),
    (gemini_error(404, "NOT_FOUND", "models/nope is not found"), ErrorCode.PROVIDER_BAD_REQUEST, False, None),
])
async def test_gemini_errors(wire: Wire, answer: Answer, code: str, retryable: bool,
                             retry_after: float | None) -> None:
    wire.scripts["gemini"].append(answer)
    request = Request(model="gemini-2.5-flash", provider="gemini", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(ProviderError) as info:
        await complete(GeminiProvider(wire.url, api_key=KEY), request)
    error = info.value
    assert (error.code, error.retryable, error.retry_after) == (code, retryable, retry_after)
    assert KEY not in str(error)


# -- the model list ----------------------------------------------------------------------


def config(tmp_path: Path, wire: Wire, *extra: dict[str, Any]) -> Path:
    deployments = [
        {"name": "oai", "provider": "openai", "model": "gpt-4o-mini", "base_url": wire.url + "/v1",
         "api_key_env": "WIRE_OPENAI_KEY", "aliases": ["fast"]},
        {"name": "claude", "provider": "anthropic", "model": "claude-sonnet-4-5", "base_url": wire.url,
         "api_key_env": "WIRE_ANTHROPIC_KEY", "aliases": ["smart"]},
        {"name": "gem", "provider": "gemini", "model": "gemini-2.5-flash", "base_url": wire.url,
         "api_key_env": "WIRE_GEMINI_KEY"},
        *extra,
    ]
    path = tmp_path / "synthhost.yaml"
    path.write_text(json.dumps({"deployments": deployments}))  # JSON is YAML
    return path


def env_for(path: Path) -> dict[str, str]:
    return {"SYNTHHOST_CONFIG": str(path), "WIRE_OPENAI_KEY": KEY + "o", "WIRE_ANTHROPIC_KEY": KEY + "a",
            "WIRE_GEMINI_KEY": KEY + "g"}


def expected_cost(provider: str, model: str, **usage: int) -> Decimal:
    return Decimal(str(genai_prices.calc_price(genai_prices.Usage(**usage), model, provider_id=provider).total_price))


@pytest.mark.anyio
async def test_three_steps_on_three_providers_with_exact_costs(wire: Wire, make_host: Any, tmp_path: Path) -> None:
    wire.scripts["openai"].append(Answer(body=openai_body("gpt-4o-mini-2024-07-18", 1200, 80, cached=1024)))
    wire.scripts["anthropic"].append(Answer(body=anthropic_body("claude-sonnet-4-5-20250929", 300, 120, 500, 2000)))
    wire.scripts["gemini"].append(Answer(body=gemini_body("gemini-2.5-flash", 900, 60, cached=0, thoughts=40)))
    spec = parse_agent(json.dumps({"name": "tri", "model": "fast", "steps": [
        {"name": "a", "model": "fast", "prompt": "one"},
        {"name": "b", "model": "smart", "prompt": "two {{ a }}"},
        {"name": "c", "model": "gemini-2.5-flash", "prompt": "three {{ b }}"},
    ]}), "tri.yaml")
    host = make_host(synthhost_cost, env=env_for(config(tmp_path, wire)))
    async with host:
        host.flags.set("track_model_costs", True, workspace="acme")
        result = await host.run(spec, workspace="acme")
        assert result.status == "ok", result.error
        await host.writer.flush()
        with host.engine.connect() as conn:
            rows = conn.execute(sa.select(COST_LOGS).where(COST_LOGS.c.workspace_id == "acme")).all()
    # Each endpoint got its own key.
    keys = {s.path: s.headers.get("authorization") or s.headers.get("x-api-key") or s.headers.get("x-goog-api-key")
            for s in wire.seen}
    assert keys == {"/v1/chat/completions": "Bearer " + KEY + "o", "/v1/messages": KEY + "a",
                    "/v1beta/models/gemini-2.5-flash:generateContent": KEY + "g"}
    want = {
        "openai": expected_cost("openai", "gpt-4o-mini-2024-07-18", input_tokens=1200, cache_read_tokens=1024,
                                output_tokens=80),
        "anthropic": expected_cost("anthropic", "claude-sonnet-4-5-20250929", input_tokens=2800,
                                   cache_write_tokens=500, cache_read_tokens=2000, output_tokens=120),
        "google": expected_cost("google", "gemini-2.5-flash", input_tokens=900, output_tokens=100),
    }
    assert len(rows) == 3 and all(r.status == "ok" for r in rows)
    got = {r.provider: r.total_cost for r in rows}
    assert set(got) == set(want)
    for provider, cost in want.items():
        assert cost > 0 and abs(got[provider] - cost) < Decimal("1e-10"), provider
    assert abs(Decimal(str(result.cost_usd)) - sum(want.values())) < Decimal("1e-9")


@pytest.mark.anyio
async def test_fallback_to_the_second_deployment_when_the_first_answers_503(
        wire: Wire, make_host: Any, tmp_path: Path) -> None:
    backup = {"name": "oai-backup", "provider": "openai", "model": "gpt-4o-mini", "base_url": wire.url + "/backup",
              "api_key_env": "WIRE_OPENAI_KEY"}
    path = config(tmp_path, wire, backup)
    host = make_host(env=env_for(path))
    async with host:
        models = host.models
        first = models.pick("gpt-4o-mini")
        assert first is not None
        # The balancer alternates; make the *next* pick the one that fails.
        failing_path = "/v1/chat/completions" if first.name == "oai-backup" else "/backup/chat/completions"
        wire.scripts["openai"].append(Answer(503, {"error": {"message": "upstream unavailable"}}))
        response = await host.complete(workspace="acme", model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "hi"}])
    assert response.text == "from openai"
    paths = [s.path for s in wire.seen]
    assert paths[0] == failing_path and len(paths) == 2 and paths[1] != failing_path


def test_weighted_round_robin() -> None:
    models = ModelList.parse({"deployments": [
        {"name": "a", "provider": "echo", "model": "m", "weight": 3},
        {"name": "b", "provider": "echo", "model": "m", "weight": 1, "aliases": ["mm"]},
    ]})
    picks = [cast(Any, models.pick("m" if i % 2 else "mm")).name for i in range(8)]
    assert picks.count("a") == 6 and picks.count("b") == 2
    assert models.pick("unknown") is None


@pytest.mark.parametrize(("data", "needle"), [
    ({"deployments": [{"name": "a", "provider": "bogus", "model": "m"}]}, "deployments[0].provider"),
    ({"deployments": [{"name": "a", "provider": "openai"}]}, "deployments[0].model: required"),
    ({"deployments": [{"name": "a", "provider": "openai", "model": "m", "api_key_env": "sk-live 123"}]},
     "api_key_env: expected the NAME"),
    ({"deployments": [{"name": "a", "provider": "openai", "model": "m", "timeout_s": float("inf")}]}, "timeout_s"),
    ({"deployments": [{"name": "a", "provider": "openai", "model": "m", "colour": 1}]}, "unknown field 'colour'"),
    ({"deployments": [{"name": "a", "provider": "echo", "model": "m"},
                      {"name": "a", "provider": "echo", "model": "n"}]}, "duplicate deployment"),
    ({"models": []}, "unknown key 'models'"),
])
def test_bad_model_lists_are_one_line_errors(data: Any, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        ModelList.parse(data, "synthhost.yaml")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_models_command_lists_price_and_context(wire: Wire, tmp_path: Path, monkeypatch: Any) -> None:
    from synthhost.cli import cli

    path = config(tmp_path, wire, {"name": "local", "provider": "openai", "model": "llama3.2",
                                   "base_url": "http://127.0.0.1:11434/v1", "price_as": "none"})
    for k, v in env_for(path).items():
        monkeypatch.setenv(k, v)
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    rows = {r["name"]: r for r in data["deployments"]}
    assert rows["claude"]["context_window"] == 200000 and rows["claude"]["input_usd_per_mtok"] == "3.000"
    assert rows["gem"]["context_window"] == 1048576
    assert rows["local"]["known"] is False and rows["local"]["context_window"] is None
    assert KEY not in result.output and rows["oai"]["key_set"] is True
    plain = CliRunner().invoke(cli, ["models"])
    assert plain.exit_code == 0 and "unknown" in plain.output and "claude" in plain.output


@pytest.mark.anyio
async def test_routing_falls_back_across_deployments_of_one_model(wire: Wire, make_host: Any, tmp_path: Path) -> None:
    """With the routing plugin on (it answers on_failure before the default recovery), a
    503 from one deployment moves the call to the model's other deployment."""
    import synthhost_routing

    backup = {"name": "oai-backup", "provider": "openai", "model": "gpt-4o-mini", "base_url": wire.url + "/backup",
              "api_key_env": "WIRE_OPENAI_KEY"}
    host = make_host(synthhost_routing, env=env_for(config(tmp_path, wire, backup)))
    async with host:
        host.flags.set(synthhost_routing.FLAG, True, workspace="acme")
        host.models.pick("gpt-4o-mini")  # the next pick is "oai-backup"
        wire.scripts["openai"].append(Answer(503, {"error": {"message": "upstream unavailable"}}))
        await host.complete(workspace="acme", model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        await host.writer.flush()
        with host.engine.connect() as conn:
            attrs = conn.execute(sa.text("SELECT attributes FROM spans WHERE kind = 'call'")).scalar_one()
    assert [s.path for s in wire.seen] == ["/backup/chat/completions", "/v1/chat/completions"]
    attrs = json.loads(attrs) if isinstance(attrs, str) else attrs
    [reroute] = attrs["route"]["reroutes"]
    assert reroute["from"]["provider"] == "oai-backup" and reroute["to"]["provider"] == "oai"
