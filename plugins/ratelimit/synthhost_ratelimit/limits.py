"""What a rate-limit decision is about: scopes, their limits, and the answer.

Both backends (Redis Lua and in process) take the same inputs and give the same
:class:`Decision`, to the microsecond: times are integer microseconds throughout.

The algorithm is GCRA (a leaky bucket kept as one small state per scope): a limit of N
per window W drains at N/W and holds at most N, so a call fits when the bucket's level
plus its cost stays within N. Levels are kept in integer *units* so the arithmetic is
exact: one call costs ``C = W / gcd(N, W)`` units, the bucket drains ``D = N / gcd(N, W)``
units per microsecond and holds ``N * C`` units (full after ``W`` of idling).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from math import gcd
from typing import Literal, Protocol
from urllib.parse import quote

# The workspace id of the rows that apply to every workspace (cheap to import: the CLI
# uses it as an option default).
GLOBAL_WORKSPACE = "*"

SCOPES: tuple[str, ...] = ("user", "workspace", "org", "agent", "model", "global", "tool")
"""Every scope, in the order decisions check them (ties between refusing scopes go to
the first). ``tool`` (per tool name, per workspace) limits tool calls only; the others
limit model calls."""

UNLIMITED = -1
NEVER = -1
"""``retry_us`` when waiting cannot help (a limit of 0, or one call bigger than the limit)."""

MARKER_TTL_S = 5.0
"""How long a reservation's marker lives (after its acquire, and again after its
correction): long enough for the wire's immediate retry after a lost reply, no longer."""

Kind = Literal["requests", "tokens", "unavailable"]


@dataclass(frozen=True, slots=True)
class Limit:
    """One scope's limits: ``requests`` calls and ``tokens`` tokens per ``window_s``
    seconds, as a rate with bursts up to the limit (GCRA). ``None`` means unlimited."""

    requests: int | None = None
    tokens: int | None = None
    window_s: float = 60.0

    @property
    def unlimited(self) -> bool:
        return self.requests is None and self.tokens is None

    @property
    def window_us(self) -> int:
        return max(1, round(self.window_s * 1_000_000))

    def describe(self) -> str:
        req = "∞" if self.requests is None else str(self.requests)
        tok = "∞" if self.tokens is None else str(self.tokens)
        return f"{req} req / {tok} tok per {self.window_s:g}s"


DEFAULT_LIMITS: Mapping[str, Limit] = {
    # The original's per-minute defaults; agent, model and global are unlimited.
    "user": Limit(requests=60),
    "workspace": Limit(requests=500),
    "org": Limit(requests=1000),
}


@lru_cache(maxsize=65536)
def units(limit: int, window_us: int) -> tuple[int, int]:
    """``(C, D)`` of a limit: the units one call (or token) costs and the units the
    bucket drains per microsecond, the reduced fraction ``W / N``. ``(0, 0)`` for a
    limit of 0 or unlimited (nothing to drain)."""
    if limit <= 0:
        return 0, 0
    g = gcd(limit, window_us)
    return window_us // g, limit // g


@dataclass(frozen=True, slots=True)
class ScopeCheck:
    """One applicable scope of one call: the counter ``key`` (without the backend's
    prefix) and the limits to check it against."""

    scope: str
    key: str
    requests: int
    tokens: int
    window_us: int
    # (window, max requests, their C and D, max tokens, their C and D) as doubles: what
    # both backends compute with, worked out once per check
    figures: tuple[float, float, float, float, float, float, float] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rc, rd = units(self.requests, self.window_us)
        tc, td = units(self.tokens, self.window_us)
        object.__setattr__(self, "figures", (float(self.window_us), float(self.requests), float(rc), float(rd),
                                             float(self.tokens), float(tc), float(td)))

    @classmethod
    def of(cls, scope: str, key: str, limit: Limit) -> ScopeCheck:
        return cls(
            scope,
            key,
            UNLIMITED if limit.requests is None else limit.requests,
            UNLIMITED if limit.tokens is None else limit.tokens,
            limit.window_us,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one call. On refusal, ``scope``/``kind``/``limit`` name the scope
    that must wait longest and ``retry_us`` how long (``NEVER`` if waiting cannot help).
    ``usage`` is ``(requests, tokens)`` in use per checked scope after the decision
    (levels rounded up to whole calls and tokens; tokens -1 where the check has no token
    limit). ``held`` (admitted calls only) is per scope ``(time, request level, token
    level)`` right after this call was charged: where its reservation sits in each bucket,
    so that a refund never gives back more than what of it has not drained yet."""

    allowed: bool
    now_us: int = 0
    scope: str | None = None
    kind: Kind | None = None
    limit: int | None = None
    window_s: float | None = None
    retry_us: int | None = None
    usage: tuple[tuple[int, int], ...] = ()
    degraded: bool = False
    duplicate: bool = False
    held: tuple[tuple[int, int, int], ...] = ()

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait, or ``None`` when waiting cannot help."""
        if self.retry_us is None or self.retry_us == NEVER:
            return None
        return self.retry_us / 1_000_000


def refused(checks: Sequence[ScopeCheck], now: int, index: int, kind: int, retry: int,
            usage: tuple[tuple[int, int], ...]) -> Decision:
    """Build a refusal from the backend's (1-based scope index, kind code, retry µs)."""
    check = checks[index - 1]
    k: Kind = "requests" if kind == 1 else "tokens"
    return Decision(
        allowed=False,
        now_us=now,
        scope=check.scope,
        kind=k,
        limit=check.requests if kind == 1 else check.tokens,
        window_s=check.window_us / 1_000_000,
        retry_us=retry,
        usage=usage,
    )


Held = Sequence[tuple[int, int, int]]
"""A reservation's :attr:`Decision.held`; empty when unknown (the refund is then only
floored at an empty bucket)."""


class Limiter(Protocol):
    """What both backends offer. ``member`` identifies one reservation (unique per call
    attempt); ``weight`` is its token charge; ``held`` what its acquire returned."""

    async def acquire(self, checks: Sequence[ScopeCheck], member: str, weight: int) -> Decision: ...

    async def settle(self, checks: Sequence[ScopeCheck], member: str, old: int, new: int,
                     held: Held = ()) -> int: ...

    async def release(self, checks: Sequence[ScopeCheck], member: str, weight: int,
                      held: Held = ()) -> int: ...

    async def usage(self, checks: Sequence[ScopeCheck]) -> list[tuple[int, int]]: ...

    async def aclose(self) -> None: ...


@lru_cache(maxsize=65536)
def _q(part: str) -> str:
    # Ids may hold ':' or glob characters; keep keys unambiguous and SCAN-safe.
    return quote(part, safe="-_.@")


def scope_key(scope: str, workspace: str, ident: str | None = None) -> str:
    """The counter key for a scope. workspace/user/agent/model counters belong to one
    workspace; org counters are shared by the org's workspaces; global by everyone."""
    if scope == "global":
        return "global"
    if scope == "org":
        return f"org:{_q(ident or '')}"
    if scope == "workspace":
        return f"ws:{_q(workspace)}"
    return f"ws:{_q(workspace)}:{scope}:{_q(ident or '')}"


@dataclass(slots=True)
class ResolvedLimits:
    """Effective limits for one workspace: defaults < global ('*') rows < its rows."""

    by_scope: dict[str, Limit] = field(default_factory=dict)

    def get(self, scope: str) -> Limit | None:
        limit = self.by_scope.get(scope)
        return None if limit is None or limit.unlimited else limit
