"""In-memory trace records: what ``on_trace`` receives, and what the trace store persists
as ``runs`` and ``spans`` rows.

A trace is one run (or one stand-alone ``Host.complete`` call): a root span of kind
``run``, a ``step`` span per agent step, a ``call`` span per model call (one per turn of a step
that uses tools) and a ``tool`` span per tool call, under its step. Times are
Unix seconds (float). Attributes are JSON-serialisable and never contain secrets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SpanKind = Literal["run", "step", "call", "tool"]
# ``cancelled``: stopped from outside (Ctrl-C, SIGTERM, a caller's timeout), not failed.
Status = Literal["ok", "error", "cancelled", "running"]


@dataclass(slots=True)
class SpanRecord:
    span_id: str
    trace_id: str
    run_id: str
    kind: SpanKind
    name: str
    started_at: float
    parent_id: str | None = None
    ended_at: float | None = None
    status: Status = "running"
    error_code: str | None = None
    error_message: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_ms(self) -> float | None:
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at) * 1000.0


@dataclass(slots=True)
class EventRecord:
    id: str
    event_type: str
    status: str
    created_at: float
    context: dict[str, Any] = field(default_factory=dict)
    span_id: str | None = None


@dataclass(slots=True)
class Trace:
    """A finished run, as passed to ``on_trace``."""

    run_id: str
    trace_id: str
    workspace: str
    name: str
    started_at: float
    ended_at: float
    status: Status
    agent: str | None = None
    user: str | None = None
    org: str | None = None
    input: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    error_code: str | None = None
    error_message: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    spans: list[SpanRecord] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)

    def root(self) -> SpanRecord | None:
        return next((s for s in self.spans if s.kind == "run"), None)

    def calls(self) -> list[SpanRecord]:
        return [s for s in self.spans if s.kind == "call"]


@dataclass(slots=True)
class StepResult:
    name: str
    status: Status
    output: str | None = None
    model: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    span_id: str | None = None


@dataclass(slots=True)
class RunResult:
    """What ``Host.run`` returns and ``synthhost run --json`` prints."""

    run_id: str
    trace_id: str
    workspace: str
    agent: str
    status: Status
    output: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    steps: list[StepResult] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    cost_usd: str | None = None
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "trace_id": self.trace_id,
            "workspace": self.workspace,
            "agent": self.agent,
            "status": self.status,
            "output": self.output,
            "outputs": self.outputs,
            "steps": [
                {
                    "name": s.name,
                    "status": s.status,
                    "output": s.output,
                    "model": s.model,
                    "error_code": s.error_code,
                    "error_message": s.error_message,
                    "span_id": s.span_id,
                }
                for s in self.steps
            ],
            "error_code": self.error_code,
            "error_message": self.error_message,
            "cost_usd": self.cost_usd,
            "duration_ms": round(self.duration_ms, 3),
        }
