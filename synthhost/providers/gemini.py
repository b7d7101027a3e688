"""Google's Gemini API (``POST {base}/v1beta/models/{model}:generateContent``) over httpx.

- Messages become ``contents`` (roles ``user`` / ``model``); ``system`` messages become
  ``systemInstruction``. Params map onto ``generationConfig`` (``temperature``,
  ``top_p`` → ``topP``, ``max_tokens`` → ``maxOutputTokens``, ``stop`` →
  ``stopSequences``).
- Usage: ``promptTokenCount`` already includes ``cachedContentTokenCount`` (the host's
  convention); output is ``candidatesTokenCount + thoughtsTokenCount`` (the host counts
  reasoning in the output), with ``reasoning_tokens`` and ``cache_read_tokens`` set.
- Errors: ``{"error": {"code", "message", "status", "details"}}``; ``RESOURCE_EXHAUSTED``
  (429) takes its delay from the ``google.rpc.RetryInfo`` detail (``"30s"``) when there
  is no ``Retry-After`` header; ``UNAVAILABLE`` "model is overloaded" (503) →
  ``PROVIDER_OVERLOADED``; "input token count ... exceeds" → ``PROVIDER_CONTEXT_TOO_LONG``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from synthhost.call import Request, Response, Usage, content_text
from synthhost.providers.http import HTTPProvider, parse_retry_after, to_int

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"

_CONFIG = {"temperature": "temperature", "top_p": "topP", "top_k": "topK", "max_tokens": "maxOutputTokens",
           "max_completion_tokens": "maxOutputTokens", "seed": "seed", "candidate_count": "candidateCount"}
_STOP = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter"}


class GeminiProvider(HTTPProvider):
    supports_tools = False  # no tool calling yet: the agent loop refuses tools here
    kind = "gemini"
    price_provider = "google"

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"x-goog-api-key": api_key} if api_key else {}

    def request_for(self, request: Request) -> tuple[str, dict[str, Any]]:
        system: list[dict[str, str]] = []
        contents: list[dict[str, Any]] = []
        for message in request.messages:
            text = content_text(message.get("content"))
            if message.get("role") == "system":
                system.append({"text": text})
                continue
            role = "model" if message.get("role") == "assistant" else "user"
            if contents and contents[-1]["role"] == role:
                contents[-1]["parts"].append({"text": text})
            else:
                contents.append({"role": role, "parts": [{"text": text}]})
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": system}
        config: dict[str, Any] = {}
        for key, value in request.params.items():
            if key in _CONFIG and value is not None:
                config[_CONFIG[key]] = value
        stop = request.params.get("stop")
        if stop is not None:
            config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
        if config:
            body["generationConfig"] = config
        return f"/v1beta/models/{quote(request.model, safe='.-_')}:generateContent", body

    def parse(self, data: Any, request: Request) -> Response:
        candidates = data.get("candidates") or []
        first = candidates[0] if candidates else {}
        parts = (first.get("content") or {}).get("parts") or []
        # Thought summaries (``thought: true``) are not the answer.
        text = "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict) and not p.get("thought"))
        reason = str(first.get("finishReason") or "STOP")
        return Response(
            text=text,
            model=str(data.get("modelVersion") or request.model),
            provider=self.price_provider or request.provider,
            usage=parse_usage(data.get("usageMetadata")),
            finish_reason=_STOP.get(reason, reason.lower()),
            raw=data,
        )

    def retry_after(self, reply: httpx.Response) -> float | None:
        header = parse_retry_after(reply.headers)
        if header is not None:
            return header
        try:
            details = reply.json()["error"]["details"]
        except (ValueError, KeyError, TypeError):
            return None
        for detail in details if isinstance(details, list) else []:
            delay = detail.get("retryDelay") if isinstance(detail, dict) else None
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    return max(float(delay[:-1]), 0.0)
                except ValueError:
                    return None
        return None


def parse_usage(usage: Any) -> Usage:
    if not isinstance(usage, Mapping):
        return Usage()
    thoughts = to_int(usage.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=to_int(usage.get("promptTokenCount")),
        output_tokens=to_int(usage.get("candidatesTokenCount")) + thoughts,
        cache_read_tokens=to_int(usage.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )
