"""Anthropic's Messages API (``POST {base}/v1/messages``) over httpx.

- The system prompt: ``system`` messages are joined into the top-level ``system`` field;
  consecutive messages of one role are merged (the API wants user/assistant turns).
- ``max_tokens`` is required by the API: ``request.params["max_tokens"]`` or the
  deployment's default (4096).
- Usage: Anthropic's ``input_tokens`` excludes cache reads and writes; the host's
  convention (and genai-prices') counts the whole prompt, so ``input_tokens`` here is
  ``input + cache_creation_input + cache_read_input``, with ``cache_write_tokens`` and
  ``cache_read_tokens`` set from the two cache fields: cost is exact for cached prompts.
- Errors: ``{"type": "error", "error": {"type": "overloaded_error", "message": ...}}``;
  529 / ``overloaded_error`` → ``PROVIDER_OVERLOADED`` (retryable), 429 with
  ``retry-after`` → ``PROVIDER_RATE_LIMITED``, "prompt is too long" →
  ``PROVIDER_CONTEXT_TOO_LONG``; the rest as every HTTP provider
  (:mod:`synthhost.providers.http`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from synthhost.call import Request, Response, Usage, content_text
from synthhost.providers.http import HTTPProvider, to_int

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

PASSTHROUGH_PARAMS = frozenset({"temperature", "top_p", "top_k", "stop_sequences", "metadata", "service_tier"})

_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


class AnthropicProvider(HTTPProvider):
    supports_tools = False  # no tool calling yet: the agent loop refuses tools here
    kind = "anthropic"
    price_provider = "anthropic"

    def __init__(self, base_url: str = DEFAULT_BASE_URL, *, max_tokens: int = DEFAULT_MAX_TOKENS,
                 **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self.max_tokens = max_tokens

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def request_for(self, request: Request) -> tuple[str, dict[str, Any]]:
        system: list[str] = []
        turns: list[dict[str, Any]] = []
        for message in request.messages:
            role = message.get("role")
            text = content_text(message.get("content"))
            if role == "system":
                system.append(text)
                continue
            role = "assistant" if role == "assistant" else "user"
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"] += "\n" + text
            else:
                turns.append({"role": role, "content": text})
        params = request.params
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": int(params.get("max_tokens") or params.get("max_completion_tokens") or self.max_tokens),
            "messages": turns,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if params.get("stop") is not None and "stop_sequences" not in params:
            stop = params["stop"]
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        for key, value in params.items():
            if key in PASSTHROUGH_PARAMS and value is not None:
                body[key] = value
        return "/v1/messages", body

    def parse(self, data: Any, request: Request) -> Response:
        blocks = data["content"]
        text = "".join(str(b.get("text", "")) for b in blocks if isinstance(b, dict) and b.get("type") == "text")
        return Response(
            text=text,
            model=str(data.get("model") or request.model),
            provider=self.price_provider or request.provider,
            usage=parse_usage(data.get("usage")),
            finish_reason=_STOP.get(str(data.get("stop_reason")), str(data.get("stop_reason") or "stop")),
            raw=data,
        )

    def classify(self, status: int, message: str, reply: httpx.Response) -> tuple[str, bool]:
        kind = _error_type(reply)
        if kind == "overloaded_error":
            status = 529
        return super().classify(status, message, reply)


def parse_usage(usage: Any) -> Usage:
    if not isinstance(usage, Mapping):
        return Usage()
    cache_write = to_int(usage.get("cache_creation_input_tokens"))
    cache_read = to_int(usage.get("cache_read_input_tokens"))
    return Usage(
        input_tokens=to_int(usage.get("input_tokens")) + cache_write + cache_read,
        output_tokens=to_int(usage.get("output_tokens")),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def _error_type(reply: httpx.Response) -> str | None:
    try:
        data = reply.json()
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return str(error.get("type")) if isinstance(error, dict) and error.get("type") else None
