"""``POST /v1/chat/completions`` and ``GET /v1/models``, in OpenAI's wire format.

``stream: true`` relays the provider's stream (:class:`ChatStream`): the call runs through
the chain with ``on_delta`` set, and each delta leaves as a ``chat.completion.chunk`` as
it arrives; ``finish_reason``, the usage chunk (``stream_options.include_usage``) and
``[DONE]`` follow once ``post_call`` has passed the whole answer. Nothing is sent before
the first delta, so a call that fails before it (rate limit, policy, input guardrails,
similarity block, a provider error) answers with its HTTP status and OpenAI error body,
never a 200 stream. A failure after the first delta (the provider, or a ``post_call``
denial) ends the stream with an ``event: error`` whose data is OpenAI's error object
(the SDKs raise ``APIError``); no ``[DONE]`` follows. When a plugin active for the
workspace holds streams (``holds_stream``: output guardrails), the provider is called
without streaming, the answer is checked first, then sent as chunks (a word group at a
time); a rejected answer is a 403 with no chunk sent. A client that disconnects stops
the call (the provider's stream is closed); the call is recorded as ``cancelled`` with
what was produced. Tool calls in a non-streamed answer come back in
``message.tool_calls``, as OpenAI sends them.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from synthhost.call import StreamDelta, new_id
from synthhost.errors import SynthhostError
from synthhost.gateway.errors import bad_request, error_body, from_error

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

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


def _event(completion_id: str, created: int, model: str, include_usage: bool, choices: list[dict[str, Any]],
           usage: Any = None) -> bytes:
    chunk: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                             "model": model, "system_fingerprint": None, "choices": choices}
    if include_usage:
        chunk["usage"] = usage
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
    return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]


def _role(content: str = "") -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def delta_dict(delta: StreamDelta) -> dict[str, Any]:
    """A host delta as OpenAI's ``choices[0].delta``."""
    if delta.index is None:
        return {"content": delta.text}
    fragment: dict[str, Any] = {"index": delta.index}
    if delta.id:
        fragment["id"] = delta.id
        fragment["type"] = "function"
    function: dict[str, Any] = {"arguments": delta.arguments}
    if delta.name:
        function["name"] = delta.name
    fragment["function"] = function
    return {"tool_calls": [fragment]}


def buffered_events(response: HostResponse, model: str, completion_id: str, created: int,
                    include_usage: bool) -> list[bytes]:
    """A whole (held) answer as chunks: word groups, then each tool call in one chunk."""
    def event(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        return _event(completion_id, created, model, include_usage, choices, usage)

    out = [event(_choice(_role()))]
    out += [event(_choice({"content": piece})) for piece in pieces(response.text)]
    for index, call in enumerate(response.tool_calls):
        out.append(event(_choice({"tool_calls": [{"index": index, **call.to_message()}]})))
    return out


def closing_events(response: HostResponse, model: str, completion_id: str, created: int,
                   include_usage: bool) -> bytes:
    """``finish_reason``, the usage chunk (when asked for) and ``[DONE]``."""
    out = _event(completion_id, created, model, include_usage, _choice({}, response.finish_reason))
    if include_usage:
        out += _event(completion_id, created, model, include_usage, [], usage_dict(response))
    return out + b"data: [DONE]\n\n"


_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no")]
# Status observed for a stream whose client left before any byte was sent (nginx's).
CLIENT_CLOSED = 499


class ChatStream(Response):
    """The streamed answer as an ASGI response that runs the call itself, so the call,
    the relay and the disconnect watch share one task group: a client that leaves
    cancels the call (its provider stream is closed, its rows still written), and no
    task outlives the response.

    The HTTP status is chosen at the first event of the call: its first delta (200,
    relayed from there), or its end (an error status and body, or the whole held answer
    as chunks). ``observe(status)`` is called when the first byte goes out (the
    gateway's time-to-first-byte metric)."""

    def __init__(self, host: Host, fields: dict[str, Any], workspace: str) -> None:
        self.host = host
        self.fields = fields
        self.workspace = workspace
        self.status_code = 200  # until the call says otherwise
        self.background = None
        self.body = b""
        self.media_type = "text/event-stream"
        self.raw_headers = list(_HEADERS)  # a relayed stream's (an error answer sends its own)
        self.observe: Callable[[int], None] | None = None
        self.answer: HostResponse | None = None
        self.error: SynthhostError | None = None
        self.completion_id, self.created = "chatcmpl-" + new_id(), int(time.time())

    def _observe(self, status: int) -> None:
        self.status_code = status
        if self.observe is not None:
            self.observe(status)
            self.observe = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        deltas_in, deltas = anyio.create_memory_object_stream[StreamDelta](math.inf)
        finished = anyio.Event()

        def on_delta(delta: StreamDelta) -> None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                deltas_in.send_nowait(delta)

        async def run_call() -> None:
            f = self.fields
            try:
                self.answer = await self.host.complete(
                    model=f["model"], messages=f["messages"], workspace=self.workspace, params=f["params"],
                    user=f["user"], metadata=f["metadata"], on_delta=on_delta)
            except SynthhostError as exc:
                self.error = exc
            finally:
                deltas_in.close()
                finished.set()

        async def watch_disconnect(scope_: anyio.CancelScope) -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    scope_.cancel()  # stops the call (and its provider stream) and the relay
                    return

        with deltas:
            async with anyio.create_task_group() as group:
                group.start_soon(run_call)
                group.start_soon(watch_disconnect, group.cancel_scope)
                try:
                    await self._relay(deltas, send, scope)
                    await finished.wait()
                except OSError:  # the client went away while we were writing
                    pass
                group.cancel_scope.cancel()  # the watcher (the call has ended by now)
        if self.observe is not None:  # nothing was ever sent: the client left first
            self._observe(CLIENT_CLOSED)

    async def _relay(self, deltas: Any, send: Send, scope: Scope) -> None:
        f = self.fields
        model, include_usage = f["model"], f["include_usage"]

        def event(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
            return _event(self.completion_id, self.created, model, include_usage, choices, usage)

        try:
            first = await deltas.receive()
        except anyio.EndOfStream:  # the call ended without a delta: an error, or a held answer
            if self.error is not None:
                response = from_error(self.error, self.host.redact)
                self._observe(response.status_code)
                await response(scope, _no_receive, send)
                return
            assert self.answer is not None
            body = b"".join(buffered_events(self.answer, model, self.completion_id, self.created, include_usage))
            self._observe(200)
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": closing_events(
                self.answer, model, self.completion_id, self.created, include_usage), "more_body": False})
            return
        first_delta = delta_dict(first)
        if "content" in first_delta:
            body = event(_choice(_role(first_delta["content"])))
        else:
            body = event(_choice(_role())) + event(_choice(first_delta))
        self._observe(200)  # the first byte: what the time-to-first-byte histogram measures
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": body, "more_body": True})
        async for delta in deltas:
            # Whatever else has arrived goes out in the same write.
            body = event(_choice(delta_dict(delta)))
            while True:
                try:
                    more = deltas.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
                body += event(_choice(delta_dict(more)))
            await send({"type": "http.response.body", "body": body, "more_body": True})
        if self.error is not None:  # after the first delta: the stream ends with an error event
            payload = error_body(self.error, self.host.redact)
            body = b"event: error\ndata: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
        else:
            assert self.answer is not None
            body = closing_events(self.answer, model, self.completion_id, self.created, include_usage)
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def _no_receive() -> Any:  # an error response does not read the request
    return {"type": "http.disconnect"}


async def chat_completions(host: Host, request: Request, body: Any) -> Response:
    fields, error = validate(body)
    if error is not None:
        return error
    assert fields is not None
    if fields["stream"]:
        return ChatStream(host, fields, request.state.workspace)
    try:
        response = await host.complete(
            model=fields["model"], messages=fields["messages"], workspace=request.state.workspace,
            params=fields["params"], user=fields["user"], metadata=fields["metadata"],
        )
    except SynthhostError as exc:
        return from_error(exc, host.redact)
    completion_id, created = "chatcmpl-" + new_id(), int(time.time())
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
