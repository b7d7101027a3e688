"""The in-process limiter gives the same answers as the Redis scripts, to the
microsecond, on random schedules of decisions, replays, corrections and releases (a
seeded generator: every schedule is reproducible from its seed)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from synthhost_ratelimit.limits import Decision, Limit, ScopeCheck

pytestmark = pytest.mark.anyio

POOL = [
    ScopeCheck.of("user", "ws:a:user:u1", Limit(requests=5, tokens=400, window_s=4)),
    ScopeCheck.of("user", "ws:a:user:u2", Limit(requests=3, window_s=2.5)),
    ScopeCheck.of("workspace", "ws:a", Limit(requests=9, tokens=900, window_s=6)),
    ScopeCheck.of("org", "org:o1", Limit(requests=12, window_s=10)),
    ScopeCheck.of("model", "ws:a:model:echo%2Fe1", Limit(tokens=500, window_s=3)),
    ScopeCheck.of("global", "global", Limit(requests=15, tokens=2000, window_s=5.000001)),
    ScopeCheck.of("agent", "ws:a:agent:never", Limit(requests=0)),
]

# The org counter as other workspaces configure it: with a token limit (same request
# rate), and at another rate altogether: one counter seen under three sets of limits.
ORG_WITH_TOKENS = ScopeCheck.of("org", "org:o1", Limit(requests=12, tokens=700, window_s=10))
ORG_OTHER_RATE = ScopeCheck.of("org", "org:o1", Limit(requests=7, tokens=300, window_s=3))
ORGS = (POOL[3], ORG_WITH_TOKENS, ORG_OTHER_RATE)


def random_checks(rng: random.Random) -> list[ScopeCheck]:
    picked = [c for c in POOL[:-1] if rng.random() < 0.5]
    if POOL[3] in picked:
        picked[picked.index(POOL[3])] = rng.choice(ORGS)
    if rng.random() < 0.02:
        picked.append(POOL[-1])
    return sorted(picked, key=lambda c: 3 if c in ORGS else POOL.index(c))


def advance(rng: random.Random, clock: Any) -> None:
    roll = rng.random()
    if roll < 0.15:
        clock.advance(us=rng.choice([1, rng.randrange(1, 1000)]))
    elif roll < 0.35:
        clock.advance(us=rng.randrange(1, 3_000_000))
    elif roll < 0.37:
        clock.advance(us=-rng.randrange(1, 500_000))  # a clock stepping back


async def run_schedule(seed: int, remote: Any, local: Any, clock: Any, steps: int) -> dict[str, Any]:
    rng = random.Random(seed)
    outstanding: list[tuple[list[ScopeCheck], str, int, Decision]] = []
    done: list[tuple[list[ScopeCheck], str, int, Decision]] = []
    seen: dict[str, Any] = {"admits": 0, "refusals": 0, "duplicates": 0, "kinds": set(), "fixed": 0}
    for step in range(steps):
        advance(rng, clock)
        roll = rng.random()
        if outstanding and roll > 0.80:
            checks, member, weight, d = outstanding.pop(rng.randrange(len(outstanding)))
            held = d.held if rng.random() < 0.9 else ()
            if rng.random() < 0.3:
                a = await remote.release(checks, member, weight, held)
                b = await local.release(checks, member, weight, held)
            else:
                new = rng.randrange(0, 700)
                a = await remote.settle(checks, member, weight, new, held)
                b = await local.settle(checks, member, weight, new, held)
            assert a == b, (seed, step)
            seen["fixed"] += a
            done.append((checks, member, weight, d))
            continue
        if roll > 0.74 and (outstanding or done):
            # the wire's retry of an earlier acquire or correction
            checks, member, weight, _ = rng.choice(outstanding or done)
            if rng.random() < 0.7:
                a2, b2 = await remote.acquire(checks, member, weight), await local.acquire(checks, member, weight)
                assert a2 == b2, (seed, step, a2, b2)
                seen["duplicates"] += a2.duplicate
            else:
                x, y = await remote.settle(checks, member, weight, 0), await local.settle(checks, member, weight, 0)
                assert x == y, (seed, step)
            continue
        checks = random_checks(rng)
        if not checks:
            continue
        member = f"m{step}"
        weight = rng.choice([0, rng.randrange(1, 200), rng.randrange(200, 800)])
        a = await remote.acquire(checks, member, weight)
        b = await local.acquire(checks, member, weight)
        assert a == b, (seed, step, a, b)
        if a.allowed:
            seen["admits"] += 1
            outstanding.append((checks, member, weight, a))
        else:
            seen["refusals"] += 1
            seen["kinds"].add((a.kind, a.retry_after is None))
        if step % 25 == 0:
            assert await remote.usage(POOL) == await local.usage(POOL), (seed, step)
            assert await remote.usage(list(ORGS)) == await local.usage(list(ORGS)), (seed, step)
    assert await remote.usage(POOL) == await local.usage(POOL)
    return seen


@pytest.mark.parametrize("seed", range(16))
async def test_ratelimit_twin_same_answers(seed: int, make_limiter: Any, clock: Any) -> None:
    async with make_limiter("redis") as remote, make_limiter("local") as local:
        seen = await run_schedule(seed, remote, local, clock, steps=1200)
    # the schedule exercised both outcomes, replays, corrections and every kind of refusal
    assert seen["admits"] > 50 and seen["refusals"] > 50, seen
    assert seen["duplicates"] > 0 and seen["fixed"] > 0, seen
    assert {("requests", False), ("tokens", False), ("tokens", True)} <= seen["kinds"], seen
