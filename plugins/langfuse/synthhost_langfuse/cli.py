"""``synthhost langfuse resend|status``.

``resend`` re-exports recorded runs on demand (the same ids, so Langfuse updates rather
than duplicates them), whatever the workspace flags say: it is an explicit request.
It is what ``synthhost traces export --to langfuse`` would do; :func:`resend` is the
Python entry point for wiring it there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from synthhost.cli.types import WORKSPACE
from synthhost.errors import UsageError
from synthhost_langfuse.config import EVENT_TYPES, EXPORTER_NAME, load_config

if TYPE_CHECKING:
    from synthhost.host import Host


def select_runs(
    host: Host, *, since: datetime | None, workspace: str | None, run_ids: Sequence[str] = (),
    pending_only: bool = False, limit: int = 10_000,
) -> list[str]:
    """Finished runs to re-send, oldest first."""
    import sqlalchemy as sa

    from synthhost.outbox import EVENTS, IN_FLIGHT, OUTBOX, PARKED, PENDING
    from synthhost.traces import RUNS

    query = sa.select(RUNS.c.id).where(RUNS.c.status != "running")
    if run_ids:
        query = query.where(sa.or_(RUNS.c.id.in_(list(run_ids)), RUNS.c.trace_id.in_(list(run_ids))))
    if since is not None:
        query = query.where(RUNS.c.started_at >= since)
    if workspace:
        query = query.where(RUNS.c.workspace_id == workspace)
    if pending_only:
        waiting = (
            sa.select(EVENTS.c.run_id)
            .join(OUTBOX, OUTBOX.c.event_id == EVENTS.c.id)
            .where(OUTBOX.c.exporter == EXPORTER_NAME, OUTBOX.c.state.in_((PENDING, IN_FLIGHT, PARKED)),
                   EVENTS.c.event_type.in_(EVENT_TYPES))
        )
        query = query.where(RUNS.c.id.in_(waiting.scalar_subquery()))
    query = query.order_by(RUNS.c.started_at, RUNS.c.id).limit(limit)
    with host.engine.connect() as conn:
        return [str(r) for r in conn.execute(query).scalars()]


def resend(
    host: Host, *, since: datetime | None = None, workspace: str | None = None, run_ids: Sequence[str] = (),
    pending_only: bool = False,
) -> dict[str, Any]:
    """Export the selected runs now and wait; accepted runs' outbox rows are marked
    delivered. Returns ``{"selected", "accepted", "failed": {run_id: error}}``."""
    from synthhost.traces import load_trace
    from synthhost_langfuse.exporter import LangfuseExporter

    config, reason = load_config(host.settings.env)
    if config is None:
        raise UsageError(f"langfuse: {reason} (set LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY)")
    exporter = LangfuseExporter(host, config)
    selected = select_runs(host, since=since, workspace=workspace, run_ids=run_ids, pending_only=pending_only)
    failed: dict[str, str] = {}
    accepted = 0
    try:
        for start in range(0, len(selected), config.batch_size):
            chunk = [t for t in (load_trace(host.engine, r) for r in selected[start:start + config.batch_size]) if t]
            outcomes = exporter.export_traces(chunk, force=True)
            ok = [r for r, o in outcomes.items() if o.ok]
            accepted += len(ok)
            exporter.mark_delivered(ok)
            failed.update({r: o.error or "not accepted" for r, o in outcomes.items() if not o.ok})
    finally:
        exporter.close()
    return {"base_url": config.base_url, "selected": len(selected), "accepted": accepted, "failed": failed}


@click.group("langfuse")
def langfuse_group() -> None:
    """Langfuse export: re-send traces, show export status."""


@langfuse_group.command("resend")
@click.option("--since", default=None, help="Runs started since: 30m, 24h, 7d or an ISO time (default 1h).")
@click.option("--workspace", "-w", type=WORKSPACE, help="Only this workspace (default: all).")
@click.option("--run", "run_ids", multiple=True, help="Only this run (or trace) id; repeatable (not with --since).")
@click.option("--pending-only", is_flag=True, help="Only runs whose Langfuse delivery is not done (pending, "
              "retrying, in flight or parked).")
@click.option("--json", "as_json", is_flag=True)
def resend_command(since: str | None, workspace: str | None, run_ids: tuple[str, ...], pending_only: bool,
                   as_json: bool) -> None:
    """Re-export recorded runs to Langfuse now (same ids: Langfuse updates, not duplicates)."""
    from synthhost.cli.context import cli_host
    from synthhost.traces import parse_since

    if run_ids and since is not None:
        raise UsageError("--run and --since: choose one (--run picks runs by id, whenever they ran)")
    try:
        since_dt = None if run_ids else parse_since(since or "1h")
    except ValueError:
        raise UsageError(f"--since {since!r}: use 30m, 24h, 7d or an ISO time") from None
    with cli_host() as host:
        result = resend(host, since=since_dt, workspace=workspace, run_ids=run_ids, pending_only=pending_only)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"{result['accepted']} of {result['selected']} traces accepted by {result['base_url']}")
        for run_id, error in result["failed"].items():
            click.echo(f"  failed {run_id}: {error}", err=True)
    if result["failed"]:
        raise SystemExit(1)


@langfuse_group.command("status")
@click.option("--json", "as_json", is_flag=True)
def status_command(as_json: bool) -> None:
    """Configuration and the outbox queue for the Langfuse exporter."""
    from synthhost.cli.context import cli_host
    from synthhost.outbox import queue_stats

    with cli_host() as host:
        config, reason = load_config(host.settings.env)
        queue = queue_stats(host.engine, [EXPORTER_NAME]).get(EXPORTER_NAME, {})
    data = {
        "configured": config is not None,
        "base_url": config.base_url if config else None,
        "inert_reason": reason or None,
        "queue": queue,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    click.echo(f"langfuse: exporting to {config.base_url}" if config else f"langfuse: inert: {reason}")
    for key, value in queue.items():
        click.echo(f"  {key}: {value}")
