"""``synthhost flags list|set|unset``."""

from __future__ import annotations

import dataclasses
import json
import os

import click

from synthhost.cli.context import cli_host
from synthhost.cli.types import WORKSPACE, WorkspaceName, scope_of
from synthhost.errors import UsageError

EVERY = "*"


class WorkspaceOrEvery(WorkspaceName):
    """A workspace name, or ``'*'``: every workspace, over their own rows (the kill switch)."""

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return EVERY if value == EVERY else super().convert(value, param, ctx)


WORKSPACE_OR_EVERY = WorkspaceOrEvery()


@click.group()
def flags() -> None:
    """Feature flags: workspace row → global row → the plugin's default."""


@flags.command("list")
@click.option("--workspace", "-w", type=WORKSPACE, help="Show values as resolved for this workspace.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_flags(workspace: str | None, as_json: bool) -> None:
    """List every declared flag with its effective value and where it comes from."""
    with cli_host() as host:
        states = host.flags.state(workspace)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(s) for s in states], indent=2))
        return
    width = max((len(s.name) for s in states), default=10)
    for s in states:
        value = "on " if s.enabled else "off"
        click.echo(f"{s.name:<{width}}  {value}  {s.source:<9}  ({s.plugin}) {s.description}")


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("on", "true", "1", "yes", "enabled"):
        return True
    if lowered in ("off", "false", "0", "no", "disabled"):
        return False
    raise UsageError(f"flag value {value!r} is not on/off (use on, off, true, false, 1, 0)")


@flags.command("set")
@click.argument("name")
@click.argument("value", default="on")
@click.option("--workspace", "-w", type=WORKSPACE_OR_EVERY,
              help="Set for one workspace; '*': every workspace, over their own rows (the kill switch).")
@click.option("--global", "is_global", is_flag=True, help="Set the global row (every workspace without its own).")
def set_flag(name: str, value: str, workspace: str | None, is_global: bool) -> None:
    """Set NAME to VALUE (on/off, default on) for --workspace W or --global. ``--workspace
    '*'`` forces VALUE in every workspace, whatever their own rows say, until ``flags unset
    NAME --workspace '*'``; running processes follow within the flag refresh bound."""
    enabled = _parse_bool(value)
    workspace = scope_of(workspace, is_global)
    with cli_host() as host:
        host.flags.set(name, enabled, workspace=workspace, actor=os.environ.get("USER"), force=workspace == EVERY)
    scope = "every workspace (forced)" if workspace == EVERY else f"workspace {workspace}" if workspace else "global"
    click.echo(f"{name} = {'on' if enabled else 'off'} ({scope})")


@flags.command("unset")
@click.argument("name")
@click.option("--workspace", "-w", type=WORKSPACE_OR_EVERY,
              help="Remove the workspace's row; '*': lift the kill switch.")
@click.option("--global", "is_global", is_flag=True, help="Remove the global row.")
def unset_flag(name: str, workspace: str | None, is_global: bool) -> None:
    """Remove a row, so the next level (global, then default) applies."""
    workspace = scope_of(workspace, is_global)
    with cli_host() as host:
        removed = host.flags.unset(name, workspace=workspace, force=workspace == EVERY)
    click.echo(f"{name}: {'removed' if removed else 'was not set'} ({workspace or 'global'})")
