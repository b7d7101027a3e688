"""``synthhost schedule run|status|enable|disable``: agents on their cron ``schedule``.

See :mod:`synthhost.scheduler` for what "due", "claim", "overlap" and "backoff" mean.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import TYPE_CHECKING

import click

from synthhost.cli import Group
from synthhost.cli.types import WORKSPACE
from synthhost.default_plugins.scheduler import FLAG
from synthhost.errors import SynthhostError, UsageError

if TYPE_CHECKING:
    from synthhost.host import Host
    from synthhost.scheduler import JobState, Outcome, Scheduler, Summary


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _one_line(text: str | None, width: int | None = None) -> str:
    line = " ".join((text or "").split())
    return line if width is None or len(line) <= width else line[: width - 1] + "…"


def format_outcome(outcome: Outcome) -> str:
    """One line per tick: ``2024-05-06 09:15:00Z support/support-triage ok run RUN_ID in 12.3 ms``."""
    head = f"{_when(outcome.scheduled_for)} {outcome.job.label}"
    if outcome.kind == "ok":
        return f"{head} ok run {outcome.run_id} in {outcome.duration_ms:.1f} ms"
    if outcome.kind == "skipped":
        return f"{head} skipped: the previous run is still running (next {_when(outcome.next_run_at)})"
    if outcome.kind == "cancelled":
        return f"{head} cancelled"
    line = f"{head} error {_one_line(outcome.error, 200)} (failure {outcome.failures}"
    if outcome.disabled:
        ws = outcome.job.workspace
        return line + f"; disabled: synthhost schedule enable {outcome.job.agent} --workspace {ws})"
    if outcome.delay_s is not None:
        line += f"; backoff {outcome.delay_s:g} s"
    return line + f"; next {_when(outcome.next_run_at)})"


@click.group("schedule", cls=Group)
def schedule_command() -> None:
    """Run agents on their cron `schedule` (UTC), with failure backoff.

    \b
    State (next run, failures, disabled) is shared by every process on the database;
    several schedulers may run at once: each tick runs once.
    """


@schedule_command.command("run")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...", type=click.Path(exists=True))
@click.option("-w", "--workspace", type=WORKSPACE, default=None,
              help="Run every agent in this workspace (default: each agent's).")
@click.option("--once", is_flag=True, help="Run the jobs due now, then exit (for system cron and CI).")
@click.option("--max-runs", type=click.IntRange(min=1), metavar="N", help="Stop after starting N runs.")
@click.option("--until", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop starting runs after SECONDS (runs in flight finish).")
@click.option("--durable", is_flag=True,
              help="Queue each tick as a durable run for synthhost worker processes, and wait for it.")
@click.pass_context
def run_schedule(
    ctx: click.Context, paths: tuple[str, ...], workspace: str | None, once: bool, max_runs: int | None,
    until: float | None, durable: bool,
) -> None:
    """Run scheduled agents (files, or directories of *.yaml) whenever they are due.

    \b
    Only agents with a `schedule` are run; each run goes through the plugin chain like
    `synthhost run` (with the inputs' defaults). Missed ticks are caught up with one run;
    a tick that arrives while the previous run is still going is skipped.
    Exit status: 0; with --once, 1 when a run failed; 2 on bad input.
    Example: synthhost schedule run examples/ --until 3600
    """
    from synthhost.scheduler import Scheduler, load_jobs

    if once and until is not None:
        raise UsageError("--until: has no effect with --once")
    jobs = load_jobs(paths, workspace)

    async def main() -> tuple[Summary, list[JobState]] | SynthhostError:
        from synthhost.agent import check_providers
        from synthhost.cli.context import open_host

        # Errors come back as values (raised inside a task group they would be wrapped).
        try:
            async with open_host() as host:
                for job in jobs:
                    check_providers(job.spec, host.registry.providers, job.spec.source)
                scheduler = Scheduler(host, jobs, on_outcome=lambda o: click.echo(format_outcome(o)),
                                      durable=durable)
                if once:
                    summary = await scheduler.run_pending(max_runs)
                else:
                    await scheduler.prepare()
                    _plan(host, scheduler)
                    summary = await scheduler.serve(until=until, max_runs=max_runs)
                return summary, list(scheduler.states.values())
        except SynthhostError as exc:
            return exc

    from synthhost.cli.context import run_async

    outcome = run_async(main)
    if isinstance(outcome, SynthhostError):
        raise outcome
    summary, states = outcome
    parts = [f"{summary.ok} ok", f"{summary.failed} failed"] + ([f"{summary.skipped} skipped"] if summary.skipped
                                                                  else [])
    click.echo(f"{summary.runs} run{'s' if summary.runs != 1 else ''}: {', '.join(parts)}", err=True)
    if once:
        for state in states:
            click.echo(f"{state.workspace}/{state.agent}: {_state_text(state)}", err=True)
        ctx.exit(1 if summary.failed else 0)


def _plan(host: Host, scheduler: Scheduler) -> None:
    for job in scheduler.jobs:
        state = scheduler.states[job.key]
        backoff = "on" if host.flags.is_enabled(job.workspace, FLAG) else "off"
        click.echo(f"{job.label} [{job.schedule}] {_state_text(state)}, backoff {backoff}", err=True)


def _state_text(state: JobState) -> str:
    if state.disabled:
        return f"disabled after {state.failures} failures"
    text = f"next run {_when(state.next_run_at)}"
    return text + (f", {state.failures} consecutive failures" if state.failures else "")


@schedule_command.command("status")
@click.option("-w", "--workspace", type=WORKSPACE, default=None, help="Only this workspace.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(workspace: str | None, as_json: bool) -> None:
    """Every scheduled agent: next run, failures, disabled, last run and error."""
    from synthhost.cli.context import cli_host
    from synthhost.scheduler import CronStore
    from synthhost.storage.models import utcnow

    now = utcnow()
    with cli_host() as host:
        states = CronStore(host.engine).list(workspace)
        backoff = {ws: host.flags.is_enabled(ws, FLAG) for ws in {s.workspace for s in states}}
    if as_json:
        click.echo(json.dumps([{**s.to_dict(now), "backoff": backoff[s.workspace]} for s in states], indent=2))
        return
    if not states:
        click.echo("no scheduled agents (start one with: synthhost schedule run PATH)")
        return
    rows = [("AGENT", "SCHEDULE", "NEXT RUN", "FAILURES", "STATE", "LAST RUN", "LAST ERROR")]
    for s in states:
        state = "disabled" if s.disabled else "running" if s.running(now) else "enabled"
        if backoff[s.workspace] and not s.disabled:
            state += "+backoff"
        last = f"{_when(s.last_run_at)} {s.last_status or ''}".strip() if s.last_run_at else "-"
        rows.append((f"{s.workspace}/{s.agent}", s.schedule or "-", "-" if s.disabled else _when(s.next_run_at),
                     str(s.failures), state, last, _one_line(s.last_error, 60) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])


def _set_enabled(agent: str, workspace: str | None, enabled: bool) -> None:
    from synthhost.cli.context import cli_host
    from synthhost.scheduler import CronStore
    from synthhost.storage.models import utcnow

    with cli_host() as host:
        store = CronStore(host.engine)
        job = store.find(agent, workspace)
        state = store.set_enabled(job, enabled, utcnow())
        actor = os.environ.get("USER")
        if enabled:
            host.emit("cron_job_enabled", workspace=job.workspace, agent=job.agent, by=actor,
                      previous_failures=job.failures, was_disabled=job.disabled,
                      next_run_at=state.next_run_at.isoformat() if state.next_run_at else None)
        else:
            host.emit("cron_job_disabled", workspace=job.workspace, agent=job.agent, reason="manual", by=actor,
                      failures=job.failures)
        host.writer.flush_sync(host.settings.shutdown_timeout_s)
    label = f"{job.workspace}/{job.agent}"
    if enabled:
        click.echo(f"{label} enabled (failures cleared); next run {_when(state.next_run_at)}")
    else:
        click.echo(f"{label} disabled{' (it already was)' if job.disabled else ''}")


@schedule_command.command("enable")
@click.argument("agent")
@click.option("-w", "--workspace", type=WORKSPACE, default=None, help="The agent's workspace (needed when in several).")
def enable(agent: str, workspace: str | None) -> None:
    """Re-enable AGENT: clears its failures, backoff and disabled state."""
    _set_enabled(agent, workspace, True)


@schedule_command.command("disable")
@click.argument("agent")
@click.option("-w", "--workspace", type=WORKSPACE, default=None, help="The agent's workspace (needed when in several).")
def disable(agent: str, workspace: str | None) -> None:
    """Disable AGENT until `synthhost schedule enable`."""
    _set_enabled(agent, workspace, False)
