"""synthhost plugin: versioned, audited CEL policy sets that block, route and modify calls.

Gate: flag ``enable_policy_engine`` (default off), at ``Stage.POLICY`` in ``pre_call``.
Every decision other than a plain allow is an event ``policy_evaluated`` (set, version,
rule, action); warnings are also listed on the call's span as ``policy.warnings``; a
block denies the call with ``POLICY_DENIED`` and the rule's message, always.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio

from synthhost import hookimpl
from synthhost.call import Call
from synthhost.errors import Denied, ErrorCode
from synthhost.registry import RegisterFlag, RegisterGate, RegisterHealthCheck, RegisterMigrations, RegisterRoute, Stage
from synthhost.tools import ToolCall
from synthhost_policy.document import GLOBAL, PolicySet, load_policy_file, parse_policy
from synthhost_policy.engine import Outcome, evaluate

if TYPE_CHECKING:
    import click

    from synthhost.host import Host
    from synthhost_policy.policy_runtime import PolicyRuntime
    from synthhost_policy.store import ApplyResult

FLAG = "enable_policy_engine"
EVENT = "policy_evaluated"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"

_runtimes: weakref.WeakKeyDictionary[Host, PolicyRuntime] = weakref.WeakKeyDictionary()


def runtime(host: Host) -> PolicyRuntime:
    """This host's policy runtime (created, and loaded, on first use)."""
    rt = _runtimes.get(host)
    if rt is None:
        # SQLAlchemy loads here, once per host, not at plugin import. (The module is not
        # called ``runtime``: importing it lazily would rebind this package's ``runtime``
        # attribute, this function, to the module.)
        from synthhost_policy.policy_runtime import PolicyRuntime

        env = host.settings.env
        refresh = float(env.get("SYNTHHOST_POLICY_REFRESH_S") or host.settings.flag_refresh_s)
        rt = _runtimes[host] = PolicyRuntime(host.engine, refresh)
        weakref.finalize(host, rt.stop)  # a host dropped without stop() ends its poller
        rt.reload()
    return rt


# -- registration ---------------------------------------------------------------------------


@hookimpl
def register_flags(register: RegisterFlag) -> None:
    register(FLAG, default=False, description="Evaluate CEL policy sets before each call.")


@hookimpl
def register_gate(register: RegisterGate) -> None:
    # A crash here cannot tell whether the call should have been blocked: deny it.
    register(FLAG, order={"pre_call": Stage.POLICY, "pre_tool": Stage.POLICY}, fail_closed=True)


@hookimpl
def register_migrations(register: RegisterMigrations) -> None:
    register(MIGRATIONS)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from synthhost_policy.cli import policy

    cli.add_command(policy)


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    from synthhost_policy import http

    register("/v1/admin/policies", http.list_policies)
    register("/v1/admin/policies/{name}", http.policy, methods=["GET", "PUT", "DELETE"])


@hookimpl
def register_health_checks(register: RegisterHealthCheck) -> None:
    def check(host: Host) -> tuple[bool, str]:
        rt = _runtimes.get(host)
        if rt is None:
            return True, "not started"
        s = rt.stats()
        return True, f"{s['sets']} active sets, {s['compiled']} compiled, {s['reloads']} reloads"

    register("policy", check)


# -- lifecycle -------------------------------------------------------------------------------


@hookimpl
async def startup(host: Host) -> None:
    rt = await anyio.to_thread.run_sync(runtime, host)
    rt.start()


@hookimpl
def shutdown(host: Host) -> None:
    rt = _runtimes.pop(host, None)
    if rt is not None:
        rt.stop()


# -- the call ----------------------------------------------------------------------------------

_STATUS = {"block": "blocked", "error": "error", "warn": "warning"}


@hookimpl
def pre_call(call: Call) -> None:
    outcome = evaluate(runtime(call.host).plan_for(call.workspace), call)
    if outcome.decisions:
        record(call, outcome)
    _deny_if_blocked(outcome)


@hookimpl
def pre_tool(tool: ToolCall) -> None:
    """Tool rules (conditions reading ``tool.name``, ``tool.source``, ``tool.args``):
    block the call, modify ``args.X``, warn."""
    plan = runtime(tool.host).plan_for(tool.workspace).tools
    if plan is None or plan.empty:
        return
    outcome = evaluate(plan, cast(Any, tool))
    if outcome.decisions:
        record(tool, outcome)
    _deny_if_blocked(outcome)


def _deny_if_blocked(outcome: Outcome) -> None:
    blocked = outcome.blocked
    if blocked is not None:
        details: dict[str, Any] = {
            "set": blocked.set,
            "version": blocked.version,
            "rule": blocked.rule,
            "scope": "global" if blocked.workspace == GLOBAL else "workspace",
        }
        if blocked.error:
            details["error"] = blocked.error
        raise Denied(ErrorCode.POLICY_DENIED, blocked.message or "denied by policy", **details)


def record(call: Call | ToolCall, outcome: Outcome) -> None:
    """Events, and span attributes (added to, never replaced)."""
    attrs = call.attributes
    applied = attrs.setdefault("policy.decisions", [])
    attempt = {"attempt": call.attempt} if isinstance(call, Call) else {"turn": call.turn}
    for decision in outcome.decisions:
        data = decision.to_dict()
        call.emit(EVENT, status=_STATUS.get(decision.action, "success"), **attempt, **data)
        brief = {k: data[k] for k in ("set", "version", "rule", "action")}
        if brief not in applied:
            applied.append(brief)
        if decision.action == "warn":
            warnings = attrs.setdefault("policy.warnings", [])
            message = decision.message or f"policy rule {decision.set}/{decision.rule}"
            if message not in warnings:  # pre_call runs again on a retry
                warnings.append(message)


# -- programmatic management (what the CLI uses) -------------------------------------------------


def actor_name(actor: str | None = None) -> str | None:
    return actor or os.environ.get("USER") or None


def apply_policy(
    host: Host,
    source: str | Path | PolicySet,
    *,
    workspace: str | None = None,
    global_: bool = False,
    actor: str | None = None,
) -> ApplyResult:
    """Validate and store a policy set as a new version (visible at once to ``host``).
    ``source`` is a path, a YAML text, or a parsed :class:`PolicySet`."""
    from synthhost_policy.store import apply_set, target_workspace

    if isinstance(source, PolicySet):
        policy = source
    elif isinstance(source, Path) or (isinstance(source, str) and "\n" not in source):
        policy, _ = load_policy_file(source)
    else:
        policy = parse_policy(source)
    target = target_workspace(policy.workspace, workspace, global_)
    result = apply_set(host.engine, policy, target, actor_name(actor))
    if result.changed:
        _refresh(host)
    return result


def remove_policy(
    host: Host,
    name: str,
    *,
    workspace: str | None = None,
    global_: bool = False,
    actor: str | None = None,
) -> ApplyResult:
    from synthhost_policy.store import remove_set, target_workspace

    target = target_workspace(None, workspace, global_)
    result = remove_set(host.engine, target, name, actor_name(actor))
    _refresh(host)
    return result


def _refresh(host: Host) -> None:
    rt = _runtimes.get(host)
    if rt is not None:
        rt.reload()



def __getattr__(name: str) -> Any:
    if name == "ApplyResult":  # exported; its module loads SQLAlchemy, so on first use
        from synthhost_policy.store import ApplyResult

        return ApplyResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EVENT",
    "FLAG",
    "ApplyResult",
    "PolicySet",
    "apply_policy",
    "evaluate",
    "remove_policy",
    "runtime",
]
