"""``synthhost worker``: a long-running process that delivers the outbox and runs the
scheduler, and nothing else (no HTTP). Any number of workers may share one database:
outbox claims (``FOR UPDATE SKIP LOCKED``) and cron ticks (``cron_jobs``) are claimed
atomically, so adding workers adds throughput without duplicates."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import click

from synthhost.cli.types import WORKSPACE
from synthhost.errors import SynthhostError, UsageError

log = logging.getLogger("synthhost.worker")


@click.command("worker")
@click.option("--schedule", "schedule_paths", multiple=True, type=click.Path(exists=True, path_type=Path),
              metavar="PATH", help="Also run the scheduled agents in PATH (file or directory; repeatable).")
@click.option("-w", "--workspace", type=WORKSPACE, default=None, help="Run scheduled agents in this workspace.")
@click.option("--until", type=click.FloatRange(min=0, min_open=True, max=10 * 365 * 86400), metavar="SECONDS",
              help="Stop after SECONDS (default: run until SIGTERM or Ctrl-C).")
def worker_command(schedule_paths: tuple[Path, ...], workspace: str | None, until: float | None) -> None:
    """Deliver the outbox to exporters (and run scheduled agents) until stopped.

    \b
    SIGTERM or Ctrl-C stops it cleanly: deliveries in flight finish within
    SYNTHHOST_SHUTDOWN_TIMEOUT, queued rows are flushed, exit status 0.
    """
    import anyio

    from synthhost.cli.context import Interrupted, open_host, run_async

    jobs = []
    if schedule_paths:
        from synthhost.scheduler import load_jobs

        jobs = load_jobs([str(p) for p in schedule_paths], workspace)

    async def main() -> SynthhostError | None:
        try:
            async with open_host(env={**os.environ, "SYNTHHOST_DELIVERY": "inline"}) as host:  # this process delivers
                exporters = sorted(host._outbox.lanes) if host._outbox is not None else []
                pruning = _start_pruning(host)
                try:
                    click.echo(f"worker: delivering to {', '.join(exporters) or 'no configured exporter'}"
                               + (f"; {len(jobs)} scheduled agent(s)" if jobs else ""), err=True)
                    if jobs:
                        from synthhost.agent import check_providers
                        from synthhost.scheduler import Scheduler

                        for job in jobs:
                            check_providers(job.spec, host.registry.providers, job.spec.source)
                        scheduler = Scheduler(host, jobs)
                        await scheduler.prepare()
                        await scheduler.serve(until=until)
                    elif until is not None:
                        await anyio.sleep(until)
                    else:
                        await anyio.sleep_forever()
                finally:
                    pruning.set()  # before the host (and its engine) closes
        except SynthhostError as exc:
            return exc
        return None

    try:
        outcome = run_async(main)
    except Interrupted as exc:
        click.echo(f"worker: stopped by {exc}", err=True)
        return
    if outcome is not None:
        raise outcome
    click.echo("worker: done", err=True)


def _start_pruning(host: Any) -> threading.Event:
    """Prune past-retention rows every SYNTHHOST_RETENTION_INTERVAL_S (3600) in a thread
    (see synthhost.retention; the rows are read at every pass, so ``synthhost retention
    set`` applies without a restart). Returns its stop event."""
    from synthhost.retention import GLOBAL, prune

    stop = threading.Event()
    env = host.settings.env
    raw = env.get("SYNTHHOST_RETENTION_INTERVAL_S") or "3600"
    try:
        interval = float(raw)
        if not 1 <= interval <= 7 * 86400:
            raise ValueError
    except ValueError:
        raise UsageError(f"SYNTHHOST_RETENTION_INTERVAL_S={raw!r}: expected seconds between 1 and 604800") from None

    def loop() -> None:
        while True:
            try:
                for result in prune(host.engine, env, host.registry.retention):
                    if result.rows:
                        log.info("retention: deleted %d rows of %s%s older than %g days", result.rows, result.table,
                                 "" if result.workspace == GLOBAL else f" (workspace {result.workspace})", result.days)
                        host.stats[f"retention_pruned.{result.table}"] += result.rows
            except Exception as exc:  # the database may be away: try at the next interval
                log.warning("retention: prune failed: %s: %s", type(exc).__name__, exc)
            if stop.wait(interval):
                return

    threading.Thread(target=loop, name="synthhost-retention", daemon=True).start()
    return stop
