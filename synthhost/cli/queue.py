"""``synthhost queue stats|retry-parked``: the exporter outbox; ``queue stats --durable``
and ``queue cancel``: durable runs (synthhost.durable)."""

from __future__ import annotations

import json
import os

import click

from synthhost.cli.context import cli_host
from synthhost.errors import UsageError

COLUMNS = ("pending", "retrying", "in_flight", "delivered", "parked")


@click.group("queue")
def queue_command() -> None:
    """The outbox that feeds exporters (RudderStack...): what waits, what failed."""


@queue_command.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--durable", is_flag=True, help="The durable-run queues instead (synthhost worker).")
def stats(as_json: bool, durable: bool) -> None:
    """Per exporter: pending, retrying, in flight, delivered, parked, oldest pending age
    and the last error. With --durable: per durable queue, runs queued and running, the
    oldest queued run's wait, and the live workers."""
    from synthhost.outbox import queue_stats

    if durable:
        _durable_stats(as_json)
        return

    with cli_host() as host:
        result = queue_stats(host.engine, host.registry.exporters)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    if not result:
        click.echo("no exporters registered and nothing queued")
        return
    width = max(8, *(len(name) for name in result))
    click.echo(f"{'exporter':<{width}}  " + "  ".join(f"{c:>9}" for c in COLUMNS) + "  oldest")
    for name, row in sorted(result.items()):
        age = row["oldest_pending_age_s"]
        cells = "  ".join(f"{row[c]:>9}" for c in COLUMNS)
        click.echo(f"{name:<{width}}  {cells}  {'-' if age is None else f'{age:.1f}s'}")
        if row["last_error"]:
            click.echo(f"{'':<{width}}  last error: {row['last_error']}")


def _durable_stats(as_json: bool) -> None:
    from synthhost import durable

    with cli_host() as host:
        queues = durable.queue_stats(host)
        workers = durable.live_workers(host)
    if as_json:
        click.echo(json.dumps({"queues": queues, "workers": [
            {"executor_id": w["executor_id"], "app_version": w["app_version"], "queues": w["queues"].split(","),
             "concurrency": w["concurrency"]} for w in workers]}, indent=2, sort_keys=True))
        return
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}s"

    click.echo(f"{'queue':<20}  {'queued':>7}  {'running':>7}  {'oldest':>8}  wait p50/p95 (runs started, 5 min)")
    empty = {"queued": 0, "running": 0, "oldest_queued_age_s": None, "wait_p50_s": None, "wait_p95_s": None,
             "started_5m": 0}
    for name, row in sorted(queues.items()) or [(durable.QUEUE, empty)]:
        click.echo(f"{name:<20}  {row['queued']:>7}  {row['running']:>7}  {seconds(row['oldest_queued_age_s']):>8}"
                   f"  {seconds(row['wait_p50_s'])}/{seconds(row['wait_p95_s'])} ({row['started_5m']})")
    click.echo(f"{len(workers)} live worker(s)"
               + "".join(f"\n  {w['executor_id']}  version {w['app_version']}  concurrency {w['concurrency']}"
                         for w in workers))


@queue_command.command("cancel")
@click.argument("run_id")
def cancel_command(run_id: str) -> None:
    """Cancel a durable run: a queued run never starts, a running one stops at its next
    step boundary and is recorded cancelled."""
    from synthhost import durable

    with cli_host() as host:
        status = durable.cancel(host, run_id)
    click.echo(f"run {run_id}: {status}" if status != "running" else
               f"run {run_id}: cancelling (stops at its next step boundary)")


@queue_command.command("retry-parked")
@click.option("--exporter", "-e", help="Only this exporter's parked rows.")
def retry_parked_command(exporter: str | None) -> None:
    """Put parked rows (refused by the receiver) back in the queue, due now."""
    from synthhost.outbox import queue_stats, retry_parked

    with cli_host() as host:
        known = set(queue_stats(host.engine, host.registry.exporters))
        if exporter is not None and exporter not in known:
            from synthhost.flags import suggest

            names = ", ".join(sorted(known)) or "none registered"
            raise UsageError(
                f"--exporter {exporter!r} is not a registered exporter{suggest(exporter, sorted(known))}"
                f" (known: {names})"
            )
        count = retry_parked(host.engine, exporter)
    click.echo(f"re-queued {count} parked row(s){f' for {exporter}' if exporter else ''}")


WAITING = ("pending", "retrying", "in_flight")


@queue_command.command("drain")
@click.option("--timeout", type=click.FloatRange(min=0, max=86400), default=60.0, show_default=True,
              metavar="SECONDS", help="Give up after this long.")
@click.option("--json", "as_json", is_flag=True, help="Print the final counts as JSON.")
@click.pass_context
def drain_command(ctx: click.Context, timeout: float, as_json: bool) -> None:
    """Deliver everything waiting in the outbox, then exit.

    \b
    Exit status: 0 when nothing is left waiting (pending, retrying, in flight); 1 with
    the counts per exporter when something is (a receiver down, an exporter not
    configured in this environment). Parked rows are reported, not waited for
    (`synthhost queue retry-parked` puts them back).
    """
    from synthhost.cli.context import open_host, run_async
    from synthhost.outbox import queue_stats, retry_due_now

    async def main() -> dict[str, dict[str, object]]:
        import anyio

        async with open_host(env={**os.environ, "SYNTHHOST_DELIVERY": "inline"}) as host:
            await host.writer.flush()
            retry_due_now(host.engine)  # rows backing off are due now: this is a drain
            outbox = host._outbox
            if outbox is not None:
                outbox.wake()
            with anyio.move_on_after(timeout):
                while True:
                    stats = await anyio.to_thread.run_sync(queue_stats, host.engine, host.registry.exporters)
                    if not any(row[k] for row in stats.values() for k in WAITING):
                        break
                    await anyio.sleep(0.1)
            return await anyio.to_thread.run_sync(queue_stats, host.engine, host.registry.exporters)

    result = run_async(main)
    left = {name: {k: row[k] for k in (*WAITING, "parked")} for name, row in result.items()}
    waiting = sum(int(row[k]) for row in left.values() for k in WAITING)  # type: ignore[call-overload]
    if as_json:
        click.echo(json.dumps({"waiting": waiting, "exporters": left}, indent=2, sort_keys=True))
    else:
        for name, row in sorted(left.items()):
            click.echo(f"{name}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
        click.echo("outbox drained" if not waiting else f"{waiting} row(s) still waiting after {timeout:g}s",
                   err=bool(waiting))
    ctx.exit(1 if waiting else 0)
