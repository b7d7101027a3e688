"""The limiter's Redis connections are bounded per process (SYNTHHOST_RATELIMIT_REDIS_POOL),
whatever the number of concurrent callers."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
import redis

import synthhost_ratelimit as plugin
from synthhost_ratelimit.store import set_limit

pytestmark = pytest.mark.anyio


def connections_named(url: str, name: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return sum(1 for c in client.client_list() if c.get("name") == name)
    finally:
        client.close()


async def test_500_concurrent_calls_use_at_most_the_pool_bound(make_host: Any, redis_url: str) -> None:
    prefix = f"t:{uuid.uuid4().hex[:10]}"
    name = f"rlpool-{uuid.uuid4().hex[:8]}"
    sep = "&" if "?" in redis_url else "?"
    url = f"{redis_url}{sep}client_name={name}"
    host = make_host(plugin, env={"REDIS_URL": url, "SYNTHHOST_RATELIMIT_PREFIX": prefix,
                                  "SYNTHHOST_RATELIMIT_REDIS_POOL": "8"})
    peak = 0
    async with host:
        host.flags.set(plugin.FLAG, True, workspace="w")
        set_limit(host.engine, "w", "workspace", requests=100_000)
        refresher = plugin.state(host).refresher
        assert refresher is not None
        refresher.reload()
        done = 0

        async def one() -> None:
            nonlocal done
            await host.complete(workspace="w", model="echo/m", messages="hi", params={"echo_latency_ms": 5})
            done += 1

        async def watch() -> None:
            nonlocal peak
            while done < 500:
                peak = max(peak, await anyio.to_thread.run_sync(connections_named, redis_url, name))
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            for _ in range(500):
                tg.start_soon(one)
        limiter = plugin.state(host).limiter
        wire = getattr(limiter, "_wire", None)
        assert wire is not None and wire.opened <= 8  # never more than the bound, over the whole run
        assert host.stats.get("plugin_errors", 0) == 0
    assert 1 <= peak <= 8
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
    finally:
        client.close()
