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
