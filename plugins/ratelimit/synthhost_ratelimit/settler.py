"""Token corrections sent off the call path.

After a call its token estimate is replaced by the real usage (settle). On Redis that is
a second round trip; awaited in ``post_call`` it doubled what the limiter cost a call.
The correction only changes what *later* calls see, so the call hands it to this
thread and returns: corrections queued while one write is in flight go out together
(one pipelined write, one read), in the order the calls finished.

A correction can be late by one Redis round trip, never lost while the process lives:
``drain`` waits for every queued one (the plugin drains on shutdown, tests before they
read counters). If Redis fails, the guard is told (the limiter degrades as for a failed
decision) and the queued corrections are dropped, as an awaited one would have been: the
estimates then stay until their window passes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from synthhost_ratelimit.limits import ScopeCheck

log = logging.getLogger("synthhost.ratelimit")

Correction = tuple[Sequence[ScopeCheck], str, int, int, tuple[tuple[int, int, int], ...]]
"""(checks, member, old weight, new weight, where the reservation sits in each bucket)."""

MAX_BATCH = 256


class Settler:
    def __init__(self, send: Callable[[list[Correction]], Any], *,
                 on_error: Callable[[BaseException], None],
                 skip: Callable[[], bool] = lambda: False) -> None:
        self._send = send
        self._on_error = on_error
        self._skip = skip  # the limiter is degraded: corrections would only fail
        self._queue: deque[Correction] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._queued = 0
        self._done = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        self.stats = {"sent": 0, "dropped": 0, "writes": 0}

    def put(self, correction: Correction) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="synthhost-ratelimit-settle",
                                                daemon=True)
                self._thread.start()
            self._queue.append(correction)
            self._queued += 1
            self._cond.notify()

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every correction queued so far was sent (or dropped)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._queued
            while self._done < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> bool:
        ok = self.drain(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return ok

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
            try:
                if self._skip():
                    self.stats["dropped"] += len(batch)
                else:
                    self._send(batch)
                    self.stats["sent"] += len(batch)
                    self.stats["writes"] += 1
            except Exception as exc:
                self.stats["dropped"] += len(batch)
                log.warning("ratelimit: %d token corrections not applied: %s", len(batch), type(exc).__name__)
                self._on_error(exc)
            with self._cond:
                self._done += len(batch)
                self._cond.notify_all()
