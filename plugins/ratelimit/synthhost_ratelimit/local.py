"""The in-process twin of the Redis scripts: same GCRA buckets, same answers.

Used when no ``REDIS_URL`` is set (limits are then per process) and as the reference the
Redis scripts are tested against. Every step below is the Lua's, in the same order and
on doubles (Python floats are the same IEEE doubles as Lua 5.1's numbers), so both give
identical decisions even where a figure outgrows 2**53. Thread-safe (one lock, no awaits
inside) and therefore safe from any number of asyncio tasks too.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence

from synthhost_ratelimit.limits import (
    MARKER_TTL_S,
    NEVER,
    Decision,
    Held,
    ScopeCheck,
    refused,
)

INF = math.inf


def wall_clock_us() -> int:
    return time.time_ns() // 1000


def ceil_div(x: float, d: float) -> float:
    """``ceil(x / d)`` for whole numbers, exact below 2**53 (a rounded quotient is
    corrected by one step either way), as the Lua's ``ceil_div``."""
    q = float(math.ceil(x / d))
    if q * d < x:
        q = q + 1.0
    elif (q - 1.0) * d >= x:
        q = q - 1.0
    return q


def adopt(level: float, c: float, d: float, cc: float, dd: float) -> tuple[float, float, float]:
    """A level re-expressed in a check's units ``(cc, dd)``: the same time to empty,
    rounded up (only when a counter is seen under another rate than it was charged at)."""
    if c == 0.0:
        return 0.0, cc, dd
    if c == cc and d == dd:
        return level, c, d
    return ceil_div(level * dd, d), cc, dd


class _Bucket:
    """One scope: at time ``t`` the request level ``r`` in units ``(rc, rd)`` and the
    token level ``k`` in units ``(kc, kd)``; ``c == 0`` means that bucket is empty. What
    the Redis key holds, plus ``expires`` (its TTL) for sweeping."""

    __slots__ = ("expires", "k", "kc", "kd", "r", "rc", "rd", "t")

    def __init__(self, t: float, r: float, rc: float, rd: float, k: float, kc: float, kd: float,
                 expires: float) -> None:
        self.t, self.r, self.rc, self.rd = t, r, rc, rd
        self.k, self.kc, self.kd = k, kc, kd
        self.expires = expires


def view(b: _Bucket | None, now: float) -> tuple[float, float, float, float, float, float, float]:
    """``(e, r, rc, rd, k, kc, kd)``: the bucket drained to ``e`` (now, or the bucket's
    own time if the clock stepped back); a level drained to 0 forgets its units."""
    if b is None:
        return now, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    e = now if now > b.t else b.t
    el = e - b.t
    r, rc, rd = b.r, b.rc, b.rd
    if rc > 0:
        r = r - el * rd
        if r <= 0:
            r, rc, rd = 0.0, 0.0, 0.0
    k, kc, kd = b.k, b.kc, b.kd
    if kc > 0:
        k = k - el * kd
        if k <= 0:
            k, kc, kd = 0.0, 0.0, 0.0
    return e, r, rc, rd, k, kc, kd


def ttl_us(now: float, e: float, r: float, rd: float, k: float, kd: float, window: float) -> float:
    """Until one window after the bucket is empty (the Redis key's PX, in µs here)."""
    tte = 0.0
    if rd > 0:
        tte = r / rd
    if kd > 0 and k / kd > tte:
        tte = k / kd
    return (e - now) + tte + window


class LocalLimiter:
    """GCRA limiter in process memory: O(1) per scope. ``clock`` returns microseconds
    (inject one in tests to compare with the Redis scripts on the same sequence)."""

    per_process = True

    def __init__(self, clock: Callable[[], int] | None = None, *, marker_ttl_s: float = MARKER_TTL_S) -> None:
        self._clock = clock or wall_clock_us
        self._buckets: dict[str, _Bucket] = {}
        # reservation -> (corrected?, expiry µs); insertion order ~ expiry order
        self._markers: dict[str, tuple[bool, float]] = {}
        self._marker_us = float(round(marker_ttl_s * 1_000_000))
        self._lock = threading.Lock()
        self._ops = 0

    def _marker(self, member: str, now: float) -> tuple[bool, float] | None:
        m = self._markers.get(member)
        return m if m is not None and m[1] > now else None

    def _tick(self, now: float) -> None:
        # Markers expire in about insertion order: drop the expired head (amortised O(1)),
        # one TTL late: a clock stepping back still finds what Redis would still hold.
        markers = self._markers
        cutoff = now - self._marker_us
        while markers:
            first = next(iter(markers))
            if markers[first][1] > cutoff:
                break
            del markers[first]
        self._ops += 1
        if self._ops % 4096 == 0:
            # Drop buckets a window past empty, as their Redis TTL would.
            for key in [k for k, b in self._buckets.items() if b.expires <= now]:
                del self._buckets[key]

    def _set_marker(self, member: str, done: bool, now: float) -> None:
        self._markers.pop(member, None)  # re-insert at the end: keeps expiry order
        self._markers[member] = (done, now + self._marker_us)

    # -- the decision ------------------------------------------------------------------

    def acquire_sync(self, checks: Sequence[ScopeCheck], member: str, weight: int) -> Decision:
        with self._lock:
            now_i = self._clock()
            now = float(now_i)
            self._tick(now)
            if self._marker(member, now) is not None:
                return Decision(True, now_i, duplicate=True)
            w = float(weight)
            states = []
            best_i = best_kind = 0
            best_retry: float | None = None
            for i, check in enumerate(checks, start=1):
                e, r, rc, rd, k, kc, kd = view(self._buckets.get(check.key), now)
                _, rl, cc, dd, tl, tc, td = check.figures
                retry: float | None = None
                kind = 0
                if rl == 0:
                    retry, kind = INF, 1
                elif rl > 0:
                    if rc != cc or rd != dd:
                        r, rc, rd = adopt(r, rc, rd, cc, dd)
                    x = r + rc - rl * rc
                    if x > 0:
                        retry, kind = (e - now) + ceil_div(x, rd), 1
                tr: float | None = None
                if tl == 0:
                    if w > 0:
                        tr = INF
                elif tl > 0:
                    if kc != tc or kd != td:
                        k, kc, kd = adopt(k, kc, kd, tc, td)
                    if w > tl:
                        tr = INF
                    else:
                        x = k + w * kc - tl * kc
                        if x > 0:
                            tr = (e - now) + ceil_div(x, kd)
                if tr is not None and (retry is None or tr > retry):
                    retry, kind = tr, 2
                if retry is not None and (best_retry is None or retry > best_retry):
                    best_i, best_kind, best_retry = i, kind, retry
                states.append((e, r, rc, rd, k, kc, kd))
            if best_retry is not None:
                usage = [_usage(st[1], st[2], st[4], st[5], c.figures[4])
                         for c, st in zip(checks, states, strict=True)]
                r_us = NEVER if best_retry == INF else int(best_retry)
                return refused(checks, now_i, best_i, best_kind, r_us, tuple(usage))
            after: list[tuple[int, int]] = []
            held: list[tuple[int, int, int]] = []
            for check, (e, r, rc, rd, k, kc, kd) in zip(checks, states, strict=True):
                if rc > 0:
                    r = r + rc
                if kc > 0:
                    k = k + w * kc
                if rc > 0 or kc > 0:
                    self._store(check, now, e, r, rc, rd, k, kc, kd)
                after.append(_usage(r, rc, k, kc, check.figures[4]))
                held.append((int(e), int(r), int(k)))
            self._set_marker(member, False, now)
            return Decision(True, now_i, usage=tuple(after), held=tuple(held))

    def _store(self, check: ScopeCheck, now: float, e: float, r: float, rc: float, rd: float,
               k: float, kc: float, kd: float) -> None:
        expires = now + ttl_us(now, e, r, rd, k, kd, check.figures[0])
        b = self._buckets.get(check.key)
        if b is None:
            self._buckets[check.key] = _Bucket(e, r, rc, rd, k, kc, kd, expires)
            return
        b.t, b.r, b.rc, b.rd, b.k, b.kc, b.kd, b.expires = e, r, rc, rd, k, kc, kd, expires

    def _refund(self, checks: Sequence[ScopeCheck], member: str, dr: float, dk: float,
                held: Held) -> int:
        """Take ``dr`` requests and ``dk`` tokens (negative: charge them) off each scope,
        never more than what of the reservation is still in the bucket (per ``held``).
        Once per reservation (a marker lives for the wire's retry)."""
        with self._lock:
            now = float(self._clock())
            self._tick(now)
            m = self._marker(member, now)
            if m is not None and m[0]:
                return 0
            fixed = 0
            for i, check in enumerate(checks):
                e, r, rc, rd, k, kc, kd = view(self._buckets.get(check.key), now)
                _, rl, cc, dd, tl, tc, td = check.figures
                if rl > 0:
                    r, rc, rd = adopt(r, rc, rd, cc, dd)
                if tl > 0:
                    k, kc, kd = adopt(k, kc, kd, tc, td)
                tx, rx, kx = (float(v) for v in held[i]) if i < len(held) else (-1.0, 0.0, 0.0)
                touched = changed = False
                if dr > 0 and rc > 0:
                    touched = True
                    amt = dr * rc
                    if tx >= 0:
                        room = rx - (e - tx) * rd
                        if room < amt:
                            amt = room
                    if amt > 0:
                        r = r - amt
                        if r < 0:
                            r = 0.0
                        changed = True
                if dk != 0 and kc > 0:
                    touched = True
                    amt = dk * kc
                    if amt > 0:
                        if tx >= 0:
                            room = kx - (e - tx) * kd
                            if room < amt:
                                amt = room
                        if amt > 0:
                            k = k - amt
                            if k < 0:
                                k = 0.0
                            changed = True
                    else:
                        k = k - amt
                        changed = True
                if touched:
                    fixed += 1
                if changed:
                    self._store(check, now, e, r, rc, rd, k, kc, kd)
            self._set_marker(member, True, now)
            return fixed

    def settle_sync(self, checks: Sequence[ScopeCheck], member: str, old: int, new: int,
                    held: Held = ()) -> int:
        """Replace a reservation's token estimate by the real figure: a lower figure is
        refunded (up to what of the reservation has not drained), a higher one charged.
        Idempotent: a second correction of the same reservation is a no-op."""
        if old == new or not checks:
            return 0
        return self._refund(checks, member, 0.0, float(old - new), held)

    def release_sync(self, checks: Sequence[ScopeCheck], member: str, weight: int,
                     held: Held = ()) -> int:
        """Take a reservation back entirely (its request and its tokens). Idempotent."""
        if not checks:
            return 0
        return self._refund(checks, member, 1.0, float(weight), held)

    def usage_sync(self, checks: Sequence[ScopeCheck]) -> list[tuple[int, int]]:
        """Requests and tokens in use now per scope (levels rounded up), in the units
        the bucket was charged in."""
        out: list[tuple[int, int]] = []
        with self._lock:
            now = float(self._clock())
            for check in checks:
                _, r, rc, _, k, kc, _ = view(self._buckets.get(check.key), now)
                out.append((int(ceil_div(r, rc)) if rc > 0 else 0, int(ceil_div(k, kc)) if kc > 0 else 0))
        return out

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._buckets)

    def sizes(self) -> tuple[int, int]:
        """(buckets, live markers): what this limiter holds in memory."""
        with self._lock:
            return len(self._buckets), len(self._markers)

    # -- the async face (the Limiter protocol) ------------------------------------------

    async def acquire(self, checks: Sequence[ScopeCheck], member: str, weight: int) -> Decision:
        return self.acquire_sync(checks, member, weight)

    async def settle(self, checks: Sequence[ScopeCheck], member: str, old: int, new: int,
                     held: Held = ()) -> int:
        return self.settle_sync(checks, member, old, new, held)

    async def release(self, checks: Sequence[ScopeCheck], member: str, weight: int,
                      held: Held = ()) -> int:
        return self.release_sync(checks, member, weight, held)

    async def usage(self, checks: Sequence[ScopeCheck]) -> list[tuple[int, int]]:
        return self.usage_sync(checks)

    async def aclose(self) -> None:
        return None


def _usage(r: float, rc: float, k: float, kc: float, tl: float) -> tuple[int, int]:
    req = int(ceil_div(r, rc)) if rc > 0 else 0
    if tl < 0:
        return req, -1
    return req, int(ceil_div(k, kc)) if kc > 0 else 0
