"""``POST /v1/chat/completions`` and ``GET /v1/models``, in OpenAI's wire format.

With ``stream: true`` the call runs through the whole chain (so output guardrails see the
whole answer before any of it is sent: the providers' own streaming, ``Host.stream``, is
not used here on purpose), then the answer is sent as ``chat.completion.chunk`` events,
a word group at a time, and tool calls one chunk each. Tool calls in a non-streamed
answer come back in ``message.tool_calls``, as OpenAI sends them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from synthhost.call import new_id
from synthhost.errors import SynthhostError
from synthhost.gateway.errors import bad_request, from_error

if TYPE_CHECKING:
    from synthhost.call import Response as HostResponse
    from synthhost.host import Host

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Fields the gateway consumes itself; every other field goes to the provider as a param.
OWN_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "user", "metadata", "n"})
_PIECES = re.compile(r"\S+\s*|\s+")


def validate(body: Any) -> tuple[dict[str, Any] | None, Response | None]:
    """The request fields, or a 400 naming the bad one."""
    if not isinstance(body, dict):
        return None, bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 300:
        return None, bad_request("'model' must be a non-empty string (at most 300 characters)", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None, bad_request("'messages' must be a non-empty array", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return None, bad_request(f"messages[{i}] must be an object with a role in {sorted(ROLES)}",
                                     f"messages[{i}]")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            return None, bad_request(f"messages[{i}].content must be a string or an array", f"messages[{i}].content")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        return None, bad_request("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return None, bad_request("'stream_options' must be an object", "stream_options")
    n = body.get("n")
    if n is not None and n != 1:
        return None, bad_request("only n=1 is supported", "n")
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > 200):
        return None, bad_request("'user' must be a string (at most 200 characters)", "user")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return None, bad_request("'metadata' must be an object", "metadata")
    return {
        "model": model, "messages": messages, "stream": stream,
        "include_usage": bool((options or {}).get("include_usage")), "user": user, "metadata": metadata,
        "params": {k: v for k, v in body.items() if k not in OWN_FIELDS},
    }, None


def usage_dict(response: HostResponse) -> dict[str, Any]:
    u = response.usage
    return {
        "prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens, "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def completion(response: HostResponse, model: str, completion_id: str, created: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": response.text, "refusal": None}
    if response.tool_calls:  # the caller sent tools: the model's calls go back to it
        message["content"] = response.text or None
        message["tool_calls"] = [t.to_message() for t in response.tool_calls]
    return {
        "id": completion_id, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": response.finish_reason}],
        "usage": usage_dict(response),
    }


def pieces(text: str, min_chars: int = 16) -> list[str]:
    """Word groups of at least ``min_chars`` (the last may be shorter)."""
    out: list[str] = []
    current = ""
    for part in _PIECES.findall(text):
        current += part
        if len(current) >= min_chars:
            out.append(current)
            current = ""
    if current:
        out.append(current)
    return out


async def sse(response: HostResponse, model: str, completion_id: str, created: int,
              include_usage: bool) -> AsyncIterator[bytes]:
    def event(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        chunk: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                 "model": model, "system_fingerprint": None, "choices": choices}
        if include_usage:
            chunk["usage"] = usage
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None}])
    for piece in pieces(response.text):
        yield event([{"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}])
    for index, call in enumerate(response.tool_calls):
        delta = {"tool_calls": [{"index": index, **call.to_message()}]}
        yield event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
    yield event([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": response.finish_reason}])
    if include_usage:
        yield event([], usage_dict(response))
    yield b"data: [DONE]\n\n"


async def chat_completions(host: Host, request: Request, body: Any) -> Response:
    fields, error = validate(body)
    if error is not None:
        return error
    assert fields is not None
    try:
        response = await host.complete(
            model=fields["model"], messages=fields["messages"], workspace=request.state.workspace,
            params=fields["params"], user=fields["user"], metadata=fields["metadata"],
        )
    except SynthhostError as exc:
        return from_error(exc, host.redact)
    completion_id, created = "chatcmpl-" + new_id(), int(time.time())
    if fields["stream"]:
        return StreamingResponse(
            sse(response, fields["model"], completion_id, created, fields["include_usage"]),
            media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return JSONResponse(completion(response, fields["model"], completion_id, created))


def list_models(host: Host) -> dict[str, Any]:
    """The model list's model names and aliases (what a bare ``model`` resolves);
    without a model list, ``echo/echo-1`` so a client has something to call."""
    data: list[dict[str, Any]] = []
    models = host.models
    for name, group in models.groups.items():
        data.append({"id": name, "object": "model", "created": 0, "owned_by": group[0].provider})
    for alias, target in models.aliases.items():
        data.append({"id": alias, "object": "model", "created": 0, "owned_by": models.groups[target][0].provider})
    if not data and "echo" in host.registry.providers:
        data.append({"id": "echo/echo-1", "object": "model", "created": 0, "owned_by": "echo"})
    return {"object": "list", "data": data}
