"""The documented semantics, on random schedules (seeded): over any interval of length t
at most N + t*N/W calls (or tokens) pass, and ``retry_after`` is exact: one microsecond
earlier the call is still refused, at ``retry_after`` it is admitted. Then memory: O(1)
per scope, in Redis and in process, after 20,000 admitted calls."""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest
import redis

from synthhost_ratelimit.limits import NEVER, Limit, ScopeCheck
from synthhost_ratelimit.local import LocalLimiter

pytestmark = pytest.mark.anyio


def check_interval_bound(admitted: list[tuple[int, int]], n: int, window_us: int) -> None:
    """Every interval [t_i, t_j] admitted at most n + (t_j - t_i) * n / W (in cost)."""
    for i in range(len(admitted)):
        total = 0
        for j in range(i, len(admitted)):
            total += admitted[j][1]
            span = admitted[j][0] - admitted[i][0]
            assert total * window_us <= n * window_us + span * n, (i, j, total, span)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("kind", ["requests", "tokens"])
async def test_ratelimit_gcra_bound_and_exact_retry(seed: int, kind: str, clock: Any) -> None:
    rng = random.Random(seed)
    n = rng.choice([1, 2, 3, 7, 10, 60, 97])
    window_us = rng.choice([1_000_000, 2_500_000, 3_000_001, 60_000_000])
    limit = Limit(requests=n, window_s=window_us / 1e6) if kind == "requests" else \
        Limit(tokens=n * 10, window_s=window_us / 1e6)
    check = ScopeCheck.of("user", "ws:w:user:u", limit)
    assert check.window_us == window_us
    lim = LocalLimiter(clock=clock)
    admitted: list[tuple[int, int]] = []  # (time, cost)
    exact = 0
    for step in range(400):
        clock.advance(us=rng.choice([0, 1, rng.randrange(1, 2 * window_us // max(1, n))]))
        cost = 1 if kind == "requests" else rng.randrange(0, 25)
        d = await lim.acquire([check], f"s{step}", cost)
        if d.allowed:
            admitted.append((clock.now, cost))
            continue
        total_limit = n if kind == "requests" else n * 10
        assert d.retry_us == NEVER if cost > total_limit else (d.retry_us is not None and d.retry_us > 0)
        if d.retry_us == NEVER or rng.random() < 0.5:
            continue
        # retry one microsecond early: refused; at retry_after: admitted
        clock.advance(us=d.retry_us - 1)
        assert not (await lim.acquire([check], f"early{step}", cost)).allowed
        clock.advance(us=1)
        assert (await lim.acquire([check], f"on-time{step}", cost)).allowed
        admitted.append((clock.now, cost))
        exact += 1
    assert exact > 5
    check_interval_bound(admitted, total_limit, window_us)


async def test_ratelimit_gcra_multi_scope_retry_is_exact(make_limiter: Any, clock: Any) -> None:
    """With several scopes and both kinds: the longest wait, to the microsecond, on Redis."""
    rng = random.Random(7)
    checks = [ScopeCheck.of("user", "ws:w:user:u", Limit(requests=3, tokens=300, window_s=2)),
              ScopeCheck.of("workspace", "ws:w", Limit(requests=5, tokens=400, window_s=3.3)),
              ScopeCheck.of("global", "global", Limit(requests=9, window_s=7))]
    exact = 0
    async with make_limiter("redis") as lim:
        for step in range(300):
            clock.advance(us=rng.randrange(0, 400_000))
            cost = rng.randrange(0, 150)
            d = await lim.acquire(checks, f"s{step}", cost)
            if d.allowed or d.retry_us == NEVER:
                continue
            assert d.retry_us is not None
            clock.advance(us=d.retry_us - 1)
            assert not (await lim.acquire(checks, f"early{step}", cost)).allowed
            clock.advance(us=1)
            assert (await lim.acquire(checks, f"on-time{step}", cost)).allowed
            exact += 1
    assert exact > 20


CALLS = 20_000


async def test_ratelimit_redis_memory_is_constant_per_scope(make_limiter: Any, clock: Any,
                                                            redis_url: str, rl_prefix: str) -> None:
    checks = [ScopeCheck.of("workspace", "ws:big", Limit(requests=10**6, tokens=10**9, window_s=60))]
    client = redis.Redis.from_url(redis_url)
    bucket = f"{rl_prefix}:ws:big:g"
    async with make_limiter("redis") as lim:
        sizes: list[int] = []
        done = 0

        def measure() -> None:
            size = client.memory_usage(bucket)
            assert isinstance(size, int)
            sizes.append(size)

        async def caller(c: int) -> None:
            nonlocal done
            for i in range(CALLS // 16):  # all at one instant: nothing drains meanwhile
                assert (await lim.acquire(checks, f"c{c}-{i}", 120)).allowed
                done += 1
                if c == 0 and i in (10, CALLS // 32):
                    measure()

        async with anyio.create_task_group() as tg:
            for c in range(16):
                tg.start_soon(caller, c)
        assert done == CALLS
        measure()
        assert await lim.usage(checks) == [(CALLS, CALLS * 120)]
    # one key for the scope, a few dozen bytes after 10 calls as after 20,000
    print("bucket MEMORY USAGE after 10, 625, 20,000 calls:", sizes)
    assert max(sizes) < 200 and max(sizes) - min(sizes) <= 16, sizes
    keys = [k.decode() for k in client.scan_iter(match=f"{rl_prefix}:*", count=5000)]
    assert [k for k in keys if not k.startswith(f"{rl_prefix}:m:")] == [bucket]
    # the rest are reservation markers, each about to go (5 s): O(calls in the last 5 s)
    markers = [k for k in keys if k.startswith(f"{rl_prefix}:m:")]
    assert len(markers) == CALLS
    for key in random.Random(1).sample(markers, 50):
        assert 0 < client.pttl(key) <= 5_000
    client.close()


async def test_ratelimit_local_memory_is_constant_per_scope(clock: Any) -> None:
    lim = LocalLimiter(clock=clock)
    checks = [ScopeCheck.of("workspace", "ws:big", Limit(requests=10**6, tokens=10**9, window_s=60)),
              ScopeCheck.of("user", "ws:big:user:u", Limit(requests=10**6, window_s=60))]
    for i in range(CALLS):
        clock.advance(us=250)  # 20,000 calls in 5 s
        assert (await lim.acquire(checks, f"c{i}", 120)).allowed
    buckets, markers = lim.sizes()
    assert buckets == 2
    assert markers <= CALLS
    clock.advance(11)  # markers go one TTL after they expire
    assert (await lim.acquire(checks, "last", 120)).allowed
    assert lim.sizes() == (2, 1)
