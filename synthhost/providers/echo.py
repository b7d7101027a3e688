"""The echo provider: offline, deterministic, with realistic token usage.

It answers for any model name. Simulation controls travel in ``request.params`` (keys
starting with ``echo_``; they are not sent anywhere):

- ``echo_reply``: the text to answer (default: ``"echo: "`` + the last user message, or
  + the tool results when the last messages are tool results); a list answers turn by
  turn (a turn is counted by the assistant messages already in the request; the last
  item repeats);
- ``echo_tool_calls``: scripted tool calls, turn by turn: a list whose item *n* is the
  list of calls of turn *n* (``[{"name": "add", "arguments": {"a": 1}}]``; ``arguments``
  may be a JSON string, kept as is, so bad arguments can be scripted too). A turn past
  the script's end, or an empty item, answers with text;
- ``echo_usage``: a dict of :class:`synthhost.Usage` fields to report instead of the
  estimate (cost tests use it for cached and reasoning tokens);
- ``echo_latency_ms``: simulated latency (default ``SYNTHHOST_ECHO_LATENCY_MS`` or 0);
- ``SYNTHHOST_ECHO_CALL_LOG``: a file to which each call appends one JSON line (run,
  step, attempt, pid, time) as it starts; the durable-run tests read it to prove which steps
  ran again after a worker was killed;
- streaming: with ``call.on_delta`` set, the answer is also passed on a word at a time
  (tool calls' arguments in two fragments), like a streaming provider;
- ``echo_fail``: failures to inject, by attempt: a list (``["rate_limit", "timeout"]``
  fails attempts 1 and 2) or a dict ``{"2": "server_error"}``. Kinds: ``rate_limit``
  (429, retryable, retry_after 0), ``timeout``, ``server_error`` (500), ``auth`` (401,
  not retryable), ``bad_request`` (400, not retryable).

Token estimate: 4 characters a token, plus 4 tokens of framing per message.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

from synthhost.call import Call, Request, Response, StreamDelta, ToolCallRequest, Usage
from synthhost.errors import ErrorCode, ProviderError

if TYPE_CHECKING:
    from synthhost.host import Host

FAILURES: dict[str, tuple[str, bool, int | None]] = {
    "rate_limit": (ErrorCode.PROVIDER_RATE_LIMITED, True, 429),
    "timeout": (ErrorCode.PROVIDER_TIMEOUT, True, None),
    "server_error": (ErrorCode.PROVIDER_ERROR, True, 500),
    "auth": (ErrorCode.PROVIDER_AUTH, False, 401),
    "bad_request": (ErrorCode.PROVIDER_BAD_REQUEST, False, 400),
}


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / 4) if text else 0


class EchoProvider:
    supports_tools = True
    name = "echo"

    def __init__(self, latency_ms: float = 0.0, call_log: str | None = None) -> None:
        self.latency_ms = latency_ms
        self.call_log = call_log
        self.calls: deque[Request] = deque(maxlen=1000)
        self.call_count = 0

    def _failure(self, params: dict[str, Any], attempt: int) -> str | None:
        spec = params.get("echo_fail")
        if isinstance(spec, list):
            return spec[attempt - 1] if attempt <= len(spec) else None
        if isinstance(spec, dict):
            return spec.get(str(attempt)) or spec.get(attempt)
        return None

    async def complete(self, request: Request, *, call: Call) -> Response:
        params = request.params
        self.call_count += 1
        self.calls.append(Request(request.model, request.provider, list(request.messages),
                                  dict(params), request.region, dict(request.metadata)))
        if self.call_log:
            line = json.dumps({"run": call.run_id, "step": call.step, "attempt": call.attempt, "pid": os.getpid(),
                               "t": time.time()})
            with open(self.call_log, "a") as log:  # one short append: atomic on POSIX
                log.write(line + "\n")
        latency = float(params.get("echo_latency_ms", self.latency_ms) or 0)
        if latency > 0:
            await anyio.sleep(latency / 1000)
        kind = self._failure(params, call.attempt)
        if kind:
            code, retryable, status = FAILURES.get(kind, FAILURES["server_error"])
            raise ProviderError(f"echo: injected {kind} on attempt {call.attempt}", code=code,
                                retryable=retryable, status=status,
                                retry_after=0.0 if kind == "rate_limit" else None)
        turn = sum(1 for m in request.messages if m.get("role") == "assistant")
        tool_calls = scripted_tool_calls(params.get("echo_tool_calls"), turn)
        text = params.get("echo_reply")
        if isinstance(text, list):
            text = text[min(turn, len(text) - 1)] if text else None
        if tool_calls:
            text = ""
        elif text is None:
            results = _trailing_tool_results(request.messages)
            text = "echo: " + ("; ".join(results) if results else request.last_user_prompt)
        max_tokens = params.get("max_tokens")
        if isinstance(max_tokens, int) and max_tokens > 0:
            text = text[: max_tokens * 4]
        forced = params.get("echo_usage")
        if isinstance(forced, dict):
            usage = Usage(**forced)
        else:
            prompt_tokens = sum(estimate_tokens(str(m.get("content") or "")) + 4 for m in request.messages)
            usage = Usage(input_tokens=prompt_tokens, output_tokens=estimate_tokens(text))
        if call.on_delta is not None:
            stream_deltas(call.on_delta, str(text), tool_calls)
        return Response(text=str(text), model=request.model, provider="echo", usage=usage,
                        latency_s=latency / 1000, tool_calls=tool_calls,
                        finish_reason="tool_calls" if tool_calls else "stop")


def stream_deltas(on_delta: Any, text: str, tool_calls: list[ToolCallRequest]) -> None:
    """Stream like a real provider: text a word at a time, each tool call's arguments in
    two fragments (its id and name with the first)."""
    for word in re.findall(r"\S+\s*|\s+", text):
        on_delta(StreamDelta(text=word))
    for i, tool_call in enumerate(tool_calls):
        half = len(tool_call.arguments) // 2
        on_delta(StreamDelta(index=i, id=tool_call.id, name=tool_call.name, arguments=tool_call.arguments[:half]))
        on_delta(StreamDelta(index=i, arguments=tool_call.arguments[half:]))


def scripted_tool_calls(script: Any, turn: int) -> list[ToolCallRequest]:
    """Turn ``turn``'s (0-based) calls of an ``echo_tool_calls`` script."""
    if not isinstance(script, list) or turn >= len(script) or not isinstance(script[turn], list):
        return []
    calls = []
    for i, item in enumerate(script[turn]):
        if not isinstance(item, dict) or "name" not in item:
            continue
        args = item.get("arguments", {})
        text = args if isinstance(args, str) else json.dumps(args)
        calls.append(ToolCallRequest(str(item.get("id") or f"call_{turn + 1}_{i + 1}"), str(item["name"]), text))
    return calls


def _trailing_tool_results(messages: list[dict[str, Any]]) -> list[str]:
    results: list[str] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.append(str(message.get("content") or ""))
    return results[::-1]


def from_env(env: Mapping[str, str]) -> EchoProvider:
    return EchoProvider(float(env.get("SYNTHHOST_ECHO_LATENCY_MS", "0") or 0), env.get("SYNTHHOST_ECHO_CALL_LOG"))


def factory(host: Host) -> EchoProvider:
    return from_env(host.settings.env)
