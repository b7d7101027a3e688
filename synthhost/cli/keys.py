"""``synthhost keys create|list|revoke``: API keys of ``synthhost serve``."""

from __future__ import annotations

import json

import click

from synthhost.cli.context import cli_host
from synthhost.cli.types import WORKSPACE


@click.group("keys")
def keys_command() -> None:
    """API keys for `synthhost serve` (stored as hashes; shown once)."""


@keys_command.command("create")
@click.option("--workspace", "-w", type=WORKSPACE, required=True, help="The key's workspace.")
@click.option("--role", type=click.Choice(["member", "admin"]), default="member", show_default=True)
@click.option("--name", help="A label for listings.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def create(workspace: str, role: str, name: str | None, as_json: bool) -> None:
    """Create a key. It is printed once: it cannot be shown again."""
    from synthhost.gateway.keys import create_key

    with cli_host() as host:
        key, info = create_key(host.engine, workspace, role, name)
    if as_json:
        click.echo(json.dumps({"key": key, **info.to_dict()}, indent=2))
        return
    click.echo(key)
    click.echo(f"id {info.id}, workspace {workspace}, role {role}: store the key now, it is not shown again",
               err=True)


@keys_command.command("list")
@click.option("--workspace", "-w", type=WORKSPACE, help="Only this workspace's keys.")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(workspace: str | None, include_revoked: bool, as_json: bool) -> None:
    """List keys (id, prefix, workspace, role; never the key)."""
    from synthhost.gateway.keys import list_keys

    with cli_host() as host:
        rows = list_keys(host.engine, workspace, include_revoked=include_revoked)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    for r in rows:
        state = f"  revoked {r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else ""
        click.echo(f"{r.id}  {r.prefix}…  {r.workspace}  {r.role}  {r.name or ''}{state}".rstrip())


@keys_command.command("revoke")
@click.argument("key_id")
@click.option("--workspace", "-w", type=WORKSPACE, help="Only if the key belongs to this workspace.")
def revoke(key_id: str, workspace: str | None) -> None:
    """Revoke KEY_ID (an id from `keys list`, or the key itself). Every serve process
    refuses it within SYNTHHOST_FLAG_REFRESH_S seconds."""
    from synthhost.errors import UsageError
    from synthhost.gateway.keys import revoke_key

    with cli_host() as host:
        if not revoke_key(host.engine, key_id, workspace):
            raise UsageError("no such live key" + (f" in workspace {workspace}" if workspace else ""))
    click.echo("revoked")
