"""``synthhost similarity known add|list|rm`` and ``synthhost similarity config``."""

from __future__ import annotations

import json

import click

from synthhost.cli.context import cli_host

workspace_option = click.option("--workspace", "-w", default="default", show_default=True, help="The workspace.")


@click.group()
def similarity() -> None:
    """Prompt similarity: the per-workspace reference library and its settings."""


@similarity.group()
def known() -> None:
    """Curated known prompts (matched like the workspace's earlier prompts)."""


@known.command("add")
@click.argument("text")
@workspace_option
def known_add(text: str, workspace: str) -> None:
    """Add TEXT to the workspace's known prompts."""
    from synthhost_similarity import admin
    from synthhost_similarity.embedders import make_embedder

    with cli_host() as host:
        embedder = make_embedder(host.settings.env)
        try:
            ref_id, created = admin.add_known(host.engine, embedder, workspace, text)
        finally:
            close = getattr(embedder, "close", None)
            if close is not None:
                close()
    if created:
        click.echo(f"added known prompt {ref_id} to workspace {workspace}")
    else:
        click.echo(f"already known as {ref_id} in workspace {workspace}")


@known.command("list")
@workspace_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def known_list(workspace: str, as_json: bool) -> None:
    """List the workspace's known prompts."""
    from synthhost_similarity import admin

    with cli_host() as host:
        rows = admin.list_known(host.engine, workspace)
    if as_json:
        data = [
            {
                "id": r.id,
                "workspace": r.workspace,
                "text": r.text,
                "embedder": r.embedder,
                "created_at": r.created_at.isoformat(),
            }
            for r in rows
        ]
        click.echo(json.dumps(data, indent=2))
        return
    if not rows:
        click.echo(f"no known prompts in workspace {workspace}")
        return
    for r in rows:
        text = " ".join(r.text.split())
        text = text if len(text) <= 70 else text[:69] + "…"
        click.echo(f"{r.id}  {r.created_at:%Y-%m-%d %H:%M}  {text}")


@known.command("rm")
@click.argument("ref_id", metavar="ID")
@workspace_option
def known_rm(ref_id: str, workspace: str) -> None:
    """Remove known prompt ID from the workspace."""
    from synthhost_similarity import admin

    with cli_host() as host:
        admin.remove_known(host.engine, workspace, ref_id)
    click.echo(f"removed known prompt {ref_id} from workspace {workspace}")


@similarity.command("config")
@workspace_option
@click.option("--threshold", help="Score at or above which the action is taken (0-1].")
@click.option(
    "--action",
    type=click.Choice(["blocked", "flagged", "warned"], case_sensitive=False),
    help="What the check does at or above the threshold.",
)
@click.option("--reset", is_flag=True, help="Back to the defaults (before applying the rest).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def config(workspace: str, threshold: str | None, action: str | None, reset: bool, as_json: bool) -> None:
    """Show or set the workspace's threshold and action."""
    from synthhost_similarity import admin
    from synthhost_similarity.service import DEFAULT_ACTION, DEFAULT_THRESHOLD, parse_action, parse_threshold

    value = parse_threshold(threshold, "--threshold") if threshold is not None else None
    act = parse_action(action, "--action") if action is not None else None
    with cli_host() as host:
        env = host.settings.env
        if value is None and act is None and not reset:
            current = admin.read_settings(host.engine, workspace)
        else:
            current = admin.save_settings(host.engine, workspace, threshold=value, action=act, reset=reset)
    default_threshold = parse_threshold(
        env.get("SYNTHHOST_SIMILARITY_THRESHOLD") or DEFAULT_THRESHOLD,
        "SYNTHHOST_SIMILARITY_THRESHOLD",
    )
    default_action = parse_action(
        env.get("SYNTHHOST_SIMILARITY_ACTION") or DEFAULT_ACTION, "SYNTHHOST_SIMILARITY_ACTION"
    )
    effective = {
        "workspace": workspace,
        "threshold": str(current.threshold if current.threshold is not None else default_threshold),
        "threshold_source": "workspace" if current.threshold is not None else "default",
        "action": current.action or default_action,
        "action_source": "workspace" if current.action else "default",
    }
    if as_json:
        click.echo(json.dumps(effective, indent=2))
        return
    click.echo(
        f"workspace {workspace}: threshold {effective['threshold']} "
        f"({effective['threshold_source']}), action {effective['action']} "
        f"({effective['action_source']})"
    )
