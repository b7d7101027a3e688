"""Per-plugin hook durations, cheap enough for the call path.

When a host has :class:`HookTimings` (``synthhost serve`` attaches one for
``/metrics``), every call-hook implementation in its chains is wrapped at chain-build
time, so an embedded host without metrics pays nothing and the chain's loops stay as
they are. A wrapped call costs two ``perf_counter`` reads and a few integer additions
into plain per-(plugin, hook) counters; the Prometheus histogram is fed from those
counters in bulk (:meth:`HookTimings.drain`), not per call, because a multiprocess
``Histogram.observe`` writes to a memory-mapped file under a lock.

For implementations that return an awaitable (``async def`` or a plain function that
returns a coroutine), the duration runs until the awaitable finishes: it is the
latency the plugin adds to the call, not only its CPU time.
"""

from __future__ import annotations

import bisect
import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from time import perf_counter
from types import CoroutineType
from typing import Any

# Plugin hooks are microseconds when healthy; the upper buckets catch network waits.
BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
           0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class HookTimer:
    """Durations of one (plugin, hook): a count per bucket (not cumulative; the last
    one is +Inf) and a sum, since the last :meth:`HookTimings.drain`."""

    __slots__ = ("buckets", "count", "hook", "plugin", "total")

    def __init__(self, plugin: str, hook: str) -> None:
        self.plugin = plugin
        self.hook = hook
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.count = 0
        self.total = 0.0

    def add(self, seconds: float) -> None:
        # Lost updates between threads would only under-count a sample; calls run on the
        # event loop's thread, so in practice there is one writer.
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.count += 1
        self.total += seconds


class HookTimings:
    def __init__(self) -> None:
        self._timers: dict[tuple[str, str], HookTimer] = {}
        self._lock = threading.Lock()

    def timer(self, plugin: str, hook: str) -> HookTimer:
        with self._lock:
            found = self._timers.get((plugin, hook))
            if found is None:
                found = self._timers[(plugin, hook)] = HookTimer(plugin, hook)
            return found

    def wrap(self, plugin: str, hook: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` timed into this plugin's timer (same arguments, same result)."""
        add = self.timer(plugin, hook).add

        async def finish(awaitable: Any, started: float) -> Any:
            try:
                return await awaitable
            finally:
                add(perf_counter() - started)

        @functools.wraps(function)
        def timed(*args: Any) -> Any:
            started = perf_counter()
            try:
                result = function(*args)
            except BaseException:
                add(perf_counter() - started)
                raise
            if result is not None and (type(result) is CoroutineType or inspect.isawaitable(result)):
                return finish(result, started)
            add(perf_counter() - started)
            return result

        return timed

    def drain(self) -> Iterator[tuple[str, str, list[int], float]]:
        """(plugin, hook, bucket counts, sum) added since the last drain, timers with
        nothing new left out; the counters are reset."""
        with self._lock:
            timers = list(self._timers.values())
        for t in timers:
            if not t.count:
                continue
            buckets, total = t.buckets, t.total
            t.buckets, t.count, t.total = [0] * len(buckets), 0, 0.0
            yield t.plugin, t.hook, buckets, total
