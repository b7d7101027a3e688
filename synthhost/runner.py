"""Making calls and running agents: attempts, recovery, spans, runs, traces."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import anyio

from synthhost.call import Call, Request, Response, StashKey, StreamDelta, new_id
from synthhost.errors import Denied, ErrorCode, ProviderError, SynthhostError, UsageError
from synthhost.steps import StepBoundary, inline_boundary
from synthhost.storage.models import Run, Span
from synthhost.tools.toolbox import ToolBox, search_dir
from synthhost.trace import EventRecord, RunResult, SpanRecord, Status, StepResult, Trace

if TYPE_CHECKING:
    from synthhost.agent import AgentSpec
    from synthhost.agent import Step as StepSpec
    from synthhost.host import Host

RUNS = Run.__table__  # type: ignore[attr-defined]
SPANS = Span.__table__  # type: ignore[attr-defined]

PROMPT_CAP = 4000


def split_model(model: str) -> tuple[str, str]:
    """``"openai/gpt-4o"`` → ``("openai", "gpt-4o")``; a bare name uses ``echo``."""
    provider, sep, name = model.partition("/")
    return (provider, name) if sep and provider and name else ("echo", model)


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _messages(messages: list[dict[str, Any]] | str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)


def status_of(error: SynthhostError | None) -> Status:
    """``ok``, ``error``, or ``cancelled`` (stopped from outside: Ctrl-C, SIGTERM, a
    caller's timeout). One rule for runs, steps, spans, exports and events."""
    if error is None:
        return "ok"
    return "cancelled" if error.code == ErrorCode.CANCELLED else "error"


def cancelled_error(what: str) -> SynthhostError:
    return SynthhostError(f"{what} cancelled", code=ErrorCode.CANCELLED)


EVENT_STATUS = {"ok": "success", "error": "error", "cancelled": "cancelled"}

# Plugins' on_failure for a cancelled attempt (cost's failed row, the limiter's refund)
# runs shielded, within this bound, so a stuck plugin cannot hold up a Ctrl-C.
CANCEL_CLEANUP_S = 5.0


@dataclass
class RunState:
    """A run in progress: its root span, spans so far, and the events it emitted."""

    host: Host
    run_id: str
    trace_id: str
    workspace: str
    name: str
    agent: str | None
    user: str | None
    org: str | None
    input: dict[str, Any]
    started_at: float = field(default_factory=time.time)
    spans: list[SpanRecord] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    cost: Decimal = Decimal(0)
    priced_calls: int = 0
    unpriced_calls: int = 0
    tokens: int = 0
    # Where the agent loop's model turns and tool calls run (synthhost.steps): in process
    # the inline boundary; in a durable run, each one is a checkpointed DBOS step.
    boundary: StepBoundary = inline_boundary

    def add_span(self, span: SpanRecord) -> None:
        self.spans.append(span)
        sink = _STEP_SPANS.get()
        if sink is not None:
            sink.append(span)
        self.host.writer.submit_values(SPANS, span_values(span, self.workspace))
        if span.kind == "call":
            self.tokens += int(span.attributes.get("usage", {}).get("total_tokens", 0) or 0)
            cost = span.attributes.get("cost_usd")
            if cost is None:
                details = span.attributes.get("cost")
                if isinstance(details, dict) and details.get("priced") is False:
                    self.unpriced_calls += 1
            else:
                try:
                    self.cost += Decimal(str(cost))
                    self.priced_calls += 1
                except InvalidOperation:
                    pass

    def run_values(
        self, status: str, ended_at: float | None, output: Any, error: SynthhostError | None
    ) -> dict[str, Any]:
        attributes: dict[str, Any] = {"tokens": self.tokens, "calls": sum(s.kind == "call" for s in self.spans)}
        if tool_calls := sum(s.kind == "tool" for s in self.spans):
            attributes["tool_calls"] = tool_calls
        if self.priced_calls:
            attributes["cost_usd"] = f"{self.cost:f}"
        if self.unpriced_calls:
            attributes["unpriced_calls"] = self.unpriced_calls
        return {
            "id": self.run_id, "trace_id": self.trace_id, "workspace_id": self.workspace,
            "user_id": self.user, "org_id": self.org, "agent": self.agent, "name": self.name,
            "status": status, "started_at": _dt(self.started_at), "ended_at": _dt(ended_at),
            "input": self.input, "output": output,
            "error_code": error.code if error else None,
            "error_message": error.message if error else None,
            "attributes": attributes,
        }


# The spans a checkpointed unit of work (:func:`checkpointed`) adds, whatever else runs
# beside it (a turn's tool calls run concurrently).
_STEP_SPANS: ContextVar[list[SpanRecord] | None] = ContextVar("synthhost_step_spans", default=None)


async def checkpointed(run: RunState, name: str, body: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """``body`` (returning a JSON-able record) through the run's boundary as one step.
    The record gains ``spans``: the spans the body added. A step replayed from its
    checkpoint (``body`` not executed) puts those spans back on the run (its cost and
    tokens; their rows are re-submitted and kept once by the writer)."""
    executed = False

    async def step() -> dict[str, Any]:
        nonlocal executed
        executed = True
        sink: list[SpanRecord] = []
        token = _STEP_SPANS.set(sink)
        try:
            record = await body()
        finally:
            _STEP_SPANS.reset(token)
        return {**record, "spans": [dataclasses.asdict(span) for span in sink]}

    record: dict[str, Any] = await run.boundary(run, name, step)
    if not executed:
        for span in record["spans"]:
            run.add_span(SpanRecord(**span))
    return record


def span_values(span: SpanRecord, workspace: str) -> dict[str, Any]:
    return {
        "id": span.span_id, "trace_id": span.trace_id, "run_id": span.run_id,
        "parent_id": span.parent_id, "workspace_id": workspace, "kind": span.kind,
        "name": span.name, "status": span.status, "started_at": _dt(span.started_at),
        "ended_at": _dt(span.ended_at), "error_code": span.error_code,
        "error_message": span.error_message, "attributes": span.attributes,
    }


# -- one call, every attempt ------------------------------------------------------------


async def execute_call(host: Host, call: Call) -> Response:
    """Run the chain around a call until it succeeds, is denied, or recovery gives up.
    A cancelled attempt is reported to ``on_failure`` once (error code ``CANCELLED``,
    with the provider's response when it had answered), shielded and bounded, then the
    cancellation propagates."""
    chain = host.chains.for_workspace(call.workspace)
    chains = host.chains
    try:
        return await _attempts(host, call, chain)
    except BaseException as exc:
        if isinstance(exc, SynthhostError | Exception) or call.stash.get(_REPORTED) == call.attempt:
            raise
        cancelled = cancelled_error("call")
        answered = call.stash.get(_ANSWER)
        if answered is not None:
            cancelled.response = answered  # type: ignore[attr-defined]  # the answer was billed
        with anyio.move_on_after(CANCEL_CLEANUP_S, shield=True):
            await chains.on_failure(chain, call, cancelled, call.attempt)
        raise


_REPORTED: StashKey[int] = StashKey()
_ANSWER: StashKey[Response | None] = StashKey()


async def _attempts(host: Host, call: Call, chain: Any) -> Response:
    chains = host.chains
    while True:
        response: Response | None = None
        try:
            response = await chains.pre_call(chain, call)
            if response is None:
                call.tried_routes.append((call.request.provider, call.request.model))
                started = time.perf_counter()
                response = await host.provider(call.request.provider).complete(call.request, call=call)
                response.latency_s = response.latency_s or (time.perf_counter() - started)
            call.stash[_ANSWER] = response
            await chains.post_call(chain, call, response)
            return response
        except Denied as denied:
            if response is not None and not hasattr(denied, "response"):
                denied.response = response  # type: ignore[attr-defined]  # the answer a guardrail rejected
            call.stash[_REPORTED] = call.attempt
            await chains.on_failure(chain, call, denied, call.attempt)
            raise
        except SynthhostError as err:
            error: SynthhostError = err
        except Exception as exc:  # a provider bug: not retryable, but never a traceback
            error = ProviderError(f"{type(exc).__name__}: {exc}", retryable=False)
        call.stash[_REPORTED] = call.attempt
        recovery = await chains.on_failure(chain, call, error, call.attempt)
        if recovery is None or recovery.action == "give_up":
            raise error
        host.emit("recovery", call=call, action=recovery.action, reason=recovery.reason,
                  attempt=call.attempt, error_code=error.code)
        if recovery.response is not None:
            response = recovery.response
            await chains.post_call(chain, call, response)
            call.attributes["repaired"] = True
            return response
        if recovery.action == "reroute":
            for key, value in recovery.changes.items():
                setattr(call.request, key, value)
        if recovery.delay > 0:
            await anyio.sleep(recovery.delay)
        call.attempt += 1
        call.stash[_ANSWER] = None


def _span_params(params: dict[str, Any]) -> dict[str, Any]:
    """The params a span records: tool definitions by name only (their schemas would be
    repeated on every turn of every step)."""
    tools = params.get("tools")
    if not isinstance(tools, list):
        return params
    names = [t.get("function", {}).get("name") if isinstance(t, dict) else None for t in tools]
    return {**params, "tools": names}


def call_span(call: Call, response: Response | None, error: SynthhostError | None, ended: float) -> SpanRecord:
    attrs: dict[str, Any] = {
        "provider": call.request.provider,
        "model": call.request.model,
        "requested_model": call.requested_model,
        "requested_provider": call.requested_provider,
        "attempts": call.attempt,
        "params": _span_params(call.request.params),
        "input": call.request.messages,
    }
    if call.request.region:
        attrs["region"] = call.request.region
    if response is not None:
        usage = response.usage.to_dict()
        usage["total_tokens"] = response.usage.total_tokens
        attrs.update(usage=usage, billed_model=response.model, output=response.text,
                     finish_reason=response.finish_reason,
                     provider_latency_ms=round(response.latency_s * 1000, 3))
    if error is not None and isinstance(error, Denied) and error.details:
        attrs["denial"] = error.details
    attrs.update(call.attributes)
    return SpanRecord(
        span_id=call.span_id, trace_id=call.trace_id, run_id=call.run_id or call.trace_id,
        kind="call", name=f"{call.request.provider}/{call.request.model}", started_at=call.started_at,
        parent_id=call.parent_span_id, ended_at=ended, status=status_of(error),
        error_code=error.code if error else None, error_message=error.message if error else None,
        attributes=attrs,
    )


async def traced_call(host: Host, call: Call, run: RunState) -> Response:
    """Execute a call and record its span on the run, whatever happens."""
    error: SynthhostError | None = None
    response: Response | None = None
    try:
        response = await execute_call(host, call)
        return response
    except SynthhostError as err:
        error = err
        raise
    except BaseException:  # cancelled: still record the span, then propagate
        error = cancelled_error("call")
        raise
    finally:
        run.add_span(call_span(call, response, error, time.time()))


def make_call(
    host: Host, *, model: str, messages: list[dict[str, Any]] | str, workspace: str,
    params: Mapping[str, Any] | None, user: str | None, org: str | None, agent: str | None,
    metadata: Mapping[str, Any] | None, max_attempts: int, run: RunState,
    parent: str | None = None, step: str | None = None, on_delta: Callable[[StreamDelta], None] | None = None,
) -> Call:
    provider, name = split_model(model)
    request_metadata = dict(metadata or {})
    if host.models and "/" not in model and (deployment := host.models.pick(model)) is not None:
        # A model-list name or alias: one of its deployments, load-balanced; recovery
        # falls back to the group's other deployments.
        provider, name = deployment.name, deployment.upstream_model
        request_metadata["model_group"] = deployment.model
    request = Request(model=name, provider=provider, messages=_messages(messages),
                      params=dict(params or {}), metadata=request_metadata)
    return Call(host=host, request=request, workspace=workspace, user=user, org=org, agent=agent,
                step=step, run_id=run.run_id, trace_id=run.trace_id, parent_span_id=parent,
                max_attempts=max_attempts, metadata=dict(metadata or {}), on_delta=on_delta)


async def complete_standalone(host: Host, **kw: Any) -> Response:
    """``Host.complete``: a one-call trace (run row + call span) finished like every run
    (:func:`finish_run`), without waiting for its rows on the call path."""
    workspace = kw["workspace"]
    run = RunState(host, new_id(), new_id(), workspace, f"complete {kw['model']}", kw.get("agent"),
                   kw.get("user"), kw.get("org"), {})
    call = make_call(host, run=run, **kw)
    root_id = call.span_id  # the call span is the trace's root
    error: SynthhostError | None = None
    response: Response | None = None
    with host.collect_run_events(run):
        try:
            response = await traced_call(host, call, run)
        except SynthhostError as err:
            error = err
        except BaseException:
            with anyio.move_on_after(CANCEL_CLEANUP_S, shield=True):
                await finish_run(host, run, None, cancelled_error("call"), None, root_id=root_id, standalone=True,
                                 wait=False)
            raise
        await finish_run(host, run, None, error, None, root_id=root_id, standalone=True, wait=False)
    if error is not None:
        raise error
    assert response is not None
    return response


def build_trace(run: RunState, status: str, ended: float, output: Any, error: SynthhostError | None) -> Trace:
    values = run.run_values(status, ended, output, error)
    return Trace(
        run_id=run.run_id, trace_id=run.trace_id, workspace=run.workspace, name=run.name,
        started_at=run.started_at, ended_at=ended, status=status,  # type: ignore[arg-type]
        agent=run.agent, user=run.user, org=run.org, input=run.input, output=output,
        error_code=values["error_code"], error_message=values["error_message"],
        attributes=values["attributes"], spans=list(run.spans), events=list(run.events),
    )


# -- agent runs --------------------------------------------------------------------------


async def run_agent(
    host: Host, spec: AgentSpec, *, inputs: Mapping[str, Any], workspace: str | None,
    user: str | None, org: str | None, on_step: Callable[[int, int, StepResult], None] | None = None,
    run_id: str | None = None, on_delta: Callable[[StreamDelta], None] | None = None,
    boundary: StepBoundary | None = None,
) -> RunResult:
    """Run an agent's steps. Each step goes through ``boundary`` (in process: no
    checkpoint; a durable run's makes each step a checkpointed DBOS step)."""
    from synthhost.agent import resolve_inputs

    ws = workspace or spec.workspace
    resolved: dict[str, Any] = dict(resolve_inputs(spec, dict(inputs)))
    run = RunState(host, run_id or new_id(), new_id(), ws, spec.name, spec.name, user, org, dict(resolved))
    run.boundary = boundary or inline_boundary
    root = SpanRecord(run.run_id, run.trace_id, run.run_id, "run", spec.name, run.started_at)
    host.writer.submit_values(RUNS, run.run_values("running", None, None, None), upsert_on=("id",))

    collecting = host.collect_run_events(run)
    collecting.__enter__()
    host.emit("run_started", workspace=ws, user=user, org=org, run_id=run.run_id,
              trace_id=run.trace_id, span_id=run.run_id, agent=spec.name, inputs=sorted(resolved))
    result = RunResult(run.run_id, run.trace_id, ws, spec.name, "running")
    error: SynthhostError | None = None
    output: str | None = None
    # The run's tool resources (MCP sessions, an HTTP client), opened by the first step
    # that needs them; entered around the steps so their cancel scopes unwind in order.
    toolbox: ToolBox | contextlib.nullcontext[None] = contextlib.nullcontext()
    if any(spec.uses_loop(s) for s in spec.steps):
        toolbox = ToolBox(host, search_dir(spec.source), run=run)
    try:
        async with toolbox:
            for index, step in enumerate(spec.steps, 1):
                step_result = StepResult(step.name, "running")
                result.steps.append(step_result)
                executed = False

                async def body(step: StepSpec = step, step_result: StepResult = step_result) -> dict[str, Any]:
                    nonlocal executed
                    executed = True
                    return await _run_step(host, spec, step, step_result, run, resolved, result.outputs, ws, user,
                                           org, toolbox, on_delta if step is spec.steps[-1] else None)

                try:
                    if boundary is not None and isinstance(toolbox, ToolBox) and spec.uses_loop(step):
                        # A durable run's agent loop runs at workflow level: each model turn
                        # and each tool call is its own step (synthhost.agent_loop).
                        record = await body()
                    else:
                        record = await (boundary or inline_boundary)(run, f"{index}:{step.name}", body)
                    if not executed:  # replayed from a durable run's checkpoint: its rows exist already
                        restore_step(run, step_result, record)
                finally:
                    if on_step is not None and step_result.status != "running":
                        on_step(len(result.steps), len(spec.steps), step_result)
                if record["error"] is None:
                    output = record["output"]
                    result.outputs[step.output or step.name] = output
                else:
                    raise SynthhostError(record["error"]["message"], code=record["error"]["code"])
    except SynthhostError as err:
        error = err
    except BaseException:
        try:
            with anyio.CancelScope(shield=True):
                await finish_run(host, run, root, cancelled_error("run"), output, result=result)
        finally:
            collecting.__exit__(None, None, None)
        raise
    try:
        await finish_run(host, run, root, error, output, result=result)
    finally:
        collecting.__exit__(None, None, None)
    return result


async def _run_step(
    host: Host, spec: AgentSpec, step: StepSpec, step_result: StepResult, run: RunState,
    resolved: dict[str, Any], outputs: dict[str, Any], ws: str, user: str | None, org: str | None,
    toolbox: ToolBox | contextlib.nullcontext[None], on_delta: Callable[[StreamDelta], None] | None,
) -> dict[str, Any]:
    """One step: its span, its call (or its agent loop: model turns and tool calls).
    Returns the step's record (what a durable run checkpoints): output or error, and the
    spans it added. A cancellation propagates."""
    from synthhost.agent import render_step, step_variables

    before = len(run.spans)
    step_span = SpanRecord(new_id(), run.trace_id, run.run_id, "step", step.name, time.time(),
                           parent_id=run.run_id)
    step_result.span_id = step_span.span_id
    error: SynthhostError | None = None
    try:
        variables = step_variables(spec, step, resolved, outputs, workspace=ws, run_id=run.run_id)
        system, prompt = render_step(step, variables)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}]
        model = step.model or spec.model
        step_result.model = model
        def new_call(messages: list[dict[str, Any]], extra: dict[str, Any]) -> Call:
            call = make_call(
                host, model=model, messages=messages, workspace=ws,
                params={**spec.params, **step.params, **extra}, user=user, org=org, agent=spec.name,
                metadata=spec.metadata, max_attempts=spec.retry.max_attempts, run=run,
                parent=step_span.span_id, step=step.name, on_delta=on_delta,  # the agent's answer
            )
            call.retry_initial_delay_s = spec.retry.initial_delay_s
            call.retry_max_delay_s = spec.retry.max_delay_s
            return call

        if isinstance(toolbox, ToolBox) and spec.uses_loop(step):
            response = await loop_step(host, run, spec, step, toolbox, new_call, messages,
                                       ws=ws, user=user, org=org, parent=step_span.span_id)
        else:
            response = await traced_call(host, new_call(messages, {}), run)
        step_result.status, step_result.output = "ok", response.text
    except SynthhostError as err:
        error = err
    except BaseException:
        error = cancelled_error("step")
        raise
    finally:
        if error is not None:
            status = status_of(error)
            step_span.status, step_span.error_code, step_span.error_message = status, error.code, error.message
            step_result.status, step_result.error_code, step_result.error_message = status, error.code, error.message
        step_span.ended_at = time.time()
        if step_span.status == "running":
            step_span.status = "ok"
        run.add_span(step_span)
    return {
        "output": step_result.output, "model": step_result.model, "span_id": step_span.span_id,
        "error": None if error is None else {"code": error.code, "message": error.message},
        "spans": [dataclasses.asdict(span) for span in run.spans[before:]],
    }


def restore_step(run: RunState, step_result: StepResult, record: dict[str, Any]) -> None:
    """A checkpointed step's record back onto the run (spans, cost, the step's result)
    without executing it; its rows are re-submitted and kept once by the writer."""
    for span in record["spans"]:
        run.add_span(SpanRecord(**span))
    error = record["error"]
    step_result.model, step_result.span_id = record["model"], record["span_id"]
    if error is None:
        step_result.status, step_result.output = "ok", record["output"]
    else:
        step_result.error_code, step_result.error_message = error["code"], error["message"]
        step_result.status = "cancelled" if error["code"] == ErrorCode.CANCELLED else "error"


async def loop_step(host: Host, run: RunState, spec: AgentSpec, step: Any, toolbox: ToolBox,
                    new_call: Callable[[list[dict[str, Any]], dict[str, Any]], Call],
                    messages: list[dict[str, Any]], *, ws: str, user: str | None, org: str | None,
                    parent: str) -> Response:
    """A step with tools or an ``output_schema``: the agent loop."""
    from synthhost.agent_loop import LoopScope, run_tool_loop
    from synthhost.structured import OutputSchema

    max_turns, schema, retries = spec.loop_for(step)
    tools = await toolbox.resolve(spec.tools_for(step))
    output = None
    if schema is not None:
        try:
            output = OutputSchema.from_spec(schema, retries=retries, base_dir=toolbox.base_dir)
        except ValueError as exc:
            raise UsageError(f"step {step.name!r}: output_schema: {exc}") from None
    scope = LoopScope(ws, user, org, spec.name, step.name, parent, spec.metadata)
    return await run_tool_loop(host, run, scope, new_call, messages, tools=tools, max_turns=max_turns, output=output)


async def finish_run(host: Host, run: RunState, root: SpanRecord | None, error: SynthhostError | None,
                     output: str | None, *, result: RunResult | None = None, root_id: str | None = None,
                     standalone: bool = False, wait: bool = True) -> None:
    """The one way every run ends (agent runs and ``Host.complete``'s one-call runs):
    the root span (agent runs), the run row upserted, ``run_finished``, the rows made
    durable (``wait``: agent runs wait for the database; a single call does not),
    ``result`` filled in, and ``on_trace`` for the workspace's chain."""
    ended = time.time()
    status = status_of(error)
    if root is not None:
        root.ended_at, root.status = ended, status
        if error:
            root.error_code, root.error_message = error.code, error.message
        run.add_span(root)
    values = run.run_values(status, ended, output, error)
    host.writer.submit_values(RUNS, values, upsert_on=("id",))
    # Exporters (Langfuse through the outbox) pick the trace up from this event.
    extra: dict[str, Any] = {"standalone": True} if standalone else {}
    host.emit("run_finished", workspace=run.workspace, user=run.user, org=run.org,
              run_id=run.run_id, trace_id=run.trace_id, span_id=root_id or run.run_id,
              status=EVENT_STATUS[status], latency_ms=(ended - run.started_at) * 1000,
              agent=run.agent, error_code=values["error_code"], cost_usd=values["attributes"].get("cost_usd"),
              tokens=run.tokens, **extra)
    if wait:
        await host.wait_for_rows()  # the run's rows are durable before it reports done
    if result is not None:
        result.status = status
        result.output = output if not error else None
        result.error_code, result.error_message = values["error_code"], values["error_message"]
        result.cost_usd = values["attributes"].get("cost_usd")
        result.duration_ms = (ended - run.started_at) * 1000
    if host.chains.for_workspace(run.workspace).on_trace:
        await host.chains.on_trace(build_trace(run, status, ended, output, error))
