"""Graceful degradation drills through :class:`synthhost.tcp_proxy.TcpProxy`: PostgreSQL
and Redis cut while calls go on, then restored. No call fails, nothing is lost, and
each service is used again once it is back. (``benchmarks/faults.py`` runs the same
drills under a constant load with every exporter, and reports recovery times.)"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis as redis_lib
import sqlalchemy as sa

import synthhost_cost
import synthhost_ratelimit
from synthhost.host import Host
from synthhost.settings import Settings
from synthhost.tcp_proxy import TcpProxy
from synthhost.testing import PG_URL

pytestmark = pytest.mark.anyio


@pytest.fixture
def pg_schema() -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(PG_URL)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    yield name
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')
    engine.dispose()


def count(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())


async def test_database_down_calls_continue_and_every_row_arrives(pg_schema: str, tmp_path: Path) -> None:
    url = sa.engine.make_url(PG_URL)
    with TcpProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        env = {"DATABASE_URL": f"{url.set(host='127.0.0.1', port=proxy.port).render_as_string(hide_password=False)}"
                               f"?options=-csearch_path%3D{pg_schema}",
               "SYNTHHOST_SPOOL_DIR": str(tmp_path / "spool"), "SYNTHHOST_HOME": str(tmp_path / "home")}
        host = Host(Settings.from_env(env), plugins=[synthhost_cost], load_entrypoints=False)
        async with host:
            host.flags.set("track_model_costs", True, workspace="drill")
            for i in range(5):
                await host.complete(model="echo/gpt-4o-mini", messages=f"up {i}", workspace="drill")
            assert await host.writer.flush(timeout=30)
            proxy.cut()
            for i in range(20):  # never waits for the database
                await host.complete(model="echo/gpt-4o-mini", messages=f"down {i}", workspace="drill")
            assert host.writer.pending > 0
            proxy.restore()
            assert await host.writer.flush(timeout=60)
            assert count(host.engine, "SELECT count(*) FROM model_cost_logs WHERE status = 'ok'") == 25
        assert not list((tmp_path / "spool").glob("*"))  # nothing left over at exit


async def test_redis_down_limits_fail_open_with_an_event_then_recover(make_host: Callable[..., Host],
                                                                      redis_url: str) -> None:
    target = redis_lib.Redis.from_url(redis_url).connection_pool.connection_kwargs
    prefix = f"drill:{uuid.uuid4().hex[:8]}"
    with TcpProxy((str(target.get("host", "127.0.0.1")), int(target.get("port", 6379)))) as proxy:
        host = make_host(synthhost_ratelimit, env={"REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0",
                                                   "SYNTHHOST_RATELIMIT_PREFIX": prefix,
                                                   "SYNTHHOST_RATELIMIT_PROBE_S": "0.05"})
        async with host:
            from synthhost_ratelimit.store import set_limit

            set_limit(host.engine, "drill", "workspace", requests=1000, tokens=None, window_s=60.0)
            limiter: Any = synthhost_ratelimit._states[host]
            limiter.refresher.reload()
            host.flags.set("enable_rate_limiting", True, workspace="drill")

            async def calls(n: int) -> None:
                for i in range(n):
                    await host.complete(model="echo/gpt-4o-mini", messages=f"call {i}", workspace="drill")

            await calls(3)
            proxy.cut()
            await calls(10)  # fail open: every call answered
            assert not limiter.guard.healthy
            proxy.restore()

            async def recovered() -> bool:
                await calls(1)
                return bool(limiter.guard.healthy)

            for _ in range(600):
                if await recovered():
                    break
                await anyio.sleep(0.02)
            assert limiter.guard.healthy
            await host.writer.flush()
            with host.engine.connect() as conn:
                types = list(conn.execute(sa.text(
                    "SELECT event_type FROM event_logs WHERE event_type LIKE 'ratelimit_%' ORDER BY created_at"))
                    .scalars())
            assert types == ["ratelimit_degraded", "ratelimit_recovered"]
    client = redis_lib.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()
