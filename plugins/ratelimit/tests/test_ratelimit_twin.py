"""The in-process limiter gives the same answers as the Redis script, to the
microsecond, on the same random sequence of decisions, corrections and releases."""

from __future__ import annotations

import random
from typing import Any

import pytest

from synthhost_ratelimit.limits import Limit, ScopeCheck

pytestmark = pytest.mark.anyio

POOL = [
    ScopeCheck.of("user", "ws:a:user:u1", Limit(requests=5, tokens=400, window_s=4)),
    ScopeCheck.of("user", "ws:a:user:u2", Limit(requests=3, window_s=2.5)),
    ScopeCheck.of("workspace", "ws:a", Limit(requests=9, tokens=900, window_s=6)),
    ScopeCheck.of("org", "org:o1", Limit(requests=12, window_s=10)),
    ScopeCheck.of("model", "ws:a:model:echo%2Fe1", Limit(tokens=500, window_s=3)),
    ScopeCheck.of("global", "global", Limit(requests=15, tokens=2000, window_s=5)),
    ScopeCheck.of("agent", "ws:a:agent:never", Limit(requests=0)),
]


# The org counter as another workspace configures it (with a token limit): one counter
# seen under two sets of limits.
ORG_WITH_TOKENS = ScopeCheck.of("org", "org:o1", Limit(requests=12, tokens=700, window_s=10))


def random_checks(rng: random.Random) -> list[ScopeCheck]:
    picked = [c for c in POOL[:-1] if rng.random() < 0.5]
    if POOL[3] in picked and rng.random() < 0.5:
        picked[picked.index(POOL[3])] = ORG_WITH_TOKENS
    if rng.random() < 0.02:
        picked.append(POOL[-1])
    return sorted(picked, key=lambda c: 3 if c is ORG_WITH_TOKENS else POOL.index(c))


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_ratelimit_twin_same_answers(seed: int, make_limiter: Any, clock: Any) -> None:
    rng = random.Random(seed)
    outstanding: list[tuple[list[ScopeCheck], str, int]] = []
    refusals = admits = 0
    kinds: set[tuple[str | None, bool]] = set()
    async with make_limiter("redis") as remote, make_limiter("local") as local:
        for step in range(1500):
            roll = rng.random()
            if roll < 0.35:
                clock.advance(us=rng.choice([0, 1, rng.randrange(1, 3_000_000)]))
            if outstanding and roll > 0.85:
                checks, member, weight = outstanding.pop(rng.randrange(len(outstanding)))
                if rng.random() < 0.3:
                    a = await remote.release(checks, member, weight)
                    b = await local.release(checks, member, weight)
                else:
                    new = rng.randrange(0, 300)
                    a = await remote.settle(checks, member, weight, new)
                    b = await local.settle(checks, member, weight, new)
                assert a == b, step
                continue
            checks = random_checks(rng)
            if not checks:
                continue
            member = f"m{step}"
            weight = rng.choice([0, rng.randrange(1, 200), rng.randrange(200, 600)])
            a = await remote.acquire(checks, member, weight)
            b = await local.acquire(checks, member, weight)
            assert a == b, (step, a, b)
            if a.allowed:
                admits += 1
                outstanding.append((checks, member, weight))
            else:
                refusals += 1
                kinds.add((a.kind, a.retry_after is None))
            if step % 50 == 0:
                assert await remote.usage(POOL) == await local.usage(POOL), step
                assert await remote.usage([ORG_WITH_TOKENS]) == await local.usage([ORG_WITH_TOKENS])
        assert await remote.usage(POOL) == await local.usage(POOL)
    # the sequence exercised both outcomes and every kind of refusal
    assert admits > 100 and refusals > 100
    assert {("requests", False), ("tokens", False), ("tokens", True)} <= kinds, kinds
