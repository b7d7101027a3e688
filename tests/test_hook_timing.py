"""``synthhost.hooktiming``: timed wrappers keep results, exceptions and awaitables, and
the chain of a host with timings times every call hook of every active plugin."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from synthhost import hookimpl
from synthhost.hooktiming import BUCKETS, HookTimings

pytestmark = pytest.mark.anyio


def _drained(timings: HookTimings) -> dict[tuple[str, str], tuple[list[int], float]]:
    return {(p, h): (b, s) for p, h, b, s in timings.drain()}


def test_sync_result_and_exception_are_kept_and_timed() -> None:
    timings = HookTimings()
    ok = timings.wrap("p", "post_call", lambda a, b: a + b)
    assert ok(2, 3) == 5

    def boom() -> None:
        raise ValueError("x")

    failing = timings.wrap("p", "pre_call", boom)
    with pytest.raises(ValueError):
        failing()
    got = _drained(timings)
    assert sum(got[("p", "post_call")][0]) == 1
    assert sum(got[("p", "pre_call")][0]) == 1
    assert _drained(timings) == {}  # drained: counters reset, nothing new


async def test_awaitables_are_timed_until_they_finish() -> None:
    timings = HookTimings()

    async def waits() -> str:
        await anyio.sleep(0.02)
        return "done"

    def returns_coroutine() -> Any:  # a plain def returning an awaitable (as some plugins do)
        return waits()

    assert await timings.wrap("p", "pre_call", waits)() == "done"
    assert await timings.wrap("q", "pre_call", returns_coroutine)() == "done"
    got = _drained(timings)
    for key in (("p", "pre_call"), ("q", "pre_call")):
        buckets, total = got[key]
        assert sum(buckets) == 1 and total > 0.01  # (loop clocks may wake a little early)
        assert sum(buckets[: BUCKETS.index(0.01) + 1]) == 0  # not counted before the await finished


class Counting:
    __name__ = "counting"

    @hookimpl
    def pre_call(self, call: Any) -> None:
        return None

    @hookimpl
    async def post_call(self, call: Any, response: Any) -> None:
        return None


async def test_a_host_with_timings_times_its_chain(make_host: Any) -> None:
    host = make_host(Counting())
    host.hook_timings = timings = HookTimings()
    host.chains.invalidate()
    async with host:
        for _ in range(4):
            await host.complete(model="echo/gpt-4o-mini", messages="hi")
    got = _drained(timings)
    assert sum(got[("counting", "pre_call")][0]) == 4
    assert sum(got[("counting", "post_call")][0]) == 4


async def test_a_host_without_timings_calls_the_plugins_own_functions(make_host: Any) -> None:
    plugin = Counting()
    host = make_host(plugin)
    async with host:
        chain = host.chains.for_workspace("default")
    functions = [i.function for i in chain.pre_call if i.plugin_name == "counting"]
    assert functions == [plugin.pre_call]
