"""The synthhost hook contract.

Every hook is keyword-only; an implementation may accept any subset of the arguments
(pluggy's rule). Implementations may be plain functions or ``async def``: the host
awaits whatever they return. There are two kinds of hook:

Registration hooks (``register_*``) run once, when a :class:`~synthhost.Host` is
constructed (in ``Host.__init__``, before ``start()``: nothing is migrated or connected
yet, so they only declare). Their return value must be ``None``. The host calls each
plugin's implementation on its own, with a ``register`` callback bound to that plugin,
so it knows which plugin declared what and can refuse collisions.

Call hooks (``pre_call``, ``post_call``, ``holds_stream``, ``on_failure``, ``pre_tool``,
``post_tool``, ``on_tool_failure``, ``on_trace``) run for the
plugins *active* for the call's workspace: a plugin with a gate (see
:func:`register_gate`) is active when its gate is on for that workspace; a plugin with no
gate is always active. They run in the documented stage order (:class:`synthhost.Stage`),
never in registration order.

Error policy, for every call hook: :class:`synthhost.Denied` raised from ``pre_call``,
``post_call``, ``pre_tool`` or ``post_tool`` stops the call with its code, and later plugins do not run. Any other
exception is isolated: the host records a ``plugin_error`` event naming the plugin and
the hook, counts it (``host.stats.plugin_errors``), and goes on without that plugin's
result (fail-open), unless the plugin registered ``fail_closed=True`` or is listed in
``SYNTHHOST_FAIL_CLOSED``, in which case the call is denied with ``PLUGIN_ERROR``.
With ``SYNTHHOST_RAISE_ERRORS=1`` plugin exceptions propagate (for debugging). A return
value a hook's contract does not allow (below, per hook) is treated like an exception of
that plugin: a ``plugin_error``, with the same fail-closed rule.

Wrappers (``@hookimpl(wrapper=True)`` or ``hookwrapper=True``) are refused when the
plugin is registered, with an error naming the plugin and hook: the host calls each
implementation on its own, in stage order, to isolate and attribute failures, so
pluggy's wrapping of the whole multicall has nothing to wrap. Do the "before" part in
``pre_call`` and the "after" part in ``post_call``/``on_failure``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from synthhost.call import Call, Recovery, Response
    from synthhost.host import Host
    from synthhost.registry import (
        RegisterCheck,
        RegisterExporter,
        RegisterFlag,
        RegisterGate,
        RegisterHealthCheck,
        RegisterMigrations,
        RegisterProvider,
        RegisterRetention,
        RegisterRoute,
    )
    from synthhost.tools import RegisterTool, ToolCall, ToolResult
    from synthhost.trace import Trace

hookspec = pluggy.HookspecMarker("synthhost")
hookimpl = pluggy.HookimplMarker("synthhost")


# -- registration ----------------------------------------------------------------------


@hookspec
def register_flags(register: RegisterFlag) -> None:
    """Declare the feature flags this plugin reads.

    :param register: ``register(name, default=False, description="")``. A flag name is
        global: two plugins declaring the same name with different defaults is an error
        at start-up. Only declared flags can be set (``synthhost flags set``); an unknown
        name is refused with the closest declared name suggested.

    Return value: ignored.
    """


@hookspec
def register_gate(register: RegisterGate) -> None:
    """Declare when this plugin acts and where it sits in the call chain.

    :param register: ``register(gate, *, order=Stage.DEFAULT, fail_closed=False)``.
        ``gate`` is a declared flag name, a predicate ``(flags) -> bool`` over the
        workspace's resolved flags (e.g. ``lambda f: f["a"] or f["b"]``), or ``None``
        (always active). ``order`` is an int or a mapping ``{hook name: int}``: lower runs
        first; see :class:`synthhost.Stage` for the built-in stages. ``fail_closed`` makes
        a crash in this plugin deny the call instead of being skipped.

    A plugin that does not implement this hook is always active, at ``Stage.DEFAULT``.
    Return value: ignored.
    """


@hookspec
def register_migrations(register: RegisterMigrations) -> None:
    """Declare this plugin's Alembic migrations.

    :param register: ``register(path)``, the directory holding this plugin's revision
        files. Every plugin owns one Alembic branch: its first revision has
        ``down_revision = None`` and ``branch_labels = ("<plugin name>",)``, and it must
        only create tables whose SQLModel classes it defines itself.

    Return value: ignored.
    """


@hookspec
def register_providers(register: RegisterProvider) -> None:
    """Register model providers.

    :param register: ``register(name, factory)``. ``factory(host)`` returns an object
        with ``async def complete(request, *, call) -> Response`` and optionally
        ``async def aclose()``. It is called lazily, the first time a request names the
        provider. Two plugins registering the same name is an error at start-up.

    Return value: ignored.
    """


@hookspec
def register_exporters(register: RegisterExporter) -> None:
    """Register an outbox exporter: a sender the host feeds with ``event_logs`` rows.

    :param register: ``register(name, factory, event_types=None, batch_size=20)``.
        ``factory(host)`` returns an object with ``send(events) -> None`` (sync; it runs
        in a worker thread) that raises :class:`synthhost.outbox.RetryableSendError` for
        failures worth retrying and :class:`synthhost.outbox.PermanentSendError` for a
        batch that will never be accepted (it is parked, not lost). ``event_types`` limits
        which events are queued for it (``None``: all). The factory may return ``None``
        when the exporter is not configured in this host (no credentials): nothing is
        queued for it. Optional tuning attributes: see :mod:`synthhost.outbox`.

    Delivery is at-least-once; a row is marked delivered only after ``send`` returned.
    Return value: ignored.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``synthhost`` command line.

    :param cli: the root :class:`click.Group`; add a group per plugin
        (``synthhost costs ...``).

    Return value: ignored.
    """


@hookspec
def register_health_checks(register: RegisterHealthCheck) -> None:
    """Declare health checks shown by ``synthhost health``.

    :param register: ``register(name, check)``; ``check(host)`` returns (or awaits to)
        ``(ok: bool, detail: str)``. A check that raises counts as failed.

    Return value: ignored.
    """


@hookspec
def register_checks(register: RegisterCheck) -> None:
    """Declare deployment checks run by ``synthhost check`` (the deployment checklist).

    :param register: ``register(name, check, *, phase=0)``. ``check(host)`` returns (or
        awaits to) a :class:`synthhost.checks.CheckResult`: build it with ``passed(detail)``,
        ``failed(detail, fix)``, ``warned(detail, fix)`` or ``skipped(reason, fix)``
        (optional and not configured here). ``phase`` is the rollout phase that needs the
        item (``0``: the deployment itself; ``1``-``4``: the checklist's phases); ``synthhost
        check --phase N`` runs phases ``0..N``. ``host`` is built but not started (settings,
        registry, engine; nothing migrated, no plugin's ``startup`` ran, no background
        threads): a check looks and changes nothing, and closes what it opens. Talk to the
        real service (an authenticated request, a test event) and never put a secret's
        value in ``detail`` or ``fix``. A name taken by another plugin is an error at
        start-up.

    Error policy: a check that raises, or does not answer within 20 s, is reported as
    failed with the exception's first line. Return value: ignored.
    """


@hookspec
def register_retention(register: RegisterRetention) -> None:
    """Declare a table whose rows age out, for ``synthhost db prune`` and the worker.

    :param register: ``register(table, time_column="created_at", *, only=None)``. Rows
        whose ``time_column`` is older than the table's retention are deleted in small
        batches (see :mod:`synthhost.retention`); ``only`` (``{column: value}``) limits
        pruning to rows that also match (the outbox prunes only ``delivered`` rows). The
        table needs a single-column primary key; with a ``workspace_id`` column it can
        be kept for a different time per workspace. Retention is configured by the
        operator (``synthhost retention set``, ``SYNTHHOST_RETENTION_DAYS``,
        ``SYNTHHOST_RETENTION_<TABLE>_DAYS``); a table without a configured retention is
        never pruned. A table registered by two plugins is refused.

    Return value: ignored.
    """


@hookspec
def register_routes(register: RegisterRoute) -> None:
    """Add HTTP routes to ``synthhost serve`` (the gateway's Starlette app).

    :param register: ``register(path, endpoint, *, methods=("GET",), auth=True,
        name=None)``. ``endpoint`` is a Starlette endpoint, ``async def endpoint(request)
        -> starlette.responses.Response``. With ``auth=True`` (the default) the gateway
        checks the ``Authorization: Bearer`` key first (401 otherwise) and the endpoint
        finds the caller in ``request.state.workspace`` and ``request.state.role``
        (``member`` or ``admin``); the host is ``request.app.state.host``. Serve only the
        caller's workspace: answer 404 for another workspace's objects, never 403 (no
        existence oracle). ``auth=False`` is for public endpoints (webhooks that check
        their own signature). A path already taken, by the gateway (the console's ``/ui``
        paths included) or another plugin, is an error at start-up; an exception in the endpoint is a 500 with an
        OpenAI-style error body, never a traceback.

    Return value: ignored.
    """


@hookspec
def register_tools(register: RegisterTool) -> None:
    """Offer tools that agents can call by name (``tools: [{name: weather}]`` in an
    agent file).

    :param register: ``register(tool, *, name=None, description=None, timeout_s=None)``.
        ``tool`` is a :class:`synthhost.tools.Tool`, or a typed function (``def`` or
        ``async def``) whose argument schema is derived from its type hints with
        pydantic and whose description is its docstring's first paragraph; sync
        functions run in a worker thread. Two plugins registering the same name is an
        error at start-up.

    Return value: ignored.
    """


# -- lifecycle ---------------------------------------------------------------------------


@hookspec
def startup(host: Host) -> Awaitable[None] | None:
    """Called once when the host starts (after migrations), in stage order. Start
    background workers here, and keep what you need from ``host`` on your own objects.

    :param host: the started host (engine, writer, flags, settings, registry).

    Error policy: an exception fails start-up (a plugin that cannot start is not
    silently skipped). Return value: ignored.
    """


@hookspec
def shutdown(host: Host) -> Awaitable[None] | None:
    """Called once when the host stops, in reverse stage order: flush and stop
    background work within a bounded time (the host allows ``SYNTHHOST_SHUTDOWN_TIMEOUT``,
    default 10 s, in total).

    :param host: the stopping host; its writer still accepts rows until every plugin's
        ``shutdown`` has returned.

    Exceptions are recorded and do not stop other plugins'
    shutdown. Return value: ignored.
    """


# -- the call chain ---------------------------------------------------------------------


@hookspec
def pre_call(call: Call) -> Response | Awaitable[Response | None] | None:
    """Before each attempt of a model call, in stage order (route, policy, rate limit,
    input guardrails, similarity, ...).

    :param call: the call context; ``call.request`` may be changed in place (model,
        provider, messages, params, region, metadata) and the change is what the next
        plugin sees and what the provider receives. ``call.attempt`` tells which attempt.

    Return value: ``None`` to go on, or a :class:`synthhost.Response` to short-circuit
    (the provider is not called, ``post_call`` still runs). Anything else is a
    ``plugin_error`` of that plugin (a fail-closed plugin's denies the call). Raise
    :class:`synthhost.Denied` to stop the call: later plugins do not run, and nothing
    they would charge (rate-limit quota) is charged.
    """


@hookspec
def post_call(call: Call, response: Response) -> Awaitable[None] | None:
    """After a successful provider answer, in stage order (cost, output guardrails,
    similarity log, telemetry, ...). Cost comes first: the tokens were billed even when a
    guardrail then rejects the output.

    :param call: the call context (the request as sent).
    :param response: the provider's response, with usage.

    Return value: ``None`` (anything else is a ``plugin_error`` of that plugin). Raise
    :class:`synthhost.Denied` to reject the output (the call then fails with that code;
    observers later in the chain do not run).
    """


@hookspec
def holds_stream(call: Call) -> bool | None:
    """Must this plugin see the whole answer before any of it reaches a streaming caller?
    Asked once per streamed call (``Host.stream``, the gateway's ``stream: true``, a
    run's streamed last step), before ``pre_call``, of the plugins active for the call's
    workspace only; a call that does not stream never asks. A workspace whose active
    plugins implement no ``holds_stream`` pays nothing (the chain's list of
    implementations is empty, cached per active set like every call hook).

    :param call: the call context (``call.workspace``, ``call.request``).

    Return value: ``True`` to hold the stream: the provider is then called without
    streaming, ``post_call`` sees the answer before the caller gets a byte of it, and a
    streaming caller receives the checked answer at once (the gateway sends it as
    chunks; a denial is an HTTP error status, never a broken stream). ``False`` or
    ``None``: no objection. An output guardrail implements it (``True`` when the
    workspace's guard set has output validators). A crash here holds the stream (the
    safe side) and is a ``plugin_error``. Must be cheap and must not block: no I/O.
    """


@hookspec(firstresult=True)
def on_failure(call: Call, error: BaseException, attempt: int) -> Recovery | None:
    """After every failed attempt: a provider error or timeout, and also a
    :class:`synthhost.Denied` from ``pre_call`` or ``post_call`` (so plugins that charged
    something earlier in the chain, such as the rate limiter, can take it back; a denied
    call is never retried, whatever the answer). Runs in stage order; the first
    non-``None`` answer wins, so observers (``Stage.SETTLE``, ``Stage.COST``) come first
    and return ``None``. ``len(call.tried_routes) < attempt`` means the provider was not
    called in this attempt.

    :param call: the call context.
    :param error: the exception; :class:`synthhost.ProviderError` carries ``code``,
        ``retryable``, ``status`` and ``retry_after``.
    :param attempt: the attempt that failed, from 1.

    Return value: a :class:`synthhost.Recovery` (retry, reroute, or give up), or ``None``
    to let the next plugin decide. The host's default recovery plugin answers last:
    retry retryable errors with exponential backoff and full jitter up to
    ``call.max_attempts``, never auth or validation errors.
    """


@hookspec
def pre_tool(tool: ToolCall) -> ToolResult | Awaitable[ToolResult | None] | None:
    """Before each tool call an agent's model asked for, in stage order (policy, rate
    limit, input guardrails, ...), like ``pre_call``.

    :param tool: the tool call's context: ``tool.name``, ``tool.source`` (``python``,
        ``http``, ``mcp``, ``plugin``), ``tool.args`` (a dict; change it in place to
        change what the tool receives), ``tool.turn``, the run's tenant and ids, and
        ``tool.attributes`` (recorded on the tool's span).

    Return value: ``None`` to go on, or a :class:`synthhost.tools.ToolResult` to answer
    instead of the tool (it is not called; ``post_tool`` still runs). Raise
    :class:`synthhost.Denied` to block the call: later plugins do not run, the tool is
    not called, and the model is sent an error result naming the code (the run goes on:
    the model may answer without the tool). Other exceptions follow the call hooks'
    error policy.
    """


@hookspec
def post_tool(tool: ToolCall, result: ToolResult) -> Awaitable[None] | None:
    """After each tool call (one that succeeded or failed: ``result.is_error``), before
    the model sees the result, in stage order (output guardrails, ..., telemetry).

    :param tool: the tool call's context (the arguments as the tool received them).
    :param result: what the tool produced; ``result.content`` is the text the model will
        read: rewrite it in place to redact.

    Return value: ``None`` (anything else is a ``plugin_error``). Raise
    :class:`synthhost.Denied` to withhold the result: the model is sent an error result
    naming the code instead.
    """


@hookspec(firstresult=True)
def on_tool_failure(tool: ToolCall, result: ToolResult, attempt: int) -> Recovery | ToolResult | None:
    """After a tool call failed in the tool itself (an exception, a timeout, bad
    arguments, an HTTP or MCP error; not a denial, not an unknown tool), in stage order;
    the first non-``None`` answer wins. Nothing retries a tool by default.

    :param tool: the tool call's context (``tool.args`` as the tool received them).
    :param result: the error result (``result.error_code``, ``result.content``).
    :param attempt: the attempt that failed, from 1; a tool is tried at most 3 times.

    Return value: a :class:`synthhost.Recovery`: ``retry`` (after ``delay`` seconds),
    ``reroute`` with ``changes={"args": {...}}`` (repaired arguments, then tried again)
    or ``give_up``; a :class:`synthhost.tools.ToolResult` to answer instead (a repair:
    the model reads it, ``post_tool`` still runs); or ``None`` to let the next plugin
    decide.
    """


@hookspec
def on_trace(trace: Trace, host: Host) -> Awaitable[None] | None:
    """When a run (or a stand-alone ``Host.complete`` call) has finished. For agent runs
    the rows are durable by then; a stand-alone call's rows are queued, not flushed (no
    I/O on the call path). Exporters forward it here; they must not block: queue, and
    export in the background, unless the plugin documents a synchronous mode.

    :param trace: the finished run with its spans and events.
    :param host: the host that ran it (several hosts may share a process).

    Return value: ignored. Exceptions are isolated as for every call hook.
    """


def spec_names() -> list[str]:
    """Every hook name, in definition order (used by docs and tests)."""
    return [name for name, value in globals().items() if hasattr(value, "synthhost_spec")]


# Names the registry uses for typing callbacks; kept here so plugin authors read one file.
Predicate = Callable[[Any], bool]
