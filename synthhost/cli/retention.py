"""``synthhost retention set|unset|list|plan``: how long each workspace's rows are kept."""

from __future__ import annotations

import json
import os

import click

from synthhost.cli.context import cli_host
from synthhost.cli.types import WORKSPACE, scope_of


@click.group("retention")
def retention_command() -> None:
    """Per-workspace retention: workspace+table → workspace → global+table → global →
    SYNTHHOST_RETENTION_<TABLE>_DAYS → SYNTHHOST_RETENTION_DAYS → forever."""


def _scope(workspace: str | None, is_global: bool) -> str:
    from synthhost.retention import GLOBAL

    return scope_of(workspace, is_global) or GLOBAL


@retention_command.command("set")
@click.argument("days")
@click.option("--workspace", "-w", type=WORKSPACE, help="For one workspace.")
@click.option("--global", "is_global", is_flag=True, help="For every workspace without its own row.")
@click.option("--table", "-t", default="*", show_default=True, help="One declared table ('*': every table).")
def set_command(days: str, workspace: str | None, is_global: bool, table: str) -> None:
    """Keep rows DAYS days (a number, or 'forever')."""
    from synthhost.retention import parse_days, set_policy

    value = parse_days(days)
    scope = _scope(workspace, is_global)
    with cli_host() as host:
        set_policy(host.engine, host.registry.retention, scope, table, value, actor=os.environ.get("USER"))
    kept = "forever" if value is None else f"{value:g} days"
    click.echo(f"retention {'global' if scope == '*' else scope} / {table}: {kept}")


@retention_command.command("unset")
@click.option("--workspace", "-w", type=WORKSPACE, help="Remove one workspace's row.")
@click.option("--global", "is_global", is_flag=True, help="Remove the global row.")
@click.option("--table", "-t", default="*", show_default=True, help="The row's table ('*': every table).")
def unset_command(workspace: str | None, is_global: bool, table: str) -> None:
    """Remove a row, so the next level applies."""
    from synthhost.retention import unset_policy

    scope = _scope(workspace, is_global)
    with cli_host() as host:
        removed = unset_policy(host.engine, host.registry.retention, scope, table)
    click.echo(f"retention {'global' if scope == '*' else scope} / {table}: {'removed' if removed else 'was not set'}")


@retention_command.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_command(as_json: bool) -> None:
    """The rows, then what applies per table (every workspace, and each with a row)."""
    from synthhost.retention import load_policies, reflect, scopes

    with cli_host() as host:
        policies = load_policies(host.engine)
        per_workspace = {n: "workspace_id" in t.c for n, t in reflect(host.engine, host.registry.retention).items()}
        applied = scopes(host.settings.env, host.registry.retention, policies, per_workspace)
        tables = sorted(host.registry.retention)
    rows = [{"workspace": w, "table": t, "days": d} for (w, t), d in sorted(policies.items())]
    effective = [{"table": s.table, "workspace": s.workspace, "days": s.days} for s in applied]
    if as_json:
        click.echo(json.dumps({"rows": rows, "effective": effective, "tables": tables}, indent=2))
        return
    for r in rows:
        kept = "forever" if r["days"] is None else f"{r['days']:g} days"
        click.echo(f"{'global' if r['workspace'] == '*' else r['workspace']}  {r['table']}  {kept}")
    if not rows:
        click.echo("no retention rows (environment defaults apply)")
    kept_forever = [t for t in tables if not any(e["table"] == t for e in effective)]
    for e in effective:
        who = "every other workspace" if e["workspace"] == "*" else e["workspace"]
        click.echo(f"  {e['table']}: {who}: {e['days']:g} days")
    if kept_forever:
        click.echo(f"  kept forever: {', '.join(kept_forever)}")


@retention_command.command("plan")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per delete.")
def plan_command(as_json: bool) -> None:
    """What ``synthhost db prune`` would delete now, per table and workspace (deletes nothing)."""
    from synthhost.retention import prune

    with cli_host() as host:
        results = prune(host.engine, host.settings.env, host.registry.retention, dry_run=True)
    for r in results:
        if as_json:
            click.echo(json.dumps({"table": r.table, "workspace": r.workspace, "days": r.days, "rows": r.rows}))
        else:
            who = "every other workspace" if r.workspace == "*" else r.workspace
            click.echo(f"{r.table}: {who}: would delete {r.rows} rows older than {r.days:g} days")
    if not results and not as_json:
        click.echo("no retention configured: nothing would be deleted")
