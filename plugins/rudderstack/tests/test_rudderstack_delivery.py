"""Nothing lost: receiver down, 503s, a refusing 4xx, and runs that never wait for it."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

import synthhost_rudderstack
from synthhost.agent import parse_agent
from synthhost.outbox import queue_stats

pytestmark = pytest.mark.anyio

AGENT = parse_agent("""
name: hello
model: echo/gpt-4o-mini
steps:
  - name: greet
    prompt: Say hello in one sentence.
""")


async def until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.02)


def stats(host) -> dict:
    return queue_stats(host.engine, ["rudderstack"])["rudderstack"]


async def test_receiver_down_then_up_every_event_arrives(make_host, receiver, rudder_env):
    receiver.stop()  # connection refused from now on
    host = make_host(synthhost_rudderstack, env=rudder_env(RUDDERSTACK_BATCH_SIZE="7"))
    async with host:
        ids = [host.emit("run_finished", workspace=f"w{i % 3}", n=i) for i in range(50)]
        await until(lambda: stats(host)["retrying"] > 0, what="a failed attempt")
        s = stats(host)
        assert s["delivered"] == 0 and "ConnectionError" in s["last_error"]
        receiver.start()  # same port, back up
        await until(lambda: set(receiver.message_ids()) == set(ids), what="every event after recovery")
        await until(lambda: stats(host)["delivered"] == 50, what="all rows delivered")
    counts = receiver.message_ids()
    assert set(counts) == set(ids)  # each event at least once...
    assert sum(counts.values()) == 50  # ...and, the refusals never reaching it, exactly once
    assert stats(host)["retrying"] == 0 and stats(host)["parked"] == 0


async def test_503_for_a_while_is_retried_then_delivered(make_host, receiver, rudder_env):
    refusals = {"left": 4}

    def answer(arrival) -> int:
        if refusals["left"] > 0:
            refusals["left"] -= 1
            return 503
        return 200

    receiver.answer = answer
    host = make_host(synthhost_rudderstack, env=rudder_env(RUDDERSTACK_BATCH_SIZE="5"))
    async with host:
        ids = [host.emit("llm_cost_logged", workspace="w", n=i) for i in range(12)]
        await until(lambda: stats(host)["delivered"] == 12, what="12 delivered")
    refused = [a for a in receiver.arrivals if a.status == 503]
    assert len(refused) == 4
    counts = receiver.message_ids()
    assert set(counts) == set(ids) and all(n == 1 for n in counts.values())
    # The refused messages were sent again with the same messageId.
    assert {m["messageId"] for a in refused for m in a.body["batch"]} <= set(ids)


async def test_429_is_retried(make_host, receiver, rudder_env):
    answers = iter([429])
    receiver.answer = lambda arrival: next(answers, 200)
    host = make_host(synthhost_rudderstack, env=rudder_env())
    async with host:
        event_id = host.emit("e", workspace="w")
        await until(lambda: stats(host)["delivered"] == 1, what="delivered after 429")
    assert [a.status for a in receiver.arrivals] == [429, 200]
    assert list(receiver.message_ids()) == [event_id]


async def test_a_400_parks_the_batch_and_counts_it(make_host, receiver, rudder_env):
    refuse = {"on": True}
    receiver.answer = lambda arrival: 400 if refuse["on"] else 200
    host = make_host(synthhost_rudderstack, env=rudder_env(RUDDERSTACK_BATCH_SIZE="3"))
    async with host:
        ids = [host.emit("e", workspace="w") for _ in range(5)]
        await until(lambda: stats(host)["parked"] == 5, what="5 parked")
        s = stats(host)
        assert s["pending"] == s["retrying"] == s["delivered"] == 0
        assert s["last_error"].startswith("HTTP 400")
        # No retries of a 400: each message went out once, in batches of at most 3 (how
        # the 5 split depends on when the exporter claimed them: 3+2, or 1+3+1...).
        sent = [m["messageId"] for a in receiver.arrivals for m in a.body["batch"]]
        assert sorted(sent) == sorted(ids) and all(len(a.body["batch"]) <= 3 for a in receiver.arrivals)
        ok, detail = synthhost_rudderstack._health(host)
        assert not ok and "5 parked" in detail
        # Parked is not lost: once the cause is fixed, retry-parked sends them.
        refuse["on"] = False
        from synthhost.outbox import retry_parked

        assert retry_parked(host.engine, "rudderstack") == 5
        host._outbox.wake()
        await until(lambda: stats(host)["delivered"] == 5, what="delivered after retry-parked")
    assert set(receiver.message_ids()) == set(ids)


async def test_runs_succeed_without_waiting_while_the_receiver_is_down(make_host, receiver, rudder_env):
    receiver.stop()
    host = make_host(synthhost_rudderstack, env=rudder_env(RUDDERSTACK_RETRY_DELAY="200"))
    sender_threads: set[str] = set()
    async with host:
        exporter = host._outbox.lanes["rudderstack"].exporter
        original = exporter.send

        def spy(events):
            sender_threads.add(threading.current_thread().name)
            return original(events)

        exporter.send = spy
        results = [await host.run(AGENT, workspace="acme", user="u1") for _ in range(10)]
        assert all(r.status == "ok" for r in results)
        await until(lambda: stats(host)["retrying"] > 0, what="the exporter to hit the dead port")
        # The runs never called the exporter: it only ever runs in the outbox thread.
        assert sender_threads and all(t.startswith("synthhost-outbox-rudderstack") for t in sender_threads)
        receiver.start()
        run_ids = {r.run_id for r in results}
        await until(lambda: {m["properties"].get("run_id") for m in receiver.messages()
                             if m["event"] == "run_finished"} >= run_ids, what="run events after recovery")
        host.wait_for_events()
        total = host.count("outbox")
        await until(lambda: stats(host)["delivered"] == total, what="everything delivered")
    types = {m["event"] for m in receiver.messages()}
    assert {"run_started", "run_finished"} <= types
    assert all(m["userId"] == "u1" and m["context"]["groupId"] == "acme" for m in receiver.messages())
    assert all(n == 1 for n in receiver.message_ids().values())


async def test_shutdown_sends_what_is_waiting_for_its_batch(make_host, receiver, rudder_env):
    host = make_host(synthhost_rudderstack, env=rudder_env(RUDDERSTACK_FLUSH_INTERVAL="600000"))
    async with host:
        ids = [host.emit("e", workspace="w") for _ in range(3)]
        host.wait_for_events()
        await anyio.sleep(0.3)
        assert receiver.arrivals == []  # 3 of 20, waiting up to the flush interval
    assert set(receiver.message_ids()) == set(ids)


async def test_shutdown_with_the_receiver_down_leaves_events_pending(make_host, receiver, rudder_env):
    receiver.stop()
    host = make_host(synthhost_rudderstack, env=rudder_env(), shutdown_timeout_s=2.0)
    async with host:
        for _ in range(5):
            host.emit("e", workspace="w")
        host.wait_for_events()
    # Shutdown returned (within SYNTHHOST_SHUTDOWN_TIMEOUT) with nothing lost:
    s = stats(host)
    assert s["pending"] + s["retrying"] == 5 and s["delivered"] == 0 and s["in_flight"] == 0
