"""The ASGI application of ``synthhost serve``: one :class:`~synthhost.Host` per process,
started and stopped in the app's lifespan.

``create_app(host)`` builds the app around a host (tests, embedding);
``app_from_env()`` is the factory uvicorn calls in each worker process.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from synthhost.gateway import chat, errors, health, metrics, traces_api
from synthhost.gateway.admin_api import Admin
from synthhost.gateway.console import console_routes
from synthhost.gateway.keys import KeyCache
from synthhost.gateway.plugin_api import InvalidBody
from synthhost.gateway.runs_api import Runs

if TYPE_CHECKING:
    from synthhost.host import Host

log = logging.getLogger("synthhost.gateway")

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
Endpoint = Callable[[Request], Awaitable[Response]]


class BodyTooLarge(Exception):
    pass


def _max_body(host: Host) -> int:
    raw = (host.settings.env.get("SYNTHHOST_MAX_BODY_BYTES") or "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MAX_BODY_BYTES


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes without reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(host: Host) -> Starlette:
    """The gateway app around ``host`` (started in the lifespan, stopped, and its writer
    flushed, at shutdown)."""
    host_metrics = metrics.attach(host)
    keys = KeyCache(host.engine, ttl_s=max(0.0, host.settings.flag_refresh_s))
    max_body = _max_body(host)

    def guarded(endpoint: Endpoint) -> Endpoint:
        """Never a traceback in a response; the log gets it, with secrets masked."""

        @functools.wraps(endpoint)
        async def wrapper(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await endpoint(request)
            except BodyTooLarge:
                response = errors.error_response(413, f"request body larger than {max_body} bytes "
                                                 "(SYNTHHOST_MAX_BODY_BYTES)", type="invalid_request_error",
                                                 code="request_too_large")
            except InvalidBody:
                response = errors.bad_request("the request body is not valid JSON", code="invalid_json")
            except Exception as exc:
                log.error("%s %s failed: %s", request.method, request.url.path,
                          host.redact("".join(traceback.format_exception(exc))))
                response = errors.internal_error()
            # The route's template, never the raw path: ids would make a series each.
            route = getattr(request.scope.get("route"), "path", "other")
            if isinstance(response, chat.ChatStream):  # observed at its first byte, with its real status
                method = request.method
                response.observe = lambda status: host_metrics.observe_http(
                    route, method, status, time.perf_counter() - started)
            else:
                host_metrics.observe_http(route, request.method, response.status_code, time.perf_counter() - started)
            return response

        return wrapper

    def authenticated(endpoint: Endpoint) -> Endpoint:
        async def wrapper(request: Request) -> Response:
            scheme, _, key = request.headers.get("authorization", "").partition(" ")
            key = key.strip()
            if scheme.lower() != "bearer" or not key:
                return errors.unauthorized()
            hit, info = keys.cached(key)
            if not hit:
                info = await anyio.to_thread.run_sync(keys.lookup, key)
            if info is None:
                return errors.unauthorized()
            request.state.key = info
            request.state.workspace = info.workspace
            request.state.role = info.role
            return await endpoint(request)

        return guarded(wrapper)

    async def json_body(request: Request) -> Any:
        raw = await read_body(request, max_body)
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            return _MALFORMED

    async def chat_completions(request: Request) -> Response:
        body = await json_body(request)
        if body is _MALFORMED:
            return errors.bad_request("the request body is not valid JSON", code="invalid_json")
        return await chat.chat_completions(host, request, body)

    async def models(request: Request) -> Response:
        return JSONResponse(chat.list_models(host))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready, detail = await health.readiness(host)
        return JSONResponse(detail, status_code=200 if ready else 503)

    async def metrics_endpoint(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        host_metrics.drain_hook_timings()  # on the loop's thread, where hook timers are written
        body = await anyio.to_thread.run_sync(metrics.exposition, host_metrics, host)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    runs = Runs(host)

    async def create_run(request: Request) -> Response:
        body = await json_body(request)
        if body is _MALFORMED:
            return errors.bad_request("the request body is not valid JSON", code="invalid_json")
        return await runs.create(request, body)

    admin = Admin(host)

    def with_body(handler: Callable[[Request, Any], Awaitable[Response]]) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            body = None
            if request.method in ("POST", "PUT"):
                body = await json_body(request)
                if body is _MALFORMED:
                    return errors.bad_request("the request body is not valid JSON", code="invalid_json")
            return await handler(request, body)

        return authenticated(endpoint)

    def bound(handler: Callable[[Host, Request], Awaitable[Response]]) -> Endpoint:
        return authenticated(functools.partial(handler, host))

    routes = [
        Route("/v1/chat/completions", authenticated(chat_completions), methods=["POST"]),
        Route("/v1/models", authenticated(models), methods=["GET"]),
        Route("/v1/runs", authenticated(create_run), methods=["POST"]),
        Route("/v1/runs/{run_id}", authenticated(runs.get), methods=["GET"]),
        Route("/v1/runs/{run_id}/events", authenticated(runs.events), methods=["GET"]),
        Route("/v1/runs/{run_id}/cancel", authenticated(runs.cancel), methods=["POST"]),
        Route("/v1/admin/flags", authenticated(admin.flags), methods=["GET"]),
        Route("/v1/admin/flags/{name}", with_body(admin.flag), methods=["PUT", "DELETE"]),
        Route("/v1/admin/queue", authenticated(admin.queue), methods=["GET"]),
        Route("/v1/admin/queue/retry-parked", with_body(admin.retry_parked), methods=["POST"]),
        Route("/v1/traces", bound(traces_api.list_traces), methods=["GET"]),
        Route("/v1/traces/{run_id}", bound(traces_api.get_trace), methods=["GET"]),
        Route("/v1/traces/{run_id}/export", bound(traces_api.export), methods=["GET"]),
        Route("/healthz", guarded(healthz), methods=["GET"]),
        Route("/readyz", guarded(readyz), methods=["GET"]),
        Route("/metrics", guarded(metrics_endpoint), methods=["GET"]),
    ]
    taken = {r.path for r in routes}
    for spec in host.registry.routes.values():
        if spec.path in taken or spec.path == "/ui" or spec.path.startswith("/ui/"):  # the console's
            from synthhost.registry import RegistrationError

            raise RegistrationError(f"plugin {spec.plugin!r}: route {spec.path!r} is the gateway's own")
        endpoint = authenticated(spec.endpoint) if spec.auth else guarded(spec.endpoint)
        routes.append(Route(spec.path, endpoint, methods=list(spec.methods), name=spec.name))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await host.start()
        try:
            async with anyio.create_task_group() as group:
                runs.group = group  # background runs (POST /v1/runs without wait)
                try:
                    yield
                finally:
                    runs.group = None
                    await runs.drain(host.settings.shutdown_timeout_s)
        finally:
            await host.stop()

    async def not_found(request: Request, exc: Exception) -> Response:
        return errors.not_found(f"no route {request.method} {request.url.path}"[:300])

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return errors.error_response(405, "method not allowed", type="invalid_request_error",
                                     code="method_not_allowed")

    app = Starlette(routes=[*routes, *console_routes(host, keys, guarded)], lifespan=lifespan,
                    exception_handlers={404: not_found, 405: method_not_allowed})
    app.state.host = host
    app.state.metrics = host_metrics
    app.state.max_body = max_body  # plugin routes read bodies through plugin_api.read_json
    return app


_MALFORMED = object()


def app_from_env() -> Starlette:
    """uvicorn's factory (``synthhost.gateway.app:app_from_env``): a host from this
    process's environment, plugins from entry points (the allow-list honoured)."""
    from synthhost.host import Host
    from synthhost.settings import Settings

    settings = Settings.from_env(os.environ)
    host = Host(settings, plugins=[metrics.MetricsPlugin(metrics.Metrics(settings.env))], load_entrypoints=True)
    return create_app(host)
