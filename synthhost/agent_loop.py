"""The agent loop: model turn → tool calls (in parallel) → tool results → model turn,
until a final answer, ``max_turns`` (``MAX_TURNS``) or a failed model call.

:func:`call_model_turn` and :func:`call_tool` are the only places a model turn and a
tool call happen; :func:`model_turn` and :func:`tool_call` run them through the run's
step boundary, so in a durable run each is its own checkpointed DBOS step (the loop
itself runs at workflow level, deterministic given the checkpoints). Both are
keyed: the span id of a turn is derived from (run, step, turn) and a tool call's from
(run, step, turn, tool_call_id), so a step replayed after a crash writes the same keyed
span rows instead of new ones. Span ids are not secrets (every read is checked against
the caller's workspace); run ids stay random.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from synthhost.call import Call, Recovery, Response, ToolCallRequest, Usage
from synthhost.errors import Denied, ErrorCode, SynthhostError, UsageError
from synthhost.runner import RunState, cancelled_error, checkpointed, traced_call
from synthhost.steps import inline_boundary
from synthhost.tools import MAX_RESULT_CHARS, MAX_TOOL_ATTEMPTS, Tool, ToolCall, ToolError, ToolResult
from synthhost.trace import SpanRecord

if TYPE_CHECKING:
    from synthhost.host import Host
    from synthhost.structured import OutputSchema

__all__ = ["LoopScope", "call_model_turn", "call_tool", "model_turn", "run_tool_loop", "step_id", "tool_call"]

SPAN_TEXT_CAP = 4000  # characters of a tool's arguments/result kept on its span


def step_id(*parts: object) -> str:
    """A deterministic 32-hex id for a durable step: (run, step, turn[, tool_call_id])."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class LoopScope:
    """Who and where a step's loop runs: tenant, run ids, and the step's span."""

    workspace: str
    user: str | None
    org: str | None
    agent: str | None
    step: str
    parent_span_id: str
    metadata: Mapping[str, Any] = field(default_factory=dict)  # the agent's metadata


# -- the two durable-step functions ------------------------------------------------------


async def call_model_turn(host: Host, run: RunState, scope: LoopScope, call: Call, turn: int) -> Response:
    """One model turn: the plugin chain around one model call (with its attempts and
    recovery), recorded as a ``call`` span keyed by (run, step, turn)."""
    call.span_id = step_id(run.run_id, scope.step, turn)
    call.attributes["turn"] = turn
    return await traced_call(host, call, run)


async def call_tool(host: Host, run: RunState, scope: LoopScope, tools: Mapping[str, Tool],
                    request: ToolCallRequest, turn: int) -> ToolResult:
    """One tool call the model asked for, governed like a model call: ``pre_tool``,
    argument validation, the tool under its timeout, ``post_tool``; a ``tool`` span and a
    ``tool_called``/``tool_failed`` event. Every failure (unknown tool, bad arguments,
    timeout, an exception, a denial) becomes an error result the model reads."""
    span_id = step_id(run.run_id, scope.step, turn, request.id)
    started = time.time()
    tool = tools.get(request.name)
    args, problem = _parse_arguments(request.arguments)
    if tool is None:
        known = ", ".join(sorted(tools)) or "none"
        problem = ToolResult(f"unknown tool {request.name!r} (available: {known})", True, ErrorCode.UNKNOWN_TOOL)
        tool = Tool(request.name, "", {}, _never, source="unknown")
    # A tool span's parent is the turn (model call) that asked for it.
    ctx = ToolCall(host, tool, args, request.id, scope.workspace, scope.user, scope.org, scope.agent,
                   scope.step, run.run_id, run.trace_id, span_id, step_id(run.run_id, scope.step, turn), turn,
                   started_at=started, metadata=dict(scope.metadata))
    result: ToolResult | None = problem
    try:
        if result is None:
            chains = host.chains
            chain = chains.for_workspace(scope.workspace)
            try:
                result = await chains.pre_tool(chain, ctx)
                if result is None:
                    result = await _invoke(tool, ctx)
                    if result.is_error and chain.on_tool_failure:
                        result = await _recover(chains, chain, tool, ctx, result)
            except Denied as denied:
                result = _denied(ctx, denied)
            try:
                await chains.post_tool(chain, ctx, result)
            except Denied as denied:
                result = _denied(ctx, denied)
        return result
    finally:
        _record(host, run, ctx, result, started)


async def _never(args: dict[str, Any]) -> Any:  # the stand-in of an unknown tool
    raise ToolError("unknown tool", ErrorCode.UNKNOWN_TOOL)


def _parse_arguments(text: str) -> tuple[dict[str, Any], ToolResult | None]:
    try:
        args = json.loads(text or "{}")
    except ValueError as exc:
        return {}, ToolResult(f"arguments are not valid JSON: {exc}", True, ErrorCode.TOOL_BAD_ARGUMENTS)
    if not isinstance(args, dict):
        return {}, ToolResult("arguments must be a JSON object", True, ErrorCode.TOOL_BAD_ARGUMENTS)
    return args, None


def _denied(ctx: ToolCall, denied: Denied) -> ToolResult:
    if denied.details:
        ctx.attributes["denial"] = denied.details
    return ToolResult(f"{denied.code}: {denied.message}", True, denied.code)


def as_text(value: Any) -> str:
    """A tool's return value as the text the model reads (JSON unless it is text)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= MAX_RESULT_CHARS else text[:MAX_RESULT_CHARS] + " [truncated]"


async def _invoke(tool: Tool, ctx: ToolCall) -> ToolResult:
    try:
        args = tool.validate(ctx.args) if tool.validate is not None else ctx.args
        with anyio.fail_after(tool.timeout_s):
            value = await tool.invoke(args)
    except ToolError as exc:
        return ToolResult(exc.message, True, exc.code)
    except TimeoutError:
        return ToolResult(f"tool {tool.name!r} timed out after {tool.timeout_s:g}s", True, ErrorCode.TOOL_TIMEOUT)
    except Exception as exc:  # the tool's own bug: the model reads it, the run goes on
        return ToolResult(f"{type(exc).__name__}: {exc}", True, ErrorCode.TOOL_ERROR)
    return ToolResult(as_text(value), value=value)


async def _recover(chains: Any, chain: Any, tool: Tool, ctx: ToolCall, result: ToolResult) -> ToolResult:
    """``on_tool_failure`` answers: try again (after a delay, maybe with repaired
    arguments), answer instead, or give up; at most ``MAX_TOOL_ATTEMPTS`` tries."""
    attempt = 1
    while result.is_error and attempt < MAX_TOOL_ATTEMPTS:
        answer = await chains.on_tool_failure(chain, ctx, result, attempt)
        if answer is None or (isinstance(answer, Recovery) and answer.action == "give_up"):
            break
        if isinstance(answer, ToolResult):
            ctx.attributes["repaired"] = True
            return answer
        if answer.action == "reroute" and isinstance(answer.changes.get("args"), dict):
            ctx.args = dict(answer.changes["args"])
        if answer.delay > 0:
            await anyio.sleep(answer.delay)
        attempt += 1
        ctx.attributes["attempts"] = attempt
        result = await _invoke(tool, ctx)
    return result


def _capped(value: Any) -> Any:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return value if len(text) <= SPAN_TEXT_CAP else text[:SPAN_TEXT_CAP] + " [truncated]"


def _record(host: Host, run: RunState, ctx: ToolCall, result: ToolResult | None, started: float) -> None:
    ended = time.time()
    error = cancelled_error("tool") if result is None else None
    attrs: dict[str, Any] = {"source": ctx.source, "turn": ctx.turn, "tool_call_id": ctx.call_id,
                             "input": _capped(ctx.args)}
    if result is not None:
        attrs["output"] = _capped(result.content)
    attrs.update(ctx.attributes)
    failed = result is None or result.is_error
    code = error.code if error else (result.error_code if result and result.is_error else None)
    span = SpanRecord(ctx.span_id, run.trace_id, run.run_id, "tool", ctx.name, started, parent_id=ctx.parent_span_id,
                      ended_at=ended, status="cancelled" if error else ("error" if failed else "ok"),
                      error_code=code, error_message=(result.content[:500] if result and failed else None),
                      attributes=attrs)
    run.add_span(span)
    latency_ms = (ended - started) * 1000
    if failed:
        ctx.emit("tool_failed", status="error", source=ctx.source, latency_ms=latency_ms, error_code=code,
                 turn=ctx.turn)
    else:
        ctx.emit("tool_called", source=ctx.source, latency_ms=latency_ms, turn=ctx.turn)


# -- as durable steps --------------------------------------------------------------------


def _response_record(response: Response) -> dict[str, Any]:
    return {"text": response.text, "model": response.model, "provider": response.provider,
            "usage": response.usage.to_dict(), "finish_reason": response.finish_reason,
            "latency_s": response.latency_s,
            "tool_calls": [[t.id, t.name, t.arguments] for t in response.tool_calls]}


def _response_of(record: dict[str, Any]) -> Response:
    return Response(record["text"], record["model"], record["provider"], Usage(**record["usage"]),
                    record["finish_reason"], record["latency_s"],
                    tool_calls=[ToolCallRequest(*t) for t in record["tool_calls"]])


async def model_turn(host: Host, run: RunState, scope: LoopScope, call: Call, turn: int) -> Response:
    """:func:`call_model_turn`; in a durable run, as its own checkpointed step: the
    response (or the error) is the checkpoint, and a turn completed before a crash is
    not called again."""
    if run.boundary is inline_boundary:
        return await call_model_turn(host, run, scope, call, turn)

    async def body() -> dict[str, Any]:
        try:
            return {"response": _response_record(await call_model_turn(host, run, scope, call, turn)), "error": None}
        except SynthhostError as err:
            return {"response": None, "error": [err.code, err.message]}

    record = await checkpointed(run, f"{scope.step}:turn{turn}", body)
    if record["error"] is not None:
        code, message = record["error"]
        raise SynthhostError(message, code=code)
    return _response_of(record["response"])


async def tool_call(host: Host, run: RunState, scope: LoopScope, tools: Mapping[str, Tool],
                    request: ToolCallRequest, turn: int, index: int) -> ToolResult:
    """:func:`call_tool`; in a durable run, as its own checkpointed step (the result the
    model reads is the checkpoint)."""
    if run.boundary is inline_boundary:
        return await call_tool(host, run, scope, tools, request, turn)

    async def body() -> dict[str, Any]:
        result = await call_tool(host, run, scope, tools, request, turn)
        return {"result": [result.content, result.is_error, result.error_code]}

    record = await checkpointed(run, f"{scope.step}:turn{turn}:tool{index}:{request.id}", body)
    content, is_error, error_code = record["result"]
    return ToolResult(content, is_error, error_code)


# -- the loop ----------------------------------------------------------------------------


async def call_tools(host: Host, run: RunState, scope: LoopScope, tools: Mapping[str, Tool],
                     requests: Sequence[ToolCallRequest], turn: int) -> list[ToolResult]:
    """The turn's tool calls, concurrently (in the order asked, for the transcript)."""
    if len(requests) == 1:
        return [await tool_call(host, run, scope, tools, requests[0], turn, 1)]
    results: list[ToolResult | None] = [None] * len(requests)

    async def one(i: int, request: ToolCallRequest) -> None:
        results[i] = await tool_call(host, run, scope, tools, request, turn, i + 1)

    async with anyio.create_task_group() as tg:
        for i, request in enumerate(requests):
            tg.start_soon(one, i, request)
    return [r for r in results if r is not None]


NewCall = Callable[[list[dict[str, Any]], dict[str, Any]], Call]


async def run_tool_loop(host: Host, run: RunState, scope: LoopScope, new_call: NewCall,
                        messages: list[dict[str, Any]], *, tools: Mapping[str, Tool], max_turns: int,
                        output: OutputSchema | None = None) -> Response:
    """Turns until the model answers without tool calls (and, with ``output``, with a
    valid structured answer). ``new_call(messages, params)`` builds each turn's call;
    ``params`` carries ``tools`` and ``response_format``. An invalid structured answer
    is sent back with the validation error, up to ``output.retries`` times
    (``OUTPUT_INVALID`` after). Raises ``MAX_TURNS`` when turns run out."""
    params: dict[str, Any] = {}
    if tools:
        params["tools"] = [t.definition() for t in tools.values()]
    if output is not None:
        params["response_format"] = output.response_format()
    retries_left = output.retries if output is not None else 0
    for turn in range(1, max_turns + 1):
        call = new_call(list(messages), dict(params))
        if turn == 1 and tools and getattr(host.provider(call.request.provider), "supports_tools", True) is False:
            raise UsageError(f"step {scope.step!r}: provider {call.request.provider!r} cannot call tools "
                             "(use an OpenAI-compatible provider, or echo offline)")
        response = await model_turn(host, run, scope, call, turn)
        if response.tool_calls:
            messages.append({"role": "assistant", "content": response.text or None,
                             "tool_calls": [t.to_message() for t in response.tool_calls]})
            results = await call_tools(host, run, scope, tools, response.tool_calls, turn)
            messages.extend({"role": "tool", "tool_call_id": req.id, "content": res.content}
                            for req, res in zip(response.tool_calls, results, strict=True))
            continue
        if output is not None and (problem := output.problem(response.text)) is not None:
            host.emit("output_invalid", workspace=scope.workspace, run_id=run.run_id, trace_id=run.trace_id,
                      span_id=call.span_id, status="error", step=scope.step, turn=turn, error=problem[:500])
            if retries_left <= 0:
                raise SynthhostError(f"step {scope.step!r}: the answer does not match output_schema: {problem}",
                                     code=ErrorCode.OUTPUT_INVALID)
            retries_left -= 1
            messages.append({"role": "assistant", "content": response.text})
            messages.append({"role": "user", "content": output.feedback(problem)})
            continue
        return response
    raise SynthhostError(f"step {scope.step!r}: no final answer within max_turns={max_turns}",
                         code=ErrorCode.MAX_TURNS)
