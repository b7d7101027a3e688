"""What the real SDK puts on the wire, decoded by a loopback /v1/batch receiver."""

from __future__ import annotations

import logging
import time
from datetime import datetime

import anyio
import pytest

import synthhost_rudderstack
from synthhost.errors import UsageError
from synthhost.outbox import queue_stats
from synthhost_rudderstack.exporter import Config

pytestmark = pytest.mark.anyio


async def until(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.02)


async def test_batches_carry_track_messages_keyed_by_event_id(make_host, receiver, rudder_env, auth_header):
    host = make_host(synthhost_rudderstack, env=rudder_env(RUDDERSTACK_BATCH_SIZE="4"))
    async with host:
        with_user = host.emit("llm_cost_logged", workspace="ws-1", user="user-1", org="org-1",
                              run_id="r" * 32, trace_id="t" * 32, span_id="s" * 16, latency_ms=42.0,
                              model="gpt-4o-mini", cost_usd="0.000150")
        anonymous = [host.emit("run_finished", workspace="ws-2", status="error", tokens=i)
                     for i in range(6)]
        await until(lambda: len(receiver.messages()) == 7, what="7 messages")
        host.wait_for_events()
        await until(lambda: queue_stats(host.engine)["rudderstack"]["delivered"] == 7, what="delivered")

    arrivals = receiver.accepted()
    assert all(a.path == "/v1/batch" for a in arrivals)
    assert all(len(a.body["batch"]) <= 4 for a in arrivals)  # RUDDERSTACK_BATCH_SIZE
    assert len(arrivals) >= 2
    for a in arrivals:
        assert a.headers["Authorization"] == auth_header  # Basic base64("<write key>:")
        assert a.headers["Content-Encoding"] == "gzip"
        assert a.headers["Content-Type"] == "application/json"
        assert a.headers["User-Agent"].startswith("analytics-python/")
        assert "sentAt" in a.body

    by_id = {m["messageId"]: m for m in receiver.messages()}
    assert set(by_id) == {with_user, *anonymous}
    m = by_id[with_user]
    assert m["type"] == "track" and m["event"] == "llm_cost_logged"
    assert m["userId"] == "user-1" and m.get("anonymousId") is None
    assert m["properties"] == {
        "model": "gpt-4o-mini", "cost_usd": "0.000150", "event_id": with_user,
        "workspace_id": "ws-1", "org_id": "org-1", "user_id": "user-1", "status": "success",
        "latency_ms": 42.0, "trace_id": "t" * 32, "run_id": "r" * 32, "span_id": "s" * 16,
    }
    assert m["context"]["groupId"] == "ws-1"
    assert m["context"]["traits"] == {"workspaceId": "ws-1", "organizationId": "org-1"}
    assert m["context"]["library"]["name"] == "analytics-python"
    assert m["integrations"] == {"All": True} and m["channel"] == "server"
    assert datetime.fromisoformat(m["timestamp"]).tzinfo is not None

    a = by_id[anonymous[3]]
    assert a["event"] == "run_finished" and a["anonymousId"] == "ws-2" and a.get("userId") is None
    assert a["properties"]["tokens"] == 3 and a["properties"]["status"] == "error"
    assert a["context"]["traits"] == {"workspaceId": "ws-2"}


async def test_the_timestamp_is_the_event_time(make_host, receiver, rudder_env):
    host = make_host(synthhost_rudderstack, env=rudder_env())
    async with host:
        event_id = host.emit("e", workspace="w")
        await until(lambda: len(receiver.messages()) == 1, what="one message")
        host.wait_for_events()
        with host.engine.connect() as conn:
            created = conn.exec_driver_sql(
                f"SELECT created_at FROM event_logs WHERE id = '{event_id}'"
            ).scalar()
    sent = datetime.fromisoformat(receiver.messages()[0]["timestamp"])
    stored = created if isinstance(created, datetime) else datetime.fromisoformat(str(created))
    assert sent.replace(tzinfo=None) == stored.replace(tzinfo=None)


async def test_a_workspace_can_switch_forwarding_off(make_host, receiver, rudder_env):
    host = make_host(synthhost_rudderstack, env=rudder_env())
    async with host:
        host.flags.set("disable_rudderstack_export", True, workspace="private")
        kept = host.emit("e", workspace="public")
        host.emit("e", workspace="private")
        await until(lambda: len(receiver.messages()) == 1, what="one message")
        host.wait_for_events()
        assert host.count("event_logs") == 2
        assert host.count("outbox") == 1
    assert list(receiver.message_ids()) == [kept]


async def test_without_a_write_key_nothing_is_queued(make_host, receiver):
    host = make_host(synthhost_rudderstack, env={"RUDDERSTACK_WRITE_KEY": ""})
    async with host:
        host.emit("e", workspace="w")
        host.wait_for_events()
        assert host.count("outbox") == 0
        ok, detail = synthhost_rudderstack._health(host)
        assert ok and "not configured" in detail
    assert receiver.arrivals == []


def test_configuration_defaults_and_validation(write_key):
    config = Config.from_env({"RUDDERSTACK_WRITE_KEY": write_key})
    assert config is not None
    assert (config.max_retries, config.retry_delay_ms, config.batch_size, config.flush_interval_ms,
            config.concurrency) == (3, 1000, 100, 10000, 4)
    assert config.data_plane_url == "https://hosted.rudderlabs.com"
    assert write_key not in repr(config)
    assert Config.from_env({}) is None
    with pytest.raises(UsageError, match="RUDDERSTACK_BATCH_SIZE must be >= 1"):
        Config.from_env({"RUDDERSTACK_WRITE_KEY": "k", "RUDDERSTACK_BATCH_SIZE": "0"})
    with pytest.raises(UsageError, match="RUDDERSTACK_RETRY_DELAY must be an integer"):
        Config.from_env({"RUDDERSTACK_WRITE_KEY": "k", "RUDDERSTACK_RETRY_DELAY": "1s"})


def test_settings_map_onto_the_outbox(write_key):
    exporter = synthhost_rudderstack.RudderStackExporter(Config.from_env({
        "RUDDERSTACK_WRITE_KEY": write_key, "RUDDERSTACK_DATA_PLANE_URL": "http://127.0.0.1:9/",
    }))
    assert exporter.batch_size == 100 and exporter.flush_interval_s == 10.0 and exporter.concurrency == 4
    assert exporter.retry_delay_s == 1.0 and exporter.max_retry_delay_s == 8.0  # 1 s * 2**3
    assert exporter.max_attempts is None  # an outage never drops events
    assert write_key not in repr(exporter)


async def test_the_write_key_never_reaches_logs_or_errors(make_host, receiver, rudder_env, write_key,
                                                          caplog):
    caplog.set_level(logging.DEBUG)
    receiver.answer = lambda arrival: 401
    host = make_host(synthhost_rudderstack, env=rudder_env())
    async with host:
        host.emit("e", workspace="w")
        await until(lambda: queue_stats(host.engine, ["rudderstack"])["rudderstack"]["parked"] == 1,
                    what="parked")
        stats = queue_stats(host.engine)["rudderstack"]
    assert "401" in stats["last_error"]
    assert write_key not in caplog.text
    assert write_key not in str(stats)
