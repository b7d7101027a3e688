"""``synthhost check``'s RudderStack item against the loopback data plane: skipped
without a write key, a real test event accepted, a refused key and a closed port fail;
the write key never appears in what the check prints."""

from __future__ import annotations

from typing import Any

import anyio

import synthhost_rudderstack
from synthhost.checks import run_checks


def item(host: Any) -> Any:
    return {o.name: o for o in anyio.run(run_checks, host, 4)}["rudderstack"]


def test_rudderstack_check(make_host: Any, receiver: Any, rudder_env: Any, write_key: str,
                           auth_header: str) -> None:
    assert item(make_host(synthhost_rudderstack)).status == "skip"
    host = make_host(synthhost_rudderstack, env=rudder_env())
    ok = item(host)
    assert ok.status == "pass", ok
    [arrival] = receiver.accepted()
    assert arrival.headers["Authorization"] == auth_header
    [message] = arrival.body["batch"]
    assert message["event"] == "synthhost_check" and message["messageId"] in ok.detail
    receiver.answer = lambda arrival: 401
    refused = item(host)
    assert refused.status == "fail" and "HTTP 401" in refused.detail and "RUDDERSTACK_WRITE_KEY" in refused.fix
    receiver.stop()
    down = item(host)
    assert down.status == "fail" and "Connection refused" in down.detail
    assert "RUDDERSTACK_DATA_PLANE_URL" in down.fix
    assert all(write_key not in f"{o.detail} {o.fix}" for o in (ok, refused, down))
    bad = item(make_host(synthhost_rudderstack, env=rudder_env(RUDDERSTACK_BATCH_SIZE="0")))
    assert bad.status == "fail" and bad.detail == "RUDDERSTACK_BATCH_SIZE must be >= 1, got 0"
