"""The ``synthhost`` command line."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from synthhost.errors import SynthhostError, UsageError


class HostError(click.ClickException):
    """A one-line error from the host: exit 1."""

    exit_code = 1


class BadInput(HostError):
    """A file, field or flag was wrong: exit 2, like click's own usage errors."""

    exit_code = 2


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        from synthhost.cli.context import Interrupted

        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise BadInput(exc.message) from None
        except SynthhostError as exc:
            raise HostError(str(exc)) from None
        except Interrupted as exc:
            click.echo(f"Interrupted by {exc}: completed calls were saved.", err=True)
            ctx.exit(128 + exc.signum)
        except Exception as exc:
            # SQLAlchemy is imported lazily (only commands that touch the database load
            # it), so if it is not loaded yet this cannot be one of its errors.
            sa_exc = sys.modules.get("sqlalchemy.exc")
            if sa_exc is not None and isinstance(exc, sa_exc.OperationalError):
                raise HostError(f"database error: {str(exc.orig).strip().splitlines()[0]}") from None
            if isinstance(exc, click.exceptions.Exit | click.ClickException | click.Abort):
                raise
            if isinstance(exc, RecursionError):
                raise BadInput("input nested too deeply") from None
            if isinstance(exc, OverflowError):
                raise BadInput(f"a number is out of range: {_first_line(exc)}") from None
            if isinstance(exc, OSError):
                raise HostError(f"{getattr(exc, 'filename', None) or 'I/O'}: {exc.strerror or exc}") from None
            # Never a traceback: one line, exit 1; -vv logs the traceback for a bug report.
            logging.getLogger("synthhost.cli").debug("unexpected error", exc_info=True)
            raise HostError(f"unexpected error ({type(exc).__name__}): {_first_line(exc)}; "
                            "run with -vv for details") from None


@click.group(cls=Group)
@click.version_option(package_name="synthhost")
@click.option("-v", "--verbose", count=True, help="Log more (-vv for debug).")
def cli(verbose: int) -> None:
    """synthhost: run agents, and every LLM call through a chain of plugins."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _attach() -> None:
    from synthhost.cli import db, flags, plugins, traces

    for command in (flags.flags, db.db, traces.traces, plugins.plugins_command, plugins.health):
        cli.add_command(command)
    from synthhost.cli.run import run_command

    cli.add_command(run_command, "run")
    from synthhost.cli.models import models_command

    cli.add_command(models_command, "models")
    from synthhost.cli.worker import worker_command

    cli.add_command(worker_command, "worker")
    from synthhost.cli.queue import queue_command
    from synthhost.cli.schedule import schedule_command

    cli.add_command(queue_command, "queue")
    cli.add_command(schedule_command, "schedule")
    from synthhost.cli.keys import keys_command
    from synthhost.cli.serve import serve_command

    cli.add_command(serve_command, "serve")
    cli.add_command(keys_command, "keys")
    from synthhost.cli.check import check_command

    cli.add_command(check_command, "check")
    from synthhost.cli.retention import retention_command

    cli.add_command(retention_command, "retention")
    # Plugin commands: the same plugin set a host would load.
    # Plugin commands come from the same plugin set a host would load (allow-list
    # honoured), even under tests: commands are inert until invoked.
    import os

    from synthhost.plugins import PluginSet

    plugin_set = PluginSet()
    plugin_set.register_defaults()
    plugin_set.load_entrypoints(os.environ)
    for impl in plugin_set.pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            click.echo(f"warning: plugin {impl.plugin_name} could not add its commands: "
                       f"{type(exc).__name__}: {exc}", err=True)


_attach()
