from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from synthhost.trace import EventRecord, SpanRecord, Trace
from synthhost_langfuse.testing import LangfuseReceiver


@pytest.fixture
def receiver() -> Iterator[LangfuseReceiver]:
    with LangfuseReceiver() as rx:
        yield rx


@pytest.fixture
def langfuse_env(receiver: LangfuseReceiver) -> dict[str, str]:
    """Fresh keys (the SDK keys its clients by public key) and a 1 s SDK timeout."""
    return {"LANGFUSE_BASE_URL": receiver.url, "LANGFUSE_TIMEOUT": "1", **receiver.keys(),
            "SYNTHHOST_LANGFUSE_RETRY_DELAY_S": "0.1", "SYNTHHOST_LANGFUSE_MAX_RETRY_DELAY_S": "0.3"}


@pytest.fixture
def dead_url() -> str:
    """A port nobody listens on: connections are refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def new_id() -> str:
    return uuid.uuid4().hex


def agent_trace(**overrides: Any) -> Trace:
    """A finished agent run by hand: run → step → call, plus a warning event."""
    t0 = time.time() - 10
    run_id, trace_id, step_id, call_id = new_id(), new_id(), new_id(), new_id()
    call_attrs = {
        "provider": "openai", "model": "gpt-4o-mini", "billed_model": "gpt-4o-mini-2024-07-18",
        "params": {"temperature": 0.2, "max_tokens": 64, "stop": ["\n"], "response_format": {"type": "json"}},
        "input": [{"role": "user", "content": "hi"}], "output": "hello",
        "usage": {"input_tokens": 100, "output_tokens": 50, "cache_read_tokens": 30,
                  "cache_write_tokens": 5, "reasoning_tokens": 10, "total_tokens": 150},
        "cost_usd": "0.00123", "attempts": 1, "finish_reason": "stop",
    }
    values: dict[str, Any] = {
        "run_id": run_id, "trace_id": trace_id, "workspace": "acme", "name": "summarise",
        "started_at": t0, "ended_at": t0 + 3, "status": "ok", "agent": "summarise", "user": "u-1",
        "org": "o-1", "input": {"topic": "pluggy"}, "output": "done",
        "spans": [
            SpanRecord(run_id, trace_id, run_id, "run", "summarise", t0, None, t0 + 3, "ok"),
            SpanRecord(step_id, trace_id, run_id, "step", "draft", t0 + 0.1, run_id, t0 + 2.9, "ok"),
            SpanRecord(call_id, trace_id, run_id, "call", "openai/gpt-4o-mini", t0 + 0.2, step_id, t0 + 2.8,
                       "ok", attributes=call_attrs),
        ],
        "events": [
            EventRecord(new_id(), "run_started", "success", t0, {}, run_id),
            EventRecord(new_id(), "policy_warning", "warning", t0 + 1, {"rule": "r1", "message": "careful"},
                        call_id),
        ],
    }
    values.update(overrides)
    return Trace(**values)


@pytest.fixture
def make_trace() -> Callable[..., Trace]:
    return agent_trace
