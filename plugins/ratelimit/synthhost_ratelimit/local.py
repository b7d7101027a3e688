"""The in-process twin of the Redis script: same sliding log, same answers.

Used when no ``REDIS_URL`` is set (limits are then per process) and as the reference the
Redis script is tested against. Thread-safe (one lock, no awaits inside) and therefore
safe from any number of asyncio tasks too.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Sequence

from synthhost_ratelimit.limits import NEVER, UNLIMITED, Decision, ScopeCheck, refused


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class _Log:
    """One counter: entries ``(timestamp µs, member)`` in (score, member) order, as in
    a Redis sorted set, with each member's token weight and the running token sum."""

    __slots__ = ("entries", "sum", "weights", "window")

    def __init__(self, window: int) -> None:
        self.entries: list[tuple[int, str]] = []
        self.weights: dict[str, int] = {}
        self.sum = 0
        self.window = window  # the last window it was charged with (the Redis TTL)

    def trim(self, cutoff: int) -> None:
        entries = self.entries
        if not entries or entries[0][0] > cutoff:
            return
        i = bisect.bisect_right(entries, cutoff, key=lambda e: e[0])
        for _, member in entries[:i]:
            self.sum -= self.weights.pop(member)
        del entries[:i]

    def add(self, now: int, member: str, weight: int) -> None:
        entry = (now, member)
        if not self.entries or self.entries[-1] <= entry:
            self.entries.append(entry)
        else:  # a clock that stepped back: keep the order Redis would keep
            bisect.insort(self.entries, entry)
        self.weights[member] = weight
        self.sum += weight


class LocalLimiter:
    """Sliding-window log limiter in process memory. ``clock`` returns microseconds
    (inject one in tests to compare with the Redis script on the same sequence)."""

    per_process = True

    def __init__(self, clock: Callable[[], int] | None = None) -> None:
        self._clock = clock or wall_clock_us
        self._logs: dict[str, _Log] = {}
        self._lock = threading.Lock()
        self._ops = 0

    # -- the decision ------------------------------------------------------------------

    def acquire_sync(self, checks: Sequence[ScopeCheck], member_id: str, weight: int) -> Decision:
        member = f"{member_id}:{weight}"
        with self._lock:
            now = self._clock()
            self._ops += 1
            if self._ops % 4096 == 0:
                self._sweep(now)
            logs = [self._logs.get(c.key) for c in checks]
            if checks and logs[0] is not None and member in logs[0].weights:
                return Decision(True, now, duplicate=True)
            best_i = best_kind = 0
            best_retry: float | None = None
            usage: list[tuple[int, int]] = []
            for i, (check, log) in enumerate(zip(checks, logs, strict=True), start=1):
                if log is not None:
                    log.trim(now - check.window_us)
                count = len(log.entries) if log else 0
                total = log.sum if log else 0
                retry: float | None = None
                kind = 0
                if check.requests != UNLIMITED and count + 1 > check.requests:
                    kind = 1
                    if check.requests == 0 or log is None:
                        retry = float("inf")
                    else:
                        retry = log.entries[count - check.requests][0] + check.window_us - now
                if check.tokens != UNLIMITED and total + weight > check.tokens:
                    r = self._token_retry(log, check, now, total, weight)
                    if r is not None and (retry is None or r > retry):
                        retry, kind = r, 2
                if retry is not None and (best_retry is None or retry > best_retry):
                    best_i, best_kind, best_retry = i, kind, retry
                usage.append((count, total if check.tokens != UNLIMITED else -1))
            if best_retry is not None:
                r_us = NEVER if best_retry == float("inf") else int(best_retry)
                return refused(checks, now, best_i, best_kind, r_us, tuple(usage))
            for check in checks:
                log = self._logs.get(check.key)
                if log is None:
                    log = self._logs[check.key] = _Log(check.window_us)
                log.window = check.window_us
                log.add(now, member, weight)
            return Decision(True, now, usage=tuple((c + 1, t + weight if t >= 0 else -1)
                                                   for c, t in usage))

    @staticmethod
    def _token_retry(log: _Log | None, check: ScopeCheck, now: int, total: int,
                     weight: int) -> float | None:
        if weight > check.tokens or log is None:
            return float("inf")
        need = total + weight - check.tokens
        acc = 0
        for ts, member in log.entries:
            acc += log.weights[member]
            if acc >= need:
                return ts + check.window_us - now
        return None  # unreachable while the sum is exact (the Redis twin repairs drift)

    def settle_sync(self, checks: Sequence[ScopeCheck], member_id: str, old: int, new: int) -> int:
        """Replace a reservation's token estimate by the real figure, in every scope
        that still holds it. Idempotent: a second settle finds no ``old`` entry."""
        old_m, new_m = f"{member_id}:{old}", f"{member_id}:{new}"
        fixed = 0
        with self._lock:
            for check in checks:
                log = self._logs.get(check.key)
                if log is None or old_m not in log.weights or old_m == new_m:
                    continue
                i = next(j for j, e in enumerate(log.entries) if e[1] == old_m)
                ts = log.entries[i][0]
                del log.entries[i]
                del log.weights[old_m]
                bisect.insort(log.entries, (ts, new_m))
                log.weights[new_m] = new
                log.sum += new - old
                fixed += 1
        return fixed

    def release_sync(self, checks: Sequence[ScopeCheck], member_id: str, weight: int) -> int:
        """Take a reservation back entirely. Idempotent."""
        member = f"{member_id}:{weight}"
        fixed = 0
        with self._lock:
            for check in checks:
                log = self._logs.get(check.key)
                if log is None or member not in log.weights:
                    continue
                log.entries.remove(next(e for e in log.entries if e[1] == member))
                log.sum -= log.weights.pop(member)
                fixed += 1
        return fixed

    def usage_sync(self, checks: Sequence[ScopeCheck]) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        with self._lock:
            now = self._clock()
            for check in checks:
                log = self._logs.get(check.key)
                if log is None:
                    out.append((0, 0))
                    continue
                cutoff = now - check.window_us
                live = [m for ts, m in log.entries if ts > cutoff]
                out.append((len(live), sum(log.weights[m] for m in live)))
        return out

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._logs)

    def _sweep(self, now: int) -> None:
        # Drop counters idle for a whole window, as their Redis TTL would.
        stale = [k for k, log in self._logs.items()
                 if not log.entries or log.entries[-1][0] <= now - log.window]
        for k in stale:
            del self._logs[k]

    # -- the async face (the Limiter protocol) ------------------------------------------

    async def acquire(self, checks: Sequence[ScopeCheck], member: str, weight: int) -> Decision:
        return self.acquire_sync(checks, member, weight)

    async def settle(self, checks: Sequence[ScopeCheck], member: str, old: int, new: int) -> int:
        return self.settle_sync(checks, member, old, new)

    async def release(self, checks: Sequence[ScopeCheck], member: str, weight: int) -> int:
        return self.release_sync(checks, member, weight)

    async def usage(self, checks: Sequence[ScopeCheck]) -> list[tuple[int, int]]:
        return self.usage_sync(checks)

    async def aclose(self) -> None:
        return None
