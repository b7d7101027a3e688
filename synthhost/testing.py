"""pytest fixtures for synthhost and for plugin authors (loaded through ``pytest11``).

- ``db_url``: every storage test runs twice, on SQLite (a temp file) and on PostgreSQL
  (a fresh schema per test on ``SYNTHHOST_TEST_POSTGRES``, default
  ``postgresql+psycopg://postgres@127.0.0.1:5432/test``). When PostgreSQL is not
  reachable the PostgreSQL variant *fails* under CI (``CI`` set) and is skipped, with a
  message, on a developer's machine.
- ``redis_url``: the same rule for Redis (``SYNTHHOST_TEST_REDIS``, default
  ``redis://127.0.0.1:6379/0``).
- ``redis_prefix``: a fresh key prefix on that Redis (``test:<12 hex>``); every key
  under it is deleted at teardown, so tests sharing one server stay apart.
- No ``anyio_backend`` fixture: a user's own (or anyio's default, asyncio) applies.
- ``make_host(*plugins, env=None, **settings)``: an un-started :class:`Host` on
  ``db_url`` with the default plugins plus ``plugins`` (no entry-point scan). Use
  ``async with make_host(plugin) as host:``. Hosts are stopped at teardown.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from synthhost.host import Host
from synthhost.settings import Settings

PG_URL = os.environ.get("SYNTHHOST_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SYNTHHOST_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _unavailable(what: str, error: Exception) -> None:
    message = f"{what} is not reachable ({type(error).__name__}: {error})"
    if os.environ.get("CI"):
        pytest.fail(message + " - CI requires it", pytrace=False)
    pytest.skip(message + " - start it to run this test")


def _pg_admin() -> Any:
    import psycopg

    return psycopg.connect(PG_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True,
                           connect_timeout=3)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'synthhost.db'}"
        return
    try:
        admin = _pg_admin()
    except Exception as exc:
        _unavailable("PostgreSQL", exc)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in PG_URL else "?"
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:
        _unavailable("Redis", exc)
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    import redis

    prefix = f"test:{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def make_host(db_url: str, tmp_path: Any) -> Iterator[Callable[..., Host]]:
    hosts: list[Host] = []

    def make(*plugins: Any, env: dict[str, str] | None = None, **settings: Any) -> Host:
        base = {"DATABASE_URL": db_url, "SYNTHHOST_FLAG_REFRESH_S": "0.2",
                "SYNTHHOST_SPOOL_DIR": str(tmp_path / "spool"), "SYNTHHOST_HOME": str(tmp_path / "home")}
        full_env = {**os.environ, **base, **(env or {})}
        host = Host(Settings.from_env(full_env), plugins=plugins, load_entrypoints=False)
        if settings:
            import dataclasses

            host.settings = dataclasses.replace(host.settings, **settings)
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        if host._started:
            host._stop_threads()
        host.engine.dispose()
