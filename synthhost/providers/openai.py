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

import email.utils
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

from synthhost.call import Request, Response, Usage
from synthhost.errors import ErrorCode, ProviderError, UsageError

if TYPE_CHECKING:
    from synthhost.call import Call
    from synthhost.host import Host

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
    }
)

_MAX_MESSAGE = 500


class OpenAIProvider:
    """``complete(request, *, call)`` posts ``request.messages`` to
    ``{base_url}/chat/completions`` as ``request.model`` and returns the first choice."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        url = httpx.URL(self.base_url)
        # For messages: host and port only (a URL may carry credentials).
        self._server = f"{url.host}:{url.port}" if url.port else (url.host or self.base_url)
        self._api_key = api_key or None
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), transport=transport, headers=headers
        )

    def __repr__(self) -> str:  # never show the key
        key = "set" if self._api_key else "none"
        return f"OpenAIProvider(base_url={self.base_url!r}, api_key={key}, timeout={self.timeout})"

    async def aclose(self) -> None:
        await self._client.aclose()

    def build_body(self, request: Request) -> dict[str, Any]:
        """The JSON body for ``request``: model, messages and the known params."""
        body: dict[str, Any] = {"model": request.model, "messages": request.messages}
        for key, value in request.params.items():
            if key in PASSTHROUGH_PARAMS and value is not None:
                body[key] = value
        return body

    async def complete(self, request: Request, *, call: Call) -> Response:
        body = self.build_body(request)
        label = f"{request.provider}/{request.model}"
        started = time.perf_counter()
        try:
            reply = await self._client.post(f"{self.base_url}/chat/completions", json=body)
        except httpx.TimeoutException as exc:
            raise ProviderError(
                f"{label}: timed out after {self.timeout:g}s ({type(exc).__name__})",
                code=ErrorCode.PROVIDER_TIMEOUT,
                retryable=True,
            ) from None
        except httpx.UnsupportedProtocol as exc:
            raise ProviderError(
                f"{label}: bad base URL {self._server}: {self._clean(str(exc))}",
                code=ErrorCode.PROVIDER_ERROR,
                retryable=False,
            ) from None
        except httpx.TransportError as exc:
            # Connection refused, reset, DNS failure, protocol error: worth another try.
            # ``from None``: the httpx exception holds the request, headers and all.
            raise ProviderError(
                f"{label}: cannot reach {self._server}: {type(exc).__name__}: "
                f"{self._clean(str(exc))}",
                code=ErrorCode.PROVIDER_ERROR,
                retryable=True,
            ) from None
        latency = time.perf_counter() - started
        if reply.status_code >= 400:
            raise self._http_error(reply, label)
        return self._parse(reply, request, label, latency)

    # -- helpers -------------------------------------------------------------------------

    def _clean(self, text: str) -> str:
        """One line, bounded, and never the key (servers sometimes echo it back)."""
        text = " ".join(text.split())
        if self._api_key:
            text = text.replace(self._api_key, "***")
        if len(text) > _MAX_MESSAGE:
            text = text[: _MAX_MESSAGE - 1] + "…"
        return text

    def _http_error(self, reply: httpx.Response, label: str) -> ProviderError:
        status = reply.status_code
        message = self._clean(_server_message(reply)) or reply.reason_phrase
        text = f"{label}: HTTP {status}: {message}"
        if status == 429:
            return ProviderError(
                text,
                code=ErrorCode.PROVIDER_RATE_LIMITED,
                retryable=True,
                status=status,
                retry_after=parse_retry_after(reply.headers),
            )
        if status in (401, 403):
            return ProviderError(text, code=ErrorCode.PROVIDER_AUTH, retryable=False, status=status)
        if status == 408:
            return ProviderError(
                text, code=ErrorCode.PROVIDER_TIMEOUT, retryable=True, status=status
            )
        if status >= 500:
            return ProviderError(
                text,
                code=ErrorCode.PROVIDER_ERROR,
                retryable=True,
                status=status,
                retry_after=parse_retry_after(reply.headers),
            )
        return ProviderError(
            text, code=ErrorCode.PROVIDER_BAD_REQUEST, retryable=False, status=status
        )

    def _parse(
        self, reply: httpx.Response, request: Request, label: str, latency: float
    ) -> Response:
        try:
            data = reply.json()
            choice = data["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise ProviderError(
                f"{label}: HTTP {reply.status_code} with an unreadable body: "
                f"{self._clean(reply.text[:200])}",
                code=ErrorCode.PROVIDER_ERROR,
                retryable=False,
                status=reply.status_code,
            ) from None
        content = message.get("content")
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return Response(
            text=content if isinstance(content, str) else "",
            model=str(data.get("model") or request.model),
            provider=request.provider,
            usage=parse_usage(data.get("usage")),
            finish_reason=str(choice.get("finish_reason") or "stop"),
            latency_s=latency,
            raw=data,
        )


def parse_usage(usage: Any) -> Usage:
    """OpenAI usage → :class:`Usage`. ``prompt_tokens`` already includes cached tokens and
    ``completion_tokens`` includes reasoning tokens, which is the host's convention too."""
    if not isinstance(usage, Mapping):
        return Usage()
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=_int(usage.get("prompt_tokens")),
        output_tokens=_int(usage.get("completion_tokens")),
        cache_read_tokens=_int(prompt_details.get("cached_tokens")),
        reasoning_tokens=_int(completion_details.get("reasoning_tokens")),
    )


def _int(value: Any) -> int:
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0


def _server_message(reply: httpx.Response) -> str:
    """The server's own error text: OpenAI ``{"error": {"message"}}``, vLLM
    ``{"message"}``, Ollama ``{"error": "..."}``, else the body's start."""
    try:
        data = reply.json()
    except ValueError:
        return reply.text[:_MAX_MESSAGE]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if data.get("message"):
            return str(data["message"])
        if data.get("detail"):
            return str(data["detail"])
    return reply.text[:_MAX_MESSAGE]


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` (OpenAI) or ``Retry-After`` (seconds or
    an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def factory(host: Host) -> OpenAIProvider:
    """Build the provider from ``host.settings.env``."""
    env = host.settings.env
    raw_timeout = env.get("OPENAI_TIMEOUT") or str(DEFAULT_TIMEOUT_S)
    try:
        timeout = float(raw_timeout)
        if timeout <= 0:
            raise ValueError
    except ValueError:
        raise UsageError(
            f"OPENAI_TIMEOUT: expected a positive number of seconds, got {raw_timeout!r}"
        ) from None
    base_url = env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    if not base_url.startswith(("http://", "https://")):
        raise UsageError(f"OPENAI_BASE_URL: expected an http:// or https:// URL, got {base_url!r}")
    return OpenAIProvider(
        base_url=base_url,
        api_key=env.get("OPENAI_API_KEY") or None,
        timeout=timeout,
    )
