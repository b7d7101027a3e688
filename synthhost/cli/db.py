"""``synthhost db upgrade|downgrade|current``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from synthhost.cli.context import cli_host
from synthhost.errors import UsageError


@contextlib.contextmanager
def _revision_errors(revision: str) -> Iterator[None]:
    """Alembic's refusals of a revision name (unknown, ambiguous, empty) are bad input."""
    if not revision.strip() or not revision.isprintable() or len(revision) > 200:
        raise UsageError(f"REVISION: {revision[:40]!r} is not a revision (heads, base, <branch>@head, -1, an id)")
    from alembic.util import CommandError

    try:
        yield
    except (CommandError, KeyError, ValueError, AssertionError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"REVISION {revision!r}: {text[:200]}") from None


@click.group()
def db() -> None:
    """Database migrations: the host's Alembic branch plus one per plugin."""


@db.command()
@click.argument("revision", default="heads")
def upgrade(revision: str) -> None:
    """Apply migrations (default: every branch to its head)."""
    from synthhost.storage import db as storage

    with cli_host(migrate=False) as host, _revision_errors(revision):
        host.migrate(revision)
        click.echo(f"upgraded to {', '.join(sorted(storage.current(host.engine))) or 'base'}")


@db.command()
@click.argument("revision")
def downgrade(revision: str) -> None:
    """Revert migrations to REVISION: ``base`` (everything), ``cost@base`` (one plugin's
    branch), ``-1`` or a revision id."""
    from synthhost.storage import db as storage

    with cli_host(migrate=False) as host, _revision_errors(revision):
        storage.downgrade(host.engine, host.registry.migrations, revision)
        click.echo(f"now at {', '.join(sorted(storage.current(host.engine))) or 'base'}")


@db.command()
def current() -> None:
    """Show the applied revision of every branch, and whether it is the head."""
    from synthhost.storage import db as storage

    with cli_host(migrate=False) as host:
        applied = storage.current(host.engine)
        heads = storage.heads(host.engine, host.registry.migrations)
        click.echo(f"database: {host.engine.url.render_as_string(hide_password=True)}")
        for rev in sorted(applied | heads):
            state = "head" if rev in applied and rev in heads else ("pending" if rev in heads else "old")
            click.echo(f"  {rev}  {state}")


@db.command()
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--batch", type=click.IntRange(1, 1_000_000), default=5_000, show_default=True,
              help="Rows per delete transaction.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per table.")
def prune(dry_run: bool, batch: int, as_json: bool) -> None:
    """Delete log rows older than their retention (``synthhost retention``,
    SYNTHHOST_RETENTION_DAYS, SYNTHHOST_RETENTION_<TABLE>_DAYS), in small batches, from every
    table the host and the installed plugins declare."""
    import json

    from synthhost.retention import GLOBAL
    from synthhost.retention import prune as run_prune

    with cli_host() as host:
        specs = host.registry.retention
        results = run_prune(host.engine, host.settings.env, specs, batch=batch, dry_run=dry_run)
        if not results and not as_json:
            click.echo("no retention configured (synthhost retention set, SYNTHHOST_RETENTION_DAYS or "
                       f"SYNTHHOST_RETENTION_<TABLE>_DAYS); declared tables: {', '.join(sorted(specs))}")
            return
        for result in results:
            if as_json:
                click.echo(json.dumps({"table": result.table, "workspace": result.workspace, "days": result.days,
                                       "rows": result.rows, "dry_run": result.dry_run, "seconds": result.seconds}))
            else:
                verb = "would delete" if dry_run else "deleted"
                who = "" if result.workspace == GLOBAL else f" (workspace {result.workspace})"
                click.echo(f"{result.table}{who}: {verb} {result.rows} rows older than {result.days:g} days "
                           f"({result.seconds:.2f} s)")
