"""``synthhost check``'s Langfuse item against the loopback receiver: skipped without
keys; keys accepted and a test trace delivered; refused keys, a refused trace and a
closed port fail; the secret key never appears in what the check prints."""

from __future__ import annotations

from typing import Any

import anyio

import synthhost_langfuse
from synthhost.checks import run_checks


def item(host: Any) -> Any:
    return {o.name: o for o in anyio.run(run_checks, host, 2)}["langfuse"]


def test_langfuse_check(make_host: Any, receiver: Any, langfuse_env: dict[str, str], dead_url: str) -> None:
    assert item(make_host(synthhost_langfuse)).status == "skip"
    host = make_host(synthhost_langfuse, env=langfuse_env)
    ok = item(host)
    assert ok.status == "pass", ok
    auth = [r for r in receiver.requests if r.path == "/api/public/projects"]
    assert len(auth) == 1 and auth[0].headers["authorization"].startswith("Basic ")
    [span] = receiver.spans()
    assert span.name == "synthhost check" and span.trace_id in ok.detail

    receiver.secret_keys = {"sk-lf-some-other-project"}
    refused = item(host)
    assert refused.status == "fail" and "keys not accepted (HTTP 401)" in refused.detail
    assert "LANGFUSE_SECRET_KEY" in refused.fix

    receiver.secret_keys = None
    receiver.mode = 400  # keys fine, the trace refused
    undelivered = item(host)
    assert undelivered.status == "fail" and "test trace not delivered" in undelivered.detail

    down = item(make_host(synthhost_langfuse, env={**langfuse_env, "LANGFUSE_BASE_URL": dead_url}))
    assert down.status == "fail" and "keys not accepted" in down.detail and "LANGFUSE_HOST" in down.fix
    secret = langfuse_env["LANGFUSE_SECRET_KEY"]
    assert all(secret not in f"{o.detail} {o.fix}" for o in (ok, refused, undelivered, down))
