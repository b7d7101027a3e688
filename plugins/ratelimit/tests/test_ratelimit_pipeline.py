"""Auto-pipelining on the Redis wire (concurrent calls share one write per batch): the
decisions are exactly the ones the same calls sent one by one get, against real Redis,
including when the server forgot the scripts or dropped the connections mid-way."""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest
from redis.exceptions import ConnectionError

from synthhost_ratelimit.limits import Decision, Limit, ScopeCheck
from synthhost_ratelimit.redis_backend import RedisLimiter, connect

pytestmark = pytest.mark.anyio

DAY = 86_400.0


def checks(n_requests: int, n_tokens: int) -> list[ScopeCheck]:
    return [
        ScopeCheck.of("user", "w:user:u1", Limit(n_requests, None, DAY)),
        ScopeCheck.of("workspace", "w:workspace", Limit(None, n_tokens, DAY)),
        ScopeCheck.of("global", "global", Limit(n_requests + 5, n_tokens + 500, DAY)),
    ]


def answer(d: Decision) -> tuple[Any, ...]:
    """Everything a decision says, but the time (the test clock is the same for both)."""
    return (d.allowed, d.duplicate, d.scope, d.kind, d.limit, d.retry_us, d.usage, d.held)


async def concurrently(limiter: RedisLimiter, schedule: list[tuple[str, int]],
                       scopes: list[ScopeCheck]) -> list[Decision]:
    out: list[Decision | None] = [None] * len(schedule)

    async def one(i: int) -> None:
        member, weight = schedule[i]
        out[i] = await limiter.acquire(scopes, member, weight)

    async with anyio.create_task_group() as tg:
        for i in range(len(schedule)):
            tg.start_soon(one, i)
    assert all(d is not None for d in out)
    return [d for d in out if d is not None]


async def test_one_batch_answers_like_the_same_calls_one_by_one(redis_url: str, rl_prefix: str,
                                                                clock: Any) -> None:
    rng = random.Random(15)
    # weights up to 400 on 40 requests / 6,000 tokens: some refused, some admitted after a
    # refusal (a smaller weight fits); two members again ("already admitted")
    schedule = [(f"m{i}", rng.randint(1, 400)) for i in range(100)]
    schedule += [schedule[3], schedule[10]]
    scopes = checks(40, 6_000)
    one_by_one = connect(redis_url, timeout_s=2.0, prefix=f"{rl_prefix}:seq", clock=clock)
    batched = connect(redis_url, timeout_s=2.0, prefix=f"{rl_prefix}:pipe", clock=clock)
    try:
        expected = [await one_by_one.acquire(scopes, m, w) for m, w in schedule]
        assert one_by_one._wire.batches == 0  # one at a time: never batched
        await batched.ping()  # a connection ready: the first caller's command leaves at once
        got = await concurrently(batched, schedule, scopes)
        # the first caller went alone; every other one joined the batch, in order
        assert (batched._wire.batches, batched._wire.batched) == (1, len(schedule) - 1)
        assert [answer(d) for d in got] == [answer(d) for d in expected]
        assert 0 < sum(d.allowed for d in got) < len(got) and sum(d.duplicate for d in got) == 2
        assert await batched.usage(scopes) == await one_by_one.usage(scopes)
    finally:
        await one_by_one.aclose()
        await batched.aclose()


async def test_many_batches_on_many_connections_admit_exactly_the_limit(redis_url: str, rl_prefix: str,
                                                                        clock: Any) -> None:
    scopes = checks(50, 1_000_000)
    limiter = connect(redis_url, timeout_s=2.0, prefix=rl_prefix, clock=clock, pool_size=4, pipeline=8)
    try:
        got = await concurrently(limiter, [(f"m{i}", 10) for i in range(400)], scopes)
        assert limiter._wire.batches > 4  # batches of at most 8, over at most 4 connections
        assert limiter._wire.opened <= 4
        assert sum(d.allowed for d in got) == 50
        assert all(d.kind == "requests" and d.scope == "user" for d in got if not d.allowed)
        assert await limiter.usage(scopes) == [(50, 0), (0, 500), (50, 500)]
        assert limiter._wire.in_flight == 0
    finally:
        await limiter.aclose()


async def test_pipelining_off_sends_one_by_one(redis_url: str, rl_prefix: str, clock: Any) -> None:
    limiter = connect(redis_url, timeout_s=2.0, prefix=rl_prefix, clock=clock, pipeline=0)
    try:
        got = await concurrently(limiter, [(f"m{i}", 1) for i in range(60)], checks(30, 10_000))
        assert limiter._wire.batches == 0
        assert sum(d.allowed for d in got) == 30
    finally:
        await limiter.aclose()


async def test_a_batch_that_meets_noscript_loads_it_and_counts_each_call_once(private_redis: Any,
                                                                              clock: Any) -> None:
    scopes = checks(1_000, 1_000_000)
    limiter = connect(private_redis.url, timeout_s=2.0, prefix="rl", clock=clock)
    client = private_redis.client()
    try:
        assert (await limiter.acquire(scopes, "warm", 1)).allowed  # scripts loaded, a connection idle
        client.script_flush()  # the server forgets them (a restart, a failover)
        got = await concurrently(limiter, [(f"m{i}", 1) for i in range(30)], scopes)
        assert limiter._wire.batches >= 1
        assert all(d.allowed and not d.duplicate for d in got)
        assert (await limiter.usage(scopes))[0] == (31, 0)  # every call counted, none twice
    finally:
        await limiter.aclose()
        client.close()


async def test_a_batch_whose_connection_died_is_sent_again_on_a_fresh_one(private_redis: Any,
                                                                           clock: Any) -> None:
    scopes = checks(1_000, 1_000_000)
    limiter = connect(private_redis.url, timeout_s=2.0, prefix="rl", clock=clock)
    client = private_redis.client()
    try:
        # two idle connections: one for the lone first call, one for the batch
        await concurrently(limiter, [("warm1", 1), ("warm2", 1)], scopes)
        opened = limiter._wire.opened
        killed = client.client_kill_filter(_type="normal", skipme=True)  # every limiter connection
        assert killed >= 1
        got = await concurrently(limiter, [(f"m{i}", 1) for i in range(30)], scopes)
        assert all(d.allowed and not d.duplicate for d in got)
        assert limiter._wire.opened > opened
        assert (await limiter.usage(scopes))[0] == (32, 0)
    finally:
        await limiter.aclose()
        client.close()


async def test_a_cancelled_caller_leaves_the_rest_of_its_batch_answered(redis_url: str, rl_prefix: str,
                                                                        clock: Any) -> None:
    scopes = checks(1_000, 1_000_000)
    limiter = connect(redis_url, timeout_s=2.0, prefix=rl_prefix, clock=clock)
    try:
        await limiter.ping()
        answers: dict[int, Decision] = {}

        async def one(i: int) -> None:
            if i == 10:
                with anyio.CancelScope() as scope:
                    scope.cancel()  # this caller joins the batch, then gives up waiting
                    await limiter.acquire(scopes, "cancelled", 1)
                return
            answers[i] = await limiter.acquire(scopes, f"m{i}", 1)

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(one, i)
        assert sorted(answers) == [i for i in range(20) if i != 10]
        assert all(d.allowed for d in answers.values())
        assert limiter._wire.batches == 1 and limiter._wire.in_flight == 0
        assert (await limiter.usage(scopes))[0] == (19, 0)  # the cancelled one never left
    finally:
        await limiter.aclose()


async def test_closing_the_limiter_answers_a_waiting_batch_as_an_unreachable_redis(redis_url: str,
                                                                                  rl_prefix: str,
                                                                                  clock: Any) -> None:
    scopes = checks(1_000, 1_000_000)
    limiter = connect(redis_url, timeout_s=30.0, prefix=rl_prefix, clock=clock, pool_size=1)
    wire = limiter._wire
    await wire.slots.acquire()  # the only connection is busy...
    wire.in_flight += 1  # ...with a call in flight: the next ones join a batch, which waits
    results: dict[int, Any] = {}

    async def one(i: int) -> None:
        try:
            results[i] = await limiter.acquire(scopes, f"m{i}", 1)
        except ConnectionError as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(one, i)
        while not wire._tasks:  # the batch is waiting for the connection
            await anyio.sleep(0.001)
        await limiter.aclose()
    # an error the guard treats as Redis being away (fail open/closed/local), not a
    # cancellation its callers did not ask for
    assert sorted(results) == list(range(5))
    assert all(isinstance(r, ConnectionError) for r in results.values())
