"""``synthhost plugins`` and ``synthhost health``."""

from __future__ import annotations

import inspect
import json
from typing import Any

import click

from synthhost.cli.context import cli_host
from synthhost.cli.types import WORKSPACE
from synthhost.hookspecs import spec_names


@click.command("plugins")
@click.option("--workspace", "-w", type=WORKSPACE, help="Also say whether each plugin is active there.")
@click.option("--hook", help="Only plugins implementing this hook.")
@click.option("--json", "as_json", is_flag=True)
def plugins_command(workspace: str | None, hook: str | None, as_json: bool) -> None:
    """List plugins: distribution, version, hooks, gate flag, stage, activity."""
    with cli_host() as host:
        hooks_by_plugin: dict[str, list[str]] = {}
        for name in spec_names():
            for impl in getattr(host.pm.hook, name).get_hookimpls():
                hooks_by_plugin.setdefault(impl.plugin_name, []).append(name)
        if workspace:
            active = host.chains.active(workspace)
        rows: list[dict[str, Any]] = []
        for name in host.plugins.order:
            info = host.plugins.info[name]
            hooks = hooks_by_plugin.get(name, [])
            if hook and hook not in hooks:
                continue
            gate = host.registry.gates.get(name)
            gate_desc = None
            if gate is not None and gate.gate is not None:
                gate_desc = gate.gate if isinstance(gate.gate, str) else "predicate over " + ", ".join(
                    sorted(f.name for f in host.registry.flags.values() if f.plugin == name))
            row: dict[str, Any] = {
                "name": name, "distribution": info.distribution, "version": info.version,
                "module": info.module, "default": info.default, "hooks": hooks, "gate": gate_desc,
                "order": dict(gate.order) if gate else {},
                "flags": sorted(f.name for f in host.registry.flags.values() if f.plugin == name),
            }
            if workspace:
                row["active"] = name in active
            rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = "" if not workspace else ("  active" if r["active"] else "  inactive")
        dist = f"{r['distribution']} {r['version']}" if r["distribution"] else r["module"]
        click.echo(f"{r['name']}  ({dist}){state}")
        click.echo(f"    hooks: {', '.join(r['hooks'])}")
        if r["gate"]:
            click.echo(f"    gate: {r['gate']}")


@click.command()
@click.option("--json", "as_json", is_flag=True)
def health(as_json: bool) -> None:
    """Run every registered health check (and the database's). Exit 1 if any fails."""
    import anyio

    results: list[dict[str, Any]] = []
    with cli_host() as host:
        try:
            with host.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            results.append({"name": "database", "ok": True, "detail": host.engine.url.render_as_string()})
        except Exception as exc:
            results.append({"name": "database", "ok": False, "detail": str(exc)[:200]})
        from synthhost.storage import spool

        waiting = spool.summary(host.settings.spool_dir)
        if waiting:
            detail = f"{sum(waiting.values())} rows waiting in {host.settings.spool_dir} (" + ", ".join(
                f"{t}: {n}" for t, n in sorted(waiting.items())) + "); a host replays them when it starts; rows of " \
                "a table no installed plugin defines stay until that plugin is installed"
            results.append({"name": "spool", "ok": False, "detail": detail})
        else:
            results.append({"name": "spool", "ok": True, "detail": "empty"})
        for name, (plugin, check) in sorted(host.registry.health_checks.items()):
            try:
                outcome = check(host)
                if inspect.isawaitable(outcome):
                    async def wait(o: Any = outcome) -> Any:
                        return await o
                    outcome = anyio.run(wait)
                ok, detail = outcome
            except Exception as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"[:200]
            results.append({"name": name, "plugin": plugin, "ok": bool(ok), "detail": detail})
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        for r in results:
            click.echo(f"{'ok  ' if r['ok'] else 'FAIL'} {r['name']}: {r['detail']}")
    if not all(r["ok"] for r in results):
        raise SystemExit(1)
