"""One host's rate limiter: configuration, backend, and what the call hooks do."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from synthhost.call import Call, Response, StashKey
from synthhost.errors import Denied, ErrorCode
from synthhost.tokens import count_text, prompt_tokens
from synthhost_ratelimit.guard import FailMode, Guarded
from synthhost_ratelimit.limits import SCOPES, Decision, Limit, Limiter, ScopeCheck, scope_key
from synthhost_ratelimit.local import LocalLimiter
from synthhost_ratelimit.settler import Settler
from synthhost_ratelimit.store import LimitTable, Refresher

if TYPE_CHECKING:
    from synthhost.host import Host
    from synthhost.tools import ToolCall

log = logging.getLogger("synthhost.ratelimit")

DEFAULT_MAX_TOKENS = 1024
MAX_TOKEN_PARAMS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


@dataclass(slots=True)
class Reservation:
    """What one attempt charged, for the post-call correction."""

    backend: Limiter
    checks: list[ScopeCheck]
    member: str
    weight: int
    tokens_limited: bool
    held: tuple[tuple[int, int, int], ...] = ()  # where it sits in each bucket (bounds refunds)
    settled: bool = False


RESERVATIONS = StashKey[dict[int, Reservation]]()


@dataclass(frozen=True, slots=True)
class Config:
    redis_url: str | None
    prefix: str
    fail: FailMode
    timeout_s: float
    probe_s: float
    refresh_s: float
    default_max_tokens: int
    pool_size: int = 16
    pipeline: int = 128

    @classmethod
    def from_env(cls, env: Mapping[str, str], redis_url: str | None,
                 refresh_s: float = 1.0) -> Config:
        from synthhost.errors import UsageError

        def num(name: str, default: float) -> float:
            raw = env.get(name)
            try:
                return float(raw) if raw not in (None, "") else default
            except ValueError:
                raise UsageError(f"{name}={raw!r}: expected a number") from None

        return cls(
            redis_url=redis_url,
            prefix=env.get("SYNTHHOST_RATELIMIT_PREFIX") or "synthhost:rl",
            fail=FailMode.parse(env.get("SYNTHHOST_RATELIMIT_FAIL")),
            timeout_s=num("SYNTHHOST_RATELIMIT_TIMEOUT_S", 0.25),
            probe_s=num("SYNTHHOST_RATELIMIT_PROBE_S", 1.0),
            refresh_s=num("SYNTHHOST_RATELIMIT_REFRESH_S", refresh_s),
            default_max_tokens=int(num("SYNTHHOST_RATELIMIT_DEFAULT_MAX_TOKENS", DEFAULT_MAX_TOKENS)),
            pool_size=max(1, int(num("SYNTHHOST_RATELIMIT_REDIS_POOL", 16))),
            pipeline=max(0, int(num("SYNTHHOST_RATELIMIT_PIPELINE", 128))),
        )


def estimate_tokens(call: Call, default_max_tokens: int) -> int:
    """The host's prompt-token estimate plus the completion budget the call asked for."""
    params = call.request.params
    budget = next((params[k] for k in MAX_TOKEN_PARAMS if params.get(k) is not None), None)
    try:
        out = int(budget) if budget is not None else default_max_tokens
    except (TypeError, ValueError):
        out = default_max_tokens
    return prompt_tokens(call.request) + max(0, out)


def actual_tokens(call: Call, response: Response) -> int:
    """Real usage; when the provider reported none, the host's estimate of both sides."""
    total = response.usage.input_tokens + response.usage.output_tokens
    if total > 0:
        return total
    return prompt_tokens(call.request) + count_text(response.text, call.request.model, call.request.provider)


CHECKS_MEMORY = 10_000
"""Caller identities whose scope checks a limiter keeps (then it starts over)."""


def checks_for(call: Call, limits: Mapping[str, Limit]) -> list[ScopeCheck]:
    """The applicable scopes of a call: those with a limit and an identity."""
    ws = call.workspace
    out: list[ScopeCheck] = []
    for scope in SCOPES:
        limit = limits.get(scope)
        if limit is None or limit.unlimited or scope == "tool":
            continue
        ident: str | None
        if scope == "user":
            ident = call.user
        elif scope == "org":
            ident = call.org
        elif scope == "agent":
            ident = call.agent
        elif scope == "model":
            ident = f"{call.request.provider}/{call.request.model}"
        else:
            ident = ""
        if ident is None:
            continue
        out.append(ScopeCheck.of(scope, scope_key(scope, ws, ident), limit))
    return out


def denial_message(d: Decision) -> str:
    if d.kind == "unavailable":
        return "rate limiter unavailable (Redis unreachable, SYNTHHOST_RATELIMIT_FAIL=closed)"
    what = f"{d.limit} {d.kind} per {d.window_s:g}s"
    if d.retry_after is None:
        return f"{d.scope} rate limit exceeded ({what}); this call can never fit"
    return f"{d.scope} rate limit exceeded ({what}); retry after {d.retry_after:.3f}s"


class RateLimiter:
    """The plugin's state for one host."""

    def __init__(self, config: Config, table: LimitTable, *, limiter: Limiter,
                 guard: Guarded | None, emit: Callable[..., Any] | None = None) -> None:
        self.config = config
        self.table = table
        self.limiter = limiter
        self.guard = guard
        self.refresher: Refresher | None = None
        self.settler: Settler | None = None  # Redis: token corrections off the call path
        self._emit = emit
        self._warned_local = False
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._checks: dict[tuple[Any, ...], tuple[Mapping[str, Limit], list[ScopeCheck]]] = {}

    @classmethod
    def for_host(cls, host: Host) -> RateLimiter:
        settings = host.settings
        config = Config.from_env(settings.env, settings.redis_url, settings.flag_refresh_s)
        table = LimitTable()
        guard: Guarded | None = None
        limiter: Limiter
        if config.redis_url:
            from synthhost_ratelimit.redis_backend import connect

            limiter = connect(config.redis_url, timeout_s=config.timeout_s, prefix=config.prefix,
                              pool_size=config.pool_size, pipeline=config.pipeline)
            state = cls(config, table, limiter=limiter, guard=None, emit=host.emit)
            guard = state.guard = Guarded(limiter, mode=config.fail, probe_s=config.probe_s,
                                          notify=state._queue_event)
            state.settler = Settler(limiter.settle_many_blocking, on_error=guard.failed,
                                    skip=lambda: not guard.healthy)
            return state
        limiter = LocalLimiter()
        return cls(config, table, limiter=limiter, guard=guard, emit=host.emit)

    def _checks_for(self, call: Call) -> list[ScopeCheck]:
        """:func:`checks_for`, remembered per caller identity while the workspace's limits
        stay the same object (the table swaps in new ones on reload): building and
        hashing four ``ScopeCheck`` per call was a fifth of the hook's Python time. The
        list is shared: nobody mutates it. At most ``CHECKS_MEMORY`` identities."""
        limits = self.table.for_workspace(call.workspace)
        request = call.request
        key = (call.workspace, call.user, call.org, call.agent, request.provider, request.model)
        hit = self._checks.get(key)
        if hit is not None and hit[0] is limits:
            return hit[1]
        checks = checks_for(call, limits)
        if len(self._checks) >= CHECKS_MEMORY:
            self._checks.clear()
        self._checks[key] = (limits, checks)
        return checks

    @property
    def per_process(self) -> bool:
        return self.guard is None

    # Guard events have no call at hand: the next call flushes them with its context.
    def _queue_event(self, event_type: str, context: dict[str, Any]) -> None:
        level = logging.WARNING if event_type == "ratelimit_degraded" else logging.INFO
        log.log(level, "ratelimit: %s %s", event_type, context)
        self._pending.append((event_type, context))

    def _flush_events(self, call: Call) -> None:
        while self._pending:
            event_type, context = self._pending.pop(0)
            status = "error" if event_type == "ratelimit_degraded" else "success"
            call.emit(event_type, status=status, **context)

    # -- hooks -------------------------------------------------------------------------

    async def pre_call(self, call: Call) -> None:
        checks = self._checks_for(call)
        if not checks:
            return
        weight = estimate_tokens(call, self.config.default_max_tokens)
        member = f"{call.span_id}.{call.attempt}"
        if self.guard is not None:
            decision, backend = await self.guard.acquire(checks, member, weight)
            if self._pending:
                self._flush_events(call)
        else:
            decision, backend = await self.limiter.acquire(checks, member, weight), self.limiter
            if not self._warned_local:
                self._warned_local = True
                log.warning("ratelimit: no REDIS_URL; limits are enforced per process")
                call.emit("ratelimit_per_process", status="warning",
                          detail="no REDIS_URL: each process counts on its own")
        if decision.degraded:
            call.attributes["ratelimit.degraded"] = self.config.fail.value
        if not decision.allowed:
            details = {
                "scope": decision.scope,
                "kind": decision.kind,
                "limit": decision.limit,
                "window_s": decision.window_s,
                "retry_after": decision.retry_after,
            }
            call.emit("rate_limited", status="error", **details)
            raise Denied(ErrorCode.RATE_LIMITED, denial_message(decision), **details)
        if backend is not None:
            reservations = call.stash.get(RESERVATIONS)
            if reservations is None:
                reservations = {}
                call.stash[RESERVATIONS] = reservations
            tokens_limited = any(c.tokens >= 0 for c in checks)
            reservations[call.attempt] = Reservation(backend, checks, member, weight, tokens_limited,
                                                      decision.held)

    async def pre_tool(self, tool: ToolCall) -> None:
        """The ``tool`` scope: requests per tool name in the workspace (a tool call has
        no tokens, so nothing to settle afterwards)."""
        limit = self.table.for_workspace(tool.workspace).get("tool")
        if limit is None or limit.unlimited:
            return
        checks = [ScopeCheck.of("tool", scope_key("tool", tool.workspace, tool.name), limit)]
        if self.guard is not None:
            decision, _ = await self.guard.acquire(checks, tool.span_id, 0)
        else:
            decision = await self.limiter.acquire(checks, tool.span_id, 0)
        if decision.degraded:
            tool.attributes["ratelimit.degraded"] = self.config.fail.value
        if not decision.allowed:
            details = {"scope": decision.scope, "kind": decision.kind, "limit": decision.limit,
                       "window_s": decision.window_s, "retry_after": decision.retry_after}
            tool.emit("rate_limited", status="error", **details)
            raise Denied(ErrorCode.RATE_LIMITED, denial_message(decision), **details)

    def _take(self, call: Call, attempt: int) -> Reservation | None:
        reservations = call.stash.get(RESERVATIONS)
        res = reservations.get(attempt) if reservations else None
        if res is None or res.settled:
            return None
        res.settled = True  # before any await: a concurrent hook must not correct it again
        return res

    async def settle(self, call: Call, attempt: int, tokens: int) -> None:
        res = self._take(call, attempt)
        if res is None or not res.tokens_limited:
            return  # token sums only matter where a token limit applies: no round trip
        if self.settler is not None and self.guard is not None and res.backend is self.guard.primary:
            if self.guard.healthy:
                self.settler.put((res.checks, res.member, res.weight, tokens, res.held))
            return
        if self.guard is not None:
            await self.guard.settle(res.backend, res.checks, res.member, res.weight, tokens, res.held)
            if self._pending:
                self._flush_events(call)
        else:
            await res.backend.settle(res.checks, res.member, res.weight, tokens, res.held)

    async def release(self, call: Call, attempt: int) -> None:
        res = self._take(call, attempt)
        if res is None:
            return
        if self.guard is not None:
            await self.guard.release(res.backend, res.checks, res.member, res.weight, res.held)
            if self._pending:
                self._flush_events(call)
        else:
            await res.backend.release(res.checks, res.member, res.weight, res.held)

    async def post_call(self, call: Call, response: Response) -> None:
        await self.settle(call, call.attempt, actual_tokens(call, response))

    async def on_failure(self, call: Call, error: BaseException, attempt: int) -> None:
        if isinstance(error, Denied) and len(call.tried_routes) < attempt:
            # Denied later in pre_call (policy, guardrail...): the provider was never
            # called, so the call takes nothing, as if it had been refused here.
            await self.release(call, attempt)
            return
        # The attempt reached the provider and failed: the request stays counted; the
        # token estimate is refunded (no usage we know of).
        await self.settle(call, attempt, 0)

    async def aclose(self) -> None:
        if self.refresher is not None:
            self.refresher.stop()
        if self.settler is not None:
            import anyio

            await anyio.to_thread.run_sync(self.settler.close)
        await self.limiter.aclose()
