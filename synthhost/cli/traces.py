"""``synthhost traces list|show|export`` — always scoped to one workspace."""

from __future__ import annotations

import json

import click

from synthhost.cli.context import cli_host
from synthhost.cli.types import WORKSPACE
from synthhost.errors import UsageError

workspace_option = click.option("--workspace", "-w", type=WORKSPACE, default="default", show_default=True,
                                help="The workspace whose traces to read.")


@click.group()
def traces() -> None:
    """Read recorded runs: run → steps → calls, with events."""


@traces.command("list")
@workspace_option
@click.option("--since", help="Only runs started since: 30m, 24h, 7d or an ISO time.")
@click.option("--status", type=click.Choice(["ok", "error", "cancelled", "running"]))
@click.option("--agent")
@click.option("--search", help="Substring of the run name.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--offset", default=0, type=click.IntRange(0))
@click.option("--json", "as_json", is_flag=True)
def list_command(workspace: str, since: str | None, status: str | None, agent: str | None,
                 search: str | None, limit: int, offset: int, as_json: bool) -> None:
    """List runs, newest first (paginated with --limit/--offset)."""
    from synthhost.traces import list_runs, parse_since

    try:
        since_dt = parse_since(since)
    except ValueError:
        raise UsageError(f"--since {since!r}: use 30m, 24h, 7d or an ISO time") from None
    with cli_host() as host:
        runs = list_runs(host.engine, workspace, since=since_dt, status=status, agent=agent,
                         search=search, limit=limit, offset=offset)
    if as_json:
        click.echo(json.dumps(runs, indent=2))
        return
    for r in runs:
        cost = f" ${r['cost_usd']}" if r["cost_usd"] else ""
        err = f" {r['error_code']}" if r["error_code"] else ""
        click.echo(f"{r['run_id']}  {r['started_at']}  {r['status']:<9} {r['name']}{cost}{err}")


def _load(workspace: str, run_id: str) -> dict[str, object]:
    from synthhost.traces import export_trace, load_trace

    with cli_host() as host:
        trace = load_trace(host.engine, run_id, workspace)
    if trace is None:
        raise UsageError(f"no run {run_id!r} in workspace {workspace!r}")
    return export_trace(trace)


@traces.command("show")
@click.argument("run_id")
@workspace_option
def show(run_id: str, workspace: str) -> None:
    """Show one run as a tree of spans."""
    data = _load(workspace, run_id)
    run = data["run"]
    assert isinstance(run, dict)
    click.echo(f"run {run['run_id']} ({run['name']}) {run['status']}  trace {run['trace_id']}")
    spans = data["spans"]
    assert isinstance(spans, list)
    children: dict[str | None, list[dict[str, object]]] = {}
    for s in spans:
        children.setdefault(s["parent_id"], []).append(s)

    def walk(parent: str | None, depth: int) -> None:
        for s in children.get(parent, []):
            attrs = s["attributes"] if isinstance(s["attributes"], dict) else {}
            extra = ""
            if s["kind"] == "call":
                usage = attrs.get("usage") or {}
                extra = f" tokens={usage.get('total_tokens', 0)} attempts={attrs.get('attempts')}"
                if attrs.get("cost_usd") is not None:
                    extra += f" cost=${attrs['cost_usd']}"
                if attrs.get("turn") is not None:
                    extra = f" turn={attrs['turn']}" + extra
            elif s["kind"] == "tool":
                extra = f" source={attrs.get('source')}"
            err = f" {s['error_code']}" if s["error_code"] else ""
            click.echo(f"{'  ' * depth}- {s['kind']} {s['name']} {s['status']} {s['duration_ms']}ms{extra}{err}")
            walk(str(s["span_id"]), depth + 1)

    walk(None, 1)
    for e in data["events"]:  # type: ignore[attr-defined]
        click.echo(f"  event {e['event_type']} {e['status']}")


@traces.command("export")
@click.argument("run_id")
@workspace_option
@click.option("--format", "fmt", type=click.Choice(["json"]), default="json", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write to this file instead of standard output ('-': standard output).")
@click.option("--save", is_flag=True, help="Write to trace-<run id>-<YYYY-MM-DD>.json here.")
def export(run_id: str, workspace: str, fmt: str, output: str | None, save: bool) -> None:
    """Export one run (spans, events) as JSON, secrets redacted."""
    if save and output is not None:
        raise UsageError("--save and --output: choose one (--save picks the file name, --output names it)")
    if output == "":
        raise UsageError("--output: an empty file name ('-' means standard output)")
    data = _load(workspace, run_id)
    text = json.dumps(data, indent=2)
    if save:
        from synthhost.traces import export_name

        output = export_name(str(data["run"]["run_id"]))  # type: ignore[index]
    if output is None or output == "-":
        click.echo(text)
        return
    try:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    except OSError as exc:
        from synthhost.cli import HostError

        raise HostError(f"--output: cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"wrote {output}", err=True)
