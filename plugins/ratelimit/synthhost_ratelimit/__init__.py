"""synthhost plugin: atomic multi-scope rate limits (GCRA) on Redis or in process.

Flag ``enable_rate_limiting`` (default off). For each call, every applicable scope
(user, workspace, org, agent, model, global) is checked and charged in one decision:
one Lua script on Redis when ``REDIS_URL`` is set, the same algorithm in process
otherwise. Settings (environment):

- ``SYNTHHOST_RATELIMIT_FAIL``: ``open`` (default), ``closed`` or ``local``: what calls
  get while Redis is unreachable.
- ``SYNTHHOST_RATELIMIT_PREFIX`` (``synthhost:rl``), ``SYNTHHOST_RATELIMIT_TIMEOUT_S``
  (0.25), ``SYNTHHOST_RATELIMIT_PROBE_S`` (1.0), ``SYNTHHOST_RATELIMIT_REFRESH_S`` (the
  flag refresh interval), ``SYNTHHOST_RATELIMIT_DEFAULT_MAX_TOKENS`` (1024: the token
  estimate's completion budget when a call sets no ``max_tokens``).
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthhost import hookimpl
from synthhost.registry import Stage

if TYPE_CHECKING:
    import click

    from synthhost.call import Call, Response
    from synthhost.host import Host
    from synthhost.registry import (
        RegisterCheck,
        RegisterFlag,
        RegisterGate,
        RegisterHealthCheck,
        RegisterMigrations,
        RegisterRoute,
    )
    from synthhost.tools import ToolCall
    from synthhost_ratelimit.runtime import RateLimiter

FLAG = "enable_rate_limiting"
# post_call and on_failure run before everyone else's: the usage correction must happen
# even when an output guardrail then denies, and on_failure stops at the first answer.
POST_CALL_ORDER = Stage.SETTLE
ON_FAILURE_ORDER = Stage.SETTLE

_states: weakref.WeakKeyDictionary[Host, RateLimiter] = weakref.WeakKeyDictionary()


def state(host: Host) -> RateLimiter:
    """This host's limiter (created at start-up)."""
    return _states[host]


@hookimpl
def register_flags(register: RegisterFlag) -> None:
    register(FLAG, default=False,
             description="Multi-scope rate limits (user, workspace, org, agent, model, global, tool)")


@hookimpl
def register_gate(register: RegisterGate) -> None:
    register(FLAG, order={"pre_call": Stage.RATE_LIMIT, "post_call": POST_CALL_ORDER,
                          "on_failure": ON_FAILURE_ORDER, "pre_tool": Stage.RATE_LIMIT})


@hookimpl
def register_migrations(register: RegisterMigrations) -> None:
    register(Path(__file__).resolve().parent / "migrations")


@hookimpl
def register_commands(cli: click.Group) -> None:
    from synthhost_ratelimit.cli import ratelimit

    cli.add_command(ratelimit)


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    from synthhost_ratelimit import http

    register("/v1/admin/ratelimits", http.list_limits)
    register("/v1/admin/ratelimits/{scope}", http.change_limit, methods=["PUT", "DELETE"])


@hookimpl
def register_health_checks(register: RegisterHealthCheck) -> None:
    register("ratelimit", _health)


@hookimpl
def register_checks(register: RegisterCheck) -> None:
    from synthhost_ratelimit.checks import scripts

    register("ratelimit_scripts", scripts, phase=3)


async def _health(host: Host) -> tuple[bool, str]:
    limiter = _states.get(host)
    if limiter is None:
        return True, "not started"
    if limiter.guard is None:
        return True, "in process (no REDIS_URL): limits are per process"
    try:
        ok = await limiter.limiter.ping()
    except Exception as exc:
        return False, f"Redis unreachable ({type(exc).__name__}); failing {limiter.config.fail.value}"
    return bool(ok), f"Redis, prefix {limiter.config.prefix!r}"


@hookimpl
async def startup(host: Host) -> None:
    # Redis, SQLAlchemy and the limiter load here, not at import: listing CLI commands
    # imports every plugin.
    import anyio

    from synthhost_ratelimit.runtime import RateLimiter
    from synthhost_ratelimit.store import Refresher

    limiter = RateLimiter.for_host(host)
    refresher = Refresher(host.engine, limiter.table, limiter.config.refresh_s)
    await anyio.to_thread.run_sync(refresher.reload)
    refresher.start()
    limiter.refresher = refresher
    _states[host] = limiter


@hookimpl
async def shutdown(host: Host) -> None:
    limiter = _states.pop(host, None)
    if limiter is not None:
        await limiter.aclose()


@hookimpl
async def pre_call(call: Call) -> None:
    await _states[call.host].pre_call(call)


@hookimpl
async def pre_tool(tool: ToolCall) -> None:
    await _states[tool.host].pre_tool(tool)


@hookimpl
async def post_call(call: Call, response: Response) -> None:
    await _states[call.host].post_call(call, response)


@hookimpl
async def on_failure(call: Call, error: BaseException, attempt: int) -> Any:
    await _states[call.host].on_failure(call, error, attempt)
    return None
