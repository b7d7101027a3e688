"""Trace → plan: ids, tree, generation fields, errors, events (no SDK, no network)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from synthhost.trace import EventRecord, SpanRecord, Trace
from synthhost_langfuse.config import load_config
from synthhost_langfuse.mapping import (
    Observation,
    TracePlan,
    cost_details,
    plan_trace,
    span_id_for,
    trace_id_for,
    usage_details,
)
from synthhost_langfuse.redact import Redactor

MakeTrace = Callable[..., Trace]


def by_name(plan: TracePlan) -> dict[str, Observation]:
    return {o.name: o for o in plan.observations}


def test_langfuse_ids_derive_from_ours_and_are_stable(make_trace: MakeTrace) -> None:
    trace = make_trace()
    a, b = plan_trace(trace, Redactor()), plan_trace(trace, Redactor())
    assert a.trace_hex == trace.trace_id
    assert [o.span_id for o in a.observations] == [o.span_id for o in b.observations]
    root = a.observations[0]
    assert f"{root.span_id:016x}" == trace.run_id[:16]
    # Not a 32-hex id: a stable hash, never zero.
    assert trace_id_for("run-42") == trace_id_for("run-42") != 0
    taken: set[int] = set()
    first = span_id_for("ab" * 16, taken)
    assert span_id_for("ab" * 16, taken) != first  # a clash inside one trace is re-derived


def test_langfuse_tree_types_and_trace_attributes(make_trace: MakeTrace) -> None:
    plan = plan_trace(make_trace(), Redactor())
    obs = by_name(plan)
    assert [o.as_type for o in plan.observations] == ["agent", "span", "generation", "event"]
    assert obs["summarise"].parent is None
    assert obs["draft"].parent == obs["summarise"].key
    assert obs["openai/gpt-4o-mini"].parent == obs["draft"].key
    assert obs["policy_warning"].parent == obs["openai/gpt-4o-mini"].key  # under its call
    assert "run_started" not in obs  # lifecycle events repeat the trace
    assert plan.trace_name == "summarise" and plan.user_id == "u-1" and plan.session_id is None
    assert plan.tags == ["synthhost", "workspace:acme", "agent:summarise", "status:ok"]
    assert plan.metadata == {"run_id": plan.run_id, "workspace": "acme", "status": "ok",
                             "agent": "summarise", "org": "o-1"}
    root = obs["summarise"].fields
    assert root["input"] == {"topic": "pluggy"} and root["output"] == "done"
    assert root["metadata"]["run_id"] == plan.run_id and root["metadata"]["workspace"] == "acme"


def test_langfuse_times_come_from_the_trace(make_trace: MakeTrace) -> None:
    trace = make_trace()
    obs = by_name(plan_trace(trace, Redactor()))
    call = trace.spans[2]
    gen = obs["openai/gpt-4o-mini"]
    assert gen.start_ns == round(call.started_at * 1e9) and gen.end_ns == round((call.ended_at or 0) * 1e9)
    event = obs["policy_warning"]
    assert event.start_ns == event.end_ns == round(trace.events[1].created_at * 1e9)


def test_langfuse_generation_fields(make_trace: MakeTrace) -> None:
    gen = by_name(plan_trace(make_trace(), Redactor()))["openai/gpt-4o-mini"].fields
    assert gen["model"] == "gpt-4o-mini-2024-07-18"  # what the provider billed
    assert gen["model_parameters"] == {"temperature": 0.2, "max_tokens": 64, "stop": ["\n"],
                                       "response_format": "{'type': 'json'}"}
    assert gen["input"] == [{"role": "user", "content": "hi"}]
    assert gen["output"] == {"role": "assistant", "content": "hello"}
    assert gen["usage_details"] == {"input": 65, "input_cached_tokens": 30, "input_cache_creation": 5,
                                    "output": 40, "output_reasoning_tokens": 10, "total": 150}
    assert gen["cost_details"] == {"total": 0.00123}
    assert gen["metadata"]["request_model"] == "gpt-4o-mini"
    assert gen["metadata"]["attempts"] == 1 and "usage" not in gen["metadata"]
    assert "level" not in gen


def test_langfuse_usage_sums_match_our_totals() -> None:
    usage = {"input_tokens": 10, "output_tokens": 4}
    assert usage_details(usage) == {"input": 10, "output": 4, "total": 14}
    details = usage_details({"input_tokens": 100, "output_tokens": 50, "cache_read_tokens": 30,
                             "cache_write_tokens": 5, "reasoning_tokens": 10})
    assert details is not None
    # Langfuse adds up the keys containing input/output: the split must not double count.
    assert sum(v for k, v in details.items() if "input" in k) == 100
    assert sum(v for k, v in details.items() if "output" in k) == 50
    assert usage_details(None) is None


def test_langfuse_errors_carry_level_and_code(make_trace: MakeTrace) -> None:
    trace = make_trace(status="error", error_code="RATE_LIMITED", error_message="workspace over its limit")
    call = trace.spans[2]
    call.status, call.error_code, call.error_message = "error", "RATE_LIMITED", "workspace over its limit"
    call.attributes.pop("output")
    call.attributes.pop("usage")
    call.attributes.pop("cost_usd")
    trace.events.append(EventRecord(uuid.uuid4().hex, "rate_limited", "error",
                                    call.started_at, {"scope": "workspace", "code": "RATE_LIMITED"}, call.span_id))
    obs = by_name(plan_trace(trace, Redactor()))
    gen = obs["openai/gpt-4o-mini"].fields
    assert gen["level"] == "ERROR" and gen["status_message"] == "RATE_LIMITED: workspace over its limit"
    assert gen["metadata"]["error_code"] == "RATE_LIMITED"
    assert "usage_details" not in gen and "cost_details" not in gen and "output" not in gen
    root = obs["summarise"].fields
    assert root["level"] == "ERROR" and root["metadata"]["error_code"] == "RATE_LIMITED"
    event = obs["rate_limited"]
    assert event.as_type == "event" and event.fields["level"] == "ERROR"
    assert event.fields["metadata"]["scope"] == "workspace"
    assert obs["policy_warning"].fields["level"] == "WARNING"
    assert plan_trace(trace, Redactor()).tags[-1] == "error:RATE_LIMITED"


def test_langfuse_standalone_call_is_a_one_generation_trace() -> None:
    t0 = time.time()
    run_id, trace_id, call_id = (uuid.uuid4().hex for _ in range(3))
    call = SpanRecord(call_id, trace_id, run_id, "call", "echo/echo-1", t0, None, t0 + 0.01, "ok",
                      attributes={"model": "echo-1", "input": [{"role": "user", "content": "hi"}],
                                  "output": "echo: hi", "usage": {"input_tokens": 5, "output_tokens": 3}})
    trace = Trace(run_id, trace_id, "w1", "complete echo-1", t0, t0 + 0.01, "ok", spans=[call])
    plan = plan_trace(trace, Redactor())
    assert len(plan.observations) == 1
    root = plan.observations[0]
    assert root.as_type == "generation" and root.parent is None and root.fields["model"] == "echo-1"
    assert root.fields["usage_details"] == {"input": 5, "output": 3, "total": 8}
    assert root.fields["metadata"]["run_id"] == run_id


def test_langfuse_several_orphans_get_a_synthetic_root() -> None:
    t0 = time.time()
    run_id, trace_id = uuid.uuid4().hex, uuid.uuid4().hex
    spans = [SpanRecord(uuid.uuid4().hex, trace_id, run_id, "call", f"c{i}", t0 + i, None, t0 + i + 0.5, "ok")
             for i in range(2)]
    plan = plan_trace(Trace(run_id, trace_id, "w1", "batch", t0, t0 + 2, "ok", spans=spans), Redactor())
    root, *children = plan.observations
    assert root.key == run_id and root.as_type == "span"
    assert [c.parent for c in children] == [run_id, run_id]


def test_langfuse_secrets_are_scrubbed_and_fields_capped(make_trace: MakeTrace) -> None:
    env = {"OPENAI_API_KEY": "sk-proj-" + "a" * 40, "MY_SERVICE_TOKEN": "tok-123456789", "SHORT_KEY": "1"}
    trace = make_trace(input={"doc": "x" * 50_000, "api_key": "hunter22"})
    call = trace.spans[2]
    call.attributes["input"] = [{"role": "user", "content": f"use {env['OPENAI_API_KEY']} and tok-123456789"}]
    call.attributes["headers"] = {"Authorization": "Bearer abcdefghijklmnop"}
    call.status, call.error_code, call.error_message = "error", "PROVIDER_AUTH", "bad key sk-live-" + "b" * 30
    redactor = Redactor(env, max_chars=1000)
    obs = by_name(plan_trace(trace, redactor))
    gen = obs["openai/gpt-4o-mini"].fields
    assert gen["input"] == [{"role": "user", "content": "use [REDACTED] and [REDACTED]"}]
    assert gen["metadata"]["headers"] == {"Authorization": "[REDACTED]"}
    assert "sk-live" not in gen["status_message"]
    root_input = obs["summarise"].fields["input"]
    assert root_input["api_key"] == "[REDACTED]"
    assert len(root_input["doc"]) < 1100 and root_input["doc"].endswith("chars]")
    # The plan as a whole never contains the secret values.
    text = repr(plan_trace(trace, redactor))
    assert env["OPENAI_API_KEY"] not in text and "tok-123456789" not in text and "hunter22" not in text


def test_langfuse_observation_cap(make_trace: MakeTrace) -> None:
    trace = make_trace()
    for i in range(20):
        trace.events.append(EventRecord(uuid.uuid4().hex, f"note{i}", "success", trace.started_at + i * 0.01))
    plan = plan_trace(trace, Redactor(), max_observations=10)
    assert len(plan.observations) == 10 and plan.dropped == 14
    assert plan.observations[0].fields["metadata"]["dropped_observations"] == 14


def test_langfuse_config_from_env() -> None:
    assert load_config({})[0] is None
    assert "LANGFUSE_SECRET_KEY" in load_config({"LANGFUSE_PUBLIC_KEY": "pk"})[1]
    config, _ = load_config({"LANGFUSE_PUBLIC_KEY": "pk", "LANGFUSE_SECRET_KEY": "sk",
                             "LANGFUSE_HOST": "http://old", "LANGFUSE_BASE_URL": "http://new/"})
    assert config is not None and config.base_url == "http://new"
    assert config.endpoint == "http://new/api/public/otel/v1/traces"
    config, _ = load_config({"LANGFUSE_PUBLIC_KEY": "pk", "LANGFUSE_SECRET_KEY": "sk", "LANGFUSE_HOST": "http://old"})
    assert config is not None and config.base_url == "http://old"
    assert "'sk'" not in repr(config)
    assert load_config({"LANGFUSE_PUBLIC_KEY": "pk", "LANGFUSE_SECRET_KEY": "sk",
                        "LANGFUSE_TRACING_ENABLED": "false"})[0] is None


def test_langfuse_long_conversations_collapse_to_a_preview() -> None:
    redactor = Redactor(max_chars=100)
    messages = [{"role": "user", "content": "y" * 90} for _ in range(20)]
    capped = redactor.clean(messages)
    assert capped["truncated"] is True and len(capped["preview"]) == 400
    assert redactor.clean(messages[:2]) == messages[:2]


def test_langfuse_cost_split_follows_the_cost_plugin() -> None:
    figures = {"input_cost": "0.0010", "cache_read_cost": "0.0002", "cache_write_cost": "0.0001",
               "output_cost": "0.0020", "total_cost": "0.0030", "currency": "USD"}
    assert cost_details({"cost_usd": "0.0030", "cost": figures}) == {
        "total": 0.003, "input": 0.0007, "input_cached_tokens": 0.0002, "input_cache_creation": 0.0001,
        "output": 0.002}
    # Two priced attempts: the figures describe the last one only, so just the total.
    assert cost_details({"cost_usd": "0.0060", "cost": figures}) == {"total": 0.006}
    assert cost_details({"cost": figures}) is None
    assert cost_details({"cost_usd": "n/a"}) is None


def test_langfuse_cancelled_is_a_warning_not_an_error(make_trace: MakeTrace) -> None:
    """SIGTERM or Ctrl-C is not a failure of the model: the run and the call in flight are
    WARNING with the CANCELLED code, never ERROR."""
    trace = make_trace(status="cancelled", error_code="CANCELLED", error_message="run cancelled")
    call = trace.spans[2]
    call.status, call.error_code, call.error_message = "cancelled", "CANCELLED", "call cancelled"
    obs = by_name(plan_trace(trace, Redactor()))
    gen = obs["openai/gpt-4o-mini"].fields
    assert gen["level"] == "WARNING" and gen["status_message"] == "CANCELLED: call cancelled"
    root = obs["summarise"].fields
    assert root["level"] == "WARNING" and root["metadata"]["status"] == "cancelled"
