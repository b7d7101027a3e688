"""Fixtures for the rate-limit tests: a test clock, both backends on it, a unique Redis
key prefix cleaned up after each test, and a private redis-server to kill and restart."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from synthhost_ratelimit.local import LocalLimiter
from synthhost_ratelimit.redis_backend import RedisLimiter, connect


class FakeClock:
    """Microseconds, moved by hand; both backends read it (Redis via ARGV)."""

    def __init__(self, start_s: float = 1_700_000_000.0) -> None:
        self.now = int(start_s * 1_000_000)

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float = 0.0, *, us: int = 0) -> None:
        self.now += round(seconds * 1_000_000) + us


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rl_prefix(redis_prefix: str) -> str:
    return redis_prefix


@pytest.fixture
def make_limiter(redis_url: str, rl_prefix: str, clock: FakeClock) -> Callable[..., Any]:
    """``async with make_limiter("redis"|"local") as lim`` (on the test clock by default)."""

    @contextlib.asynccontextmanager
    async def make(kind: str, *, real_clock: bool = False) -> AsyncIterator[Any]:
        clk = None if real_clock else clock
        if kind == "local":
            yield LocalLimiter(clock=clk)
            return
        lim: RedisLimiter = connect(redis_url, timeout_s=2.0, prefix=rl_prefix, clock=clk)
        try:
            yield lim
        finally:
            await lim.aclose()

    return make


@pytest.fixture
def redis_snapshot(redis_url: str, rl_prefix: str) -> Callable[[], dict[str, Any]]:
    """Every key under the test prefix with its full content (buckets, markers): to show
    a refused call changed nothing."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    def snap() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in sorted(client.scan_iter(match=f"{rl_prefix}:*", count=1000)):
            kind = client.type(key)
            if kind == "zset":
                out[key] = client.zrange(key, 0, -1, withscores=True)
            elif kind == "hash":
                out[key] = client.hgetall(key)
            else:
                out[key] = client.get(key)
        return out

    return snap


def bucket_in_use(client: redis.Redis, key: str) -> tuple[int, int]:
    """(requests, tokens) in use in a scope's Redis bucket as last stored (not drained to
    now: with windows long against the test, the charges themselves, rounded up)."""
    raw = client.get(key)
    if raw is None:
        return 0, 0
    _t, r, rc, _rd, k, kc, _kd = (float(x) for x in (raw.decode() if isinstance(raw, bytes) else raw).split(","))
    return (math.ceil(r / rc) if rc else 0), (math.ceil(k / kc) if kc else 0)


@pytest.fixture
def read_bucket() -> Callable[[redis.Redis, str], tuple[int, int]]:
    return bucket_in_use


class PrivateRedis:
    """A redis-server of our own on a free port (never the shared 6379)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.pidfile = workdir / f"redis-{self.port}.pid"

    def client(self) -> redis.Redis:
        # redis-py retries a dead server with backoff by default: seconds per command
        return redis.Redis(port=self.port, retry=Retry(NoBackoff(), 0), socket_connect_timeout=1)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI"):
                pytest.fail("redis-server is not installed - CI requires it", pytrace=False)
            pytest.skip("redis-server not installed - install it to run this test")
        subprocess.run(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "yes", "--dir", str(self.workdir),
             "--pidfile", str(self.pidfile), "--logfile", str(self.workdir / "redis.log")],
            check=True,
        )
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        client = self.client()
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(nosave=True)
        client.close()
        deadline = time.monotonic() + 10
        while self.pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.02)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()
