"""The ``archgw`` provider: the Arch gateway (now Plano) as an OpenAI-compatible endpoint.

It reuses the host's :class:`synthhost.providers.openai.OpenAIProvider` (same body,
error codes and usage parsing) pointed at the gateway's model listener, and adds per
request headers through its transport:

- ``x-arch-llm-provider-hint: <name>`` when the request pins a gateway provider:
  ``request.metadata["archgw.provider_hint"]`` (an explicit name), or
  ``request.metadata["archgw.pin_provider"]`` true (set by the routing decision) with a
  ``provider/model`` model name, which is then the hint (Plano names a model provider by
  its ``model`` string unless it has a ``name``);
- ``x-request-id`` (the call's span id) and ``traceparent`` (W3C, the call's trace and
  span), which the gateway propagates.

Environment (``host.settings.env``):

- ``ARCHGW_URL``: the model listener, default ``http://127.0.0.1:12000/v1``;
- ``ARCHGW_REGION_URLS``: ``region=url,...``, one gateway per region; a request with a
  region goes to that region's gateway, and a region with no gateway is refused
  (``PROVIDER_BAD_REQUEST``) rather than sent elsewhere;
- ``ARCHGW_API_KEY``: sent as a bearer token (provider keys normally live in the
  gateway); ``ARCHGW_TIMEOUT``: seconds, default 60.

The response's ``model`` is the upstream id the gateway resolved (``gpt-4o-2024-08-06``);
its ``provider`` is the upstream provider when the request named it, else ``archgw``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx

from synthhost.call import Call, Request, Response
from synthhost.errors import ErrorCode, ProviderError, UsageError
from synthhost.providers.openai import DEFAULT_TIMEOUT_S, OpenAIProvider
from synthhost_routing.catalog import GATEWAY_NAME
from synthhost_routing.catalog import PIN_KEY as PIN_KEY

if TYPE_CHECKING:
    from synthhost.host import Host

NAME = GATEWAY_NAME
DEFAULT_URL = "http://127.0.0.1:12000/v1"
HINT_HEADER = "x-arch-llm-provider-hint"
HINT_KEY = "archgw.provider_hint"

_headers: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("archgw_headers", default=None)


class _PerRequestHeaders(httpx.AsyncBaseTransport):
    """Adds the headers of the request being sent (a context variable set by
    :meth:`ArchGatewayProvider.complete` around the post, in the same task)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        extra = _headers.get()
        if extra:
            request.headers.update(extra)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def provider_hint(request: Request) -> str | None:
    explicit = request.metadata.get(HINT_KEY)
    if isinstance(explicit, str) and explicit:
        return explicit
    if request.metadata.get(PIN_KEY) and "/" in request.model:
        return request.model
    return None


def gateway_root(url: str) -> str:
    """``http://host:12000/v1`` → ``http://host:12000`` (where ``/healthz`` lives)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class ArchGatewayProvider:
    name = NAME

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        region_urls: Mapping[str, str] | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.region_urls = {k: v.rstrip("/") for k, v in (region_urls or {}).items()}
        self._api_key = api_key
        self.timeout = timeout
        self._clients: dict[str, OpenAIProvider] = {}

    def __repr__(self) -> str:  # never show the key
        return f"ArchGatewayProvider(base_url={self.base_url!r}, regions={sorted(self.region_urls)})"

    def url_for(self, region: str | None) -> str:
        if region is None or not self.region_urls:
            return self.base_url
        url = self.region_urls.get(region)
        if url is None:
            known = ", ".join(sorted(self.region_urls))
            raise ProviderError(
                f"{NAME}: no gateway for region {region!r} (ARCHGW_REGION_URLS has {known})",
                code=ErrorCode.PROVIDER_BAD_REQUEST,
                retryable=False,
            )
        return url

    def _client(self, url: str) -> OpenAIProvider:
        client = self._clients.get(url)
        if client is None:
            transport = _PerRequestHeaders(httpx.AsyncHTTPTransport())
            client = self._clients[url] = OpenAIProvider(url, self._api_key, self.timeout, transport)
        return client

    async def complete(self, request: Request, *, call: Call) -> Response:
        client = self._client(self.url_for(request.region))
        headers = {"x-request-id": call.span_id, "traceparent": f"00-{call.trace_id}-{call.span_id[:16]}-01"}
        hint = provider_hint(request)
        if hint:
            headers[HINT_HEADER] = hint
        token = _headers.set(headers)
        try:
            response = await client.complete(request, call=call)
        finally:
            _headers.reset(token)
        upstream = (hint or request.model).partition("/")
        if upstream[1] and upstream[0]:
            response.provider = upstream[0]
        return response

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


def _url(name: str, value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise UsageError(f"{name}: expected an http:// or https:// URL, got {value!r}")
    return value


def parse_region_urls(value: str) -> dict[str, str]:
    urls: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        region, sep, url = item.strip().partition("=")
        if not sep or not region.strip():
            raise UsageError(f"ARCHGW_REGION_URLS: expected region=url, got {item.strip()!r}")
        urls[region.strip()] = _url("ARCHGW_REGION_URLS", url.strip())
    return urls


def factory(host: Host) -> ArchGatewayProvider:
    env = host.settings.env
    raw_timeout = env.get("ARCHGW_TIMEOUT") or str(DEFAULT_TIMEOUT_S)
    try:
        timeout = float(raw_timeout)
        if timeout <= 0:
            raise ValueError
    except ValueError:
        raise UsageError(f"ARCHGW_TIMEOUT: expected a positive number of seconds, got {raw_timeout!r}") from None
    return ArchGatewayProvider(
        _url("ARCHGW_URL", env.get("ARCHGW_URL") or DEFAULT_URL),
        region_urls=parse_region_urls(env.get("ARCHGW_REGION_URLS") or ""),
        api_key=env.get("ARCHGW_API_KEY") or None,
        timeout=timeout,
    )


async def health(host: Host) -> tuple[bool, str]:
    """``GET /healthz`` on every configured gateway (and ``/v1/models`` for a model count).
    Not configured (no ``ARCHGW_URL`` nor ``ARCHGW_REGION_URLS``): healthy, and says so."""
    env = host.settings.env
    urls: list[str] = []
    if env.get("ARCHGW_URL"):
        urls.append(env["ARCHGW_URL"])
    try:
        urls.extend(parse_region_urls(env.get("ARCHGW_REGION_URLS") or "").values())
    except UsageError as exc:
        return False, exc.message
    if not urls:
        return True, "not configured (ARCHGW_URL unset)"
    parts: list[str] = []
    ok = True
    async with httpx.AsyncClient(timeout=3.0) as client:
        for url in dict.fromkeys(urls):
            root = gateway_root(url)
            shown = httpx.URL(root).copy_with(username=None, password=None)
            try:
                reply = await client.get(f"{root}/healthz")
                good = reply.status_code == 200
                detail = "ok" if good else f"HTTP {reply.status_code}"
                if good:
                    detail += _model_count(await client.get(f"{root}/v1/models"))
                parts.append(f"{shown} {detail}")
            except httpx.HTTPError as exc:
                good = False
                parts.append(f"{shown} unreachable ({type(exc).__name__})")
            ok = ok and good
    return ok, "; ".join(parts)


def _model_count(reply: httpx.Response) -> str:
    """`` (N models)`` from ``GET /v1/models``, or nothing (informational only)."""
    try:
        data = reply.json().get("data") if reply.status_code == 200 else None
    except (ValueError, AttributeError):
        return ""
    return f" ({len(data)} models)" if isinstance(data, list) else ""
