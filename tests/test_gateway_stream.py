"""``stream: true`` through ``synthhost serve`` really streams: the provider's deltas are
relayed as they arrive (proved without timing: the provider waits, after its first delta,
for the client to have received it), output guardrails hold the stream for their
workspace only, denials are HTTP statuses before any stream starts, a mid-stream
failure is an SSE ``error`` event, and a client that leaves stops the provider while
the call is still recorded. The official ``openai`` SDK is the client (sync and async);
storage is asserted on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import openai
import pytest
import sqlalchemy as sa

import synthhost_cost
import synthhost_guardrails
import synthhost_policy
import synthhost_ratelimit
from synthhost import hookimpl
from synthhost.call import Response, StreamDelta, ToolCallRequest, Usage
from synthhost.errors import ErrorCode, ProviderError
from synthhost.gateway.keys import create_key
from synthhost.host import Host
from synthhost_ratelimit.store import set_limit
from tests.gateway_server import serving

# The SDK's read timeout: a gateway that buffered would never send delta 1, the provider
# would wait for ever, and the test fails on this timeout instead of hanging.
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
WAIT_S = 30.0
USAGE = Usage(input_tokens=11, output_tokens=7)
COST_FLAG = "track_model_costs"


class Gated:
    """A streaming provider that sends its first delta, then waits until the test says
    the client has received it (``release``), then sends the rest. ``closed`` is set
    when the call was stopped (cancelled) while waiting. ``reply`` in the params is the
    answer (its first word is delta 1); ``mode``: ``fail`` raises after delta 1,
    ``tools`` answers with a tool call."""

    __name__ = "acme_gated"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.closed = threading.Event()
        self.calls = 0
        self.streamed_calls = 0

    @hookimpl
    def register_providers(self, register: Any) -> None:
        register("gated", lambda host: self)

    async def complete(self, request: Any, *, call: Any) -> Response:
        self.calls += 1
        reply = str(request.params.get("reply", "one two three"))
        mode = request.params.get("mode", "ok")
        first, _, rest = reply.partition(" ")
        tool_calls = [ToolCallRequest("call_1", "lookup", '{"q": "weather"}')] if mode == "tools" else []
        if call.on_delta is None:  # held: asked without streaming
            return Response(text=reply, model=request.model, provider="gated", usage=USAGE, tool_calls=tool_calls,
                            finish_reason="tool_calls" if tool_calls else "stop")
        self.streamed_calls += 1
        call.on_delta(StreamDelta(text=first + " "))
        try:
            while not self.release.is_set():  # an async wait the call's cancellation can stop
                await anyio.sleep(0.005)
        except BaseException:
            self.closed.set()
            raise
        if mode == "fail":
            raise ProviderError("gated: upstream connection reset", code=ErrorCode.PROVIDER_ERROR, retryable=True)
        if rest:
            call.on_delta(StreamDelta(text=rest))
        for i, tc in enumerate(tool_calls):
            call.on_delta(StreamDelta(index=i, id=tc.id, name=tc.name, arguments=tc.arguments[:5]))
            call.on_delta(StreamDelta(index=i, arguments=tc.arguments[5:]))
        return Response(text=first + " " + rest if rest else first + " ", model=request.model, provider="gated",
                        usage=USAGE, tool_calls=tool_calls, finish_reason="tool_calls" if tool_calls else "stop")


@pytest.fixture
def gated() -> Iterator[Gated]:
    provider = Gated()
    yield provider
    provider.release.set()  # never leave a provider waiting after a failed test


@pytest.fixture
def served(make_host: Any, gated: Gated) -> Iterator[tuple[Host, str]]:
    host = make_host(gated, synthhost_cost, synthhost_guardrails)
    with serving(host) as url:
        yield host, url


_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def sdk(url: str, key: str) -> openai.OpenAI:
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT)
    _clients.append(client)
    return client


def messages(text: str = "hi") -> Any:
    return [{"role": "user", "content": text}]


def rows(host: Host, sql: str, **params: Any) -> list[Any]:
    host.wait_for_events()
    with host.engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params).mappings())


def wait_for_run(host: Host, workspace: str, status: str) -> dict[str, Any]:
    """The workspace's one run once it has reached ``status`` (its rows are written
    after the response ended; the deadline only bounds a broken build)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = rows(host, "SELECT * FROM runs WHERE workspace_id = :ws", ws=workspace)
        if found and found[0]["status"] == status:
            assert len(found) == 1
            return dict(found[0])
        assert time.monotonic() < deadline, f"no {status} run in {workspace} after {WAIT_S} s: {found}"
        time.sleep(0.02)


def attributes(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value)


def metric_count(url: str, status: str) -> float:
    text = httpx.get(url + "/metrics", timeout=TIMEOUT).text  # reads the database: slow under load
    for line in text.splitlines():
        if (line.startswith("synthhost_http_requests_total{") and 'route="/v1/chat/completions"' in line
                and f'status="{status}"' in line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- relay ----------------------------------------------------------------------------------


def test_deltas_are_relayed_as_they_arrive_with_the_sync_sdk(served: tuple[Host, str], gated: Gated) -> None:
    host, url = served
    host.flags.set(COST_FLAG, True, workspace="live")
    key, _ = create_key(host.engine, "live")
    stream = sdk(url, key).chat.completions.create(
        model="gated/m", messages=messages(), stream=True, stream_options={"include_usage": True})
    chunks = iter(stream)
    first = next(chunks)
    # Delta 1 is here while the provider is still waiting: the gateway relayed it.
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == "one "
    assert not gated.release.is_set()
    # The time-to-first-byte metric has seen this stream already (status 200), mid-call.
    assert metric_count(url, "200") == 1
    gated.release.set()
    rest = list(chunks)
    content = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
    assert content == "one two three"
    assert [c.choices[0].finish_reason for c in rest if c.choices and c.choices[0].finish_reason] == ["stop"]
    last = rest[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (11, 7, 18)
    # The cost row: written once, the same tokens the usage chunk reported.
    run = wait_for_run(host, "live", "ok")
    cost = rows(host, "SELECT * FROM model_cost_logs WHERE workspace_id = 'live'")
    assert [(c["status"], c["input_tokens"], c["output_tokens"], c["run_id"]) for c in cost] == [
        ("ok", 11, 7, run["id"])]
    span = rows(host, "SELECT * FROM spans WHERE run_id = :r", r=run["id"])
    assert len(span) == 1 and attributes(span[0]["attributes"])["usage"]["total_tokens"] == 18
    assert attributes(span[0]["attributes"])["output"] == "one two three"
    assert gated.calls == gated.streamed_calls == 1


def test_a_streamed_call_is_recorded_exactly_as_a_non_streamed_one(served: tuple[Host, str]) -> None:
    host, url = served
    host.flags.set(COST_FLAG, True, workspace="a")
    host.flags.set(COST_FLAG, True, workspace="b")
    plain, _ = create_key(host.engine, "a")
    streaming, _ = create_key(host.engine, "b")
    text = "the same answer, streamed word by word or sent whole"
    reply = sdk(url, plain).chat.completions.create(model="echo/gpt-4o-mini", messages=messages("same"),
                                                    extra_body={"echo_reply": text})
    chunks = list(sdk(url, streaming).chat.completions.create(
        model="echo/gpt-4o-mini", messages=messages("same"), stream=True, stream_options={"include_usage": True},
        extra_body={"echo_reply": text}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert reply.usage is not None and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == reply.usage.model_dump()
    recorded = []
    for ws in ("a", "b"):
        run = wait_for_run(host, ws, "ok")
        cost = rows(host, "SELECT status, input_tokens, output_tokens, total_cost, priced FROM model_cost_logs "
                          "WHERE run_id = :r", r=run["id"])
        assert len(cost) == 1
        span = attributes(rows(host, "SELECT attributes FROM spans WHERE run_id = :r", r=run["id"])[0]["attributes"])
        # What the exporters (Langfuse, RudderStack) are sent comes from this event.
        events = rows(host, "SELECT status, context FROM event_logs WHERE run_id = :r "
                            "AND event_type = 'run_finished'", r=run["id"])
        finished = attributes(events[0]["context"])
        recorded.append((dict(cost[0]), span["usage"], span["output"], attributes(run["attributes"]),
                         events[0]["status"], {k: finished[k] for k in ("tokens", "cost_usd", "error_code")}))
    assert recorded[0] == recorded[1]
    assert recorded[0][0]["priced"] and recorded[0][0]["total_cost"] > 0


@pytest.mark.anyio
async def test_deltas_are_relayed_as_they_arrive_with_the_async_sdk(served: tuple[Host, str], gated: Gated) -> None:
    host, url = served
    key, _ = create_key(host.engine, "live")
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT) as client:
        stream = await client.chat.completions.create(
            model="gated/m", messages=messages(), stream=True,
            extra_body={"mode": "tools", "reply": "checking"})
        received: list[Any] = []
        async for chunk in stream:
            received.append(chunk)
            if len(received) == 1:
                assert chunk.choices[0].delta.content == "checking "
                gated.release.set()  # only now may the provider go on
    tool_deltas = [tc for c in received if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert tool_deltas[0].id == "call_1" and tool_deltas[0].function is not None
    assert tool_deltas[0].function.name == "lookup"
    assert "".join((tc.function.arguments or "") if tc.function else "" for tc in tool_deltas) == '{"q": "weather"}'
    assert [c.choices[0].finish_reason for c in received if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"]
    assert all(c.usage is None for c in received)  # no include_usage: no usage chunk


# -- held streams ---------------------------------------------------------------------------


def test_an_output_guardrail_holds_the_stream_for_its_workspace_only(served: tuple[Host, str],
                                                                     gated: Gated) -> None:
    host, url = served
    synthhost_guardrails.apply_guards(host, json.dumps(
        {"output": [{"validator": "ban_list", "on_fail": "exception", "args": {"words": ["zebra"]}}]}),
        workspace="held")
    host.flags.set(synthhost_guardrails.FLAG, True, workspace="held")
    host.flags.set(COST_FLAG, True, workspace="held")
    held, _ = create_key(host.engine, "held")
    # A violating answer: 403 with the guardrail's code, no chunk sent (no 200 stream).
    with httpx.stream("POST", url + "/v1/chat/completions", headers={"Authorization": f"Bearer {held}"},
                      json={"model": "gated/m", "messages": messages(), "stream": True,
                            "reply": "a zebra crossing"}) as r:
        body = r.read()
    assert r.status_code == 403 and r.headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "GUARDRAIL_VIOLATION" and b"data:" not in body
    # The provider was asked without streaming; the rejected answer was still costed.
    assert (gated.calls, gated.streamed_calls) == (1, 0)
    run = wait_for_run(host, "held", "error")
    cost = rows(host, "SELECT * FROM model_cost_logs WHERE run_id = :r", r=run["id"])
    assert [(c["status"], c["output_tokens"]) for c in cost] == [("ok", 7)]  # costed before the guard ran
    span = attributes(rows(host, "SELECT attributes FROM spans WHERE run_id = :r", r=run["id"])[0]["attributes"])
    assert span["stream_held_by"] == "guardrails"

    # A passing answer: the checked answer, as chunks, then usage and [DONE].
    stream = sdk(url, held).chat.completions.create(
        model="gated/m", messages=messages(), stream=True, stream_options={"include_usage": True},
        extra_body={"reply": "a horse crossing"})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a horse crossing"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 18
    assert (gated.calls, gated.streamed_calls) == (2, 0)

    # Another workspace (guardrails off for it) streams live: delta 1 before the release.
    live, _ = create_key(host.engine, "live")
    live_chunks = iter(sdk(url, live).chat.completions.create(model="gated/m", messages=messages(), stream=True))
    assert next(live_chunks).choices[0].delta.content == "one "
    gated.release.set()
    assert "".join(c.choices[0].delta.content or "" for c in live_chunks if c.choices) == "two three"
    assert gated.streamed_calls == 1


def test_a_guard_set_without_output_validators_streams_live(served: tuple[Host, str], gated: Gated) -> None:
    host, url = served
    synthhost_guardrails.apply_guards(host, json.dumps(
        {"input": [{"validator": "ban_list", "on_fail": "exception", "args": {"words": ["zebra"]}}]}),
        workspace="inputs")
    host.flags.set(synthhost_guardrails.FLAG, True, workspace="inputs")
    key, _ = create_key(host.engine, "inputs")
    client = sdk(url, key)
    with pytest.raises(openai.PermissionDeniedError) as info:  # input check: before any stream
        client.chat.completions.create(model="gated/m", messages=messages("a zebra"), stream=True)
    assert info.value.status_code == 403 and gated.calls == 0
    chunks = iter(client.chat.completions.create(model="gated/m", messages=messages(), stream=True))
    assert next(chunks).choices[0].delta.content == "one "
    gated.release.set()
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


class Crashing:
    """A plugin whose ``holds_stream`` crashes: the stream is held (the safe side)."""

    __name__ = "acme_crashing"

    @hookimpl
    def holds_stream(self, call: Any) -> bool:
        raise RuntimeError("boom")


def test_a_crashing_holds_stream_holds_and_is_a_plugin_error(make_host: Any, gated: Gated) -> None:
    host = make_host(gated, Crashing())
    with serving(host) as url:
        key, _ = create_key(host.engine, "ws")
        chunks = list(sdk(url, key).chat.completions.create(model="gated/m", messages=messages(), stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
        assert (gated.calls, gated.streamed_calls) == (1, 0)
        assert host.stats["plugin_errors.acme_crashing"] == 1


# -- denials before the stream -----------------------------------------------------------------


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix


def test_rate_limited_and_policy_denied_streams_are_429_and_403(make_host: Any, redis_url: str, prefix: str,
                                                               gated: Gated) -> None:
    host = make_host(gated, synthhost_ratelimit, synthhost_policy,
                     env={"REDIS_URL": redis_url, "SYNTHHOST_RATELIMIT_PREFIX": prefix})
    gated.release.set()
    with serving(host) as url:
        host.flags.set("enable_rate_limiting", True, workspace="rl")
        set_limit(host.engine, "rl", "workspace", requests=1, window_s=60)
        refresher = synthhost_ratelimit.state(host).refresher
        assert refresher is not None
        refresher.reload()
        key, _ = create_key(host.engine, "rl")
        client = sdk(url, key)
        assert list(client.chat.completions.create(model="gated/m", messages=messages(), stream=True))
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model="gated/m", messages=messages(), stream=True)
        assert limited.value.status_code == 429 and limited.value.response.headers["retry-after"] == "60"
        assert limited.value.response.headers["content-type"] == "application/json"
        body: Any = limited.value.body
        assert body["code"] == "RATE_LIMITED"

        admin, _ = create_key(host.engine, "pol", "admin")
        block = {"rules": [{"name": "no-forbidden", "when": 'request.prompt.contains("forbidden")',
                            "actions": [{"type": "block", "message": "not here"}]}]}
        r = httpx.put(url + "/v1/admin/policies/guard", headers={"Authorization": f"Bearer {admin}"}, json=block)
        assert r.status_code == 200, r.text
        host.flags.set("enable_policy_engine", True, workspace="pol")
        with pytest.raises(openai.PermissionDeniedError) as denied:
            sdk(url, admin).chat.completions.create(model="gated/m", messages=messages("forbidden"), stream=True)
        assert denied.value.status_code == 403
        body = denied.value.body
        assert body["code"] == "POLICY_DENIED"
        assert gated.calls == 1  # neither denial reached the provider
        # Observed with their real statuses (the first byte of a stream is its status).
        assert (metric_count(url, "429"), metric_count(url, "403"), metric_count(url, "200")) == (1, 1, 1)


def test_a_provider_failure_before_the_first_delta_is_its_status(served: tuple[Host, str]) -> None:
    host, url = served
    key, _ = create_key(host.engine, "ws")
    with pytest.raises(openai.APIStatusError) as info:
        sdk(url, key).chat.completions.create(model="echo/m", messages=messages(), stream=True,
                                              extra_body={"echo_fail": ["timeout"] * 3})
    assert info.value.status_code == 504
    body: Any = info.value.body
    assert body["code"] == "PROVIDER_TIMEOUT"


# -- failures and disconnects mid-stream -----------------------------------------------------------


def test_a_mid_stream_provider_failure_is_an_sse_error_event(served: tuple[Host, str], gated: Gated) -> None:
    host, url = served
    host.flags.set(COST_FLAG, True, workspace="ws")
    key, _ = create_key(host.engine, "ws")
    stream = sdk(url, key).chat.completions.create(model="gated/m", messages=messages(), stream=True,
                                                   extra_body={"mode": "fail"})
    chunks = iter(stream)
    assert next(chunks).choices[0].delta.content == "one "
    gated.release.set()
    with pytest.raises(openai.APIError) as info:
        next(chunks)
    body: Any = info.value.body
    assert body["code"] == "PROVIDER_ERROR" and body["type"] == "api_error"
    assert "upstream connection reset" in body["message"]
    # Retryable, but the caller had part of the answer: not tried again (no repeated text).
    assert gated.calls == 1
    run = wait_for_run(host, "ws", "error")
    span = attributes(rows(host, "SELECT attributes FROM spans WHERE run_id = :r", r=run["id"])[0]["attributes"])
    assert span["output"] == "one " and span["usage_estimated"] is True
    assert span["recovery_refused"] == "the answer was already streaming"
    cost = rows(host, "SELECT * FROM model_cost_logs WHERE run_id = :r", r=run["id"])
    assert [(c["status"], c["error_code"], c["output_tokens"]) for c in cost] == [("failed", "PROVIDER_ERROR", 1)]


def test_the_raw_error_event_and_no_done(served: tuple[Host, str], gated: Gated) -> None:
    host, url = served
    key, _ = create_key(host.engine, "ws")
    with httpx.stream("POST", url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "gated/m", "messages": messages(), "stream": True, "mode": "fail"},
                      timeout=TIMEOUT) as r:
        lines = r.iter_lines()
        assert r.status_code == 200
        assert next(lines).startswith("data: ")
        gated.release.set()
        rest = [line for line in lines if line]
    assert rest[0] == "event: error"
    assert json.loads(rest[1].removeprefix("data: "))["error"]["code"] == "PROVIDER_ERROR"
    assert "data: [DONE]" not in rest


def test_a_client_disconnect_stops_the_provider_and_records_the_call(served: tuple[Host, str],
                                                                     gated: Gated) -> None:
    host, url = served
    host.flags.set(COST_FLAG, True, workspace="gone")
    key, _ = create_key(host.engine, "gone")
    with httpx.stream("POST", url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "gated/m", "messages": messages(), "stream": True}, timeout=TIMEOUT) as r:
        assert r.status_code == 200
        first = next(r.iter_lines())
        assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["content"] == "one "
    # The client has gone, the provider never released: the gateway stopped it.
    assert gated.closed.wait(WAIT_S), "the provider's stream was not closed after the client left"
    run = wait_for_run(host, "gone", "cancelled")
    assert run["error_code"] == "CANCELLED"
    span = attributes(rows(host, "SELECT attributes FROM spans WHERE run_id = :r", r=run["id"])[0]["attributes"])
    assert span["output"] == "one " and span["usage_estimated"] is True
    cost = rows(host, "SELECT * FROM model_cost_logs WHERE run_id = :r", r=run["id"])
    # Billed for what was produced (estimated: the provider reports usage at the end).
    assert [(c["status"], c["error_code"], c["input_tokens"], c["output_tokens"]) for c in cost] == [
        ("failed", "CANCELLED", 5, 1)]
    assert gated.calls == 1


class Holding:
    """A plugin that holds every stream of workspace ``held`` (and only there)."""

    __name__ = "acme_holding"

    @hookimpl
    def holds_stream(self, call: Any) -> bool:
        return bool(call.workspace == "held")


@pytest.mark.anyio
async def test_host_stream_honours_holds_stream(make_host: Any, gated: Gated) -> None:
    gated.release.set()
    async with make_host(gated, Holding()) as host:
        async with host.stream(model="gated/m", messages="hi", workspace="held") as held:
            assert [d async for d in held] == []
        assert held.response is not None and held.response.text == "one two three"
        async with host.stream(model="gated/m", messages="hi", workspace="live") as live:
            assert [d.text async for d in live] == ["one ", "two three"]
    assert (gated.calls, gated.streamed_calls) == (2, 1)
