"""HTTP request templates as tools, against a loopback server: URL placeholders and
query, JSON body, headers from the environment (never on spans), the response cap,
HTTP errors as tool results, redirects not followed off the allow-list."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from synthhost.agent import parse_agent

pytestmark = pytest.mark.anyio
TOKEN = "tok-HTTP-SECRET-0123456789"


class Ticketing:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                outer.seen.append((self.command, self.path, self.headers.get("Authorization"), body))
                if self.path.startswith("/big"):
                    status, data = 200, b"x" * 5000
                elif self.path.startswith("/broken"):
                    status, data = 503, b'{"error": "maintenance"}'
                elif self.path.startswith("/moved"):
                    self.send_response(302)
                    self.send_header("Location", "http://elsewhere.example/")
                    self.end_headers()
                    return
                else:
                    status, data = 200, json.dumps({"path": self.path, "body": body}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def ticketing() -> Iterator[Ticketing]:
    fake = Ticketing()
    threading.Thread(target=fake.server.serve_forever, daemon=True).start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def spec_for(base: str, calls: list[dict[str, Any]]) -> Any:
    tools = [
        {"name": "ticket", "description": "Look a ticket up.",
         "http": {"url": base + "/tickets/{id}", "allow_hosts": ["127.0.0.1"],
                  "headers": {"Authorization": "Bearer ${ACME_TICKETS_TOKEN}"}}},
        {"name": "comment", "parameters": {"type": "object", "properties": {"id": {"type": "string"},
                                                                            "text": {"type": "string"}},
                                           "required": ["id", "text"]},
         "http": {"method": "POST", "url": base + "/tickets/{id}/comments", "allow_hosts": ["127.0.0.1"]}},
        {"name": "big", "http": {"url": base + "/big", "allow_hosts": ["127.0.0.1"], "max_bytes": 1000}},
        {"name": "broken", "http": {"url": base + "/broken", "allow_hosts": ["127.0.0.1"]}},
        {"name": "moved", "http": {"url": base + "/moved", "allow_hosts": ["127.0.0.1"]}},
    ]
    return parse_agent(json.dumps({"name": "http-agent", "model": "echo/m", "params": {"echo_tool_calls": [calls]},
                                   "tools": tools, "steps": [{"name": "s", "prompt": "go"}]}))


async def test_http_tools_fill_the_template_and_send_env_headers(make_host: Any, ticketing: Ticketing) -> None:
    calls = [{"name": "ticket", "arguments": {"id": "T 1/2"}},
             {"name": "comment", "arguments": {"id": "T-9", "text": "done"}}]
    async with make_host(env={"ACME_TICKETS_TOKEN": TOKEN}) as host:
        result = await host.run(spec_for(ticketing.base, calls), workspace="acme")
        tool_requests = [r for r in host.provider("echo").calls][1].messages[-2:]
    assert result.status == "ok", result.error_message
    by_path = {path: (method, auth, body) for method, path, auth, body in ticketing.seen}
    assert by_path["/tickets/T%201%2F2"] == ("GET", f"Bearer {TOKEN}", None)
    assert by_path["/tickets/T-9/comments"] == ("POST", None, {"text": "done"})
    assert json.loads(tool_requests[0]["content"])["path"] == "/tickets/T%201%2F2"
    assert TOKEN not in json.dumps(_tool_span_attributes(host, result.run_id))


def _tool_span_attributes(host: Any, run_id: str) -> list[Any]:
    from sqlmodel import Session, select

    from synthhost.storage.models import Span

    with Session(host.engine) as session:
        return [s.attributes for s in session.exec(select(Span).where(Span.run_id == run_id))]


async def test_http_failures_are_tool_results(make_host: Any, ticketing: Ticketing) -> None:
    calls: list[dict[str, Any]] = [{"name": "big"}, {"name": "broken"}, {"name": "moved"},
                                   {"name": "comment", "arguments": {"id": "1"}}]
    async with make_host(env={"ACME_TICKETS_TOKEN": TOKEN}) as host:
        result = await host.run(spec_for(ticketing.base, calls), workspace="acme")
        results = [m["content"] for m in host.provider("echo").calls[1].messages[-4:]]
    assert result.status == "ok"
    assert results[0] == "response larger than max_bytes=1000"
    assert results[1] == 'HTTP 503: {"error": "maintenance"}'
    assert results[2].startswith("HTTP 302")  # not followed: a redirect could leave the allow-list
    assert results[3] == "invalid arguments: arguments: 'text' is a required property"
    assert not any(path.startswith("/tickets/1") for _, path, _, _ in ticketing.seen)


async def test_a_missing_header_variable_fails_the_step_naming_it(make_host: Any, ticketing: Ticketing) -> None:
    async with make_host(env={"ACME_TICKETS_TOKEN": ""}) as host:
        host.settings.env.pop("ACME_TICKETS_TOKEN", None)
        result = await host.run(spec_for(ticketing.base, []), workspace="acme")
    assert result.error_code == "INVALID_AGENT"
    assert result.error_message == "tool 'ticket': header 'Authorization' names ${ACME_TICKETS_TOKEN}, which is not set"
