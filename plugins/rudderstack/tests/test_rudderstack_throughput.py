"""How the outbox keeps up with RudderStack (issue 15): many events per ``/v1/batch``
request, several requests in flight at once, and batches in flight when a process dies
are delivered by another once their lease has passed. Real SDK transport, loopback
data plane; no timings asserted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa

import synthhost_rudderstack
from synthhost.outbox import IN_FLIGHT, OUTBOX, queue_stats

pytestmark = pytest.mark.anyio


async def until(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.02)


def stats(host) -> dict:
    return queue_stats(host.engine, ["rudderstack"])["rudderstack"]


async def queued(make_host, env: dict[str, str], n: int) -> list[str]:
    """``n`` events queued by a host that does not deliver (they wait, all due)."""
    async with make_host(synthhost_rudderstack, env={**env, "SYNTHHOST_DELIVERY": "off"}) as host:
        ids = [host.emit("llm_cost_logged", workspace=f"w{i % 3}", n=i) for i in range(n)]
        assert host.wait_for_events(30)
    return ids


async def test_defaults_send_a_hundred_events_per_request(make_host, receiver, rudder_env):
    env = rudder_env()
    ids = await queued(make_host, env, 250)
    async with make_host(synthhost_rudderstack, env=env) as host:
        await until(lambda: stats(host)["delivered"] == 250, what="250 delivered")
    sizes = sorted(len(a.body["batch"]) for a in receiver.accepted())
    assert sizes == [50, 100, 100]  # three requests, not 250 (nor 13 of RUDDERSTACK_BATCH_SIZE=20)
    assert set(receiver.message_ids()) == set(ids)


async def test_several_requests_are_in_flight_at_once(make_host, receiver, rudder_env):
    """The receiver holds each request until three are waiting together: it answers
    only because the lane has three batches in flight (RUDDERSTACK_CONCURRENCY=3)."""
    cond = threading.Condition()
    state = {"waiting": 0, "most": 0}

    def answer(arrival) -> int:
        with cond:
            state["waiting"] += 1
            state["most"] = max(state["most"], state["waiting"])
            cond.notify_all()
            cond.wait_for(lambda: state["most"] >= 3, timeout=20)
            state["waiting"] -= 1
        return 200

    receiver.answer = answer
    env = rudder_env(RUDDERSTACK_BATCH_SIZE="10", RUDDERSTACK_CONCURRENCY="3")
    ids = await queued(make_host, env, 90)
    async with make_host(synthhost_rudderstack, env=env) as host:
        await until(lambda: stats(host)["delivered"] == 90, what="90 delivered")
    assert state["most"] == 3  # never more than RUDDERSTACK_CONCURRENCY
    assert set(receiver.message_ids()) == set(ids) and all(len(a.body["batch"]) == 10 for a in receiver.arrivals)


def count(db_url: str, where: sa.ColumnElement[bool]) -> int:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(where)).scalar() or 0)
    finally:
        engine.dispose()


CHILD = textwrap.dedent("""
    import json, sys, anyio
    import synthhost_rudderstack
    from synthhost import Host
    from synthhost.settings import Settings

    make = synthhost_rudderstack.make_exporter

    def short_lease(host):
        exporter = make(host)
        exporter.claim_ttl_s = 2.0  # the lease others wait for once this process is gone
        return exporter

    synthhost_rudderstack.make_exporter = short_lease

    async def main():
        host = Host(Settings.from_env(json.loads(sys.argv[1])), plugins=[synthhost_rudderstack],
                    load_entrypoints=False)
        async with host:
            await anyio.sleep(600)  # killed long before

    anyio.run(main)
""")


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
async def test_batches_in_flight_in_a_killed_process_are_delivered_after_the_lease(
    make_host, db_url, receiver, rudder_env, tmp_path: Path
):
    release = threading.Event()
    seen = threading.Semaphore(0)

    def answer(arrival) -> int:
        seen.release()
        release.wait(60)  # the child is killed while its requests wait here
        return 503

    env = rudder_env(RUDDERSTACK_BATCH_SIZE="20", RUDDERSTACK_CONCURRENCY="3")
    ids = await queued(make_host, env, 100)
    receiver.answer = answer
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child_env = {**os.environ, **env, "DATABASE_URL": db_url, "SYNTHHOST_AUTO_MIGRATE": "0"}
    child = subprocess.Popen([sys.executable, str(script), json.dumps(child_env)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(3):  # three batches in flight in the child at once
            assert await anyio.to_thread.run_sync(seen.acquire, True, 60), "the child never sent"
    except BaseException:
        release.set()
        raise
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
    assert count(db_url, OUTBOX.c.state == IN_FLIGHT) == 60  # its three batches of 20, held by nobody alive
    receiver.answer = lambda arrival: 200
    release.set()  # the dead child's requests are answered (503) to nobody
    async with make_host(synthhost_rudderstack, env=env) as host:
        host._outbox.reap_interval_s = 0.2  # look for expired leases often
        await until(lambda: stats(host)["delivered"] == 100, what="every event delivered")
        s = stats(host)
    assert s["in_flight"] == 0 and s["parked"] == 0
    assert set(receiver.message_ids()) == set(ids)  # at least once each: none lost with the process
    assert count(db_url, OUTBOX.c.last_error.like("claim expired%")) == 60  # re-queued, the lost try counted
