"""Fixtures for the routing plugin's tests.

- ``Upstreams``: ``anthropic`` and ``google`` providers that answer like the echo provider
  (and record the requests they receive), so a provider switch is observable offline.
- ``FastRetry``: zero backoff for the default recovery (no sleeping in tests).
- ``gateway``: a loopback fake of the Arch gateway / Plano model listener (stdlib
  ``ThreadingHTTPServer`` on 127.0.0.1, ephemeral port) speaking the wire protocol the
  real one does: ``POST /v1/chat/completions`` (resolves ``model_aliases`` from a plano
  config, honours ``x-arch-llm-provider-hint``, answers with the resolved upstream
  ``model``), ``GET /v1/models``, ``GET /healthz``. It records every request (method,
  path, headers, JSON body) and can answer scripted error statuses.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa

import synthhost_routing
from synthhost import Host, hookimpl
from synthhost.call import Call
from synthhost.providers.echo import EchoProvider
from synthhost.registry import RegisterGate, RegisterProvider

PLANO_CONFIG: dict[str, Any] = {
    "version": "v0.1.0",
    "listeners": {"egress_traffic": {"address": "0.0.0.0", "port": 12000, "message_format": "openai"}},
    "model_providers": [
        {"model": "openai/gpt-4o", "access_key": "$OPENAI_API_KEY", "default": True},
        {"model": "openai/gpt-4o-mini", "access_key": "$OPENAI_API_KEY"},
        {"model": "openai/gpt-4", "access_key": "$OPENAI_API_KEY"},
        {"model": "anthropic/claude-3-5-sonnet-latest", "access_key": "$ANTHROPIC_API_KEY"},
        {"name": "ministral-3b", "model": "mistral/ministral-3b-latest", "access_key": "$MISTRAL_API_KEY"},
    ],
    "model_aliases": {"fast": {"target": "openai/gpt-4o-mini"}, "smart": {"target": "openai/gpt-4o"}},
}
# What the upstream reports as its model id (the gateway passes it through).
UPSTREAM_IDS = {"openai/gpt-4o": "gpt-4o-2024-08-06", "openai/gpt-4o-mini": "gpt-4o-mini-2024-07-18"}


class Upstreams:
    __name__ = "upstreams"

    @hookimpl
    def register_providers(self, register: RegisterProvider) -> None:
        register("anthropic", lambda host: EchoProvider())
        register("google", lambda host: EchoProvider())


class FastRetry:
    __name__ = "fast_retry"

    @hookimpl
    def register_gate(self, register: RegisterGate) -> None:
        register(None, order={"pre_call": 1})

    @hookimpl
    def pre_call(self, call: Call) -> None:
        call.retry_initial_delay_s = 0.0
        call.retry_max_delay_s = 0.0


class FakeGateway:
    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = config or PLANO_CONFIG
        self.requests: list[dict[str, Any]] = []
        self.failures: deque[int] = deque()
        providers = self.config["model_providers"]
        self.by_name = {p.get("name") or p["model"]: p for p in providers}
        self.by_model = {p["model"]: p for p in providers}
        self.default = next((p for p in providers if p.get("default")), providers[0])
        self.aliases = {k: v["target"] for k, v in self.config.get("model_aliases", {}).items()}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def fail_next(self, status: int, times: int = 1) -> None:
        self.failures.extend([status] * times)

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == "/v1/chat/completions"]

    def resolve(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        hint = headers.get("x-arch-llm-provider-hint")
        if hint:
            provider = self.by_name.get(hint)
            if provider is None:
                return 400, {"error": {"message": f"unknown provider hint {hint!r}"}}
        else:
            model = body.get("model")
            if model in (None, "", "none"):
                provider = self.default
            else:
                target = self.aliases.get(model, model)
                provider = self.by_name.get(target) or self.by_model.get(target)
                if provider is None:
                    return 400, {"error": {"message": f"model {model!r} is not configured"}}
        upstream = provider["model"]
        messages = body.get("messages") or []
        prompt = " ".join(str(m.get("content", "")) for m in messages)
        return 200, {
            "id": f"chatcmpl-fake-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": UPSTREAM_IDS.get(upstream, upstream.partition("/")[2]),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"[{upstream}] ok"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": max(len(prompt) // 4, 1), "completion_tokens": 2, "total_tokens": 0},
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        gw = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self, body: Any) -> dict[str, str]:
                headers = {k.lower(): v for k, v in self.headers.items()}
                gw.requests.append({"method": self.command, "path": self.path, "headers": headers, "body": body})
                return headers

            def do_GET(self) -> None:
                self._record(None)
                if self.path == "/healthz":
                    self._send(200, b"OK", "text/plain")
                elif self.path == "/v1/models":
                    data = [
                        {"id": p["model"], "object": "model", "owned_by": p["model"].partition("/")[0]}
                        for p in gw.config["model_providers"]
                    ]
                    self._send(200, {"object": "list", "data": data})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = None
                headers = self._record(body)
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                elif not isinstance(body, dict):
                    self._send(400, {"error": {"message": "invalid JSON"}})
                elif gw.failures:
                    status = gw.failures.popleft()
                    self._send(status, {"error": {"message": f"upstream failed with {status}"}})
                else:
                    self._send(*gw.resolve(body, headers))

        return Handler

    def __enter__(self) -> FakeGateway:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    with FakeGateway() as gw:
        yield gw


@pytest.fixture
def fake_gateway() -> type[FakeGateway]:
    """The class, for tests that need more than one gateway (``with fake_gateway() as gw``)."""
    return FakeGateway


@pytest.fixture
def fast_retry() -> FastRetry:
    return FastRetry()


@pytest.fixture
def closed_url() -> str:
    """A URL nothing listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class RoutingKit:
    def __init__(self, make_host: Callable[..., Host]) -> None:
        self._make_host = make_host

    def host(self, *plugins: Any, env: dict[str, str] | None = None) -> Host:
        return self._make_host(synthhost_routing, Upstreams(), FastRetry(), *plugins, env=env)

    @staticmethod
    def enable(host: Host, workspace: str | None = "w1") -> None:
        host.flags.set(synthhost_routing.FLAG, True, workspace=workspace)

    @staticmethod
    async def events(host: Host, event_type: str) -> list[dict[str, Any]]:
        await host.writer.flush()
        table = sa.table(
            "event_logs",
            sa.column("event_type"),
            sa.column("workspace_id"),
            sa.column("status"),
            sa.column("context", sa.JSON),
            sa.column("created_at"),
        )
        query = sa.select(table).where(table.c.event_type == event_type).order_by(table.c.created_at)
        with host.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    @staticmethod
    async def spans(host: Host) -> list[dict[str, Any]]:
        await host.writer.flush()
        table = sa.table(
            "spans",
            sa.column("kind"),
            sa.column("status"),
            sa.column("error_code"),
            sa.column("attributes", sa.JSON),
            sa.column("started_at"),
        )
        query = sa.select(table).where(table.c.kind == "call").order_by(table.c.started_at)
        with host.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]


@pytest.fixture
def kit(make_host: Callable[..., Host]) -> RoutingKit:
    return RoutingKit(make_host)
