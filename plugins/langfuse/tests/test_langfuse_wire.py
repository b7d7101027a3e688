"""The real Langfuse SDK against a loopback OTLP receiver: what arrives on the wire."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator

import pytest

from synthhost.trace import Trace
from synthhost_langfuse.config import LangfuseConfig, load_config
from synthhost_langfuse.mapping import plan_trace
from synthhost_langfuse.redact import Redactor
from synthhost_langfuse.sdk import LangfuseBackend
from synthhost_langfuse.testing import LangfuseReceiver

MakeTrace = Callable[..., Trace]


def config_for(env: dict[str, str]) -> LangfuseConfig:
    config, reason = load_config(env)
    assert config is not None, reason
    return config


@pytest.fixture
def backend(langfuse_env: dict[str, str]) -> Iterator[LangfuseBackend]:
    b = LangfuseBackend(config_for(langfuse_env))
    yield b
    b.shutdown(5)


def export(backend: LangfuseBackend, trace: Trace) -> bool:
    plan = plan_trace(trace, Redactor())
    return backend.export([plan])[trace.run_id].ok


def test_langfuse_wire_structure(backend: LangfuseBackend, receiver: LangfuseReceiver,
                                 langfuse_env: dict[str, str], make_trace: MakeTrace) -> None:
    trace = make_trace()
    assert export(backend, trace)  # returns only once the receiver answered

    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    pk, sk = langfuse_env["LANGFUSE_PUBLIC_KEY"], langfuse_env["LANGFUSE_SECRET_KEY"]
    assert request.path == "/api/public/otel/v1/traces"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(f"{pk}:{sk}".encode()).decode()
    assert request.headers["x-langfuse-ingestion-version"] == "4"
    assert request.headers["x-langfuse-public-key"] == pk
    assert request.headers["x-langfuse-sdk-name"] == "python"
    assert request.headers["content-type"] == "application/x-protobuf"
    assert request.headers["content-encoding"] == "gzip"

    spans = {s.name: s for s in request.spans}
    assert set(spans) == {"summarise", "draft", "openai/gpt-4o-mini", "policy_warning"}
    assert {s.trace_id for s in spans.values()} == {trace.trace_id}
    root, step, gen, event = (spans[n] for n in ("summarise", "draft", "openai/gpt-4o-mini", "policy_warning"))
    assert root.parent_id is None and root.span_id == trace.run_id[:16]
    assert step.parent_id == root.span_id and gen.parent_id == step.span_id and event.parent_id == gen.span_id
    assert (root.type, step.type, gen.type, event.type) == ("agent", "span", "generation", "event")
    assert root.attributes["langfuse.internal.is_app_root"] is True
    assert root.scope == "langfuse-sdk" and root.scope_attributes["public_key"] == pk
    assert root.resource["service.name"] == "synthhost"

    # Trace-level attributes travel on every span.
    for span in spans.values():
        assert span.attributes["langfuse.trace.name"] == "summarise"
        assert span.attributes["user.id"] == "u-1"
        assert span.attributes["langfuse.trace.tags"] == ["synthhost", "workspace:acme", "agent:summarise", "status:ok"]
        assert json.loads(span.attributes["langfuse.trace.metadata.workspace"]) == "acme"
        assert json.loads(span.attributes["langfuse.trace.metadata.run_id"]) == trace.run_id

    assert gen.attributes["langfuse.observation.model.name"] == "gpt-4o-mini-2024-07-18"
    assert gen.json("langfuse.observation.model.parameters")["temperature"] == 0.2
    assert gen.json("langfuse.observation.usage_details") == {
        "input": 65, "input_cached_tokens": 30, "input_cache_creation": 5,
        "output": 40, "output_reasoning_tokens": 10, "total": 150,
    }
    assert gen.json("langfuse.observation.cost_details") == {"total": 0.00123}
    assert gen.json("langfuse.observation.input") == [{"role": "user", "content": "hi"}]
    assert gen.json("langfuse.observation.output") == {"role": "assistant", "content": "hello"}
    assert root.json("langfuse.observation.input") == {"topic": "pluggy"}
    assert event.attributes["langfuse.observation.level"] == "WARNING"

    # The recorded times, not the export time.
    run_span, call_span = trace.spans[0], trace.spans[2]
    assert root.start_ns == round(run_span.started_at * 1e9) and root.end_ns == round((run_span.ended_at or 0) * 1e9)
    assert gen.start_ns == round(call_span.started_at * 1e9) and gen.end_ns == round((call_span.ended_at or 0) * 1e9)
    assert event.start_ns == event.end_ns == round(trace.events[1].created_at * 1e9)


def test_langfuse_wire_errors(backend: LangfuseBackend, receiver: LangfuseReceiver, make_trace: MakeTrace) -> None:
    trace = make_trace(status="error", error_code="PROVIDER_TIMEOUT", error_message="no answer in 30s")
    call = trace.spans[2]
    call.status, call.error_code, call.error_message = "error", "PROVIDER_TIMEOUT", "no answer in 30s"
    assert export(backend, trace)
    spans = {s.name: s for s in receiver.spans()}
    gen = spans["openai/gpt-4o-mini"]
    assert gen.status_code == 2 and gen.status_message == "PROVIDER_TIMEOUT: no answer in 30s"
    assert gen.attributes["langfuse.observation.level"] == "ERROR"
    assert json.loads(gen.attributes["langfuse.observation.metadata.error_code"]) == "PROVIDER_TIMEOUT"
    assert spans["summarise"].status_code == 2
    assert "error:PROVIDER_TIMEOUT" in spans["summarise"].attributes["langfuse.trace.tags"]


def test_langfuse_resend_reuses_ids(backend: LangfuseBackend, receiver: LangfuseReceiver,
                                    make_trace: MakeTrace) -> None:
    trace = make_trace()
    assert export(backend, trace) and export(backend, trace)
    first, second = ({(s.trace_id, s.span_id) for s in r.spans} for r in receiver.requests)
    assert first == second and len(first) == 4


@pytest.mark.parametrize(("status", "permanent"), [(500, False), (401, False), (503, False), (400, True)])
def test_langfuse_failures_are_observed(backend: LangfuseBackend, receiver: LangfuseReceiver,
                                        make_trace: MakeTrace, status: int, permanent: bool) -> None:
    receiver.fail_next(status, 5)  # more than the SDK retries within its 1 s deadline
    trace = make_trace()
    outcome = backend.export([plan_trace(trace, Redactor())])[trace.run_id]
    assert not outcome.ok and outcome.status == status and outcome.permanent is permanent
    assert f"HTTP {status}" in (outcome.error or "")
    receiver.mode, receiver._script = 200, []
    assert export(backend, trace)  # the endpoint is back: the same trace goes through
    assert trace.trace_id in receiver.trace_ids()


def test_langfuse_refused_connection(langfuse_env: dict[str, str], dead_url: str, make_trace: MakeTrace) -> None:
    b = LangfuseBackend(config_for({**langfuse_env, "LANGFUSE_BASE_URL": dead_url}))
    try:
        trace = make_trace()
        outcome = b.export([plan_trace(trace, Redactor())])[trace.run_id]
        assert not outcome.ok and outcome.status is None and "no response" in (outcome.error or "")
    finally:
        b.shutdown(5)


def test_langfuse_app_otlp_headers_are_not_forwarded(monkeypatch: pytest.MonkeyPatch, receiver: LangfuseReceiver,
                                                     langfuse_env: dict[str, str], make_trace: MakeTrace) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-honeycomb-team=app-collector-secret")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-app-trace-key=app-secret-2")
    b = LangfuseBackend(config_for(langfuse_env))
    try:
        assert export(b, make_trace())
    finally:
        b.shutdown(5)
    headers = receiver.requests[0].headers
    assert "x-honeycomb-team" not in headers and "x-app-trace-key" not in headers
    assert headers["x-langfuse-ingestion-version"] == "4"


def test_langfuse_client_is_not_shared_with_the_app(receiver: LangfuseReceiver, langfuse_env: dict[str, str],
                                                    make_trace: MakeTrace) -> None:
    """The SDK hands out one client per public key; the app's and ours stay apart."""
    from langfuse import Langfuse
    from langfuse._client.resource_manager import LangfuseResourceManager
    from opentelemetry.sdk.trace import TracerProvider

    with LangfuseReceiver() as app_receiver:
        app_client = Langfuse(public_key=langfuse_env["LANGFUSE_PUBLIC_KEY"],
                              secret_key=langfuse_env["LANGFUSE_SECRET_KEY"], base_url=app_receiver.url,
                              tracer_provider=TracerProvider(), timeout=1)
        app_manager = LangfuseResourceManager._instances[langfuse_env["LANGFUSE_PUBLIC_KEY"]]
        b = LangfuseBackend(config_for(langfuse_env))
        try:
            assert LangfuseResourceManager._instances[langfuse_env["LANGFUSE_PUBLIC_KEY"]] is app_manager
            trace = make_trace()
            assert export(b, trace)
            app_client.start_observation(name="app-span").end()
            app_client.flush()
        finally:
            b.shutdown(5)
            app_client.shutdown()
            LangfuseResourceManager._instances.pop(langfuse_env["LANGFUSE_PUBLIC_KEY"], None)
        assert trace.trace_id in receiver.trace_ids()
        assert trace.trace_id not in app_receiver.trace_ids()
        assert [s.name for s in app_receiver.spans()] == ["app-span"]
        assert "app-span" not in {s.name for s in receiver.spans()}
