"""Keeps calls flowing when Redis is away: fail open (default), closed, or to in-process
limits; one ``ratelimit_degraded`` event per outage; automatic recovery.

While Redis is down, calls do not wait on it: after a failure only one call probes
Redis every ``probe_s`` seconds, the others get the degraded answer at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

from redis.exceptions import RedisError

from synthhost_ratelimit.limits import Decision, Held, Limiter, ScopeCheck
from synthhost_ratelimit.local import LocalLimiter

BACKEND_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)

Notify = Callable[[str, dict[str, Any]], None]


class FailMode(StrEnum):
    OPEN = "open"  # admit every call while Redis is away
    CLOSED = "closed"  # refuse every call while Redis is away
    LOCAL = "local"  # apply the limits per process while Redis is away

    @classmethod
    def parse(cls, value: str | None) -> FailMode:
        try:
            return cls((value or "open").strip().lower())
        except ValueError:
            from synthhost.errors import UsageError

            choices = ", ".join(m.value for m in cls)
            raise UsageError(f"SYNTHHOST_RATELIMIT_FAIL={value!r}: expected one of {choices}") from None


class Guarded:
    """A :class:`RedisLimiter` with an outage policy. ``acquire`` returns the decision
    and the backend that holds the reservation (``None``: nothing was charged)."""

    def __init__(self, primary: Limiter, *, mode: FailMode = FailMode.OPEN, probe_s: float = 1.0,
                 notify: Notify | None = None, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.primary = primary
        self.mode = mode
        self.probe_s = probe_s
        self.fallback = LocalLimiter() if mode is FailMode.LOCAL else None
        self._notify = notify or (lambda _type, _ctx: None)
        self._mono = monotonic
        self.down_since: float | None = None
        self.next_probe = 0.0
        self.unchecked = 0
        self.outages = 0

    @property
    def healthy(self) -> bool:
        return self.down_since is None

    async def acquire(self, checks: Sequence[ScopeCheck], member: str,
                      weight: int) -> tuple[Decision, Limiter | None]:
        if self.down_since is not None:
            now = self._mono()
            if now < self.next_probe:
                return await self._degraded(checks, member, weight)
            self.next_probe = now + self.probe_s  # this call probes; the others don't wait
        try:
            decision = await self.primary.acquire(checks, member, weight)
        except BACKEND_ERRORS as exc:
            self._failed(exc)
            return await self._degraded(checks, member, weight)
        if self.down_since is not None:
            self._recovered()
        return decision, self.primary

    async def settle(self, backend: Limiter | None, checks: Sequence[ScopeCheck], member: str,
                     old: int, new: int, held: Held = ()) -> int:
        if backend is None:
            return 0
        if backend is self.primary and self.down_since is not None:
            return 0  # the estimate stays; it drains on its own
        try:
            return await backend.settle(checks, member, old, new, held)
        except BACKEND_ERRORS as exc:
            self._failed(exc)
            return 0

    async def release(self, backend: Limiter | None, checks: Sequence[ScopeCheck], member: str,
                      weight: int, held: Held = ()) -> int:
        if backend is None or (backend is self.primary and self.down_since is not None):
            return 0
        try:
            return await backend.release(checks, member, weight, held)
        except BACKEND_ERRORS as exc:
            self._failed(exc)
            return 0

    async def _degraded(self, checks: Sequence[ScopeCheck], member: str,
                        weight: int) -> tuple[Decision, Limiter | None]:
        self.unchecked += 1
        if self.fallback is not None:
            d = await self.fallback.acquire(checks, member, weight)
            return _mark(d), self.fallback
        if self.mode is FailMode.CLOSED:
            wait = max(0.0, self.next_probe - self._mono())
            return Decision(False, scope="limiter", kind="unavailable",
                            retry_us=max(1, round(wait * 1_000_000)), degraded=True), None
        return Decision(True, degraded=True), None

    def failed(self, exc: BaseException) -> None:
        """A call on the primary failed outside a decision (a deferred settle)."""
        self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        if self.down_since is not None:
            return
        self.down_since = self._mono()
        self.next_probe = self.down_since + self.probe_s
        self.unchecked = 0
        self.outages += 1
        # Class name only: messages can carry addresses, never needed to act on it.
        self._notify("ratelimit_degraded", {"error": type(exc).__name__, "mode": self.mode.value,
                                            "probe_s": self.probe_s})

    def _recovered(self) -> None:
        assert self.down_since is not None
        down = self._mono() - self.down_since
        self.down_since = None
        self._notify("ratelimit_recovered", {"down_s": round(down, 3),
                                             "unchecked_calls": self.unchecked,
                                             "mode": self.mode.value})
        self.unchecked = 0


def _mark(d: Decision) -> Decision:
    from dataclasses import replace

    return replace(d, degraded=True)
