"""What every HTTP model provider shares: one pooled ``httpx.AsyncClient``, transport
errors and HTTP statuses mapped onto the host's error codes, server messages cleaned to
one bounded line that never holds the API key, and ``Retry-After`` parsing.

Status mapping (all providers): timeouts and 408 → ``PROVIDER_TIMEOUT``; connection
failures and 5xx → ``PROVIDER_ERROR``; 529 and "overloaded" answers →
``PROVIDER_OVERLOADED``; 429 → ``PROVIDER_RATE_LIMITED`` (with ``retry_after``): all
retryable. 401/403 → ``PROVIDER_AUTH``; a prompt over the model's context window →
``PROVIDER_CONTEXT_TOO_LONG`` (routing may move it to a larger model); other 4xx →
``PROVIDER_BAD_REQUEST``: not retryable.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

from synthhost.call import Request, Response
from synthhost.errors import ErrorCode, ProviderError

if TYPE_CHECKING:
    from synthhost.call import Call

MAX_MESSAGE = 500

# How providers say "your prompt does not fit" (OpenAI, Anthropic, Gemini, vLLM).
_CONTEXT_TOO_LONG = re.compile(
    r"context[_ ]length|context window|prompt is too long|maximum context|"
    r"input token count .{0,40}exceeds|too many tokens",
    re.IGNORECASE,
)


class HTTPProvider:
    """Base of the HTTP providers. Subclasses set ``kind`` and ``price_provider`` (the
    genai-prices provider id their answers are priced as) and implement
    :meth:`request_for` and :meth:`parse`; they may refine :meth:`classify`."""

    kind = "http"
    price_provider: str | None = None

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        name: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.name = name or self.kind
        url = httpx.URL(self.base_url)
        # For messages: host and port only (a URL may carry credentials).
        self._server = f"{url.host}:{url.port}" if url.port else (url.host or self.base_url)
        self._api_key = api_key or None
        merged = {"Accept": "application/json", **self.auth_headers(self._api_key), **dict(headers or {})}
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout), transport=transport, headers=merged)

    def __repr__(self) -> str:  # never show the key
        key = "set" if self._api_key else "none"
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key={key}, timeout={self.timeout})"

    # -- what subclasses provide ---------------------------------------------------------

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def request_for(self, request: Request) -> tuple[str, dict[str, Any]]:
        """The URL path (after ``base_url``) and JSON body for ``request``."""
        raise NotImplementedError

    def parse(self, data: Any, request: Request) -> Response:
        """The :class:`Response` for a 2xx JSON body (raise KeyError/TypeError/... when
        the body is unreadable; the base turns that into a ``PROVIDER_ERROR``)."""
        raise NotImplementedError

    def server_message(self, reply: httpx.Response) -> str:
        return server_message(reply)

    def classify(self, status: int, message: str, reply: httpx.Response) -> tuple[str, bool]:
        """``(code, retryable)`` for an error answer."""
        if status == 429:
            return ErrorCode.PROVIDER_RATE_LIMITED, True
        if status == 529 or "overloaded" in message.lower():
            return ErrorCode.PROVIDER_OVERLOADED, True
        if status in (401, 403):
            return ErrorCode.PROVIDER_AUTH, False
        if status == 408:
            return ErrorCode.PROVIDER_TIMEOUT, True
        if status >= 500:
            return ErrorCode.PROVIDER_ERROR, True
        if status in (400, 413) and _CONTEXT_TOO_LONG.search(message):
            return ErrorCode.PROVIDER_CONTEXT_TOO_LONG, False
        return ErrorCode.PROVIDER_BAD_REQUEST, False

    def retry_after(self, reply: httpx.Response) -> float | None:
        return parse_retry_after(reply.headers)

    # -- the call ------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self._client.aclose()

    async def complete(self, request: Request, *, call: Call) -> Response:
        path, body = self.request_for(request)
        label = f"{request.provider}/{request.model}"
        started = time.perf_counter()
        try:
            reply = await self._client.post(f"{self.base_url}{path}", json=body)
        except httpx.TransportError as exc:
            raise self.transport_error(exc, label) from None
        latency = time.perf_counter() - started
        if reply.status_code >= 400:
            raise self.http_error(reply, label)
        try:
            response = self.parse(reply.json(), request)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise ProviderError(
                f"{label}: HTTP {reply.status_code} with an unreadable body: {self.clean(reply.text[:200])}",
                code=ErrorCode.PROVIDER_ERROR, retryable=False, status=reply.status_code,
            ) from None
        response.latency_s = latency
        return response

    # -- helpers -------------------------------------------------------------------------

    def transport_error(self, exc: httpx.TransportError, label: str) -> ProviderError:
        """The error for a request that got no HTTP answer. (Raise it ``from None``: the
        httpx exception holds the request, headers and all.)"""
        if isinstance(exc, httpx.TimeoutException):
            return ProviderError(f"{label}: timed out after {self.timeout:g}s ({type(exc).__name__})",
                                 code=ErrorCode.PROVIDER_TIMEOUT, retryable=True)
        if isinstance(exc, httpx.UnsupportedProtocol):
            return ProviderError(f"{label}: bad base URL {self._server}: {self.clean(str(exc))}",
                                 code=ErrorCode.PROVIDER_ERROR, retryable=False)
        # Connection refused, reset, DNS failure, protocol error: worth another try.
        return ProviderError(f"{label}: cannot reach {self._server}: {type(exc).__name__}: {self.clean(str(exc))}",
                             code=ErrorCode.PROVIDER_ERROR, retryable=True)

    def clean(self, text: str) -> str:
        """One line, bounded, and never the key (servers sometimes echo it back)."""
        text = " ".join(text.split())
        if self._api_key:
            text = text.replace(self._api_key, "***")
        if len(text) > MAX_MESSAGE:
            text = text[: MAX_MESSAGE - 1] + "…"
        return text

    def http_error(self, reply: httpx.Response, label: str) -> ProviderError:
        status = reply.status_code
        message = self.clean(self.server_message(reply)) or reply.reason_phrase
        code, retryable = self.classify(status, message, reply)
        return ProviderError(
            f"{label}: HTTP {status}: {message}", code=code, retryable=retryable, status=status,
            retry_after=self.retry_after(reply) if retryable else None,
        )


def to_int(value: Any) -> int:
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0


def server_message(reply: httpx.Response) -> str:
    """The server's own error text: ``{"error": {"message"}}`` (OpenAI, Anthropic,
    Gemini), vLLM ``{"message"}``, Ollama ``{"error": "..."}``, else the body's start."""
    try:
        data = reply.json()
    except ValueError:
        return reply.text[:MAX_MESSAGE]
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
    return reply.text[:MAX_MESSAGE]


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


def positive_seconds(raw: str | None, default: float, what: str) -> float:
    """Parse a timeout setting; a bad one is a one-line :class:`UsageError`."""
    import math

    from synthhost.errors import UsageError

    text = raw if raw not in (None, "") else str(default)
    try:
        value = float(text)
        if not math.isfinite(value) or value <= 0:
            raise ValueError
    except ValueError:
        raise UsageError(f"{what}: expected a positive number of seconds, got {text!r}") from None
    return value


def check_base_url(url: str, what: str) -> str:
    from synthhost.errors import UsageError

    if not url.startswith(("http://", "https://")):
        raise UsageError(f"{what}: expected an http:// or https:// URL, got {url!r}")
    return url
