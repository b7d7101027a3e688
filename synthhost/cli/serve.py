"""``synthhost serve``: the gateway (OpenAI-compatible API, health, metrics) on uvicorn."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import shutil
import signal
import tempfile
import threading
from typing import Any

import click

from synthhost.cli import HostError

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


def _bind_address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """An IP address or a host name (checked here: uvicorn answers a malformed one with a
    traceback)."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value):
        raise click.BadParameter("expected an IP address (0.0.0.0, ::) or a host name")
    return value


@click.command("serve")
@click.option("--host", "bind_host", default="127.0.0.1", show_default=True, callback=_bind_address,
              help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to bind.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Worker processes (one host each).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--no-access-log", is_flag=True, help="Do not log each request.")
@click.option("--until", type=click.FloatRange(min=0, min_open=True, max=10 * 365 * 86400), metavar="SECONDS",
              help="Stop (gracefully) after SECONDS (default: run until SIGTERM or Ctrl-C).")
def serve_command(bind_host: str, port: int, workers: int, log_level: str, no_access_log: bool,
                  until: float | None) -> None:
    """Serve the host over HTTP: POST /v1/chat/completions, GET /v1/models,
    /v1/runs, /v1/traces, /v1/admin, /healthz, /readyz, /metrics.

    \b
    Clients authenticate with keys from `synthhost keys create`.
    SIGTERM or Ctrl-C: stop accepting, finish requests in flight (within
    SYNTHHOST_SHUTDOWN_TIMEOUT), flush the writer, exit 0.
    """
    import uvicorn

    from synthhost.host import Host
    from synthhost.settings import Settings

    settings = Settings.from_env(os.environ)
    saved = {name: os.environ.get(name) for name in ("SYNTHHOST_AUTO_MIGRATE", "PROMETHEUS_MULTIPROC_DIR",
                                                     "SYNTHHOST_GC_FREEZE")}
    # A serving process lives long: its start-up heap is kept out of the collector's scans.
    os.environ.setdefault("SYNTHHOST_GC_FREEZE", "1")
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
    config = uvicorn.Config(
        "synthhost.gateway.app:app_from_env", factory=True, host=bind_host, port=port, workers=workers,
        log_level=log_level, access_log=not no_access_log, server_header=False,
        # Whole seconds for uvicorn: round up, so a bound never becomes "no bound".
        timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_timeout_s)), lifespan="on",
    )
    timer: threading.Timer | None = None
    try:
        if workers == 1:
            server = uvicorn.Server(config)
            if until is not None:
                timer = threading.Timer(until, lambda: setattr(server, "should_exit", True))
                timer.daemon = True
                timer.start()
            try:
                server.run()
            except SystemExit:  # uvicorn's way out when it cannot bind: one line, exit 1
                server.started = False
            if not server.started and not received:
                raise HostError(f"could not start serving on {bind_host}:{port} (see the log above)")
        else:
            from uvicorn.supervisors import Multiprocess

            if until is not None:  # the supervisor stops its workers on SIGTERM
                timer = threading.Timer(until, lambda: os.kill(os.getpid(), signal.SIGTERM))
                timer.daemon = True
                timer.start()
            Multiprocess(config, sockets=[config.bind_socket()]).run()
    finally:
        if timer is not None:
            timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if made_dir is not None:
            shutil.rmtree(made_dir, ignore_errors=True)
        for name, value in saved.items():  # in-process callers (tests) get their env back
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
