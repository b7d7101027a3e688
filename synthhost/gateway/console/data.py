"""What the console's pages show, read from the host's tables (blocking: call from a
worker thread). Runs and traces reuse the ``/v1/traces`` queries and the CLI's export;
costs and similarity are read from the host's own records (call spans, events) rather
than from a plugin's tables, so the console imports no plugin."""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from synthhost.gateway.traces_api import RUNS, SPANS, query_runs
from synthhost.traces import EVENTS, export_trace, load_trace, parse_since, redact

if TYPE_CHECKING:
    from synthhost.host import Host

# The deployment checklist's rollout order (prompt checks go with similarity logging,
# the RudderStack switch with its Phase 4 step); other flags show no phase.
PHASES: dict[str, int] = {
    "track_model_costs": 1, "enable_similarity_logging": 1, "enable_prompt_similarity_check": 1,
    "disable_rudderstack_export": 4,
    "enable_langfuse_export": 2, "enable_async_trace_export": 2,
    "enable_archgw_routing": 3, "enable_policy_engine": 3, "enable_rate_limiting": 3, "enable_guardrails_ai": 3,
    "enable_stackstorm": 4, "enable_stackstorm_retry": 4, "enable_stackstorm_reroute": 4,
    "enable_stackstorm_repair_execution": 4, "enable_cron_backoff": 4,
}
SIMILARITY_EVENT = "prompt_similarity_logged"
MAX_RANGE = timedelta(days=366)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _duration_ms(started: str | None, ended: str | None) -> float | None:
    if not started or not ended:
        return None
    return (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds() * 1000


def runs_page(host: Host, workspace: str, params: dict[str, str]) -> dict[str, Any]:
    """One page of runs (``query_runs``), each with its models and duration."""
    page = query_runs(host, workspace, {k: v for k, v in params.items() if v})
    ids = [r["id"] for r in page["data"]]
    models: dict[str, list[str]] = defaultdict(list)
    if ids:
        query = (sa.select(SPANS.c.run_id, SPANS.c.name).distinct()
                 .where(SPANS.c.run_id.in_(ids), SPANS.c.kind == "call").order_by(SPANS.c.run_id, SPANS.c.name))
        with host.engine.connect() as conn:
            for run_id, name in conn.execute(query):
                models[run_id].append(name)
    for run in page["data"]:
        run["models"] = models.get(run["id"], [])
        run["duration_ms"] = _duration_ms(run["started_at"], run["ended_at"])
    return page


@dataclass(slots=True)
class Bar:
    """One row of the waterfall: a span (or the run itself at depth 0)."""

    span_id: str
    kind: str
    name: str
    status: str
    depth: int
    offset_ms: float
    duration_ms: float | None
    tokens: int | None
    cost_usd: str | None
    attempts: int | None
    error: str | None
    attributes: dict[str, Any] = field(default_factory=dict)


def trace_document(host: Host, workspace: str, run_id: str) -> dict[str, Any] | None:
    """The JSON export (``synthhost traces export``) of a run of ``workspace``, or None."""
    if not 1 <= len(run_id) <= 64:
        return None
    trace = load_trace(host.engine, run_id, workspace)
    return None if trace is None else dict(export_trace(trace))


def waterfall(doc: dict[str, Any]) -> tuple[list[Bar], float]:
    """The export's spans as waterfall rows, parents before children, and the run's
    length in ms (at least the longest span's end)."""
    run = doc["run"]
    start = datetime.fromisoformat(run["started_at"]) if run["started_at"] else None
    spans = doc["spans"]
    if start is None and spans:
        start = min(datetime.fromisoformat(s["started_at"]) for s in spans if s["started_at"])
    children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    known = {s["span_id"] for s in spans}
    for s in spans:
        children[s["parent_id"] if s["parent_id"] in known else None].append(s)
    bars: list[Bar] = []

    def add(span: dict[str, Any], depth: int) -> None:
        attrs = span["attributes"] or {}
        usage = attrs.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        began = datetime.fromisoformat(span["started_at"]) if span["started_at"] else start
        offset = (began - start).total_seconds() * 1000 if began and start else 0.0
        error = f"{span['error_code']}: {span['error_message'] or ''}".strip(": ") if span["error_code"] else None
        bars.append(Bar(span["span_id"], span["kind"], span["name"], span["status"], depth, max(offset, 0.0),
                        span["duration_ms"], usage.get("total_tokens"), attrs.get("cost_usd"),
                        attrs.get("attempts"), error, attrs))

    stack = [(s, 0) for s in reversed(children[None])]
    while stack:  # iterative: a deep trace must not hit the recursion limit
        span, depth = stack.pop()
        add(span, depth)
        stack.extend((c, depth + 1) for c in reversed(children.get(span["span_id"], [])))
    total = _duration_ms(run["started_at"], run["ended_at"]) or 0.0
    ends = [b.offset_ms + (b.duration_ms or 0.0) for b in bars]
    return bars, max([total, *ends, 0.001])


def _range(params: dict[str, str]) -> tuple[datetime, datetime]:
    since = parse_since(params.get("since") or "7d")
    until = parse_since(params["until"]) if params.get("until") else datetime.now(UTC)
    assert since is not None and until is not None
    if until - since > MAX_RANGE:
        raise ValueError("the range may span at most 366 days")
    return since, until


@dataclass(slots=True)
class Costs:
    since: datetime
    until: datetime
    total: Decimal = Decimal(0)
    calls: int = 0
    tokens: int = 0
    unpriced: int = 0
    by: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    rows: list[tuple[str, str, str, str, str, int, Decimal | None]] = field(default_factory=list)


COST_GROUPS = ("day", "model", "agent", "user")


def costs(host: Host, workspace: str, params: dict[str, str]) -> Costs:
    """Spend of ``workspace``'s model calls in a range, per day, model, agent and user,
    from the cost each call span carries (``cost_usd``, set by the cost plugin)."""
    since, until = _range(params)
    query = (sa.select(SPANS.c.started_at, SPANS.c.name, SPANS.c.attributes, RUNS.c.agent, RUNS.c.user_id)
             .join(RUNS, RUNS.c.id == SPANS.c.run_id)
             .where(SPANS.c.workspace_id == workspace, SPANS.c.kind == "call",
                    SPANS.c.started_at >= since, SPANS.c.started_at < until)
             .order_by(SPANS.c.started_at))
    out = Costs(since, until, by={g: defaultdict(Decimal) for g in COST_GROUPS})
    with host.engine.connect() as conn:
        rows = conn.execute(query).all()
    for started, model, attrs, agent, user in rows:
        attrs = attrs or {}
        usage = attrs.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        tokens = int(usage.get("total_tokens") or 0)
        try:
            cost: Decimal | None = Decimal(str(attrs["cost_usd"])) if attrs.get("cost_usd") is not None else None
        except InvalidOperation:
            cost = None
        day = _aware(started).date().isoformat()  # type: ignore[union-attr]
        keys = {"day": day, "model": model, "agent": agent or "(none)", "user": user or "(none)"}
        out.calls += 1
        out.tokens += tokens
        if cost is None:
            # Unpriced as the runner counts it: the cost plugin found no price. A call
            # denied before the provider, or made with costs off, is not billed at all.
            details = attrs.get("cost")
            out.unpriced += isinstance(details, dict) and details.get("priced") is False
        else:
            out.total += cost
            for group, key in keys.items():
                out.by[group][key] += cost
        out.rows.append((day, model, keys["agent"], keys["user"], _aware(started).isoformat(),  # type: ignore[union-attr]
                         tokens, cost))
    return out


def costs_csv(report: Costs) -> str:
    """One line per call: day, model, agent, user, started, tokens, cost (USD)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["day", "model", "agent", "user", "started_at", "tokens", "cost_usd"])
    for day, model, agent, user, started, tokens, cost in report.rows:
        # A cell starting with = + - @ is a formula to a spreadsheet: quote it as text.
        cells = [("'" + c if c[:1] in "=+-@" else c) for c in (day, model, agent, user, started)]
        writer.writerow([*cells, tokens, "" if cost is None else f"{cost:f}"])
    return buffer.getvalue()


@dataclass(slots=True)
class Similarity:
    checked: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    per_day: dict[str, tuple[int, int]] = field(default_factory=dict)
    matches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def detected(self) -> int:
        return self.checked - self.actions.get("allowed", 0)


def similarity(host: Host, workspace: str, params: dict[str, str], latest: int = 20) -> Similarity:
    """Detection rates (checked vs. acted on, per day) and the latest matches with their
    reference prompts, from the similarity plugin's ``prompt_similarity_logged`` events."""
    since, until = _range(params)
    query = (sa.select(EVENTS.c.created_at, EVENTS.c.context, EVENTS.c.run_id)
             .where(EVENTS.c.workspace_id == workspace, EVENTS.c.event_type == SIMILARITY_EVENT,
                    EVENTS.c.created_at >= since, EVENTS.c.created_at < until)
             .order_by(EVENTS.c.created_at.desc()))
    out = Similarity()
    days: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    with host.engine.connect() as conn:
        rows = conn.execute(query).all()
    for created, context, run_id in rows:
        context = context or {}
        action = str(context.get("action") or "allowed")
        out.checked += 1
        out.actions[action] += 1
        day = days[_aware(created).date().isoformat()]  # type: ignore[union-attr]
        day[0] += 1
        if action != "allowed":
            day[1] += 1
        if context.get("reference_id") and len(out.matches) < latest:
            out.matches.append(redact({
                "created_at": _aware(created).isoformat(), "run_id": run_id, "action": action,  # type: ignore[union-attr]
                "score": context.get("score"), "threshold": context.get("threshold"),
                "prompt": context.get("prompt"), "reference": context.get("reference_text"),
            }))
    out.per_day = {d: (v[0], v[1]) for d, v in sorted(days.items())}
    return out


def run_statuses(host: Host, workspace: str, ids: list[str]) -> list[dict[str, Any]]:
    """Status, end, tokens and cost of the given runs of ``workspace`` (the live view)."""
    query = sa.select(RUNS.c.id, RUNS.c.status, RUNS.c.started_at, RUNS.c.ended_at, RUNS.c.attributes).where(
        RUNS.c.workspace_id == workspace, RUNS.c.id.in_(ids))
    with host.engine.connect() as conn:
        rows = conn.execute(query).all()
    out = []
    for run_id, status, started, ended, attrs in rows:
        started_iso = _aware(started).isoformat() if started else None  # type: ignore[union-attr]
        ended_iso = _aware(ended).isoformat() if ended else None  # type: ignore[union-attr]
        out.append({"id": run_id, "status": status, "duration_ms": _duration_ms(started_iso, ended_iso),
                    "tokens": (attrs or {}).get("tokens"), "cost_usd": (attrs or {}).get("cost_usd")})
    return out
