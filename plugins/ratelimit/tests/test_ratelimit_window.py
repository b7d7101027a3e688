"""The sliding-window algorithm, on both backends with a test clock: exact retry times,
all-or-nothing multi-scope charging, token estimates and their correction."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from synthhost_ratelimit.limits import NEVER, Limit, ScopeCheck

pytestmark = pytest.mark.anyio

BACKENDS = pytest.mark.parametrize("kind", ["redis", "local"])


def user(limit: Limit, name: str = "alice") -> ScopeCheck:
    return ScopeCheck.of("user", f"ws:w1:user:{name}", limit)


def ws(limit: Limit) -> ScopeCheck:
    return ScopeCheck.of("workspace", "ws:w1", limit)


@BACKENDS
async def test_ratelimit_window_slides_at_the_exact_microsecond(kind: str, make_limiter: Any,
                                                                 clock: Any) -> None:
    checks = [user(Limit(requests=3, window_s=10))]
    async with make_limiter(kind) as lim:
        for i in range(3):
            assert (await lim.acquire(checks, f"c{i}", 0)).allowed
            clock.advance(1)
        # t=3: full; the oldest entry (t=0) leaves at t=10
        d = await lim.acquire(checks, "c3", 0)
        assert not d.allowed
        assert (d.scope, d.kind, d.limit, d.window_s) == ("user", "requests", 3, 10.0)
        assert d.retry_us == 7_000_000 and d.retry_after == 7.0
        clock.advance(7, us=-1)
        d = await lim.acquire(checks, "c4", 0)
        assert not d.allowed and d.retry_us == 1
        clock.advance(us=1)  # t=10 exactly
        assert (await lim.acquire(checks, "c5", 0)).allowed
        # t=10: entries at 1, 2, 10 -> next slot when t=1 expires, at 11
        d = await lim.acquire(checks, "c6", 0)
        assert not d.allowed and d.retry_us == 1_000_000
        # no 2x burst at a window edge: in any 10 s, at most 3 admitted
        clock.advance(1)
        assert (await lim.acquire(checks, "c7", 0)).allowed
        assert not (await lim.acquire(checks, "c8", 0)).allowed
        assert await lim.usage(checks) == [(3, 0)]


@BACKENDS
async def test_ratelimit_refusal_by_workspace_does_not_charge_user(kind: str, make_limiter: Any,
                                                                  clock: Any) -> None:
    wl = Limit(requests=2, window_s=60)
    ul = Limit(requests=10, window_s=60)
    async with make_limiter(kind) as lim:
        assert (await lim.acquire([user(ul, "alice"), ws(wl)], "a1", 0)).allowed
        assert (await lim.acquire([user(ul, "alice"), ws(wl)], "a2", 0)).allowed
        d = await lim.acquire([user(ul, "bob"), ws(wl)], "b1", 0)
        assert not d.allowed and d.scope == "workspace" and d.limit == 2
        assert await lim.usage([user(ul, "bob"), user(ul, "alice"), ws(wl)]) == [
            (0, 0), (2, 0), (2, 0)]


async def test_ratelimit_rejected_attempt_leaves_redis_untouched(make_limiter: Any, clock: Any,
                                                                redis_snapshot: Any) -> None:
    checks = [user(Limit(requests=5, tokens=1000, window_s=60)), ws(Limit(requests=2, window_s=60)),
              ScopeCheck.of("global", "global", Limit(requests=100, tokens=10**6, window_s=60))]
    async with make_limiter("redis") as lim:
        assert (await lim.acquire(checks, "x1", 100)).allowed
        clock.advance(1)
        assert (await lim.acquire(checks, "x2", 200)).allowed
        before = redis_snapshot()
        assert len(before) == 5  # the workspace scope has no token limit: no sum key
        for i in range(5):
            clock.advance(0.5)
            d = await lim.acquire(checks, f"no{i}", 50)
            assert not d.allowed and d.scope == "workspace"
            assert redis_snapshot() == before


@BACKENDS
async def test_ratelimit_token_estimate_is_corrected_once(kind: str, make_limiter: Any,
                                                         clock: Any) -> None:
    checks = [user(Limit(tokens=1000, window_s=60)), ws(Limit(requests=100, tokens=5000, window_s=60))]
    async with make_limiter(kind) as lim:
        assert (await lim.acquire(checks, "t1", 600)).allowed  # estimate
        d = await lim.acquire(checks, "t2", 500)
        assert not d.allowed and (d.scope, d.kind, d.limit) == ("user", "tokens", 1000)
        assert d.retry_us == 60_000_000  # t1's 600 must leave first
        assert await lim.settle(checks, "t1", 600, 150) == 2  # real usage
        assert await lim.settle(checks, "t1", 600, 150) == 0  # a second correction is a no-op
        assert await lim.settle(checks, "t1", 600, 0) == 0  # so is a late refund
        assert await lim.usage(checks) == [(1, 150), (1, 150)]
        assert (await lim.acquire(checks, "t2", 500)).allowed
        assert await lim.usage(checks) == [(2, 650), (2, 650)]
        # the estimate may also be too low: correcting up counts the real tokens
        assert await lim.settle(checks, "t2", 500, 800) == 2
        assert await lim.usage(checks) == [(2, 950), (2, 950)]


@BACKENDS
async def test_ratelimit_token_retry_walks_the_oldest_entries(kind: str, make_limiter: Any,
                                                             clock: Any) -> None:
    checks = [user(Limit(tokens=100, window_s=10))]
    async with make_limiter(kind) as lim:
        for i, w in enumerate((30, 30, 30)):
            assert (await lim.acquire(checks, f"e{i}", w)).allowed
            clock.advance(1)
        # t=3, sum 90: 30 more needs 20 freed -> the first entry (t=0) must go, at t=10
        d = await lim.acquire(checks, "next", 30)
        assert not d.allowed and d.retry_us == 7_000_000
        # 50 needs 40 freed -> entries t=0 and t=1 must go; the later leaves at t=11
        d = await lim.acquire(checks, "big", 50)
        assert not d.allowed and d.retry_us == 8_000_000
        # 75 needs 65 freed -> entries t=0, t=1, t=2 must go; the last leaves at t=12
        d = await lim.acquire(checks, "bigger", 75)
        assert not d.allowed and d.retry_us == 9_000_000
        # a call larger than the whole limit can never pass
        d = await lim.acquire(checks, "huge", 101)
        assert not d.allowed and d.retry_us == NEVER and d.retry_after is None
        clock.advance(7)
        assert (await lim.acquire(checks, "next", 30)).allowed
        assert await lim.usage(checks) == [(3, 90)]


@BACKENDS
async def test_ratelimit_refusal_names_the_longest_wait(kind: str, make_limiter: Any,
                                                        clock: Any) -> None:
    u = user(Limit(requests=1, window_s=5))
    w = ws(Limit(requests=1, window_s=30))
    async with make_limiter(kind) as lim:
        assert (await lim.acquire([u, w], "a", 0)).allowed
        d = await lim.acquire([u, w], "b", 0)
        assert (d.scope, d.retry_us) == ("workspace", 30_000_000)
        zero = ScopeCheck.of("agent", "ws:w1:agent:x", Limit(requests=0))
        d = await lim.acquire([u, zero], "c", 0)
        assert d.scope == "agent" and d.retry_us == NEVER


@BACKENDS
async def test_ratelimit_release_and_duplicates(kind: str, make_limiter: Any, clock: Any) -> None:
    checks = [user(Limit(requests=2, tokens=100, window_s=60)), ws(Limit(requests=50, window_s=60))]
    async with make_limiter(kind) as lim:
        assert (await lim.acquire(checks, "r1", 40)).allowed
        again = await lim.acquire(checks, "r1", 40)  # the same reservation, replayed
        assert again.allowed and again.duplicate
        assert await lim.usage(checks) == [(1, 40), (1, 40)]
        assert await lim.release(checks, "r1", 40) == 2
        assert await lim.release(checks, "r1", 40) == 0
        assert await lim.usage(checks) == [(0, 0), (0, 0)]


async def test_ratelimit_lost_sum_key_is_rebuilt(make_limiter: Any, clock: Any, redis_url: str,
                                                rl_prefix: str) -> None:
    checks = [user(Limit(tokens=100, window_s=60))]
    async with make_limiter("redis") as lim:
        assert (await lim.acquire(checks, "a", 40)).allowed
        assert (await lim.acquire(checks, "b", 30)).allowed
        client = redis.Redis.from_url(redis_url)
        client.delete(f"{rl_prefix}:ws:w1:user:alice:s")  # as if evicted
        d = await lim.acquire(checks, "c", 40)
        assert not d.allowed and d.kind == "tokens"
        assert int(client.get(f"{rl_prefix}:ws:w1:user:alice:s") or 0) == 70
        # the log evicted alone: the sum no longer matches; the walk finds out and repairs
        client.set(f"{rl_prefix}:ws:w1:user:alice:s", 500, keepttl=True)
        assert (await lim.acquire(checks, "c", 30)).allowed
        assert await lim.usage(checks) == [(3, 100)]
        client.close()


async def test_ratelimit_redis_time_and_ttl(make_limiter: Any, redis_url: str, rl_prefix: str) -> None:
    checks = [ws(Limit(requests=10, tokens=100, window_s=30))]
    async with make_limiter("redis", real_clock=True) as lim:
        d = await lim.acquire(checks, "now", 0)
        client = redis.Redis.from_url(redis_url)
        server_us = int(client.time()[0]) * 1_000_000
        assert abs(d.now_us - server_us) < 5_000_000  # Redis' own clock
        assert 29_000 <= client.pttl(f"{rl_prefix}:ws:w1:z") <= 30_000
        assert 29_000 <= client.pttl(f"{rl_prefix}:ws:w1:s") <= 30_000
        client.close()


@BACKENDS
async def test_ratelimit_shared_counter_with_mixed_limits(kind: str, make_limiter: Any,
                                                          clock: Any) -> None:
    """An org counter is shared by workspaces whose limits differ: calls from a
    workspace without an org token limit still count their tokens for the one with."""
    with_tokens = ScopeCheck.of("org", "org:o1", Limit(requests=100, tokens=500, window_s=10))
    requests_only = ScopeCheck.of("org", "org:o1", Limit(requests=100, window_s=10))
    async with make_limiter(kind) as lim:
        assert (await lim.acquire([with_tokens], "a1", 100)).allowed
        clock.advance(1)
        for i in range(2):
            d = await lim.acquire([requests_only], f"b{i}", 150)
            assert d.allowed and d.usage == ((2 + i, -1),)
        assert await lim.settle([requests_only], "b1", 150, 100) == 1
        d = await lim.acquire([with_tokens], "a2", 200)  # 100 + 150 + 100 + 200 > 500
        assert not d.allowed and d.kind == "tokens" and d.retry_us == 9_000_000
        assert d.usage == ((3, 350),)
        assert await lim.usage([with_tokens]) == [(3, 350)]
        clock.advance(9)  # a1 leaves
        assert (await lim.acquire([with_tokens], "a2", 200)).allowed
        assert await lim.usage([with_tokens]) == [(3, 450)]
