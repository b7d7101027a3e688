"""An OpenAI-compatible chat-completions provider: OpenAI itself, vLLM, Ollama,
llama.cpp's server, LiteLLM and other gateways.

Configuration comes from the host's environment snapshot (``host.settings.env``):

- ``OPENAI_BASE_URL``: default ``https://api.openai.com/v1``; the provider posts to
  ``{base}/chat/completions``.
- ``OPENAI_API_KEY``: sent as ``Authorization: Bearer ...``; optional for local servers.
- ``OPENAI_TIMEOUT``: seconds for the whole request (connect, write, read), default 60.

Errors become :class:`synthhost.errors.ProviderError` with a stable code: timeouts and
408 → ``PROVIDER_TIMEOUT``, connection failures and 5xx → ``PROVIDER_ERROR``, 429 →
``PROVIDER_RATE_LIMITED`` (with ``retry_after``), all retryable; 401/403 →
``PROVIDER_AUTH`` and other 4xx → ``PROVIDER_BAD_REQUEST``, not retryable. Messages
carry the server's own message and never the API key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

from synthhost.call import Request, Response, ToolCallRequest, Usage
from synthhost.errors import ErrorCode, ProviderError
from synthhost.providers.http import (
    HTTPProvider,
    check_base_url,
    parse_retry_after,
    positive_seconds,
    server_message,
    to_int,
)
from synthhost.providers.streaming import StreamAssembler

if TYPE_CHECKING:
    from synthhost.call import Call
    from synthhost.host import Host

__all__ = ["DEFAULT_BASE_URL", "OpenAIProvider", "factory", "parse_retry_after", "parse_usage", "server_message"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT_S = 60.0

# Request params passed through to the server; anything else in ``request.params``
# (host or plugin settings) stays on our side.
PASSTHROUGH_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "response_format",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "reasoning_effort",
        "service_tier",
        "user",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    }
)


class OpenAIProvider(HTTPProvider):
    """``complete(request, *, call)`` posts ``request.messages`` to
    ``{base_url}/chat/completions`` as ``request.model`` and returns the first choice."""

    supports_tools = True

    kind = "openai"

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        name: str | None = None,
        price_provider: str | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, headers=headers, transport=transport, name=name)
        # None: answers are priced as the provider the request named (``openai``).
        self.price_provider = price_provider

    def build_body(self, request: Request) -> dict[str, Any]:
        """The JSON body for ``request``: model, messages and the known params."""
        body: dict[str, Any] = {"model": request.model, "messages": request.messages}
        for key, value in request.params.items():
            if key in PASSTHROUGH_PARAMS and value is not None:
                body[key] = value
        return body

    def request_for(self, request: Request) -> tuple[str, dict[str, Any]]:
        return "/chat/completions", self.build_body(request)

    async def complete(self, request: Request, *, call: Call) -> Response:
        """With ``call.on_delta`` set, stream (``stream: true``, usage included) and pass
        text and tool-call deltas on as they arrive; either way return the whole answer."""
        if call.on_delta is None:
            return await super().complete(request, call=call)
        path, body = self.request_for(request)
        body.update(stream=True, stream_options={"include_usage": True})
        label = f"{request.provider}/{request.model}"
        started = time.perf_counter()
        assembler = StreamAssembler(call.on_delta)
        try:
            async with self._client.stream("POST", f"{self.base_url}{path}", json=body,
                                           headers={"Accept": "text/event-stream"}) as reply:
                if reply.status_code >= 400:
                    await reply.aread()
                    raise self.http_error(reply, label)
                async for line in reply.aiter_lines():
                    if not assembler.feed_line(line):
                        break
        except httpx.TransportError as exc:
            raise self.transport_error(exc, label) from None
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ProviderError(f"{label}: an unreadable event in the stream", code=ErrorCode.PROVIDER_ERROR,
                                retryable=False) from None
        response = assembler.response(model=request.model, provider=self.price_provider or request.provider,
                                      usage=parse_usage)
        response.latency_s = time.perf_counter() - started
        return response

    def parse(self, data: Any, request: Request) -> Response:
        choice = data["choices"][0]
        message = choice.get("message") or {}
        content = message.get("content")
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return Response(
            text=content if isinstance(content, str) else "",
            model=str(data.get("model") or request.model),
            provider=self.price_provider or request.provider,
            usage=parse_usage(data.get("usage")),
            finish_reason=str(choice.get("finish_reason") or "stop"),
            raw=data,
            tool_calls=parse_tool_calls(message.get("tool_calls")),
        )


def parse_tool_calls(items: Any) -> list[ToolCallRequest]:
    """``message.tool_calls`` → :class:`ToolCallRequest` list (function calls only)."""
    calls: list[ToolCallRequest] = []
    for item in items if isinstance(items, list) else ():
        function = item.get("function") if isinstance(item, Mapping) else None
        if not isinstance(function, Mapping) or not function.get("name"):
            continue
        arguments = function.get("arguments")
        text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
        calls.append(ToolCallRequest(str(item.get("id") or f"call_{len(calls) + 1}"), str(function["name"]), text))
    return calls


def parse_usage(usage: Any) -> Usage:
    """OpenAI usage → :class:`Usage`. ``prompt_tokens`` already includes cached tokens and
    ``completion_tokens`` includes reasoning tokens, which is the host's convention too."""
    if not isinstance(usage, Mapping):
        return Usage()
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=to_int(usage.get("prompt_tokens")),
        output_tokens=to_int(usage.get("completion_tokens")),
        cache_read_tokens=to_int(prompt_details.get("cached_tokens")),
        reasoning_tokens=to_int(completion_details.get("reasoning_tokens")),
    )


def factory(host: Host) -> OpenAIProvider:
    """Build the provider from ``host.settings.env``."""
    env = host.settings.env
    timeout = positive_seconds(env.get("OPENAI_TIMEOUT"), DEFAULT_TIMEOUT_S, "OPENAI_TIMEOUT")
    base_url = check_base_url(env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL, "OPENAI_BASE_URL")
    return OpenAIProvider(base_url=base_url, api_key=env.get("OPENAI_API_KEY") or None, timeout=timeout)
