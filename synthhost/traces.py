"""The trace store's read side: list runs, load one trace, export it as JSON.

Every read is scoped to one workspace: a run id from another workspace is "not found",
never readable (the original's cross-tenant read is the trap this avoids).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from synthhost.storage.models import EventLog, Run, Span
from synthhost.trace import EventRecord, SpanRecord, Trace

RUNS = Run.__table__  # type: ignore[attr-defined]
SPANS = Span.__table__  # type: ignore[attr-defined]
EVENTS = EventLog.__table__  # type: ignore[attr-defined]

# Keys whose values are secrets: api_key, x-api-key, secret, client_secret, token,
# access_token, password, authorization... but not input_tokens or max_tokens.
_SECRET_KEYS = re.compile(
    r"^(.*[_-])?(api[_-]?key|secret|secret[_-]?key|token|password|passwd|authorization)$", re.I
)
_SECRET_VALUES = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|pk-lf-[A-Za-z0-9\-]+|sk-lf-[A-Za-z0-9\-]+|Bearer\s+\S+)")


def secret_values(env: Mapping[str, str]) -> list[str]:
    """The values of environment variables that hold secrets (``*_KEY``, ``*SECRET*``,
    ``*TOKEN*``, ``*PASSWORD*``), longest first, ignoring short ones."""
    names = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD)", re.I)
    values = {v for k, v in env.items() if names.search(k) and len(v) >= 8}
    return sorted(values, key=len, reverse=True)


# What could make redact() change a JSON value, looked for in its serialized, lowercased
# text: the end of a secret-looking key (`..._token"`), a masked string's prefix. A
# superset of redact's own tests (a false alarm costs the full walk, never a missed
# secret); plain substring tests, as a regex here costs more than the walk it saves.
_SECRET_KEY_ENDS = ('key"', 'secret"', 'token"', 'password"', 'passwd"', 'authorization"')
_MASKED_PREFIXES = ("sk-", "pk-lf-", "bearer")


class Redactor:
    """``redact(value, secrets)`` for many values with the same secrets, faster when
    there is nothing to redact (most rows): the value is serialized once (C code) and
    searched, and walked in Python only when something could match."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = secrets
        # A secret JSON would escape cannot be found in the serialized text as is.
        self.searchable = all(json.dumps(s, ensure_ascii=True)[1:-1] == s for s in secrets)

    def __call__(self, value: Any) -> Any:
        if self.searchable and isinstance(value, dict | list):
            try:
                text = json.dumps(value, ensure_ascii=True)
            except (TypeError, ValueError):  # not plain JSON: walk it
                return redact(value, self.secrets)
            lowered = text.lower()
            if (not any(end in lowered for end in _SECRET_KEY_ENDS)
                    and not any(p in lowered for p in _MASKED_PREFIXES)
                    and not any(s in text for s in self.secrets)):
                return value
        return redact(value, self.secrets)


def redact(value: Any, secrets: list[str] | None = None) -> Any:
    """Drop values under secret-looking keys, mask secret-looking strings and every
    known secret value (``secret_values(os.environ)`` by default)."""
    if secrets is None:
        secrets = secret_values(os.environ)
    if isinstance(value, dict):
        return {
            k: ("[redacted]" if _SECRET_KEYS.search(str(k)) else redact(v, secrets))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, "[redacted]")
        return _SECRET_VALUES.sub("[redacted]", value)
    return value


def parse_since(value: str | None) -> datetime | None:
    """``30m``, ``24h``, ``7d`` or an ISO timestamp."""
    if not value:
        return None
    match = re.fullmatch(r"(\d+)([smhd])", value.strip())
    if match:
        n, unit = int(match[1]), match[2]
        seconds = n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _ts(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive datetimes
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def list_runs(
    engine: sa.Engine, workspace: str, *, since: datetime | None = None, status: str | None = None,
    agent: str | None = None, search: str | None = None, limit: int = 50, offset: int = 0,
) -> list[dict[str, Any]]:
    query = sa.select(RUNS).where(RUNS.c.workspace_id == workspace)
    if since is not None:
        query = query.where(RUNS.c.started_at >= since)
    if status:
        query = query.where(RUNS.c.status == status)
    if agent:
        query = query.where(RUNS.c.agent == agent)
    if search:
        query = query.where(RUNS.c.name.ilike(f"%{search}%"))
    query = query.order_by(RUNS.c.started_at.desc(), RUNS.c.id).limit(limit).offset(offset)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [
        {
            "run_id": r["id"], "trace_id": r["trace_id"], "name": r["name"], "agent": r["agent"],
            "status": r["status"], "started_at": _iso(r["started_at"]), "ended_at": _iso(r["ended_at"]),
            "error_code": r["error_code"], "cost_usd": (r["attributes"] or {}).get("cost_usd"),
            "tokens": (r["attributes"] or {}).get("tokens"),
        }
        for r in rows
    ]


def _iso(value: datetime | None) -> str | None:
    ts = _ts(value)
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def load_trace(engine: sa.Engine, run_id: str, workspace: str | None = None) -> Trace | None:
    """Load a run with its spans and events. With ``workspace``, a run of another
    workspace is not found."""
    with engine.connect() as conn:
        query = sa.select(RUNS).where(sa.or_(RUNS.c.id == run_id, RUNS.c.trace_id == run_id))
        if workspace is not None:
            query = query.where(RUNS.c.workspace_id == workspace)
        run = conn.execute(query).mappings().first()
        if run is None:
            return None
        spans = conn.execute(
            sa.select(SPANS).where(SPANS.c.run_id == run["id"]).order_by(SPANS.c.started_at)
        ).mappings().all()
        events = conn.execute(
            sa.select(EVENTS).where(EVENTS.c.run_id == run["id"]).order_by(EVENTS.c.created_at)
        ).mappings().all()
    return _trace(run, spans, events)


def load_traces(engine: sa.Engine, run_ids: Sequence[str]) -> dict[str, Trace]:
    """Load many runs at once (three queries, whatever their number): what
    :func:`load_trace` returns for each, keyed by the id asked for (a run id or a
    trace id, as there); ids not found are absent. No workspace scoping: for exporters."""
    wanted = list(dict.fromkeys(run_ids))
    if not wanted:
        return {}
    with engine.connect() as conn:
        runs = conn.execute(
            sa.select(RUNS).where(sa.or_(RUNS.c.id.in_(wanted), RUNS.c.trace_id.in_(wanted)))
        ).mappings().all()
        if not runs:
            return {}
        ids = [r["id"] for r in runs]
        spans = conn.execute(
            sa.select(SPANS).where(SPANS.c.run_id.in_(ids)).order_by(SPANS.c.run_id, SPANS.c.started_at)
        ).mappings().all()
        events = conn.execute(
            sa.select(EVENTS).where(EVENTS.c.run_id.in_(ids)).order_by(EVENTS.c.run_id, EVENTS.c.created_at)
        ).mappings().all()
    spans_of: dict[str, list[Any]] = {}
    for s in spans:
        spans_of.setdefault(s["run_id"], []).append(s)
    events_of: dict[str, list[Any]] = {}
    for e in events:
        events_of.setdefault(e["run_id"], []).append(e)
    asked = set(wanted)
    out: dict[str, Trace] = {}
    for run in runs:
        trace = _trace(run, spans_of.get(run["id"], ()), events_of.get(run["id"], ()))
        for key in (run["id"], run["trace_id"]):
            if key in asked and key not in out:
                out[key] = trace
    return out


def _trace(run: Mapping[Any, Any], spans: Iterable[Mapping[Any, Any]], events: Iterable[Mapping[Any, Any]]) -> Trace:
    return Trace(
        run_id=run["id"], trace_id=run["trace_id"], workspace=run["workspace_id"], name=run["name"],
        started_at=_ts(run["started_at"]) or 0.0, ended_at=_ts(run["ended_at"]) or 0.0,
        status=run["status"], agent=run["agent"], user=run["user_id"], org=run["org_id"],
        input=run["input"] or {}, output=run["output"], error_code=run["error_code"],
        error_message=run["error_message"], attributes=run["attributes"] or {},
        spans=[
            SpanRecord(
                span_id=s["id"], trace_id=s["trace_id"], run_id=s["run_id"], kind=s["kind"],
                name=s["name"], started_at=_ts(s["started_at"]) or 0.0, parent_id=s["parent_id"],
                ended_at=_ts(s["ended_at"]), status=s["status"], error_code=s["error_code"],
                error_message=s["error_message"], attributes=s["attributes"] or {},
            )
            for s in spans
        ],
        events=[
            EventRecord(e["id"], e["event_type"], e["status"], _ts(e["created_at"]) or 0.0,
                        e["context"] or {}, e["span_id"])
            for e in events
        ],
    )


def export_name(run_id: str) -> str:
    """The file name of a run's export: ``trace-<run id>-<YYYY-MM-DD>.json`` (the CLI's
    ``--save``, the gateway's and the console's downloads)."""
    return f"trace-{run_id}-{datetime.now(UTC):%Y-%m-%d}.json"


def export_trace(trace: Trace) -> dict[str, Any]:
    """The JSON export: run, spans (as a tree by parent id) and raw events, redacted."""

    def span(s: SpanRecord) -> dict[str, Any]:
        return {
            "span_id": s.span_id, "parent_id": s.parent_id, "kind": s.kind, "name": s.name,
            "status": s.status, "started_at": _fmt(s.started_at), "ended_at": _fmt(s.ended_at),
            "duration_ms": None if s.duration_ms is None else round(s.duration_ms, 3),
            "error_code": s.error_code, "error_message": s.error_message, "attributes": s.attributes,
        }

    data = {
        "format": "synthhost.trace/v1",
        "exported_at": datetime.now(UTC).isoformat(),
        "run": {
            "run_id": trace.run_id, "trace_id": trace.trace_id, "workspace": trace.workspace,
            "name": trace.name, "agent": trace.agent, "status": trace.status,
            "started_at": _fmt(trace.started_at), "ended_at": _fmt(trace.ended_at),
            "input": trace.input, "output": trace.output, "error_code": trace.error_code,
            "error_message": trace.error_message, "attributes": trace.attributes,
        },
        "spans": [span(s) for s in trace.spans],
        "events": [
            {"id": e.id, "event_type": e.event_type, "status": e.status,
             "created_at": _fmt(e.created_at), "span_id": e.span_id, "context": e.context}
            for e in trace.events
        ],
    }
    return redact(data)


def _fmt(ts: float | None) -> str | None:
    return None if not ts else datetime.fromtimestamp(ts, UTC).isoformat()
