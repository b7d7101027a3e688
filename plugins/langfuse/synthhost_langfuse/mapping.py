"""Trace → Langfuse: a pure translation into a :class:`TracePlan` (no SDK, no I/O).

The plan says which observations to create, with which ids, parents, times and
fields; :mod:`synthhost_langfuse.sdk` replays it through the real SDK.

Mapping (documented in the plugin README):

- run → the Langfuse trace, whose root observation is the ``run`` span (type
  ``agent`` for agent runs, ``span`` otherwise). A stand-alone ``Host.complete`` trace
  has no run span: its single call becomes the root (a one-generation trace).
- trace attributes: name = run name; ``user_id`` = the run's user; ``session_id`` =
  ``attributes["session_id"]`` when the caller set one (never the workspace: a session
  groups one conversation, a workspace would merge every run of a tenant into one
  session); the workspace is a tag ``workspace:<name>`` and trace metadata, so
  Langfuse filters and dashboards can slice by tenant.
- step → ``span``; call → ``generation`` (model, parameters, input, output, usage,
  cost); error → level ``ERROR`` + status message ``CODE: message`` (OTel status ERROR).
- events (denials, recoveries, warnings, plugin errors...) → ``event`` observations
  under the span they belong to.
- ids: the Langfuse trace id is our 32-hex trace id; an observation id is the first
  16 hex digits of our span/event id. Re-sending a trace therefore re-creates the
  same ids, which Langfuse upserts instead of duplicating.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from synthhost.trace import EventRecord, SpanRecord, Trace
from synthhost_langfuse.redact import Redactor

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
PROPAGATED_MAX = 200  # the SDK drops propagated values (name, ids, tags, metadata) over this

# Events that would only repeat what the trace already says.
SKIPPED_EVENTS = frozenset({"run_started", "run_finished", "run_failed"})
# Call-span attributes mapped to generation fields (everything else goes to metadata).
_GENERATION_KEYS = frozenset({"input", "output", "usage", "params", "model", "billed_model", "cost_usd"})


@dataclass(slots=True)
class Observation:
    key: str  # our span/event id (what children point at)
    span_id: int  # the OTel span id
    parent: str | None  # key of the parent observation; None for the root
    as_type: str  # agent | span | generation | event
    name: str
    start_ns: int
    end_ns: int
    fields: dict[str, Any] = field(default_factory=dict)  # SDK keyword arguments


@dataclass(slots=True)
class TracePlan:
    trace_id: int
    run_id: str
    workspace: str
    trace_name: str
    user_id: str | None
    session_id: str | None
    tags: list[str]
    metadata: dict[str, str]
    observations: list[Observation]  # parents before children; the root first
    dropped: int = 0

    @property
    def trace_hex(self) -> str:
        return f"{self.trace_id:032x}"

    @property
    def span_ids(self) -> frozenset[int]:
        return frozenset(o.span_id for o in self.observations)


# -- ids and times -------------------------------------------------------------------------


def trace_id_for(trace_id: str) -> int:
    """Our trace id when it is a valid OTel trace id, else a stable hash of it."""
    value = (trace_id or "").lower()
    if _HEX32.match(value) and int(value, 16):
        return int(value, 16)
    return int.from_bytes(hashlib.sha256(value.encode()).digest()[:16], "big") or 1


def span_id_for(key: str, taken: set[int]) -> int:
    """The first 16 hex digits of a 32-hex id (a stable hash otherwise, or on a clash)."""
    value = (key or "").lower()
    candidate = int(value[:16], 16) if _HEX32.match(value) or _HEX16.match(value) else 0
    salt = 0
    while not candidate or candidate in taken:
        digest = hashlib.sha256(f"{value}:{salt}".encode()).digest()[:8]
        candidate = int.from_bytes(digest, "big")
        salt += 1
    taken.add(candidate)
    return candidate


def _ns(seconds: float | None) -> int:
    return round((seconds or 0.0) * 1e9)


def _ascii(value: Any, limit: int = PROPAGATED_MAX) -> str | None:
    if value is None or value == "":
        return None
    text = str(value).encode("ascii", "replace").decode("ascii")
    return text[:limit]


# -- fields ------------------------------------------------------------------------------


def usage_details(usage: Any) -> dict[str, int] | None:
    """Our usage counts (input includes cache reads/writes, output includes reasoning)
    as Langfuse usage keys. Langfuse sums every key containing ``input``/``output``
    into the totals, so the sub-counts are split off, not repeated: ``input`` is the
    uncached prompt, ``input_cached_tokens`` the cache reads (OpenAI's name, which
    Langfuse prices), ``input_cache_creation`` the cache writes, ``output`` the visible
    completion and ``output_reasoning_tokens`` the reasoning."""
    if not isinstance(usage, dict):
        return None

    def n(key: str) -> int:
        try:
            return max(0, int(usage.get(key) or 0))
        except (TypeError, ValueError):
            return 0

    prompt, completion = n("input_tokens"), n("output_tokens")
    cache_read, cache_write, reasoning = n("cache_read_tokens"), n("cache_write_tokens"), n("reasoning_tokens")
    details = {
        "input": max(0, prompt - cache_read - cache_write),
        "output": max(0, completion - reasoning),
        "total": prompt + completion,
    }
    if cache_read:
        details["input_cached_tokens"] = cache_read
    if cache_write:
        details["input_cache_creation"] = cache_write
    if reasoning:
        details["output_reasoning_tokens"] = reasoning
    return details


def cost_details(attributes: dict[str, Any]) -> dict[str, float] | None:
    """The call's cost (``cost_usd``, written by the cost plugin, summed over attempts)
    as ``{"total": x}``. When the cost plugin's ``cost`` figures describe that same total
    (one priced attempt), the split follows :func:`usage_details`: ``input`` without
    the cache parts, ``input_cached_tokens`` / ``input_cache_creation``, ``output``."""
    raw = attributes.get("cost_usd")
    if raw is None:
        return None
    try:
        total = Decimal(str(raw))
    except (InvalidOperation, ValueError):
        return None
    details = {"total": float(total)}
    figures = attributes.get("cost")
    if not isinstance(figures, dict) or figures.get("currency", "USD") != "USD":
        return details
    try:
        if Decimal(str(figures.get("total_cost"))) != total:
            return details
        cache_read = Decimal(str(figures.get("cache_read_cost") or 0))
        cache_write = Decimal(str(figures.get("cache_write_cost") or 0))
        details["input"] = float(Decimal(str(figures.get("input_cost") or 0)) - cache_read - cache_write)
        details["output"] = float(Decimal(str(figures.get("output_cost") or 0)))
    except (InvalidOperation, ValueError):
        return {"total": float(total)}
    if cache_read:
        details["input_cached_tokens"] = float(cache_read)
    if cache_write:
        details["input_cache_creation"] = float(cache_write)
    return details


def model_parameters(params: Any) -> dict[str, Any] | None:
    """Langfuse parameters are scalars (or lists of strings); anything else as JSON text."""
    if not isinstance(params, dict) or not params:
        return None
    out: dict[str, Any] = {}
    for key, value in params.items():
        scalar = value is None or isinstance(value, str | bool | int | float)
        if scalar or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            out[str(key)] = value
        else:
            out[str(key)] = str(value)
    return out


def _level(status: str | None) -> str | None:
    s = (status or "").lower()
    if s in ("error", "failed", "failure"):
        return "ERROR"
    if s in ("warning", "warn", "denied", "blocked", "flagged", "cancelled"):
        return "WARNING"
    return None


def _status_message(code: str | None, message: str | None, r: Redactor) -> str | None:
    if not code and not message:
        return None
    text = f"{code}: {message}" if code and message else (code or message or "")
    return r.short(text, 1000)


# -- the plan ----------------------------------------------------------------------------


class _Builder:
    def __init__(self, trace: Trace, redactor: Redactor, max_observations: int) -> None:
        self.trace = trace
        self.r = redactor
        self.max = max(1, max_observations)
        self.taken: set[int] = set()
        self.observations: list[Observation] = []
        self.by_key: dict[str, Observation] = {}
        self.dropped = 0

    def add(self, obs: Observation) -> None:
        if len(self.observations) >= self.max:
            self.dropped += 1
            return
        self.observations.append(obs)
        self.by_key[obs.key] = obs

    def times(self, span: SpanRecord) -> tuple[int, int]:
        start = _ns(span.started_at or self.trace.started_at)
        end = _ns(span.ended_at or self.trace.ended_at or span.started_at)
        return start, max(start, end)

    def span_fields(self, span: SpanRecord) -> dict[str, Any]:
        attrs = dict(span.attributes or {})
        fields: dict[str, Any] = {}
        if "input" in attrs:
            fields["input"] = self.r.clean(attrs.pop("input"))
        if "output" in attrs:
            fields["output"] = self.r.clean(attrs.pop("output"))
        meta = {"synthhost_span_id": span.span_id, "kind": span.kind, "status": span.status, **attrs}
        if span.error_code:
            meta["error_code"] = span.error_code
        fields["metadata"] = self.r.clean(meta)
        return fields

    def generation_fields(self, span: SpanRecord) -> dict[str, Any]:
        attrs = dict(span.attributes or {})
        fields: dict[str, Any] = {
            "model": str(attrs.get("billed_model") or attrs.get("model") or span.name)[:200],
        }
        if (params := model_parameters(attrs.get("params"))) is not None:
            fields["model_parameters"] = self.r.scrub(params)
        if "input" in attrs:
            fields["input"] = self.r.clean(attrs["input"])
        if attrs.get("output") is not None:
            text = attrs["output"]
            output = {"role": "assistant", "content": text} if isinstance(text, str) else text
            fields["output"] = self.r.clean(output)
        if (usage := usage_details(attrs.get("usage"))) is not None:
            fields["usage_details"] = usage
        if (cost := cost_details(attrs)) is not None:
            fields["cost_details"] = cost
        meta = {k: v for k, v in attrs.items() if k not in _GENERATION_KEYS}
        meta.update({"synthhost_span_id": span.span_id, "status": span.status})
        if attrs.get("model") and attrs.get("billed_model") and attrs["model"] != attrs["billed_model"]:
            meta["request_model"] = attrs["model"]
        if span.error_code:
            meta["error_code"] = span.error_code
        fields["metadata"] = self.r.clean(meta)
        return fields

    def observation(self, span: SpanRecord, parent: str | None, as_type: str) -> Observation:
        start, end = self.times(span)
        fields = self.generation_fields(span) if as_type == "generation" else self.span_fields(span)
        if span.status in ("error", "cancelled"):
            # Cancelled (Ctrl-C, SIGTERM) is not a failure of the model: a warning.
            fields["level"] = "ERROR" if span.status == "error" else "WARNING"
            fields["status_message"] = _status_message(span.error_code, span.error_message, self.r) or span.status
        elif as_type == "generation" and (span.attributes or {}).get("policy.warnings"):
            fields["level"] = "WARNING"
        return Observation(span.span_id, span_id_for(span.span_id, self.taken), parent, as_type,
                           self.r.short(span.name or span.kind, 200), start, end, fields)

    def root_fields(self, fields: dict[str, Any]) -> None:
        """The run's own input/output/status on the root observation."""
        t = self.trace
        if t.input:
            fields["input"] = self.r.clean(t.input)
        if t.output is not None:
            fields["output"] = self.r.clean(t.output)
        meta = dict(fields.get("metadata") or {})
        meta.update({
            "run_id": t.run_id, "workspace": t.workspace, "status": t.status, "agent": t.agent,
            "org": t.org, "synthhost_trace_id": t.trace_id,
        })
        if t.error_code:
            meta["error_code"] = t.error_code
        if t.attributes:
            meta["run_attributes"] = self.r.clean(t.attributes)
        fields["metadata"] = self.r.clean({k: v for k, v in meta.items() if v is not None})
        if t.status in ("error", "cancelled"):
            fields["level"] = "ERROR" if t.status == "error" else "WARNING"
            fields["status_message"] = _status_message(t.error_code, t.error_message, self.r) or t.status

    def event(self, event: EventRecord, root_key: str) -> Observation:
        parent = event.span_id if event.span_id in self.by_key else root_key
        at = _ns(event.created_at or self.trace.ended_at)
        fields: dict[str, Any] = {
            "metadata": self.r.clean({"status": event.status, "synthhost_event_id": event.id, **(event.context or {})}),
        }
        if (level := _level(event.status)) is not None:
            fields["level"] = level
            code = (event.context or {}).get("code") or (event.context or {}).get("error_code")
            message = (event.context or {}).get("message") or (event.context or {}).get("error")
            fields["status_message"] = _status_message(code, message, self.r) or event.status
        return Observation(event.id, span_id_for(event.id, self.taken), parent, "event",
                           self.r.short(event.event_type, 200), at, at, fields)

    def build(self) -> TracePlan:
        t = self.trace
        spans = sorted(t.spans, key=lambda s: (s.started_at or 0.0, s.kind != "run"))
        known = {s.span_id for s in spans}
        run_span = next((s for s in spans if s.kind == "run"), None)
        orphans = [s for s in spans if s is not run_span and (not s.parent_id or s.parent_id not in known)]

        if run_span is not None:
            root = self.observation(run_span, None, "agent" if t.agent else "span")
        elif len(orphans) == 1 and not [s for s in spans if s is not orphans[0] and s.parent_id is None]:
            only = orphans[0]
            root = self.observation(only, None, _as_type(only))
        else:  # several parentless spans (or none): a synthetic root for the run
            root = Observation(t.run_id, span_id_for(t.run_id, self.taken), None,
                               "agent" if t.agent else "span", self.r.short(t.name or t.run_id, 200),
                               _ns(t.started_at), max(_ns(t.started_at), _ns(t.ended_at)), {})
        self.root_fields(root.fields)
        self.add(root)

        # Parents before children: a span is added once its parent is.
        pending = [s for s in spans if s.span_id != root.key]
        while pending:
            progressed = False
            rest: list[SpanRecord] = []
            for span in pending:
                parent = span.parent_id if span.parent_id in self.by_key else None
                if parent is None and span.parent_id in known and span.parent_id != root.key:
                    rest.append(span)  # its parent comes later
                    continue
                as_type = _as_type(span)
                self.add(self.observation(span, parent or root.key, as_type))
                progressed = True
            if not progressed:  # a cycle or a dropped parent: hang the rest off the root
                for span in rest:
                    self.add(self.observation(span, root.key, _as_type(span)))
                break
            pending = rest

        for event in sorted(t.events, key=lambda e: e.created_at or 0.0):
            if event.event_type in SKIPPED_EVENTS:
                continue
            self.add(self.event(event, root.key))

        if self.dropped:
            root.fields["metadata"] = {**(root.fields.get("metadata") or {}), "dropped_observations": self.dropped}

        tags = ["synthhost", f"workspace:{t.workspace}"]
        if t.agent:
            tags.append(f"agent:{t.agent}")
        tags.append(f"status:{t.status}")
        if t.error_code:
            tags.append(f"error:{t.error_code}")
        metadata = {"run_id": t.run_id, "workspace": t.workspace, "status": t.status}
        if t.agent:
            metadata["agent"] = t.agent
        if t.org:
            metadata["org"] = t.org
        session = (t.attributes or {}).get("session_id")
        return TracePlan(
            trace_id=trace_id_for(t.trace_id),
            run_id=t.run_id,
            workspace=t.workspace,
            trace_name=_ascii(t.name or t.agent or t.run_id) or t.run_id,
            user_id=_ascii(t.user),
            session_id=_ascii(session),
            tags=[tag for tag in (_ascii(x) for x in tags) if tag],
            metadata={k: v for k, v in ((k, _ascii(v)) for k, v in metadata.items()) if v},
            observations=self.observations,
            dropped=self.dropped,
        )


# A model call is a Langfuse generation, a tool call a tool observation, anything else a span.
_AS_TYPE = {"call": "generation", "tool": "tool"}


def _as_type(span: SpanRecord) -> str:
    return _AS_TYPE.get(span.kind, "span")


def plan_trace(trace: Trace, redactor: Redactor, *, max_observations: int = 1000) -> TracePlan:
    """Translate one finished trace into the observations to create."""
    return _Builder(trace, redactor, max_observations).build()
