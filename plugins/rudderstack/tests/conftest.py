"""A loopback RudderStack data plane: ``POST /v1/batch`` (gzip or plain JSON), recording
what arrived; the answer is decided per request by ``receiver.answer``."""

from __future__ import annotations

import base64
import gzip
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

WRITE_KEY = "WRITEKEY-s3cr3t-123"


@dataclass
class Arrival:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int


class Receiver:
    def __init__(self) -> None:
        self.arrivals: list[Arrival] = []
        self.lock = threading.Lock()
        self.answer: Callable[[Arrival], int] = lambda arrival: 200
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                arrival = Arrival(self.path, dict(self.headers.items()), json.loads(raw), 0)
                status = receiver.answer(arrival) if self.path == "/v1/batch" else 404
                arrival.status = status
                with receiver.lock:
                    receiver.arrivals.append(arrival)
                text = b"OK" if status == 200 else b"Request failed"  # the data plane answers text
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the port: connections are refused until ``start()`` (same port)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- what arrived ------------------------------------------------------------------

    def accepted(self) -> list[Arrival]:
        with self.lock:
            return [a for a in self.arrivals if a.status == 200]

    def messages(self) -> list[dict[str, Any]]:
        """Messages of accepted batches, in arrival order."""
        return [m for a in self.accepted() for m in a.body["batch"]]

    def message_ids(self) -> Counter[str]:
        return Counter(m["messageId"] for m in self.messages())


def basic_auth(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def write_key() -> str:
    return WRITE_KEY


@pytest.fixture
def rudder_env(receiver: Receiver) -> Callable[..., dict[str, str]]:
    """The plugin's variables pointing at the receiver, fast retries, no batch wait."""

    def make(**extra: str) -> dict[str, str]:
        env = {
            "RUDDERSTACK_WRITE_KEY": WRITE_KEY,
            "RUDDERSTACK_DATA_PLANE_URL": receiver.url,
            "RUDDERSTACK_FLUSH_INTERVAL": "0",
            "RUDDERSTACK_RETRY_DELAY": "50",
            "RUDDERSTACK_MAX_RETRIES": "2",
        }
        env.update(extra)
        return env

    return make


@pytest.fixture
def auth_header() -> str:
    return basic_auth(WRITE_KEY)
