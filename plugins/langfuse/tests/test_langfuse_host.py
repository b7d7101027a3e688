"""End to end through a real host (SQLite and PostgreSQL): flags, the outbox, sync mode,
outages, shutdown, inert mode."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

import synthhost_langfuse
from synthhost import Denied, hookimpl
from synthhost.agent import AgentSpec
from synthhost.call import Call
from synthhost.host import Host
from synthhost.outbox import queue_stats
from synthhost.trace import RunResult
from synthhost_langfuse.testing import LangfuseReceiver

MakeHost = Callable[..., Host]
USAGE = {"input_tokens": 120, "output_tokens": 40, "cache_read_tokens": 20, "reasoning_tokens": 8}
SPEC = AgentSpec(
    name="summarise", model="echo/gpt-4o-mini",
    steps=[{"name": "draft", "prompt": "Draft about {{ topic }}", "params": {"echo_usage": USAGE}},
           {"name": "final", "prompt": "Polish: {{ draft }}", "params": {"temperature": 0.1}}],
    inputs={"topic": {"default": "pluggy"}},
    retry={"max_attempts": 3, "initial_delay_s": 0, "max_delay_s": 0},
)


async def enabled_host(make_host: MakeHost, env: dict[str, str], *plugins: Any, sync: bool = False) -> Host:
    host = make_host(synthhost_langfuse, *plugins, env=env)
    await host.start()
    host.flags.set("enable_langfuse_export", True, workspace="w1")
    if sync:
        host.flags.set("enable_async_trace_export", False, workspace="w1")
    return host


def langfuse_queue(host: Host) -> dict[str, Any]:
    return queue_stats(host.engine, ["langfuse"])["langfuse"]


def times_sent(receiver: LangfuseReceiver, result: RunResult) -> int:
    """Accepted requests carrying this run's root span."""
    return sum(1 for r in receiver.accepted for s in r.spans
               if s.trace_id == result.trace_id and s.parent_id is None)


@pytest.mark.anyio
async def test_langfuse_async_run_goes_through_the_outbox(make_host: MakeHost, receiver: LangfuseReceiver,
                                                          langfuse_env: dict[str, str]) -> None:
    host = await enabled_host(make_host, langfuse_env)
    try:
        result = await host.run(SPEC, workspace="w1", inputs={"topic": "otel"}, user="u-7")
        assert result.ok
        assert receiver.wait_for(lambda: result.trace_id in receiver.trace_ids())
        spans = receiver.trace(result.trace_id)
        root = next(s for s in spans.values() if s.parent_id is None)
        assert root.name == "summarise" and root.type == "agent" and root.span_id == result.run_id[:16]
        assert root.attributes["user.id"] == "u-7"
        assert "workspace:w1" in root.attributes["langfuse.trace.tags"]
        steps = sorted((s for s in spans.values() if s.type == "span"), key=lambda s: s.start_ns)
        assert [s.name for s in steps] == ["draft", "final"] and {s.parent_id for s in steps} == {root.span_id}
        gens = sorted((s for s in spans.values() if s.type == "generation"), key=lambda s: s.start_ns)
        assert [g.parent_id for g in gens] == [steps[0].span_id, steps[1].span_id]
        assert gens[0].attributes["langfuse.observation.model.name"] == "gpt-4o-mini"
        assert gens[0].json("langfuse.observation.usage_details") == {
            "input": 100, "input_cached_tokens": 20, "output": 32, "output_reasoning_tokens": 8, "total": 160}
        assert gens[1].json("langfuse.observation.model.parameters")["temperature"] == 0.1
        assert gens[0].json("langfuse.observation.input")[0]["content"] == "Draft about otel"
        assert receiver.wait_for(lambda: langfuse_queue(host)["delivered"] == 1)
        ok, detail = synthhost_langfuse._health(host)
        assert ok and "1 traces accepted" in detail
    finally:
        await host.stop()


@pytest.mark.anyio
async def test_langfuse_flag_off_queues_nothing(make_host: MakeHost, receiver: LangfuseReceiver,
                                                langfuse_env: dict[str, str]) -> None:
    async with make_host(synthhost_langfuse, env=langfuse_env) as host:
        host.flags.set("enable_langfuse_export", True, workspace="other")
        result = await host.run(SPEC, workspace="w1")
        assert result.ok
        await host.writer.flush()
        assert sum(v for k, v in langfuse_queue(host).items() if isinstance(v, int)) == 0
    assert receiver.requests == []


@pytest.mark.anyio
async def test_langfuse_sync_mode_waits_and_sends_once(make_host: MakeHost, receiver: LangfuseReceiver,
                                                       langfuse_env: dict[str, str]) -> None:
    receiver.delay_s = 0.2
    host = await enabled_host(make_host, langfuse_env, sync=True)
    try:
        result = await host.run(SPEC, workspace="w1")
        assert times_sent(receiver, result) == 1  # accepted before the run reported done
        standalone = await host.complete(model="echo/gpt-4o-mini", messages="hello", workspace="w1")
        assert standalone.text
        assert len(receiver.accepted) == 2  # a stand-alone call is a one-generation trace
        assert [s.type for s in receiver.accepted[1].spans] == ["generation"]
        # Both outbox rows are marked delivered, not re-sent.
        assert receiver.wait_for(lambda: langfuse_queue(host)["delivered"] == 2)
    finally:
        await host.stop()
    assert times_sent(receiver, result) == 1
    assert len(receiver.accepted) == 2
    assert langfuse_queue(host)["pending"] == 0


@pytest.mark.anyio
async def test_langfuse_sync_mode_endpoint_down(make_host: MakeHost, langfuse_env: dict[str, str],
                                                dead_url: str) -> None:
    """The run reports done once the export definitively failed; the outbox delivers it later."""
    env = {**langfuse_env, "LANGFUSE_BASE_URL": dead_url}
    host = await enabled_host(make_host, env, sync=True)
    try:
        result = await host.run(SPEC, workspace="w1")
        assert result.ok
        assert host.stats["langfuse.failed"] >= 1
        with LangfuseReceiver(port=int(dead_url.rsplit(":", 1)[1])) as back:
            assert back.wait_for(lambda: result.trace_id in back.trace_ids(), timeout=20)
            assert back.wait_for(lambda: langfuse_queue(host)["delivered"] == 1)
    finally:
        await host.stop()


@pytest.mark.anyio
@pytest.mark.parametrize("outage", ["down", "503", "slow"])
async def test_langfuse_outage_then_recovery(make_host: MakeHost, langfuse_env: dict[str, str], dead_url: str,
                                             outage: str) -> None:
    """Runs never wait for Langfuse; after recovery every trace arrives at least once."""
    port = int(dead_url.rsplit(":", 1)[1])
    receiver = None if outage == "down" else LangfuseReceiver(port=port)
    if outage == "503" and receiver:
        receiver.mode = 503
    if outage == "slow" and receiver:
        receiver.delay_s = 1.5  # longer than the SDK's 1 s timeout
    host = await enabled_host(make_host, {**langfuse_env, "LANGFUSE_BASE_URL": dead_url})
    try:
        results = [await host.run(SPEC, workspace="w1", inputs={"topic": f"t{i}"}) for i in range(8)]
        assert all(r.ok for r in results)
        # Async mode: the trace hook hands back no awaitable, so nothing waits on Langfuse
        # (runs finish while it is down, refusing or slow; nothing is delivered yet).
        assert synthhost_langfuse.on_trace(_trace_of(host, results[0]), host) is None

        def failed_once() -> bool:
            return bool(host.stats["langfuse.failed"]) and langfuse_queue(host)["retrying"] > 0

        if receiver is None:
            receiver = LangfuseReceiver(port=port) if _wait(failed_once) else None
        else:
            assert _wait(failed_once)
            receiver.mode, receiver.delay_s = 200, 0.0
        assert receiver is not None
        wanted = {r.trace_id for r in results}
        assert receiver.wait_for(lambda: wanted <= receiver.trace_ids(), timeout=30)
        assert receiver.wait_for(lambda: langfuse_queue(host)["delivered"] == len(results), timeout=10)
        stats = langfuse_queue(host)
        assert stats["pending"] == stats["retrying"] == stats["parked"] == 0
        assert host.stats["outbox.langfuse.retried"] >= 1
        for r in results:
            assert times_sent(receiver, r) >= 1
    finally:
        await host.stop()
        if receiver is not None:
            receiver.close()


def _wait(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _trace_of(host: Host, result: RunResult) -> Any:
    from synthhost.traces import load_trace

    trace = load_trace(host.engine, result.run_id)
    assert trace is not None
    return trace


class PolicyLike:
    """A stand-in policy plugin: warns on every call, denies prompts containing "forbidden"."""

    __name__ = "policy_like"

    @hookimpl
    def pre_call(self, call: Call) -> None:
        call.emit("policy_warning", status="warning", rule="tone", message="be nice")
        if "forbidden" in call.request.prompt:
            call.emit("policy_denied", status="denied", code="POLICY_DENIED", rule="no-forbidden",
                      message="prompt mentions a forbidden topic")
            raise Denied("POLICY_DENIED", "prompt mentions a forbidden topic", rule="no-forbidden")


@pytest.mark.anyio
async def test_langfuse_denials_and_recoveries_are_events(make_host: MakeHost, receiver: LangfuseReceiver,
                                                          langfuse_env: dict[str, str]) -> None:
    spec = AgentSpec(
        name="guarded", model="echo/gpt-4o-mini",
        steps=[{"name": "flaky", "prompt": "ok", "params": {"echo_fail": ["rate_limit"]}},
               {"name": "bad", "prompt": "a forbidden thing"}],
        retry={"max_attempts": 3, "initial_delay_s": 0, "max_delay_s": 0},
    )
    host = await enabled_host(make_host, langfuse_env, PolicyLike(), sync=True)
    try:
        result = await host.run(spec, workspace="w1")
    finally:
        await host.stop()
    assert result.status == "error" and result.error_code == "POLICY_DENIED"
    spans = list(receiver.trace(result.trace_id).values())
    by_id = {s.span_id: s for s in spans}
    root = next(s for s in spans if s.parent_id is None)
    assert root.status_code == 2 and root.attributes["langfuse.observation.level"] == "ERROR"
    assert "error:POLICY_DENIED" in root.attributes["langfuse.trace.tags"]
    denied_gen = next(s for s in spans if s.type == "generation" and by_id[s.parent_id or ""].name == "bad")
    assert denied_gen.attributes["langfuse.observation.level"] == "ERROR"
    assert denied_gen.status_message.startswith("POLICY_DENIED: ")
    events = {s.name: s for s in spans if s.type == "event"}
    assert {"policy_warning", "policy_denied", "recovery"} <= set(events)
    assert events["policy_denied"].attributes["langfuse.observation.level"] == "WARNING"
    assert events["policy_denied"].parent_id == denied_gen.span_id  # under the call it stopped
    assert by_id[events["recovery"].parent_id or ""].type == "generation"
    assert json_attr(events["recovery"], "action") == "retry"


def json_attr(span: Any, key: str) -> Any:
    import json

    return json.loads(span.attributes[f"langfuse.observation.metadata.{key}"])


@pytest.mark.anyio
async def test_langfuse_shutdown_drains_and_stops_the_sdk(make_host: MakeHost, receiver: LangfuseReceiver,
                                                          langfuse_env: dict[str, str]) -> None:
    host = await enabled_host(make_host, langfuse_env)
    results = [await host.run(SPEC, workspace="w1") for _ in range(3)]
    exporter = synthhost_langfuse.exporter_for(host)
    await host.stop()  # the outbox sends what is due, then closes the exporter
    assert {r.trace_id for r in results} <= receiver.trace_ids()
    assert exporter is not None and exporter._backend is not None and exporter._backend._closed


@pytest.mark.anyio
async def test_langfuse_inert_without_keys(make_host: MakeHost, caplog: pytest.LogCaptureFixture) -> None:
    synthhost_langfuse._SAID_INERT.clear()
    env = {"LANGFUSE_PUBLIC_KEY": "", "LANGFUSE_SECRET_KEY": ""}
    with caplog.at_level(logging.INFO, logger="synthhost.langfuse"):
        async with make_host(synthhost_langfuse, env=env) as host:
            host.flags.set("enable_langfuse_export", True, workspace="w1")
            host.flags.set("enable_async_trace_export", False, workspace="w1")
            assert (await host.run(SPEC, workspace="w1")).ok
            assert (await host.run(SPEC, workspace="w1")).ok
            ok, detail = synthhost_langfuse._health(host)
            assert ok and detail.startswith("inert: LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY not set")
            assert synthhost_langfuse.exporter_for(host) is None
            await host.writer.flush()
            assert langfuse_queue(host)["pending"] == 0
    said = [r for r in caplog.records if "inert" in r.getMessage()]
    assert len(said) == 1


@pytest.mark.anyio
async def test_langfuse_restart_with_the_same_keys(make_host: MakeHost, receiver: LangfuseReceiver,
                                                   langfuse_env: dict[str, str]) -> None:
    """The SDK would hand a restarted host its first, already shut down client."""
    results = []
    for _ in range(2):
        host = await enabled_host(make_host, langfuse_env, sync=True)
        try:
            results.append(await host.run(SPEC, workspace="w1"))
        finally:
            await host.stop()
    assert {r.trace_id for r in results} <= receiver.trace_ids()


@pytest.mark.anyio
async def test_langfuse_async_standalone_call(make_host: MakeHost, receiver: LangfuseReceiver,
                                              langfuse_env: dict[str, str]) -> None:
    host = await enabled_host(make_host, langfuse_env)
    try:
        await host.complete(model="echo/gpt-4o-mini", messages="hello", workspace="w1")
        assert receiver.wait_for(lambda: len(receiver.accepted) == 1, timeout=3)
        assert [s.type for s in receiver.accepted[0].spans] == ["generation"]
    finally:
        await host.stop()


@pytest.mark.anyio
async def test_langfuse_many_traces_go_in_one_export_request(make_host: MakeHost, receiver: LangfuseReceiver,
                                                             langfuse_env: dict[str, str]) -> None:
    """The outbox hands the exporter up to 100 traces at a time (loaded in three queries)
    and they leave in one OTLP request, not one request per trace (issue 15)."""
    queuing = make_host(synthhost_langfuse, env={**langfuse_env, "SYNTHHOST_DELIVERY": "off"})
    async with queuing:
        queuing.flags.set("enable_langfuse_export", True, workspace="w1")
        results = [await queuing.run(SPEC, workspace="w1", inputs={"topic": f"t{i}"}) for i in range(40)]
        await queuing.writer.flush()
    assert receiver.requests == []  # nothing delivered yet: 40 traces wait in the outbox
    async with make_host(synthhost_langfuse, env=langfuse_env) as host:
        assert receiver.wait_for(lambda: langfuse_queue(host)["delivered"] == 40, timeout=60)
        lane = host._outbox.stats["langfuse"]
    assert receiver.trace_ids() == {r.trace_id for r in results}
    assert lane["batches"] == 1 and lane["delivered"] == 40  # one claim, one send() for all 40
    assert len(receiver.accepted) == 1  # 40 traces x 5 spans (run, 2 steps, 2 calls) in one request
    assert len(receiver.accepted[0].spans) == 40 * 5
