"""The stackstorm plugin's hooks.

``on_failure`` (``Stage.RECOVERY - 50``: before the default recovery) acts on
:class:`~synthhost.ProviderError` only, never on a denial. For a workspace with
``enable_stackstorm`` on it posts a ``<pack>.agent_failure`` trigger (off the call
path), then asks the enabled workflows in turn; the first usable answer wins:

1. ``enable_stackstorm_retry`` (retryable errors only): ``llm_retry`` with the real
   request → ``{"action": "retry", "delay_s": N}`` → ``Recovery("retry", delay=N)``;
   the host sends the same request again.
2. ``enable_stackstorm_reroute``: ``reroute_request`` → ``{final_provider, final_model,
   final_region}`` → ``Recovery("reroute", changes=...)``, refused when that route was
   already tried, the provider is unknown, or a provider switch comes without a model
   the provider serves.
3. ``enable_stackstorm_repair_execution``: ``agent_recovery`` → a repaired request
   (messages, params) applied as ``Recovery("reroute", changes=...)``; the host
   re-executes it, and the ``stackstorm_repair`` event reports ``succeeded`` only when
   that re-execution succeeded (``post_call``), ``failed`` otherwise (``on_failure``).

The host's attempt budget (``call.max_attempts``) always holds: on the last attempt no
workflow is asked. ``STACKSTORM_TIMEOUT`` bounds the time spent on one failed attempt,
across the workflows asked; an execution still running then is cancelled (``DELETE``).
Whatever goes wrong with StackStorm (down, 401, action missing, workflow failed, our
deadline, an unusable answer) yields ``None`` — the default recovery decides as if
StackStorm were not there — and a ``stackstorm_error`` event.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from synthhost import Denied, ProviderError, Recovery, Stage, StashKey, hookimpl
from synthhost.call import Call, Response
from synthhost.tools import MAX_TOOL_ATTEMPTS, ToolCall, ToolResult
from synthhost_stackstorm import decisions
from synthhost_stackstorm.config import Config
from synthhost_stackstorm.decisions import Refused

if TYPE_CHECKING:
    from types import ModuleType

    import click

    from synthhost.host import Host
    from synthhost.registry import RegisterCheck, RegisterFlag, RegisterGate, RegisterHealthCheck
    from synthhost_stackstorm.client import Execution, St2Client, St2Error

log = logging.getLogger("synthhost.stackstorm")

FLAG: Final = "enable_stackstorm"
RETRY_FLAG: Final = "enable_stackstorm_retry"
REROUTE_FLAG: Final = "enable_stackstorm_reroute"
REPAIR_FLAG: Final = "enable_stackstorm_repair_execution"
ACTIONS: Final = ("llm_retry", "reroute_request", "agent_recovery")
LOG_EVERY_S: Final = 60.0

PENDING_REPAIR = StashKey["dict[str, Any] | None"]()


class StackStormState:
    """Per host: the configuration read at start-up, the webhook sender, log throttles."""

    def __init__(self, host: Host) -> None:
        # httpx and the st2 client load here (start-up), not when the CLI imports the plugin.
        from synthhost_stackstorm import client
        from synthhost_stackstorm.webhook import WebhookSender

        self.client: ModuleType = client
        self.host = host
        self.config, self.why_inert = Config.from_env(host.settings.env)
        self.webhooks = WebhookSender(self.config) if self.config is not None else None
        self.warned_inert = False
        self._last_log: dict[str, float] = {}

    def warn(self, key: str, message: str, *args: Any) -> None:
        """A warning at most once a minute per key (StackStorm down must not flood logs)."""
        now = time.monotonic()
        if now - self._last_log.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._last_log[key] = now
            log.warning(message, *args)

    def close(self) -> None:
        if self.webhooks is not None:
            self.webhooks.close()


_STATES: weakref.WeakKeyDictionary[Host, StackStormState] = weakref.WeakKeyDictionary()


def state_for(host: Host) -> StackStormState:
    state = _STATES.get(host)
    if state is None:
        state = _STATES[host] = StackStormState(host)
    return state


# -- registration ----------------------------------------------------------------------------


@hookimpl
def register_flags(register: RegisterFlag) -> None:
    register(FLAG, default=False, description="StackStorm self-healing: failure webhooks, and the "
             "workflows the enable_stackstorm_* flags enable.")
    register(RETRY_FLAG, default=False, description="Ask synthralos.llm_retry whether and when to retry "
             "a retryable provider failure (the host re-sends the real request).")
    register(REROUTE_FLAG, default=False, description="Ask synthralos.reroute_request for an untried "
             "provider/model/region.")
    register(REPAIR_FLAG, default=False, description="Ask synthralos.agent_recovery for a repaired request; "
             "the host re-executes it and the repair counts only if that succeeds.")


@hookimpl
def register_gate(register: RegisterGate) -> None:
    # post_call only settles a pending repair: after output guardrails, before telemetry.
    register(FLAG, order={"on_failure": Stage.RECOVERY - 50, "post_call": Stage.TELEMETRY - 10,
                          "on_tool_failure": Stage.RECOVERY - 50})


@hookimpl
def register_health_checks(register: RegisterHealthCheck) -> None:
    register("stackstorm", health)


@hookimpl
def register_checks(register: RegisterCheck) -> None:
    from synthhost_stackstorm.checks import service

    register("stackstorm", service, phase=4)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from synthhost_stackstorm.cli import stackstorm

    cli.add_command(stackstorm)


@hookimpl
def startup(host: Host) -> None:
    state = state_for(host)
    if state.config is None:
        log.info("stackstorm: %s", state.why_inert)
    else:
        log.info("stackstorm: %s", state.config.describe())


@hookimpl
def shutdown(host: Host) -> None:
    state = _STATES.pop(host, None)
    if state is not None:
        state.close()


async def health(host: Host) -> tuple[bool, str]:
    """Inert (not configured, or ``ENABLE_STACKSTORM=false``) is healthy and says so;
    configured means st2api answers and the pack's three workflows are installed."""
    from synthhost_stackstorm.client import St2Client, St2Error

    state = _STATES.get(host)
    config, why = (state.config, state.why_inert) if state is not None else Config.from_env(host.settings.env)
    if config is None:
        return True, why
    quick = dataclasses.replace(config, http_timeout_s=min(config.http_timeout_s, 5.0))
    try:
        async with St2Client(quick) as st2:
            for name in ACTIONS:
                await st2.get_action(config.ref(name))
    except St2Error as exc:
        if exc.kind == "not_found":
            return False, (f"{config.describe()}: pack {config.pack!r} is not installed ({exc.message}); "
                           "see the stackstorm plugin's README")
        return False, f"{config.describe()}: {exc.message}"
    detail = f"{config.describe()}: pack {config.pack} installed"
    if state is not None and state.webhooks is not None:
        stats = state.webhooks.stats()
        detail += f"; failure webhooks sent {stats['sent']}, failed {stats['failed']}, dropped {stats['dropped']}"
        if state.webhooks.last_error and stats["failed"]:
            detail += f" (last: {state.webhooks.last_error})"
    return True, detail


# -- the call chain --------------------------------------------------------------------------


@hookimpl
def post_call(call: Call, response: Response) -> None:
    pending = call.stash.get(PENDING_REPAIR)
    if pending is not None:
        _settle_repair(call, pending, None)


@hookimpl
async def on_failure(call: Call, error: BaseException, attempt: int) -> Recovery | None:
    pending = call.stash.get(PENDING_REPAIR)
    if pending is not None:
        _settle_repair(call, pending, error)
    if isinstance(error, Denied) or not isinstance(error, ProviderError):
        return None
    state = _STATES.get(call.host) or state_for(call.host)
    config = state.config
    if config is None:
        if not state.warned_inert:
            state.warned_inert = True
            log.warning("stackstorm: %s is on for workspace %s but the plugin is %s", FLAG, call.workspace,
                        state.why_inert)
        return None
    if len(call.tried_routes) >= attempt:  # the provider was called in this attempt
        decisions.note_tried(call)
    if state.webhooks is not None:
        state.webhooks.send(_failure_payload(call, error, attempt))
    if attempt >= call.max_attempts:
        return None  # the budget is spent: nothing a workflow says may add an attempt
    flags = call.host.flags
    # A non-retryable error is not sent to llm_retry (the same request would fail again);
    # reroute or repair may still help.
    modes = [(flag, mode) for flag, mode in _MODES if flags.is_enabled(call.workspace, flag)
             and (flag != RETRY_FLAG or error.retryable)]
    if not modes:
        return None
    client = state.client
    async with client.St2Client(config) as st2:
        deadline = time.monotonic() + config.timeout_s  # one budget for this failure, whatever the modes
        for flag, mode in modes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # Say so: a skipped workflow is a StackStorm failure like any other.
                _st2_error(state, call, flag, client.St2Error(
                    "deadline", f"STACKSTORM_TIMEOUT ({config.timeout_s:g}s) spent before asking"), attempt)
                break
            try:
                recovery = await mode(st2, config, call, error, attempt, remaining)
            except client.St2Error as exc:
                _st2_error(state, call, flag, exc, attempt)
                if exc.kind in ("unreachable", "unauthorized"):
                    break  # asking the next workflow would fail the same way
                continue
            if recovery is not None:
                return recovery
    return None


# A tool's failure as the provider-error code llm_retry classifies (bad arguments are not
# retried: the same call would fail the same way).
TOOL_CODES: Final = {"TOOL_TIMEOUT": "PROVIDER_TIMEOUT", "TOOL_ERROR": "PROVIDER_ERROR",
                     "TOOL_HTTP_ERROR": "PROVIDER_ERROR"}


@hookimpl
async def on_tool_failure(tool: ToolCall, result: ToolResult, attempt: int) -> Recovery | None:
    """Tool failures, like call failures, in two modes: with ``enable_stackstorm_retry``
    ``llm_retry`` decides whether and when a failed tool call is tried again with the same
    arguments (not for bad arguments: the same call would fail again); then, with
    ``enable_stackstorm_repair_execution``, ``agent_recovery`` (``failure_type:
    tool_failure``) may answer ``{"action": "repair", "request": {"arguments": {...}}}``
    and the host calls the tool again with those arguments."""
    flags = tool.host.flags
    state = _STATES.get(tool.host) or state_for(tool.host)
    config = state.config
    if config is None:
        return None
    code = TOOL_CODES.get(result.error_code or "")
    if code is not None and flags.is_enabled(tool.workspace, RETRY_FLAG):
        recovery = await _tool_retry(state, config, tool, result, attempt, code)
        if recovery is not None:
            return recovery
    if (code is not None or result.error_code == "TOOL_BAD_ARGUMENTS") and \
            flags.is_enabled(tool.workspace, REPAIR_FLAG):
        return await _tool_repair(state, config, tool, result, attempt)
    return None


def _tool_context(tool: ToolCall) -> dict[str, Any]:
    return {"workspace": tool.workspace, "agent": tool.agent, "step": tool.step, "run_id": tool.run_id,
            "trace_id": tool.trace_id, "span_id": tool.span_id, "tool": tool.name}


def _tool_request(tool: ToolCall) -> dict[str, Any]:
    # The workflows read original_request.model (their outputs name it): the tool stands in.
    return {"tool": tool.name, "source": tool.source, "arguments": tool.args, "model": f"tool:{tool.name}"}


async def _tool_execution(state: Any, config: Config, tool: ToolCall, mode: str, ref: str,
                          parameters: dict[str, Any], attempt: int) -> Execution | None:
    client = state.client
    try:
        async with client.St2Client(config) as st2:
            execution: Execution = await st2.run(ref, parameters, timeout_s=config.timeout_s)
            return execution
    except client.St2Error as exc:
        tool.emit("stackstorm_error", status="error", mode=mode, kind=exc.kind, message=exc.message,
                  attempt=attempt)
        state.warn(exc.kind, "stackstorm: %s: %s", mode, exc.message)
        return None


def _tool_executed(tool: ToolCall, mode: str, execution: Execution, attempt: int, decision: str,
                   **extra: Any) -> None:
    entry = {"mode": mode, "action": execution.action, "execution_id": execution.id,
             "st2_status": execution.status, "attempt": attempt, "decision": decision, **extra}
    tool.attributes.setdefault("stackstorm", []).append(entry)
    tool.emit("stackstorm_execution", status="success" if execution.status == "succeeded" else "error", **entry)


async def _tool_retry(state: Any, config: Config, tool: ToolCall, result: ToolResult, attempt: int,
                      code: str) -> Recovery | None:
    ref = config.ref("llm_retry")
    parameters = {
        "original_request": _tool_request(tool),
        "failure_reason": result.content[:1000], "error_code": code, "retryable": True, "attempt": attempt,
        "max_attempts": MAX_TOOL_ATTEMPTS, "base_delay_s": 0.5, "max_delay_s": 10.0,
        "context": _tool_context(tool),
    }
    execution = await _tool_execution(state, config, tool, "tool_retry", ref, parameters, attempt)
    if execution is None:
        return None
    output = execution.output if isinstance(execution.output, dict) else {}
    retry = output.get("action") == "retry"
    delay = decisions.bounded_delay(output.get("delay_s"), 10.0) if retry else 0.0
    _tool_executed(tool, "tool_retry", execution, attempt, "retry" if retry else "give_up")
    if not retry or delay is None:
        return None
    return Recovery("retry", delay=delay, reason=f"stackstorm {ref} {execution.id}: {_reason(execution) or 'retry'}")


async def _tool_repair(state: Any, config: Config, tool: ToolCall, result: ToolResult,
                       attempt: int) -> Recovery | None:
    ref = config.ref("agent_recovery")
    parameters = {
        "agent_id": tool.agent or "", "failure_type": "tool_failure",
        "failure_details": {"error_code": result.error_code or "", "message": result.content[:2000],
                            "retryable": result.error_code != "TOOL_BAD_ARGUMENTS"},
        "original_request": _tool_request(tool), "attempt": attempt, "max_attempts": MAX_TOOL_ATTEMPTS,
        "context": _tool_context(tool),
    }
    execution = await _tool_execution(state, config, tool, "tool_repair", ref, parameters, attempt)
    if execution is None:
        return None
    try:
        repaired = decisions.tool_repair_arguments(execution.output, tool.args)
    except Refused as exc:
        tool.emit("stackstorm_error", status="error", mode="tool_repair", kind="invalid_response",
                  message=f"{ref} execution {execution.id}: answer refused: {exc}", attempt=attempt)
        return None
    if repaired is None:
        _tool_executed(tool, "tool_repair", execution, attempt, "none", reason=_reason(execution))
        return None
    _tool_executed(tool, "tool_repair", execution, attempt, "repair", changed=sorted(
        k for k in {*repaired, *tool.args} if repaired.get(k) != tool.args.get(k)))
    return Recovery("reroute", changes={"args": repaired},
                    reason=f"stackstorm {ref} {execution.id}: repaired arguments {_reason(execution)}".strip())


# -- the three modes ---------------------------------------------------------------------------

Mode = Callable[["St2Client", Config, Call, ProviderError, int, float], Awaitable[Recovery | None]]


async def _retry(st2: St2Client, config: Config, call: Call, error: ProviderError, attempt: int,
                 timeout_s: float) -> Recovery | None:
    ref = config.ref("llm_retry")
    execution = await st2.run(ref, decisions.retry_parameters(call, error, attempt), timeout_s=timeout_s)
    try:
        decision = decisions.retry_decision(execution.output, call, error)
    except Refused as exc:
        raise _refused(ref, execution, exc) from None
    if decision is None:
        _executed(call, "retry", execution, attempt, "give_up", reason=_reason(execution))
        return None
    delay, reason = decision
    _executed(call, "retry", execution, attempt, "retry", delay_s=round(delay, 3))
    return Recovery("retry", delay=delay, reason=f"stackstorm {ref} {execution.id}: {reason or 'retry'}")


async def _reroute(st2: St2Client, config: Config, call: Call, error: ProviderError, attempt: int,
                   timeout_s: float) -> Recovery | None:
    ref = config.ref("reroute_request")
    execution = await st2.run(ref, decisions.reroute_parameters(call, error), timeout_s=timeout_s)
    try:
        decision = decisions.reroute_changes(execution.output, call, call.host.registry.providers)
    except Refused as exc:
        raise _refused(ref, execution, exc) from None
    if decision is None:
        _executed(call, "reroute", execution, attempt, "none", reason=_reason(execution))
        return None
    changes, reason = decision
    request = call.request
    route = {"provider": changes.get("provider", request.provider), "model": changes.get("model", request.model),
             "region": changes.get("region", request.region)}
    _executed(call, "reroute", execution, attempt, "reroute", to=route,
              **{"from": {"provider": request.provider, "model": request.model, "region": request.region}})
    return Recovery("reroute", changes=changes,
                    reason=f"stackstorm {ref} {execution.id}: {route['provider']}/{route['model']} {reason}".strip())


async def _repair(st2: St2Client, config: Config, call: Call, error: ProviderError, attempt: int,
                  timeout_s: float) -> Recovery | None:
    ref = config.ref("agent_recovery")
    execution = await st2.run(ref, decisions.recovery_parameters(call, error, attempt), timeout_s=timeout_s)
    try:
        decision = decisions.repair_changes(execution.output, call)
    except Refused as exc:
        raise _refused(ref, execution, exc) from None
    if decision is None:
        _executed(call, "repair", execution, attempt, "none", reason=_reason(execution))
        return None
    changes, delay, strategy, reason = decision
    _executed(call, "repair", execution, attempt, "repair", strategy=strategy, changed=sorted(changes))
    call.stash[PENDING_REPAIR] = {
        "execution_id": execution.id, "action": ref, "strategy": strategy, "changed": sorted(changes),
        "reason": reason, "repaired_at_attempt": attempt, "attempt": attempt + 1,
    }
    return Recovery("reroute", changes=changes, delay=delay,
                    reason=f"stackstorm {ref} {execution.id}: repair ({strategy}) {reason}".strip())


_MODES: tuple[tuple[str, Mode], ...] = ((RETRY_FLAG, _retry), (REROUTE_FLAG, _reroute), (REPAIR_FLAG, _repair))
_MODE_NAMES = {RETRY_FLAG: "retry", REROUTE_FLAG: "reroute", REPAIR_FLAG: "repair"}


# -- reporting -----------------------------------------------------------------------------------


def _reason(execution: Execution) -> str:
    output = execution.output
    return str(output.get("reason") or "")[:300] if isinstance(output, dict) else ""


def _refused(ref: str, execution: Execution, exc: Refused) -> St2Error:
    from synthhost_stackstorm.client import St2Error  # a refused answer: after an st2 round trip

    return St2Error("invalid_response", f"{ref} execution {execution.id}: answer refused: {exc}",
                    execution_id=execution.id, execution=execution)


def _record(call: Call, entry: dict[str, Any]) -> None:
    call.attributes.setdefault("stackstorm", []).append(entry)


def _executed(call: Call, mode: str, execution: Execution, attempt: int, decision: str, **extra: Any) -> None:
    entry = {"mode": mode, "action": execution.action, "execution_id": execution.id, "st2_status": execution.status,
             "elapsed_s": round(execution.elapsed_s, 3), "attempt": attempt, "decision": decision, **extra}
    _record(call, entry)
    call.emit("stackstorm_execution", status="success" if execution.status == "succeeded" else "error",
              web_url=execution.web_url, **entry)


def _st2_error(state: StackStormState, call: Call, flag: str, exc: St2Error, attempt: int) -> None:
    mode = _MODE_NAMES[flag]
    execution = exc.execution
    if execution is not None:
        decision = "refused" if exc.kind == "invalid_response" else exc.kind
        _executed(call, mode, execution, attempt, decision)
    call.emit("stackstorm_error", status="error", mode=mode, kind=exc.kind, message=exc.message,
              status_code=exc.status_code, execution_id=exc.execution_id, attempt=attempt)
    if execution is None:
        _record(call, {"mode": mode, "attempt": attempt, "error": exc.kind})
    state.warn(exc.kind, "stackstorm: %s mode: %s (the default recovery decides)", mode, exc.message)


def _settle_repair(call: Call, pending: dict[str, Any], error: BaseException | None) -> None:
    """Report the repair's outcome once its re-execution has succeeded or failed."""
    call.stash[PENDING_REPAIR] = None
    outcome = "succeeded" if error is None else "failed"
    entry = {**pending, "outcome": outcome, "attempt": call.attempt}
    if error is not None:
        entry["error_code"] = str(getattr(error, "code", type(error).__name__))
    call.attributes.setdefault("stackstorm_repairs", []).append(entry)
    call.emit("stackstorm_repair", status="success" if error is None else "error", **entry)


def _failure_payload(call: Call, error: ProviderError, attempt: int) -> dict[str, Any]:
    request = call.request
    return {
        "workspace": call.workspace, "agent": call.agent, "step": call.step, "run_id": call.run_id,
        "trace_id": call.trace_id, "span_id": call.span_id, "attempt": attempt, "max_attempts": call.max_attempts,
        "provider": request.provider, "model": request.model, "region": request.region,
        "error_code": str(error.code), "failure_reason": error.message[:2000], "retryable": bool(error.retryable),
        "status_code": error.status, "occurred_at": datetime.now(UTC).isoformat(),
    }
