"""synthhost plugin: validate prompts before the provider and answers before the caller.

Gate: flag ``enable_guardrails_ai`` (default off). ``pre_call`` at ``Stage.GUARD_INPUT``
(after route, policy and rate limit), ``post_call`` at ``Stage.GUARD_OUTPUT`` (after the
cost plugin, so a rejected answer is still costed). Fail-closed: a crash here denies the
call with ``PLUGIN_ERROR`` rather than letting it through unchecked.

Each workspace runs its guard set (see :mod:`synthhost_guardrails.guardset`), else the
global one, else the built-in default (mask secrets in prompts and answers). Every
violation goes on the call's span (``guardrails.violations``, ``guardrails.set``) and
out as a ``guardrail_violation`` event naming the validator, where, the action and the
kinds found (never the text). ``exception`` denies with ``GUARDRAIL_VIOLATION``.
A streamed call is held (``holds_stream``) while the workspace's set has output
validators: the caller gets the answer once they have passed it.
"""

from __future__ import annotations

import json
import logging
import os
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from synthhost import hookimpl
from synthhost.errors import Denied, ErrorCode
from synthhost.registry import RegisterFlag, RegisterGate, RegisterHealthCheck, RegisterMigrations, RegisterRoute, Stage
from synthhost.tools import ToolCall, ToolResult
from synthhost_guardrails.engine import Outcome, Violation, check_input, check_output

if TYPE_CHECKING:
    import click

    from synthhost.call import Call, Response
    from synthhost.host import Host
    from synthhost_guardrails.guard_runtime import GuardRuntime
    from synthhost_guardrails.guardset import DEFAULT, DEFAULT_DOCUMENT, GuardSetError, GuardSetSpec, Pipeline
    from synthhost_guardrails.store import GLOBAL, ApplyResult

# Exported names whose modules load pydantic, YAML or SQLAlchemy: resolved on first use
# (PEP 562) so that importing the plugin, as the CLI does for every plugin, stays cheap.
_LAZY = {
    "DEFAULT": "synthhost_guardrails.guardset",
    "DEFAULT_DOCUMENT": "synthhost_guardrails.guardset",
    "GuardSetError": "synthhost_guardrails.guardset",
    "GuardSetSpec": "synthhost_guardrails.guardset",
    "GLOBAL": "synthhost_guardrails.store",
    "ApplyResult": "synthhost_guardrails.store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)

FLAG = "enable_guardrails_ai"
EVENT = "guardrail_violation"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"

log = logging.getLogger("synthhost.guardrails")

_runtimes: weakref.WeakKeyDictionary[Host, GuardRuntime] = weakref.WeakKeyDictionary()


def runtime(host: Host) -> GuardRuntime:
    """This host's guard runtime (created, and loaded, on first use)."""
    rt = _runtimes.get(host)
    if rt is None:
        # SQLAlchemy, pydantic and the validators load here, once per host. (The module
        # is not called ``runtime``: importing it lazily would rebind this package's
        # ``runtime`` attribute, this function, to the module.)
        from synthhost_guardrails.guard_runtime import GuardRuntime

        env = host.settings.env
        refresh = float(env.get("SYNTHHOST_GUARDRAILS_REFRESH_S") or host.settings.flag_refresh_s)
        rt = _runtimes[host] = GuardRuntime(host.engine, refresh)
        weakref.finalize(host, rt.stop)  # a host dropped without stop() ends its poller
        rt.reload()
    return rt


# -- registration ---------------------------------------------------------------------------


@hookimpl
def register_flags(register: RegisterFlag) -> None:
    register(FLAG, default=False, description="Validate prompts and answers with the workspace's guard set.")


@hookimpl
def register_gate(register: RegisterGate) -> None:
    register(FLAG, order={"pre_call": Stage.GUARD_INPUT, "post_call": Stage.GUARD_OUTPUT,
                          "pre_tool": Stage.GUARD_INPUT, "post_tool": Stage.GUARD_OUTPUT}, fail_closed=True)


@hookimpl
def register_migrations(register: RegisterMigrations) -> None:
    register(MIGRATIONS)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from synthhost_guardrails.cli import guardrails

    cli.add_command(guardrails)


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    from synthhost_guardrails import http

    register("/v1/admin/guardrails", http.guards, methods=["GET", "PUT", "DELETE"])


@hookimpl
def register_health_checks(register: RegisterHealthCheck) -> None:
    def check(host: Host) -> tuple[bool, str]:
        rt = _runtimes.get(host)
        if rt is None:
            return True, "not started"
        s = rt.stats()
        return s["broken"] == 0, f"{s['sets']} stored sets, {s['broken']} unusable, {s['reloads']} reloads"

    register("guardrails", check)


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


def _pipeline(call: Call | ToolCall) -> Pipeline:
    pipeline = runtime(call.host).pipeline_for(call.workspace)
    if pipeline.error:
        raise Denied(ErrorCode.PLUGIN_ERROR, pipeline.error, plugin="guardrails", set=pipeline.label)
    return pipeline


@hookimpl
def pre_call(call: Call) -> Awaitable[None] | None:
    pipeline = _pipeline(call)
    if not pipeline.input:
        return None
    if pipeline.input_threaded:  # Guardrails AI validators: off the event loop
        return _in_thread(call, pipeline, lambda: check_input(pipeline, call.request.messages), _apply_input)
    _apply_input(call, pipeline, check_input(pipeline, call.request.messages))
    return None


@hookimpl
def post_call(call: Call, response: Response) -> Awaitable[None] | None:
    pipeline = _pipeline(call)
    if not pipeline.output:
        return None
    if pipeline.output_threaded:
        return _in_thread(
            call,
            pipeline,
            lambda: check_output(pipeline, response.text),
            lambda c, p, o: _apply_output(c, p, o, response),
        )
    _apply_output(call, pipeline, check_output(pipeline, response.text), response)
    return None


@hookimpl
def holds_stream(call: Call) -> bool:
    """A streamed answer waits for the output validators when the workspace's guard set
    has any (the default set does: it masks secrets): nothing of it leaves before
    ``post_call`` has passed it. A set without output validators streams live."""
    pipeline = runtime(call.host).pipeline_for(call.workspace)
    return bool(pipeline.output) or bool(pipeline.error)


@hookimpl
def pre_tool(tool: ToolCall) -> Awaitable[None] | None:
    """The input validators over a tool call's arguments (as JSON text): a fix that still
    parses as an object replaces them, an ``exception`` blocks the call."""
    pipeline = _pipeline(tool)
    if not pipeline.input:
        return None
    messages = [{"role": "user", "content": json.dumps(tool.args, ensure_ascii=False)}]
    if pipeline.input_threaded:
        return _in_thread(tool, pipeline, lambda: check_input(pipeline, messages), _apply_args)
    _apply_args(tool, pipeline, check_input(pipeline, messages))
    return None


@hookimpl
def post_tool(tool: ToolCall, result: ToolResult) -> Awaitable[None] | None:
    """The output validators over a tool's result, before the model reads it (the
    default guard set masks secrets)."""
    pipeline = _pipeline(tool)
    if not pipeline.output:
        return None
    if pipeline.output_threaded:
        return _in_thread(tool, pipeline, lambda: check_output(pipeline, result.content),
                          lambda c, p, o: _apply_result(c, p, o, result))
    _apply_result(tool, pipeline, check_output(pipeline, result.content), result)
    return None


def _apply_args(tool: Any, pipeline: Pipeline, outcome: Outcome) -> None:
    if outcome.messages is not None:
        try:
            fixed = json.loads(outcome.messages[0]["content"])
        except ValueError:
            fixed = None
        if isinstance(fixed, dict):
            tool.args = fixed
    _settle(tool, pipeline, outcome)


def _apply_result(tool: Any, pipeline: Pipeline, outcome: Outcome, result: ToolResult) -> None:
    if outcome.text is not None:
        result.content = outcome.text
        result.value = None  # the tool's own value still holds the unfixed data
    _settle(tool, pipeline, outcome)


async def _in_thread(
    call: Any,
    pipeline: Pipeline,
    check: Callable[[], Outcome],
    apply: Callable[[Any, Pipeline, Outcome], None],
) -> None:
    outcome = await anyio.to_thread.run_sync(check)
    apply(call, pipeline, outcome)


def _apply_input(call: Call, pipeline: Pipeline, outcome: Outcome) -> None:
    if outcome.messages is not None:
        call.request.messages = outcome.messages
    _settle(call, pipeline, outcome)


def _apply_output(call: Call, pipeline: Pipeline, outcome: Outcome, response: Response) -> None:
    if outcome.text is not None:
        response.text = outcome.text  # fixed in place: what the caller (and the span) gets
        response.raw = None  # the provider's raw payload still holds the unfixed text
    _settle(call, pipeline, outcome)


_STATUS = {"exception": "blocked", "fix": "fixed", "warn": "warning", "noop": "noop"}


def _settle(call: Call | ToolCall, pipeline: Pipeline, outcome: Outcome) -> None:
    if not outcome.violations:
        return
    record(call, pipeline, outcome.violations)
    denied = outcome.denied
    if denied is not None:
        raise Denied(ErrorCode.GUARDRAIL_VIOLATION, denied.describe(), set=pipeline.label, **denied.to_dict())


def record(call: Call | ToolCall, pipeline: Pipeline, violations: list[Violation]) -> None:
    """Span attributes (added to, never replaced) and one event per violation."""
    attrs = call.attributes
    attrs["guardrails.set"] = pipeline.label
    seen = attrs.setdefault("guardrails.violations", [])
    where = {"turn": call.turn} if isinstance(call, ToolCall) else {"attempt": call.attempt}
    for v in violations:
        data = v.to_dict()
        status = "blocked" if v.unfixed else _STATUS[v.on_fail]
        call.emit(EVENT, status=status, set=pipeline.label, **where, **data)
        if data not in seen:  # pre_call runs again on a retry
            seen.append(data)
        if v.on_fail == "warn":
            log.warning("%s (workspace %s, set %s)", v.describe(), call.workspace, pipeline.label)


# -- programmatic management (what the CLI uses) -------------------------------------------------


def actor_name(actor: str | None = None) -> str | None:
    return actor or os.environ.get("USER") or None


def parse_guard_set(source: str | Path | GuardSetSpec) -> GuardSetSpec:
    """A path, a YAML text (a string with a newline, or a one-line ``{...}``) or a parsed
    spec, checked: every validator is built once, so an unknown validator, bad args or a
    missing Guardrails AI are refused here (:class:`GuardSetError`, one line)."""
    from synthhost_guardrails.guardset import GuardSetSpec, load_file, load_text
    from synthhost_guardrails.guardset import compile_spec as compile_guard_set

    if isinstance(source, GuardSetSpec):
        spec = source
    elif isinstance(source, Path) or ("\n" not in source and not source.lstrip().startswith("{")):
        spec = load_file(source)  # a path (a one-line YAML text would be a flow mapping)
    else:
        spec = load_text(source)
    compile_guard_set(spec, "check")
    return spec


def apply_guards(
    host: Host,
    source: str | Path | GuardSetSpec,
    *,
    workspace: str | None = None,
    global_: bool = False,
    actor: str | None = None,
) -> ApplyResult:
    """Validate and store a guard set as the scope's next version (visible at once to
    ``host``; to other processes within their refresh interval)."""
    from synthhost_guardrails.guardset import document as document_of
    from synthhost_guardrails.store import apply_document, target_workspace

    spec = parse_guard_set(source)
    target = target_workspace(workspace, global_)
    result = apply_document(host.engine, target, document_of(spec), actor_name(actor))
    if result.changed:
        _refresh(host)
    return result


def remove_guards(
    host: Host, *, workspace: str | None = None, global_: bool = False, actor: str | None = None
) -> ApplyResult:
    from synthhost_guardrails.store import remove, target_workspace

    result = remove(host.engine, target_workspace(workspace, global_), actor_name(actor))
    _refresh(host)
    return result


def _refresh(host: Host) -> None:
    rt = _runtimes.get(host)
    if rt is not None:
        rt.reload()


__all__ = [
    "DEFAULT",
    "DEFAULT_DOCUMENT",
    "EVENT",
    "FLAG",
    "GLOBAL",
    "ApplyResult",
    "GuardSetError",
    "apply_guards",
    "parse_guard_set",
    "remove_guards",
    "runtime",
]
