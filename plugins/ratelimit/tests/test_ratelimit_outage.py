"""Redis going away mid-run, on a private redis-server we kill and restart: fail open
(or closed, or to in-process limits), one event per outage, recovery on its own."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
import redis

from synthhost_ratelimit.guard import FailMode, Guarded
from synthhost_ratelimit.limits import Limit, ScopeCheck
from synthhost_ratelimit.redis_backend import connect

pytestmark = pytest.mark.anyio

CHECKS = [ScopeCheck.of("workspace", "ws:w", Limit(requests=3, window_s=60))]
PROBE_S = 0.2


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event_type: str, context: dict[str, Any]) -> None:
        self.seen.append((event_type, context))

    def types(self) -> list[str]:
        return [t for t, _ in self.seen]


async def wait_probe() -> None:
    await anyio.sleep(PROBE_S * 1.5)


async def test_ratelimit_fail_open_event_once_and_recovery(private_redis: Any) -> None:
    events = Events()
    limiter = connect(private_redis.url, timeout_s=0.25, prefix="rl")
    guard = Guarded(limiter, mode=FailMode.OPEN, probe_s=PROBE_S, notify=events)
    try:
        d, backend = await guard.acquire(CHECKS, "a", 0)
        assert d.allowed and not d.degraded and backend is limiter
        # leave a dozen idle connections behind: all of them die with the server
        wide = [ScopeCheck.of("global", "global", Limit(requests=1000))]
        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(guard.acquire, wide, f"warm{i}", 0)
        assert len(limiter._wire.idle) >= 2

        private_redis.stop()
        opened = limiter._wire.opened
        for i in range(20):  # far above the limit: all admitted, unchecked
            d, backend = await guard.acquire(CHECKS, f"down{i}", 0)
            assert d.allowed and d.degraded and backend is None
        # No call waits for the dead Redis: after the first failure, calls go unchecked
        # without touching it (no new connection, until the probe).
        assert limiter._wire.opened == opened
        assert events.types() == ["ratelimit_degraded"]
        assert events.seen[0][1] == {"error": "ConnectionError", "mode": "open", "probe_s": PROBE_S}
        await wait_probe()
        d, _ = await guard.acquire(CHECKS, "still-down", 0)  # a probe that fails again
        assert d.degraded and events.types() == ["ratelimit_degraded"]

        private_redis.start()  # empty: this Redis lost every counter
        await wait_probe()
        d, backend = await guard.acquire(CHECKS, "b", 0)  # one probe is enough
        assert d.allowed and not d.degraded and backend is limiter
        assert events.types() == ["ratelimit_degraded", "ratelimit_recovered"]
        recovered = events.seen[1][1]
        assert recovered["unchecked_calls"] == 21 and recovered["down_s"] > 0
        # limits apply again, on the new server (the script is re-loaded there)
        assert [(await guard.acquire(CHECKS, f"c{i}", 0))[0].allowed for i in range(3)] == [
            True, True, False]
        client = redis.Redis.from_url(private_redis.url)
        assert client.exists("rl:ws:w:g") == 1
        client.close()
        assert await limiter.usage(CHECKS) == [(3, 0)]
        assert guard.outages == 1
    finally:
        await limiter.aclose()


async def test_ratelimit_outage_mid_run_under_load(private_redis: Any) -> None:
    events = Events()
    limiter = connect(private_redis.url, timeout_s=0.25, prefix="rl")
    guard = Guarded(limiter, mode=FailMode.OPEN, probe_s=PROBE_S, notify=events)
    checks = [ScopeCheck.of("workspace", "ws:w", Limit(requests=10**6, window_s=60))]
    answers: list[tuple[float, bool]] = []
    done = anyio.Event()

    async def caller(n: int) -> None:
        i = 0
        while not done.is_set():
            d, _ = await guard.acquire(checks, f"{n}-{i}", 0)
            assert d.allowed  # fail open: nobody is refused, nobody gets an exception
            answers.append((time.monotonic(), d.degraded))
            i += 1
            await anyio.sleep(0.005)

    async def chaos() -> None:
        await anyio.sleep(0.4)
        await anyio.to_thread.run_sync(private_redis.stop)
        await anyio.sleep(0.5)
        await anyio.to_thread.run_sync(private_redis.start)
        await anyio.sleep(PROBE_S * 3)  # calls go on through Redis again
        done.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(chaos)
            for n in range(20):
                tg.start_soon(caller, n)
        assert events.types() == ["ratelimit_degraded", "ratelimit_recovered"]
        degraded = [t for t, deg in answers if deg]
        assert degraded, "no call saw the outage"
        last_degraded = max(degraded)
        assert any(t > last_degraded and not deg for t, deg in answers), "never recovered"
        assert guard.healthy
    finally:
        await limiter.aclose()


async def test_ratelimit_fail_closed(private_redis: Any) -> None:
    events = Events()
    limiter = connect(private_redis.url, timeout_s=0.25, prefix="rl")
    guard = Guarded(limiter, mode=FailMode.CLOSED, probe_s=PROBE_S, notify=events)
    try:
        private_redis.stop()
        d, backend = await guard.acquire(CHECKS, "a", 0)
        assert not d.allowed and d.degraded and backend is None
        assert (d.scope, d.kind) == ("limiter", "unavailable")
        assert d.retry_after is not None and 0 < d.retry_after <= PROBE_S
        private_redis.start()
        await wait_probe()
        d, backend = await guard.acquire(CHECKS, "b", 0)
        assert d.allowed and backend is limiter
        assert events.types() == ["ratelimit_degraded", "ratelimit_recovered"]
    finally:
        await limiter.aclose()


async def test_ratelimit_fail_to_local_limits(private_redis: Any) -> None:
    limiter = connect(private_redis.url, timeout_s=0.25, prefix="rl")
    guard = Guarded(limiter, mode=FailMode.LOCAL, probe_s=PROBE_S)
    checks = [ScopeCheck.of("workspace", "ws:w", Limit(requests=3, tokens=100, window_s=60))]
    try:
        private_redis.stop()
        answers = [await guard.acquire(checks, f"x{i}", 5) for i in range(4)]
        assert [d.allowed for d, _ in answers] == [True, True, True, False]
        assert all(d.degraded for d, _ in answers)
        backend = answers[0][1]
        assert backend is guard.fallback
        # corrections go to the backend that holds the reservation
        held = answers[0][0].held
        assert await guard.settle(backend, checks, "x0", 5, 2, held) == 1
        assert await guard.fallback.usage(checks) == [(3, 12)]
        assert await guard.settle(limiter, checks, "x0", 5, 2, held) == 0  # Redis is down: skipped
    finally:
        await limiter.aclose()
