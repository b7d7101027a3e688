"""Per-workspace retention (``synthhost retention``): the levels resolve most specific
first, prune deletes per workspace on SQLite and PostgreSQL, and the commands take
bad input as exit 2 with one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import synthhost_cost
from synthhost.cli import cli
from synthhost.host import Host
from synthhost.outbox import OUTBOX_INSERT
from synthhost.retention import GLOBAL, load_policies, prune, resolve, set_policy, unset_policy
from synthhost.storage.models import EventLog, utcnow

EVENTS = EventLog.__table__  # type: ignore[attr-defined]


def test_levels_resolve_most_specific_first() -> None:
    env = {"SYNTHHOST_RETENTION_DAYS": "90", "SYNTHHOST_RETENTION_SPANS_DAYS": "14"}
    assert resolve({}, env, "acme", "spans") == 14 and resolve({}, env, "acme", "runs") == 90
    policies: dict[tuple[str, str], float | None] = {(GLOBAL, GLOBAL): 30, (GLOBAL, "runs"): 7}
    assert resolve(policies, env, "acme", "spans") == 30  # a row beats the environment
    assert resolve(policies, env, "acme", "runs") == 7
    policies[("acme", GLOBAL)] = None  # acme keeps everything...
    policies[("acme", "runs")] = 3  # ...but its runs
    assert resolve(policies, env, "acme", "spans") is None and resolve(policies, env, "acme", "runs") == 3
    assert resolve(policies, env, "beta", "spans") == 30


def events(host: Host, rows: list[tuple[str, int]]) -> None:
    """``(workspace, age in days)`` event rows."""
    now = utcnow()
    with host.engine.begin() as conn:
        conn.execute(EVENTS.insert(), [
            {"id": f"e{i:031d}", "workspace_id": ws, "event_type": "t", "status": "success", "context": {},
             "created_at": now - timedelta(days=age)} for i, (ws, age) in enumerate(rows)])


def left(host: Host) -> dict[str, int]:
    with host.engine.connect() as conn:
        rows = conn.execute(sa.select(EVENTS.c.workspace_id, sa.func.count()).group_by(EVENTS.c.workspace_id))
        return {str(ws): int(n) for ws, n in rows}


def test_prune_applies_each_workspace_its_own_retention(make_host: Callable[..., Host]) -> None:
    host = make_host(synthhost_cost)
    host.migrate()
    events(host, [(ws, age) for ws in ("free", "pro", "keep", "short") for age in (1, 10, 40, 100)])
    specs = host.registry.retention
    set_policy(host.engine, specs, GLOBAL, GLOBAL, 30)
    set_policy(host.engine, specs, "pro", "event_logs", 60)
    set_policy(host.engine, specs, "keep", GLOBAL, None)
    set_policy(host.engine, specs, "short", GLOBAL, 5)
    env = {"SYNTHHOST_RETENTION_DAYS": "2"}  # the rows win over the environment
    plan = {(r.table, r.workspace): r for r in prune(host.engine, env, specs, dry_run=True)}
    assert plan[("event_logs", "pro")].rows == 1 and plan[("event_logs", "pro")].days == 60
    assert plan[("event_logs", "short")].rows == 3
    assert plan[("event_logs", GLOBAL)].rows == 2  # free's two; keep and the others excluded
    assert ("event_logs", "keep") not in plan
    assert left(host) == {"free": 4, "pro": 4, "keep": 4, "short": 4}  # a plan deletes nothing
    done = prune(host.engine, env, specs, batch=1)
    assert sum(r.rows for r in done if r.table == "event_logs") == 6
    assert left(host) == {"free": 2, "pro": 3, "keep": 4, "short": 1}
    assert unset_policy(host.engine, specs, "keep", GLOBAL) is True
    assert unset_policy(host.engine, specs, "keep", GLOBAL) is False
    prune(host.engine, env, specs)
    assert left(host)["keep"] == 2  # back to the global 30 days


def test_tables_without_a_workspace_follow_the_global_levels(make_host: Callable[..., Host]) -> None:
    host = make_host()
    host.migrate()
    old = utcnow() - timedelta(days=40)
    with host.engine.begin() as conn:
        conn.execute(OUTBOX_INSERT.insert(), [{"event_id": f"e{i}", "exporter": "x", "state": "delivered",
                                               "attempts": 1, "next_attempt_at": old, "created_at": old}
                                              for i in range(3)])
    specs = host.registry.retention
    set_policy(host.engine, specs, "acme", "outbox", 1)  # no workspace column: no effect
    assert [r for r in prune(host.engine, {}, specs) if r.table == "outbox"] == []
    set_policy(host.engine, specs, GLOBAL, "outbox", 7)
    (outbox,) = [r for r in prune(host.engine, {}, specs) if r.table == "outbox"]
    assert outbox.rows == 3 and outbox.workspace == GLOBAL


@pytest.fixture
def invoke(db_url: str, tmp_path: Any) -> Callable[..., Any]:
    def run(*args: str, **env: str) -> Any:
        full = {"DATABASE_URL": db_url, "SYNTHHOST_LOAD_PLUGINS": "cost", "SYNTHHOST_HOME": str(tmp_path / "h"),
                "SYNTHHOST_SPOOL_DIR": str(tmp_path / "spool"), **env}
        return CliRunner().invoke(cli, list(args), env=full)

    return run


def test_retention_commands(invoke: Callable[..., Any], make_host: Callable[..., Host]) -> None:
    assert invoke("retention", "plan").output == "no retention configured: nothing would be deleted\n"
    assert invoke("retention", "set", "30", "--global").output == "retention global / *: 30 days\n"
    assert invoke("retention", "set", "forever", "-w", "acme", "-t", "model_cost_logs").exit_code == 0
    listed = json.loads(invoke("retention", "list", "--json").output)
    assert {"workspace": "acme", "table": "model_cost_logs", "days": None} in listed["rows"]
    assert {"table": "model_cost_logs", "workspace": GLOBAL, "days": 30} in listed["effective"]
    assert "model_cost_logs" in listed["tables"]
    host = make_host(synthhost_cost)
    events(host, [("acme", 40), ("beta", 40), ("beta", 1)])
    plan = [json.loads(line) for line in invoke("retention", "plan", "--json").output.splitlines()]
    assert {"table": "event_logs", "workspace": GLOBAL, "days": 30, "rows": 2} in plan
    pruned = [json.loads(line) for line in invoke("db", "prune", "--json").output.splitlines()]
    assert {(p["table"], p["rows"]) for p in pruned if p["rows"]} == {("event_logs", 2)}
    assert load_policies(host.engine)[("acme", "model_cost_logs")] is None
    assert "removed" in invoke("retention", "unset", "-w", "acme", "-t", "model_cost_logs").output
    assert invoke("retention", "set", "7", "-w", "acme").exit_code == 0
    effective = json.loads(invoke("retention", "list", "--json").output)["effective"]
    assert {"table": "event_logs", "workspace": "acme", "days": 7} in effective
    assert not [e for e in effective if e["table"] == "outbox" and e["workspace"] == "acme"]  # no workspace column


def test_the_worker_applies_the_rows(invoke: Callable[..., Any], make_host: Callable[..., Host],
                                     tmp_path: Any, db_url: str) -> None:
    import os
    import subprocess
    import sys

    host = make_host(synthhost_cost)
    host.migrate()
    events(host, [("acme", 40), ("beta", 40), ("beta", 40)])
    assert invoke("retention", "set", "30", "--global").exit_code == 0
    assert invoke("retention", "set", "forever", "--workspace", "acme").exit_code == 0
    env = {"DATABASE_URL": db_url, "SYNTHHOST_LOAD_PLUGINS": "cost", "SYNTHHOST_RETENTION_INTERVAL_S": "1",
           "SYNTHHOST_HOME": str(tmp_path / "h"), "SYNTHHOST_SPOOL_DIR": str(tmp_path / "spool")}
    proc = subprocess.run([sys.executable, "-m", "synthhost", "worker", "--until", "2"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert left(host) == {"acme": 1}


@pytest.mark.parametrize(("args", "message"), [
    (("set", "soon", "--global"), "DAYS='soon': expected a number of days, or 'forever'"),
    (("set", "--global", "--", "-1"), "days must be between 0 and 100000"),
    (("set", "7", "--global", "--table", "model_cost_log"), "did you mean 'model_cost_logs'?"),
    (("set", "7"), "say where: --workspace NAME, or --global"),
    (("set", "7", "--global", "-w", "acme"), "--workspace and --global: choose one"),
    (("unset", "--global", "--table", "nope"), "--table 'nope': not a table with a retention"),
])
def test_retention_bad_input_is_exit_2(invoke: Callable[..., Any], args: tuple[str, ...], message: str) -> None:
    result = invoke("retention", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
