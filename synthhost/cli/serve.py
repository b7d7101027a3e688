"""``synthhost serve``: the gateway (OpenAI-compatible API, health, metrics) on uvicorn."""

from __future__ import annotations

import math
import os
import shutil
import signal
import tempfile
from typing import Any

import click


@click.command("serve")
@click.option("--host", "bind_host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to bind.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Worker processes (one host each).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--no-access-log", is_flag=True, help="Do not log each request.")
def serve_command(bind_host: str, port: int, workers: int, log_level: str, no_access_log: bool) -> None:
    """Serve the host over HTTP: POST /v1/chat/completions, GET /v1/models,
    /healthz, /readyz, /metrics.

    \b
    Clients authenticate with keys from `synthhost keys create`.
    SIGTERM or Ctrl-C: stop accepting, finish requests in flight (within
    SYNTHHOST_SHUTDOWN_TIMEOUT), flush the writer, exit 0.
    """
    import uvicorn

    from synthhost.host import Host
    from synthhost.settings import Settings

    settings = Settings.from_env(os.environ)
    if settings.auto_migrate:
        # Once, here, rather than racing in every worker.
        host = Host(settings, load_entrypoints=True)
        try:
            host.migrate()
        finally:
            host.engine.dispose()
        os.environ["SYNTHHOST_AUTO_MIGRATE"] = "0"
    made_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Counters summed over workers; set before any worker imports prometheus_client.
        made_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="synthhost-metrics-")

    received: list[int] = []

    def remember(signum: int, frame: Any) -> None:
        # uvicorn re-raises the signal it handled once it has shut down gracefully;
        # taking it here makes a requested stop exit 0 instead of dying by the signal.
        received.append(signum)

    previous = {sig: signal.signal(sig, remember) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.run(
            "synthhost.gateway.app:app_from_env", factory=True, host=bind_host, port=port, workers=workers,
            log_level=log_level, access_log=not no_access_log, server_header=False,
            # Whole seconds for uvicorn: round up, so a bound never becomes "no bound".
            timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_timeout_s)), lifespan="on",
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if made_dir is not None:
            shutil.rmtree(made_dir, ignore_errors=True)
