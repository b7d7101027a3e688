"""``synthhost worker``: a long-running process that delivers the outbox and runs the
scheduler, and nothing else (no HTTP). Any number of workers may share one database:
outbox claims (``FOR UPDATE SKIP LOCKED``) and cron ticks (``cron_jobs``) are claimed
atomically, so adding workers adds throughput without duplicates."""

from __future__ import annotations

import os
from pathlib import Path

import click

from synthhost.cli.types import WORKSPACE
from synthhost.errors import SynthhostError


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
