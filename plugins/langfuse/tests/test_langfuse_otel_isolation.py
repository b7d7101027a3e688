"""The embedding app's OpenTelemetry setup and Langfuse's stay apart, both ways."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

import synthhost_langfuse
from synthhost.agent import AgentSpec
from synthhost.host import Host
from synthhost_langfuse.testing import LangfuseReceiver

SPEC = AgentSpec(name="isolated", model="echo/gpt-4o-mini",
                 steps=[{"name": "only", "prompt": "hello"}])


@pytest.fixture
def db_url(tmp_path: Path) -> str:  # storage is not what this module tests: SQLite only
    return f"sqlite:///{tmp_path / 'synthhost.db'}"


@pytest.fixture
def fresh_otel_globals() -> Iterator[None]:
    """The global provider can be set once per process: give each test a clean slate
    (what opentelemetry-test-utils' ``reset_trace_globals`` does)."""
    saved = (trace_api._TRACER_PROVIDER_SET_ONCE, trace_api._TRACER_PROVIDER)
    trace_api._TRACER_PROVIDER_SET_ONCE = Once()
    trace_api._TRACER_PROVIDER = None
    yield
    trace_api._TRACER_PROVIDER_SET_ONCE, trace_api._TRACER_PROVIDER = saved


def app_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.mark.anyio
async def test_langfuse_app_provider_first(fresh_otel_globals: None, make_host: Callable[..., Host],
                                           receiver: LangfuseReceiver, langfuse_env: dict[str, str]) -> None:
    provider, app_spans = app_provider()
    trace_api.set_tracer_provider(provider)
    tracer = trace_api.get_tracer("the-app")

    async with make_host(synthhost_langfuse, env=langfuse_env) as host:
        host.flags.set("enable_langfuse_export", True, workspace="w1")
        host.flags.set("enable_async_trace_export", False, workspace="w1")  # export inside the app's span
        # gen_ai.* attributes are what Langfuse's default filter would pick up from a shared provider.
        with tracer.start_as_current_span("app-request", attributes={"gen_ai.system": "openai"}) as outer:
            result = await host.run(SPEC, workspace="w1")
            await host.complete(model="echo/gpt-4o-mini", messages="hi", workspace="w1")
            with tracer.start_as_current_span("app-after"):
                pass

    assert trace_api.get_tracer_provider() is provider  # nobody replaced the app's provider
    app_finished = app_spans.get_finished_spans()
    assert [s.name for s in app_finished] == ["app-after", "app-request"]
    assert all(s.instrumentation_scope is not None and s.instrumentation_scope.name == "the-app" for s in app_finished)
    after = app_finished[0]
    assert after.parent is not None and after.parent.span_id == outer.get_span_context().span_id

    received = receiver.spans()
    assert received and not {"app-request", "app-after"} & {s.name for s in received}
    app_trace_id = f"{outer.get_span_context().trace_id:032x}"
    assert app_trace_id not in {s.trace_id for s in received}
    run_spans = receiver.trace(result.trace_id)
    roots = [s for s in run_spans.values() if s.parent_id is None]
    assert len(roots) == 1 and roots[0].name == "isolated"  # not a child of the app's span
    assert all(s.scope == "langfuse-sdk" for s in received)


@pytest.mark.anyio
async def test_langfuse_first_then_app_provider(fresh_otel_globals: None, make_host: Callable[..., Host],
                                                receiver: LangfuseReceiver, langfuse_env: dict[str, str]) -> None:
    async with make_host(synthhost_langfuse, env=langfuse_env) as host:
        host.flags.set("enable_langfuse_export", True, workspace="w1")
        host.flags.set("enable_async_trace_export", False, workspace="w1")
        first = await host.run(SPEC, workspace="w1")  # the SDK is up before the app's OTel
        assert isinstance(trace_api.get_tracer_provider(), trace_api.ProxyTracerProvider)

        provider, app_spans = app_provider()
        trace_api.set_tracer_provider(provider)  # not refused: Langfuse installed no global provider
        assert trace_api.get_tracer_provider() is provider
        with trace_api.get_tracer("the-app").start_as_current_span("app-request", attributes={"gen_ai.system": "x"}):
            second = await host.run(SPEC, workspace="w1")

    assert [s.name for s in app_spans.get_finished_spans()] == ["app-request"]
    assert {first.trace_id, second.trace_id} <= receiver.trace_ids()
    assert "app-request" not in {s.name for s in receiver.spans()}
