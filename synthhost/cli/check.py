"""``synthhost check``: verify a deployment against the checklist, one line per item."""

from __future__ import annotations

import dataclasses
import json

import click

from synthhost.cli.context import cli_host


@click.command()
@click.option("--phase", type=click.IntRange(0, 4), help="Only what rollout phases 0..N need (default: all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: every item, and whether all passed.")
def check_command(phase: int | None, as_json: bool) -> None:
    """Check this deployment: database, migrations, tables, environment, Redis, each
    plugin's service, flags against the phase order, outbox and spool. Prints pass, fail,
    warn or skip (optional, not configured) per item with the reason and the fix; exit 0
    only when no item failed. Nothing is changed: no migration runs, nothing is delivered."""
    import anyio

    from synthhost.checks import run_checks

    # Not started: a check must not migrate, deliver or start workers; it only looks.
    with cli_host(migrate=False) as host:
        outcomes = anyio.run(run_checks, host, phase)
    ok = not any(o.status == "fail" for o in outcomes)
    if as_json:
        click.echo(json.dumps({"ok": ok, "phase": phase, "checks": [dataclasses.asdict(o) for o in outcomes]},
                              indent=2))
    else:
        for o in outcomes:
            click.echo(o.line())
        counts = {s: sum(o.status == s for o in outcomes) for s in ("pass", "fail", "warn", "skip")}
        click.echo(", ".join(f"{n} {s}" for s, n in counts.items()) + (" — ok" if ok else " — FAILED"))
    if not ok:
        raise SystemExit(1)
