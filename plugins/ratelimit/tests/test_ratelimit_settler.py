"""Token corrections leave the call path: queued, sent in order, batched, drained."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from synthhost_ratelimit.limits import Limit, ScopeCheck
from synthhost_ratelimit.redis_backend import connect
from synthhost_ratelimit.settler import Correction, Settler

pytestmark = pytest.mark.anyio
# A window so long that nothing drains while a test runs: fills are exact.
SLOW = ScopeCheck.of("workspace", "ws:s2", Limit(requests=100, tokens=10_000, window_s=10**7))

CHECK = ScopeCheck.of("workspace", "ws:s1", Limit(requests=100, tokens=10_000, window_s=60))


def test_settler_sends_in_order_and_batches_what_queued_meanwhile() -> None:
    sent: list[list[Correction]] = []
    gate = threading.Event()

    def send(batch: list[Correction]) -> None:
        gate.wait(5)  # the first write is "in flight" while more corrections queue
        sent.append(batch)

    settler = Settler(send, on_error=lambda exc: None)
    for i in range(5):
        settler.put(([CHECK], f"m{i}", 100, i, ()))
    gate.set()
    assert settler.drain(5)
    assert [c[1] for batch in sent for c in batch] == [f"m{i}" for i in range(5)]
    assert len(sent) <= 2 and settler.stats == {"sent": 5, "dropped": 0, "writes": len(sent)}
    assert settler.close(5)


def test_settler_failure_tells_the_guard_and_counts_the_drop() -> None:
    errors: list[BaseException] = []

    def send(batch: list[Correction]) -> None:
        raise ConnectionError("redis went away")

    settler = Settler(send, on_error=errors.append)
    settler.put(([CHECK], "m1", 100, 5, ()))
    assert settler.drain(5)
    assert [type(e) for e in errors] == [ConnectionError]
    assert settler.stats["dropped"] == 1 and settler.stats["sent"] == 0
    # degraded: nothing is even attempted
    skipping = Settler(send, on_error=errors.append, skip=lambda: True)
    skipping.put(([CHECK], "m2", 100, 5, ()))
    assert skipping.drain(5) and skipping.stats["dropped"] == 1 and len(errors) == 1
    settler.close(1)
    skipping.close(1)


async def test_settle_many_blocking_corrects_every_reservation_on_redis(redis_url: str,
                                                                        rl_prefix: str) -> None:
    limiter = connect(redis_url, prefix=rl_prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        held = []
        for i in range(3):
            decision = await limiter.acquire([SLOW], f"r{i}", 500)
            assert decision.allowed
            held.append(decision.held)
        # the script is unknown to a flushed server: the pipelined path loads it
        client.script_flush()
        fixed = limiter.settle_many_blocking([([SLOW], f"r{i}", 500, 10 * i, held[i]) for i in range(3)]
                                             + [([SLOW], "r9", 1, 1, ())])  # no-op: equal weights
        assert fixed == 3
        usage: Any = await limiter.usage([SLOW])
        assert usage == [(3, 0 + 10 + 20)]
    finally:
        await limiter.aclose()
        client.close()
