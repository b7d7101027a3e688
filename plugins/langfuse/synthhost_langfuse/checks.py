"""``synthhost check`` item of the Langfuse exporter: the keys are accepted (what the
SDK's ``auth_check`` does: its API client's authenticated ``GET /api/public/projects``)
and a test trace is delivered the way every trace is (OTLP over HTTP, waiting for
Langfuse's answer)."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from synthhost.checks import CheckResult, failed, passed, skipped
from synthhost.trace import SpanRecord, Trace
from synthhost_langfuse.config import load_config

if TYPE_CHECKING:
    from synthhost.host import Host
    from synthhost_langfuse.config import LangfuseConfig

KEYS_FIX = "check LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY (one project's pair) and LANGFUSE_HOST"


def test_trace() -> Trace:
    now = time.time()
    run_id, trace_id = uuid.uuid4().hex, uuid.uuid4().hex
    return Trace(run_id=run_id, trace_id=trace_id, workspace="synthhost-check", name="synthhost check",
                 started_at=now - 0.01, ended_at=now, status="ok",
                 spans=[SpanRecord(run_id, trace_id, run_id, "run", "synthhost check", now - 0.01, None, now, "ok")])


def auth_check(config: LangfuseConfig) -> list[str]:
    """The SDK's API client on an HTTP client we close (the SDK's own stays open)."""
    import httpx
    from langfuse.api.client import LangfuseAPI

    from synthhost_langfuse.sdk import sdk_version

    with httpx.Client(timeout=config.timeout_s) as http:
        api = LangfuseAPI(base_url=config.base_url, username=config.public_key, password=config.secret_key,
                          x_langfuse_sdk_name="python", x_langfuse_sdk_version=sdk_version(),
                          x_langfuse_public_key=config.public_key, httpx_client=http, timeout=config.timeout_s)
        return [p.name for p in api.projects.get().data]


def delivery(host: Host) -> CheckResult:
    from synthhost_langfuse.exporter import LangfuseExporter

    config, why = load_config(host.settings.env)
    if config is None:
        return skipped(f"{why}: traces are not exported", "set LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY and "
                                                          "LANGFUSE_HOST to export traces")
    try:
        projects = auth_check(config)
    except Exception as exc:
        status = getattr(exc, "status_code", None)
        text = f"HTTP {status}" if status else f"{type(exc).__name__}: {str(exc)[:120]}"
        fix = KEYS_FIX if status in (401, 403) else "check LANGFUSE_HOST and that Langfuse is up"
        return failed(f"{config.base_url}: keys not accepted ({text})", fix)
    if not projects:
        return failed(f"{config.base_url}: the keys see no project", KEYS_FIX)
    # An exporter of its own: the check must not share (or close) the host's SDK client.
    exporter = LangfuseExporter(host, config, name="langfuse-check")
    try:
        trace = test_trace()
        outcome = exporter.export_traces([trace], force=True)[trace.run_id]
        if not outcome.ok:
            return failed(f"{config.base_url}: keys accepted, test trace not delivered ({outcome.error})",
                          "check LANGFUSE_HOST and the Langfuse server's logs")
        return passed(f"{config.base_url}: keys accepted (project {projects[0]}), "
                      f"test trace {trace.trace_id} delivered")
    finally:
        exporter.close()
