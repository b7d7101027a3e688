"""A real ``synthhost serve`` app on a loopback socket, in a thread of the test process."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from synthhost.gateway import create_app
from synthhost.host import Host


@contextlib.contextmanager
def serving(host: Host) -> Iterator[str]:
    """Serve ``host`` on 127.0.0.1 (a free port); yields the base URL. Stopping runs the
    app's lifespan shutdown (the host stops, its writer is flushed)."""
    host.migrate()  # keys are created before the server starts
    app = create_app(host)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=run, name="test-uvicorn", daemon=True)
    thread.start()
    started = threading.Event()
    for _ in range(1000):  # the lifespan migrates and starts the host first
        if server.started or errors or not thread.is_alive():
            started.set()
            break
        started.wait(0.01)
    if not server.started:
        server.should_exit = True
        thread.join(10)
        raise RuntimeError(f"server did not start: {errors}")
    sockets: Any = server.servers[0].sockets
    port = sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
