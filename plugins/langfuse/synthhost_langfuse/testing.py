"""A loopback Langfuse OTLP receiver for tests (and for trying the plugin offline).

``LangfuseReceiver`` is a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 (an ephemeral
port, or a given one to bring a "down" endpoint back) that accepts ``POST
/api/public/otel/v1/traces``, gunzips, decodes the ``ExportTraceServiceRequest``
protobuf and keeps every span with its resource, scope and attributes. It can answer
scripted statuses (``fail_next(503, 2)``, ``mode = 503``) and be slow (``delay_s``).
``GET /api/public/projects`` (the SDK's ``auth_check``) answers the key pair's project:
any Basic-auth pair is accepted unless ``secret_keys`` names the accepted secrets::

    with LangfuseReceiver() as rx:
        env = {"LANGFUSE_BASE_URL": rx.url, **rx.keys()}
        ...
        rx.wait_for(lambda: rx.trace_ids() >= {trace_id})
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PATH = "/api/public/otel/v1/traces"


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    attributes: dict[str, Any]
    scope: str
    scope_attributes: dict[str, Any]
    resource: dict[str, Any]
    events: list[str] = field(default_factory=list)

    @property
    def type(self) -> str | None:
        value = self.attributes.get("langfuse.observation.type")
        return None if value is None else str(value)

    def json(self, key: str) -> Any:
        """A JSON-encoded attribute (input, output, usage_details, cost_details...)."""
        raw = self.attributes.get(key)
        return None if raw is None else json.loads(raw)


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    raw_bytes: int
    status: int
    spans: list[ReceivedSpan]


class LangfuseReceiver:
    def __init__(self, *, status: int = 200, port: int = 0) -> None:
        self.mode = status  # the answer when nothing is scripted
        self.delay_s = 0.0
        self.secret_keys: set[str] | None = None  # None: any key pair is accepted
        self.requests: list[ReceivedRequest] = []  # every request, accepted or not
        self._script: list[int] = []
        self._lock = threading.RLock()  # predicates read state while wait_for holds it
        self._cond = threading.Condition(self._lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver._handle(self, body)

            def do_GET(self) -> None:
                receiver._projects(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    # -- control ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def keys() -> dict[str, str]:
        """A fresh key pair: the SDK keys its clients by public key."""
        tag = uuid.uuid4().hex[:12]
        return {"LANGFUSE_PUBLIC_KEY": f"pk-lf-{tag}", "LANGFUSE_SECRET_KEY": f"sk-lf-{tag}"}

    def fail_next(self, status: int, times: int = 1) -> None:
        with self._lock:
            self._script.extend([status] * times)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LangfuseReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what arrived -----------------------------------------------------------------

    @property
    def accepted(self) -> list[ReceivedRequest]:
        with self._lock:
            return [r for r in self.requests if r.status == 200]

    def spans(self) -> list[ReceivedSpan]:
        """Spans of accepted requests, in arrival order (re-sends appear again)."""
        return [s for r in self.accepted for s in r.spans]

    def trace_ids(self) -> set[str]:
        return {s.trace_id for s in self.spans()}

    def trace(self, trace_id: str) -> dict[str, ReceivedSpan]:
        """The latest version of each span of one trace, by span id."""
        return {s.span_id: s for s in self.spans() if s.trace_id == trace_id}

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    # -- the handler ------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            status = self._script.pop(0) if self._script else self.mode
        headers = {k.lower(): v for k, v in handler.headers.items()}
        spans: list[ReceivedSpan] = []
        if handler.path == PATH and status == 200:
            raw = gzip.decompress(body) if headers.get("content-encoding") == "gzip" else body
            request = ExportTraceServiceRequest()
            request.ParseFromString(raw)
            spans = _decode(request)
        elif handler.path != PATH:
            status = 404
        with self._cond:
            self.requests.append(ReceivedRequest(handler.path, headers, len(body), status, spans))
            self._cond.notify_all()
        payload = ExportTraceServiceResponse().SerializeToString() if status == 200 else b"{}"
        handler.send_response(status)
        handler.send_header("Content-Type", "application/x-protobuf" if status == 200 else "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


    def _projects(self, handler: BaseHTTPRequestHandler) -> None:
        """Langfuse's ``GET /api/public/projects``: the project of the Basic-auth keys."""
        auth = handler.headers.get("Authorization") or ""
        try:
            public, _, secret = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
        except ValueError:
            public = secret = ""
        payload: dict[str, Any]
        if handler.path.split("?")[0] != "/api/public/projects":
            status, payload = 404, {"message": "Not found"}
        elif not (auth.startswith("Basic ") and public and secret) or (
                self.secret_keys is not None and secret not in self.secret_keys):
            status, payload = 401, {"message": "Invalid credentials. Confirm that you've configured the correct host."}
        else:
            status, payload = 200, {"data": [{"id": f"project-{public}", "name": "loopback", "metadata": {},
                                              "organization": {"id": "org-1", "name": "loopback"}}]}
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._cond:
            self.requests.append(ReceivedRequest(handler.path, headers, 0, status, []))
            self._cond.notify_all()
        body = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


def _decode(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    out: list[ReceivedSpan] = []
    for rs in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            scope_attrs = {kv.key: _value(kv.value) for kv in ss.scope.attributes}
            for span in ss.spans:
                out.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        status_code=span.status.code,
                        status_message=span.status.message,
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                        scope=ss.scope.name,
                        scope_attributes=scope_attrs,
                        resource=resource,
                        events=[e.name for e in span.events],
                    )
                )
    return out
