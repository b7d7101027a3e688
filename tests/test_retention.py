"""Retention: declared log tables age out in batches, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import synthhost_cost
from synthhost import hookimpl
from synthhost.cli import cli
from synthhost.errors import UsageError
from synthhost.host import Host
from synthhost.outbox import OUTBOX_INSERT
from synthhost.registry import RegistrationError
from synthhost.retention import prune, retention_days
from synthhost.storage.models import utcnow

pytestmark = pytest.mark.anyio

OLD = timedelta(days=40)


def count(host: Host, table: str, where: str = "") -> int:
    with host.engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table} {where}")).scalar_one())


def age(host: Host, table: str, column: str, n: int) -> None:
    """Make the first ``n`` rows of ``table`` 40 days old."""
    with host.engine.begin() as conn:
        ids = conn.execute(sa.text(f"SELECT id FROM {table} ORDER BY {column} LIMIT {n}")).scalars().all()
        t = sa.table(table, sa.column("id"), sa.column(column))
        conn.execute(sa.update(t).where(t.c.id.in_(ids)).values({column: utcnow() - OLD}))


async def calls(host: Host, n: int) -> None:
    async with host:
        host.flags.set("track_model_costs", True, workspace="w1")
        for i in range(n):
            await host.complete(model="echo/gpt-4o-mini", messages=f"hello {i}", workspace="w1")


async def test_prune_deletes_only_what_is_past_its_retention(make_host: Callable[..., Host]) -> None:
    host = make_host(synthhost_cost)
    host.migrate()
    await calls(host, 6)
    assert {"event_logs", "runs", "spans", "outbox", "model_cost_logs"} <= set(host.registry.retention)
    age(host, "model_cost_logs", "created_at", 4)
    age(host, "event_logs", "created_at", 5)
    age(host, "runs", "started_at", 3)
    events = count(host, "event_logs")
    env = {"SYNTHHOST_RETENTION_DAYS": "30", "SYNTHHOST_RETENTION_RUNS_DAYS": "forever",
           "SYNTHHOST_RETENTION_SPANS_DAYS": "90"}
    dry = {r.table: r.rows for r in prune(host.engine, env, host.registry.retention, dry_run=True)}
    assert dry["model_cost_logs"] == 4 and dry["event_logs"] == 5 and "runs" not in dry
    assert count(host, "model_cost_logs") == 6  # a dry run deletes nothing
    done = {r.table: r for r in prune(host.engine, env, host.registry.retention, batch=2)}
    assert done["model_cost_logs"].rows == 4 and done["event_logs"].rows == 5
    assert done["spans"].rows == 0 and done["spans"].days == 90
    assert count(host, "model_cost_logs") == 2 and count(host, "event_logs") == events - 5
    assert count(host, "runs") == 6  # kept forever
    # a second pass finds nothing more
    assert all(r.rows == 0 for r in prune(host.engine, env, host.registry.retention, batch=2))


async def test_prune_keeps_outbox_rows_that_are_still_work(make_host: Callable[..., Host]) -> None:
    host = make_host()
    host.migrate()
    old, new = utcnow() - OLD, utcnow()
    rows = [{"event_id": f"e{i}", "exporter": "x", "state": state, "attempts": 0, "next_attempt_at": when,
             "created_at": when}
            for i, (state, when) in enumerate([("delivered", old), ("delivered", old), ("delivered", new),
                                                ("pending", old), ("parked", old), ("in_flight", old)])]
    with host.engine.begin() as conn:
        conn.execute(OUTBOX_INSERT.insert(), rows)
    (result,) = [r for r in prune(host.engine, {"SYNTHHOST_RETENTION_OUTBOX_DAYS": "7"}, host.registry.retention)]
    assert result.table == "outbox" and result.rows == 2
    with host.engine.connect() as conn:
        left = sorted(conn.execute(sa.text("SELECT state FROM outbox")).scalars())
    assert left == ["delivered", "in_flight", "parked", "pending"]


@pytest.mark.parametrize("value", ["soon", "-3", "1e9", "nan"])
def test_a_bad_retention_value_names_the_variable(value: str) -> None:
    with pytest.raises(UsageError, match="SYNTHHOST_RETENTION_DAYS"):
        retention_days({"SYNTHHOST_RETENTION_DAYS": value}, "spans")
    assert retention_days({}, "spans") is None
    assert retention_days({"SYNTHHOST_RETENTION_DAYS": "10", "SYNTHHOST_RETENTION_SPANS_DAYS": "0"}, "spans") is None


def test_two_plugins_cannot_both_declare_a_table(make_host: Callable[..., Host]) -> None:
    class Thief:
        __name__ = "thief"

        @hookimpl
        def register_retention(self, register: Any) -> None:
            register("model_cost_logs")

    with pytest.raises(RegistrationError, match="model_cost_logs"):
        make_host(synthhost_cost, Thief())


async def test_db_prune_command(make_host: Callable[..., Host], db_url: str) -> None:
    host = make_host(synthhost_cost)
    host.migrate()
    await calls(host, 3)
    age(host, "model_cost_logs", "created_at", 2)
    env = {"DATABASE_URL": db_url, "SYNTHHOST_LOAD_PLUGINS": "cost"}
    runner = CliRunner()
    quiet = runner.invoke(cli, ["db", "prune"], env=env)
    assert quiet.exit_code == 0 and "no retention configured" in quiet.output
    out = runner.invoke(cli, ["db", "prune", "--json", "--batch", "1"],
                        env={**env, "SYNTHHOST_RETENTION_MODEL_COST_LOGS_DAYS": "30"})
    assert out.exit_code == 0, out.output
    (first,) = [json.loads(line) for line in out.output.splitlines()]
    assert first["table"] == "model_cost_logs" and first["rows"] == 2
    assert count(host, "model_cost_logs") == 1
    bad = runner.invoke(cli, ["db", "prune"], env={**env, "SYNTHHOST_RETENTION_DAYS": "soon"})
    assert bad.exit_code == 2 and "SYNTHHOST_RETENTION_DAYS" in bad.output and "Traceback" not in bad.output


async def test_the_worker_prunes_on_its_interval(make_host: Callable[..., Host], db_url: str, tmp_path: Any) -> None:
    host = make_host(synthhost_cost)
    host.migrate()
    await calls(host, 3)
    age(host, "model_cost_logs", "created_at", 3)
    env = {"DATABASE_URL": db_url, "SYNTHHOST_LOAD_PLUGINS": "cost", "SYNTHHOST_RETENTION_DAYS": "30",
           "SYNTHHOST_RETENTION_INTERVAL_S": "1", "SYNTHHOST_HOME": str(tmp_path / "home"),
           "SYNTHHOST_SPOOL_DIR": str(tmp_path / "spool")}
    import os

    proc = subprocess.run([sys.executable, "-m", "synthhost", "worker", "--until", "2"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert count(host, "model_cost_logs") == 0
