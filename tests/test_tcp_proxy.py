"""The fault-drill proxy in front of real Redis and PostgreSQL: traffic passes, a cut
refuses new connections and drops open ones, a restore serves again on the same port."""

from __future__ import annotations

import pytest
import redis
import sqlalchemy as sa
from redis.backoff import NoBackoff
from redis.retry import Retry

from synthhost.tcp_proxy import TcpProxy


def test_proxy_in_front_of_redis(redis_url: str) -> None:
    target = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    with TcpProxy((target.get("host", "127.0.0.1"), int(target.get("port", 6379)))) as proxy:
        client = redis.Redis(port=proxy.port, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
        assert client.ping() is True
        port = proxy.port
        proxy.cut()
        with pytest.raises(redis.ConnectionError):
            client.ping()  # the open connection was dropped
        with pytest.raises(redis.ConnectionError):
            client.ping()  # and a new one is refused
        proxy.restore()
        assert proxy.port == port and client.ping() is True
        assert proxy.accepted == 2
        client.close()


def test_proxy_in_front_of_postgresql() -> None:
    from synthhost.testing import PG_URL

    url = sa.engine.make_url(PG_URL)
    with TcpProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        engine = sa.create_engine(url.set(port=proxy.port, host="127.0.0.1"), pool_pre_ping=True,
                                  connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
        proxy.cut()
        with pytest.raises(sa.exc.OperationalError), engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        proxy.restore()
        with engine.connect() as conn:  # the pool's dead connection is replaced
            assert conn.exec_driver_sql("SELECT 2").scalar_one() == 2
        engine.dispose()
