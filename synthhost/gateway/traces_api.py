"""``GET /v1/traces`` (filters, cursor pagination), ``GET /v1/traces/{id}`` and
``GET /v1/traces/{id}/export``: the key's workspace only; another workspace's run is
404, exactly like a run that does not exist."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from synthhost.gateway.errors import bad_request, not_found
from synthhost.storage.models import Run, Span
from synthhost.traces import export_name, export_trace, load_trace, parse_since

if TYPE_CHECKING:
    from synthhost.host import Host

RUNS = Run.__table__  # type: ignore[attr-defined]
SPANS = Span.__table__  # type: ignore[attr-defined]
STATUSES = ("ok", "error", "cancelled", "running")
MAX_LIMIT = 200


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite hands back naive times


def encode_cursor(started_at: datetime, run_id: str) -> str:
    raw = json.dumps([_aware(started_at).isoformat(), run_id]).encode()  # type: ignore[union-attr]
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started, run_id = json.loads(raw)
        return datetime.fromisoformat(started), str(run_id)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError("invalid cursor") from exc


def _time(value: str | None, name: str) -> datetime | None:
    try:
        return parse_since(value)
    except ValueError:
        raise ValueError(f"'{name}': use 30m, 24h, 7d or an ISO time") from None


def query_runs(host: Host, workspace: str, params: dict[str, str]) -> dict[str, Any]:
    """Blocking: one page of runs, newest first."""
    limit_raw = params.get("limit", "50")
    if not limit_raw.isdigit() or not 1 <= int(limit_raw) <= MAX_LIMIT:
        raise ValueError(f"'limit' must be an integer from 1 to {MAX_LIMIT}")
    limit = int(limit_raw)
    query = sa.select(RUNS).where(RUNS.c.workspace_id == workspace)
    status = params.get("status")
    if status:
        if status not in STATUSES:
            raise ValueError(f"'status' must be one of {', '.join(STATUSES)}")
        query = query.where(RUNS.c.status == status)
    if params.get("agent"):
        query = query.where(RUNS.c.agent == params["agent"])
    if (since := _time(params.get("since"), "since")) is not None:
        query = query.where(RUNS.c.started_at >= since)
    if (until := _time(params.get("until"), "until")) is not None:
        query = query.where(RUNS.c.started_at < until)
    if params.get("q"):
        query = query.where(RUNS.c.name.contains(params["q"][:200], autoescape=True))
    if params.get("model"):
        model = params["model"][:300]
        query = query.where(sa.exists().where(
            SPANS.c.run_id == RUNS.c.id, SPANS.c.kind == "call",
            sa.or_(SPANS.c.name == model, SPANS.c.name.endswith("/" + model, autoescape=True))))
    if params.get("cursor"):
        started, run_id = decode_cursor(params["cursor"])
        query = query.where(sa.or_(RUNS.c.started_at < started,
                                   sa.and_(RUNS.c.started_at == started, RUNS.c.id > run_id)))
    query = query.order_by(RUNS.c.started_at.desc(), RUNS.c.id).limit(limit + 1)
    with host.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    page = rows[:limit]
    data = [{
        "id": r["id"], "trace_id": r["trace_id"], "name": r["name"], "agent": r["agent"], "status": r["status"],
        "started_at": _iso(r["started_at"]), "ended_at": _iso(r["ended_at"]), "error_code": r["error_code"],
        "cost_usd": (r["attributes"] or {}).get("cost_usd"), "tokens": (r["attributes"] or {}).get("tokens"),
    } for r in page]
    more = len(rows) > limit
    return {"object": "list", "data": data, "has_more": more,
            "next_cursor": encode_cursor(page[-1]["started_at"], page[-1]["id"]) if more and page else None}


def _iso(value: datetime | None) -> str | None:
    aware = _aware(value)
    return None if aware is None else aware.isoformat()


async def list_traces(host: Host, request: Request) -> Response:
    try:
        page = await anyio.to_thread.run_sync(query_runs, host, request.state.workspace,
                                              dict(request.query_params))
    except ValueError as exc:
        return bad_request(str(exc))
    return JSONResponse(page)


async def _document(host: Host, request: Request) -> dict[str, Any] | None:
    run_id = request.path_params["run_id"]
    if not (1 <= len(run_id) <= 64):
        return None
    trace = await anyio.to_thread.run_sync(load_trace, host.engine, run_id, request.state.workspace)
    return None if trace is None else dict(export_trace(trace))


async def get_trace(host: Host, request: Request) -> Response:
    doc = await _document(host, request)
    return not_found("no such trace") if doc is None else JSONResponse(doc)


async def export(host: Host, request: Request) -> Response:
    doc = await _document(host, request)
    if doc is None:
        return not_found("no such trace")
    name = export_name(str(doc["run"]["run_id"]))  # the CLI's and the console's name too
    return JSONResponse(doc, headers={"Content-Disposition": f'attachment; filename="{name}"'})
