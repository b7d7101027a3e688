"""The GCRA buckets, on both backends with a test clock: exact retry times, bursts up to
the limit and the rate after, all-or-nothing multi-scope charging, token estimates and
their correction, refunds bounded by what is still in the bucket."""

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
async def test_ratelimit_bucket_refills_at_the_exact_microsecond(kind: str, make_limiter: Any,
                                                                 clock: Any) -> None:
    checks = [user(Limit(requests=3, window_s=3))]  # one call per second, bursts of 3
    async with make_limiter(kind) as lim:
        for i in range(3):  # a full bucket takes a burst of N at once
            assert (await lim.acquire(checks, f"c{i}", 0)).allowed
        d = await lim.acquire(checks, "c3", 0)
        assert not d.allowed
        assert (d.scope, d.kind, d.limit, d.window_s) == ("user", "requests", 3, 3.0)
        assert d.retry_us == 1_000_000 and d.retry_after == 1.0
        assert d.usage == ((3, -1),)
        clock.advance(1, us=-1)
        d = await lim.acquire(checks, "c4", 0)
        assert not d.allowed and d.retry_us == 1
        clock.advance(us=1)  # exactly when one call's worth has drained
        assert (await lim.acquire(checks, "c5", 0)).allowed
        d = await lim.acquire(checks, "c6", 0)
        assert not d.allowed and d.retry_us == 1_000_000
        # after the burst, the rate: one more per second, never two
        clock.advance(1)
        assert (await lim.acquire(checks, "c7", 0)).allowed
        assert not (await lim.acquire(checks, "c8", 0)).allowed
        assert await lim.usage(checks) == [(3, 0)]
        # idle for 2 s: two calls' worth drained, not three
        clock.advance(2)
        assert [(await lim.acquire(checks, f"d{i}", 0)).allowed for i in range(3)] == [True, True, False]
        # idle for a whole window: full again
        clock.advance(10)
        assert await lim.usage(checks) == [(0, 0)]
        assert [(await lim.acquire(checks, f"e{i}", 0)).allowed for i in range(4)] == [True, True, True, False]


@BACKENDS
async def test_ratelimit_fractional_rate_is_exact(kind: str, make_limiter: Any, clock: Any) -> None:
    """7 per second: one call every 142857.14... µs, kept exact in integer units."""
    checks = [user(Limit(requests=7, window_s=1))]
    async with make_limiter(kind) as lim:
        assert [(await lim.acquire(checks, f"a{i}", 0)).allowed for i in range(8)] == [True] * 7 + [False]
        d = await lim.acquire(checks, "b", 0)
        assert d.retry_us == 142_858  # ceil(1e6 / 7)
        clock.advance(us=142_857)
        assert not (await lim.acquire(checks, "c", 0)).allowed
        clock.advance(us=1)
        assert (await lim.acquire(checks, "d", 0)).allowed
        # 7 calls' worth drains in exactly one second: over 7 emission intervals, 7 more
        admitted = 0
        for i in range(7 * 142_858 // 1000):
            clock.advance(us=1000)
            admitted += (await lim.acquire(checks, f"e{i}", 0)).allowed
        assert admitted == 7


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
        assert len(before) == 5  # one key per scope, one marker per admitted reservation
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
        t1 = await lim.acquire(checks, "t1", 600)  # estimate
        assert t1.allowed and t1.usage == ((0, 600), (1, 600))
        d = await lim.acquire(checks, "t2", 500)
        assert not d.allowed and (d.scope, d.kind, d.limit) == ("user", "tokens", 1000)
        assert d.retry_us == 6_000_000  # 100 tokens too many, at 1000 per minute
        assert await lim.settle(checks, "t1", 600, 150, t1.held) == 2  # real usage
        assert await lim.settle(checks, "t1", 600, 150, t1.held) == 0  # a second correction is a no-op
        assert await lim.settle(checks, "t1", 600, 0, t1.held) == 0  # so is a late refund
        assert await lim.usage(checks) == [(0, 150), (1, 150)]
        t2 = await lim.acquire(checks, "t2", 500)
        assert t2.allowed
        assert await lim.usage(checks) == [(0, 650), (2, 650)]
        # the estimate may also be too low: correcting up charges the real tokens
        assert await lim.settle(checks, "t2", 500, 800, t2.held) == 2
        assert await lim.usage(checks) == [(0, 950), (2, 950)]


@BACKENDS
async def test_ratelimit_token_retry_is_exact(kind: str, make_limiter: Any, clock: Any) -> None:
    checks = [user(Limit(tokens=100, window_s=10))]  # 10 tokens per second
    async with make_limiter(kind) as lim:
        for i in range(3):
            assert (await lim.acquire(checks, f"e{i}", 30)).allowed
            clock.advance(1)
        # t=3: 90 charged, 30 drained: 60 in use
        assert await lim.usage(checks) == [(0, 60)]
        d = await lim.acquire(checks, "next", 50)  # 10 too many: one second
        assert not d.allowed and d.retry_us == 1_000_000 and d.usage == ((0, 60),)
        d = await lim.acquire(checks, "big", 75)  # 35 too many
        assert not d.allowed and d.retry_us == 3_500_000
        # a call larger than the whole limit can never pass
        d = await lim.acquire(checks, "huge", 101)
        assert not d.allowed and d.retry_us == NEVER and d.retry_after is None
        clock.advance(us=999_999)
        assert not (await lim.acquire(checks, "next", 50)).allowed
        clock.advance(us=1)
        assert (await lim.acquire(checks, "next", 50)).allowed
        assert await lim.usage(checks) == [(0, 100)]


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
        no_tokens = ScopeCheck.of("model", "ws:w1:model:m", Limit(tokens=0))
        assert (await lim.acquire([no_tokens], "d", 0)).allowed  # nothing to charge
        d = await lim.acquire([no_tokens], "e", 1)
        assert d.scope == "model" and d.kind == "tokens" and d.retry_us == NEVER


@BACKENDS
async def test_ratelimit_release_and_duplicates(kind: str, make_limiter: Any, clock: Any) -> None:
    checks = [user(Limit(requests=2, tokens=100, window_s=60)), ws(Limit(requests=50, window_s=60))]
    async with make_limiter(kind) as lim:
        r1 = await lim.acquire(checks, "r1", 40)
        assert r1.allowed and not r1.duplicate
        again = await lim.acquire(checks, "r1", 40)  # the same reservation, replayed
        assert again.allowed and again.duplicate
        assert await lim.usage(checks) == [(1, 40), (1, 0)]  # the workspace keeps no token bucket
        assert await lim.release(checks, "r1", 40, r1.held) == 2
        assert await lim.release(checks, "r1", 40, r1.held) == 0
        assert await lim.usage(checks) == [(0, 0), (0, 0)]
        # the marker is only for the wire's immediate retry: gone after 5 s, and then a
        # replay is decided afresh
        assert (await lim.acquire(checks, "r2", 10)).allowed
        clock.advance(5)
        d = await lim.acquire(checks, "r2", 10)
        assert d.allowed and not d.duplicate


@BACKENDS
async def test_ratelimit_refund_takes_back_only_what_has_not_drained(kind: str, make_limiter: Any,
                                                                     clock: Any) -> None:
    checks = [user(Limit(requests=10, tokens=100, window_s=10))]  # 10 tokens per second
    async with make_limiter(kind) as lim:
        x = await lim.acquire(checks, "x", 80)
        y = await lim.acquire(checks, "y", 20)  # queued behind x
        assert x.allowed and y.allowed and await lim.usage(checks) == [(2, 100)]
        clock.advance(5)  # 50 drained: x's first 50 tokens; x has 30 left, y all 20
        assert await lim.usage(checks) == [(0, 50)]
        assert await lim.release(checks, "y", 20, y.held) == 1
        assert await lim.usage(checks) == [(0, 30)]
        # x used nothing: only its 30 still in the bucket come back, not 80
        assert await lim.settle(checks, "x", 80, 0, x.held) == 1
        assert await lim.usage(checks) == [(0, 0)]
        assert (await lim.acquire(checks, "z", 100)).allowed  # the whole bucket, no more
        d = await lim.acquire(checks, "z2", 1)
        assert not d.allowed and d.retry_us == 100_000
        # without its position (a reply lost), a refund is only floored at empty
        assert await lim.settle(checks, "z", 100, 0) == 1
        assert await lim.usage(checks) == [(1, 0)]


async def test_ratelimit_redis_keeps_one_small_key_per_scope(make_limiter: Any, redis_url: str,
                                                            rl_prefix: str) -> None:
    checks = [ws(Limit(requests=10, tokens=100, window_s=30))]
    async with make_limiter("redis", real_clock=True) as lim:
        d = await lim.acquire(checks, "now", 5)
        client = redis.Redis.from_url(redis_url)
        server_us = int(client.time()[0]) * 1_000_000
        assert abs(d.now_us - server_us) < 5_000_000  # Redis' own clock
        keys = sorted(k.decode() for k in client.scan_iter(match=f"{rl_prefix}:*"))
        assert keys == [f"{rl_prefix}:m:now", f"{rl_prefix}:ws:w1:g"]
        # until one window after the bucket is empty (one call: 3 s of drain)
        assert 32_000 <= client.pttl(f"{rl_prefix}:ws:w1:g") <= 33_000
        assert 0 < client.pttl(f"{rl_prefix}:m:now") <= 5_000
        client.close()


@BACKENDS
async def test_ratelimit_shared_counter_with_mixed_limits(kind: str, make_limiter: Any,
                                                          clock: Any) -> None:
    """An org counter is shared by workspaces whose limits differ: calls from a
    workspace without an org token limit still charge the token bucket the other one
    keeps, while it holds anything."""
    with_tokens = ScopeCheck.of("org", "org:o1", Limit(requests=100, tokens=500, window_s=10))
    requests_only = ScopeCheck.of("org", "org:o1", Limit(requests=100, window_s=10))
    async with make_limiter(kind) as lim:
        assert (await lim.acquire([with_tokens], "a1", 100)).allowed
        clock.advance(1)  # 50 tokens drained
        held = []
        for i in range(2):
            d = await lim.acquire([requests_only], f"b{i}", 150)
            assert d.allowed and d.usage == ((1 + i, -1),)
            held.append(d.held)
        assert await lim.settle([requests_only], "b1", 150, 100, held[1]) == 1
        assert await lim.usage([with_tokens]) == [(2, 300)]
        d = await lim.acquire([with_tokens], "a2", 250)  # 300 + 250 > 500: 50 too many
        assert not d.allowed and d.kind == "tokens" and d.retry_us == 1_000_000
        assert d.usage == ((2, 300),)
        clock.advance(1)
        assert (await lim.acquire([with_tokens], "a2", 250)).allowed
        assert await lim.usage([with_tokens]) == [(1, 500)]
        # once the token bucket is empty, a requests-only call has nothing to charge
        clock.advance(20)
        assert (await lim.acquire([requests_only], "b9", 150)).allowed
        assert await lim.usage([with_tokens]) == [(1, 0)]


@BACKENDS
async def test_ratelimit_changed_limit_keeps_the_time_to_empty(kind: str, make_limiter: Any,
                                                               clock: Any) -> None:
    """A limit changed mid-window: the bucket keeps how long it needs to drain, in the
    new rate's terms."""
    old = user(Limit(requests=10, window_s=10))  # 1 per second
    new = user(Limit(requests=4, window_s=8))  # 1 per 2 s
    async with make_limiter(kind) as lim:
        for i in range(4):
            assert (await lim.acquire([old], f"a{i}", 0)).allowed
        # 4 s to drain at the old rate = 2 calls at the new one; 2 more fit
        assert await lim.usage([old]) == [(4, 0)]
        assert [(await lim.acquire([new], f"b{i}", 0)).allowed for i in range(3)] == [True, True, False]
        assert await lim.usage([new]) == [(4, 0)]
