"""``synthhost worker``: a long-running process that executes durable runs (with the
``durable`` extra: DBOS queues, see synthhost.durable), delivers the outbox and runs the
scheduler, and nothing else (no HTTP). Any number of workers may share one database:
durable runs are dequeued by DBOS, outbox claims (``FOR UPDATE SKIP LOCKED``) and cron
ticks (``cron_jobs``) are claimed atomically, so adding workers adds throughput without
duplicates."""

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
@click.option("--durable/--no-durable", default=None,
              help="Execute durable runs (default: when the 'durable' extra is installed).")
@click.option("-c", "--concurrency", type=click.IntRange(1, 10_000), default=4, show_default=True,
              help="Durable runs this worker executes at once.")
@click.option("-q", "--queues", default="synthhost-runs", show_default=True, metavar="NAMES",
              help="Comma-separated durable queues to take runs from.")
def worker_command(schedule_paths: tuple[Path, ...], workspace: str | None, until: float | None,
                   durable: bool | None, concurrency: int, queues: str) -> None:
    """Execute durable runs, deliver the outbox to exporters (and run scheduled agents)
    until stopped.

    \b
    SIGTERM or Ctrl-C stops it cleanly: deliveries and durable runs in flight get
    SYNTHHOST_SHUTDOWN_TIMEOUT to finish (unfinished runs go back to the queue for
    the other workers), queued rows are flushed, exit status 0.
    """
    import anyio

    from synthhost.cli.context import Interrupted, open_host, run_async

    queue_names = tuple(q.strip() for q in queues.split(",") if q.strip())
    if not queue_names or any(len(q) > 100 or q.startswith("_dbos_") for q in queue_names):
        raise UsageError(f"--queues {queues!r}: expected comma-separated queue names (at most 100 characters, "
                         "not starting with _dbos_)")
    if durable is None:
        durable = _durable_installed()
    jobs = []
    if schedule_paths:
        from synthhost.scheduler import load_jobs

        jobs = load_jobs([str(p) for p in schedule_paths], workspace)

    async def main() -> SynthhostError | None:
        try:
            env = {"SYNTHHOST_GC_FREEZE": "1", **os.environ, "SYNTHHOST_DELIVERY": "inline"}  # this process delivers
            async with open_host(env=env) as host:
                exporters = sorted(host._outbox.lanes) if host._outbox is not None else []
                runner = None
                if durable:  # its settings are checked before any thread starts
                    from synthhost.durable import Worker

                    runner = Worker(host, queues=queue_names, concurrency=concurrency)
                pruning = _start_pruning(host)
                try:
                    if runner is not None:
                        await anyio.to_thread.run_sync(runner.start)
                    click.echo(f"worker: delivering to {', '.join(exporters) or 'no configured exporter'}"
                               + (f"; durable runs from {', '.join(queue_names)} (executor {runner.executor_id},"
                                  f" concurrency {concurrency})" if runner else "")
                               + (f"; {len(jobs)} scheduled agent(s)" if jobs else ""), err=True)
                    if jobs:
                        from synthhost.agent import check_providers
                        from synthhost.scheduler import Scheduler

                        for job in jobs:
                            check_providers(job.spec, host.registry.providers, job.spec.source)
                        scheduler = Scheduler(host, jobs, durable=runner is not None)
                        await scheduler.prepare()
                        await scheduler.serve(until=until)
                    elif until is not None:
                        await anyio.sleep(until)
                    else:
                        await anyio.sleep_forever()
                finally:
                    pruning.set()  # before the host (and its engine) closes
                    if runner is not None:
                        with anyio.CancelScope(shield=True):
                            await anyio.to_thread.run_sync(runner.stop, host.settings.shutdown_timeout_s)
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


def _durable_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("dbos") is not None


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
