"""The event outbox on SQLite and PostgreSQL, with a tiny in-test exporter."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from synthhost import hookimpl
from synthhost.outbox import (
    DELIVERED,
    IN_FLIGHT,
    OUTBOX,
    PARKED,
    PENDING,
    OutboxWorker,
    PermanentSendError,
    RetryableSendError,
    outbox_rows,
    queue_stats,
    retry_parked,
)
from synthhost.storage import db

pytestmark = pytest.mark.anyio


class Tiny:
    """An exporter that records batches; ``behave(events)`` may raise to fail a send."""

    retry_delay_s = 0.05
    max_retry_delay_s = 0.2

    def __init__(self, **attrs: Any) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.threads: set[str] = set()
        self.behave: Callable[[Sequence[Mapping[str, Any]]], None] | None = None
        self.closed = False
        for key, value in attrs.items():
            setattr(self, key, value)

    def send(self, events: Sequence[Mapping[str, Any]]) -> None:
        self.threads.add(threading.current_thread().name)
        if self.behave is not None:
            self.behave(events)
        self.batches.append([dict(e) for e in events])

    def close(self) -> None:
        self.closed = True

    @property
    def ids(self) -> list[str]:
        return [e["id"] for batch in self.batches for e in batch]


class TinyPlugin:
    """A plugin gated by a flag (default on), exporting through ``exporter``."""

    __name__ = "tiny"

    def __init__(self, exporter: Tiny | None, event_types: list[str] | None = None, batch_size: int = 5):
        self.exporter = exporter
        self.event_types = event_types
        self.batch_size = batch_size

    @hookimpl
    def register_flags(self, register):
        register("tiny_export", default=True, description="tiny exporter on")

    @hookimpl
    def register_gate(self, register):
        register("tiny_export")

    @hookimpl
    def register_exporters(self, register):
        register("tiny", lambda host: self.exporter, event_types=self.event_types,
                 batch_size=self.batch_size)


async def until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.02)


def states(host: Any) -> dict[str, int]:
    with host.engine.connect() as conn:
        rows = conn.execute(sa.select(OUTBOX.c.state, sa.func.count()).group_by(OUTBOX.c.state)).all()
    return {state: int(n) for state, n in rows}


async def test_emit_queues_in_the_same_commit_and_delivers(make_host):
    exporter = Tiny()
    async with make_host(TinyPlugin(exporter)) as host:
        ids = [host.emit("run_finished", workspace="w1", user="u1", org="o1", run_id="r" * 32,
                         trace_id="t" * 32, latency_ms=12.5, tokens=i) for i in range(12)]
        await until(lambda: len(exporter.ids) == 12, what="12 deliveries")
        await until(lambda: states(host) == {DELIVERED: 12}, what="rows delivered")
        assert sorted(exporter.ids) == sorted(ids)
        assert all(len(b) <= 5 for b in exporter.batches)  # the registered batch size
        first = next(e for b in exporter.batches for e in b if e["id"] == ids[0])
        assert first["event_type"] == "run_finished"
        assert (first["workspace_id"], first["user_id"], first["org_id"]) == ("w1", "u1", "o1")
        assert first["context"] == {"tokens": 0}
        assert first["run_id"] == "r" * 32 and first["trace_id"] == "t" * 32
        assert first["latency_ms"] == 12.5 and first["status"] == "success"
        assert first["created_at"].endswith("+00:00")
        assert exporter.threads and "MainThread" not in exporter.threads
        stats = queue_stats(host.engine)["tiny"]
        assert stats["delivered"] == 12 and stats["pending"] == 0 and stats["parked"] == 0
        assert stats["oldest_pending_age_s"] is None and stats["last_error"] is None
        with host.engine.connect() as conn:
            attempts = conn.execute(sa.select(OUTBOX.c.attempts)).scalars().all()
        assert set(attempts) == {1}
    assert exporter.closed


async def test_event_types_and_the_gate_decide_what_is_queued(make_host):
    exporter = Tiny()
    async with make_host(TinyPlugin(exporter, event_types=["wanted"])) as host:
        host.flags.set("tiny_export", False, workspace="quiet")
        keep = host.emit("wanted", workspace="loud")
        host.emit("unwanted", workspace="loud")
        host.emit("wanted", workspace="quiet")
        rows = outbox_rows(host, {"id": "x" * 32, "event_type": "wanted", "workspace_id": "quiet",
                                  "created_at": None})
        assert rows == []
        await until(lambda: exporter.ids == [keep], what="one delivery")
        host.wait_for_events()
        assert host.count("event_logs") == 3
        assert host.count("outbox") == 1


async def test_a_factory_returning_none_queues_nothing(make_host):
    async with make_host(TinyPlugin(None)) as host:
        host.emit("anything", workspace="w")
        host.wait_for_events()
        assert host.count("outbox") == 0


async def test_retryable_failures_back_off_then_deliver(make_host):
    exporter = Tiny()
    failures = {"left": 3}

    def flaky(events: Sequence[Mapping[str, Any]]) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise RetryableSendError("HTTP 503: try later")

    exporter.behave = flaky
    async with make_host(TinyPlugin(exporter)) as host:
        event_id = host.emit("e", workspace="w")
        await until(lambda: exporter.ids == [event_id], what="delivery after retries")
        await until(lambda: states(host) == {DELIVERED: 1}, what="delivered")
        with host.engine.connect() as conn:
            row = conn.execute(sa.select(OUTBOX)).mappings().one()
        assert row["attempts"] == 4
        assert row["last_error"] == "HTTP 503: try later"  # kept as history
        assert host._outbox.stats["tiny"]["retried"] == 3


async def test_retrying_rows_are_reported_with_their_error(make_host):
    exporter = Tiny(retry_delay_s=30.0, max_retry_delay_s=30.0)

    def down(events: Sequence[Mapping[str, Any]]) -> None:
        raise RetryableSendError("ConnectionError: refused")

    exporter.behave = down
    async with make_host(TinyPlugin(exporter)) as host:
        for _ in range(3):
            host.emit("e", workspace="w")
        await until(lambda: queue_stats(host.engine, ["tiny"])["tiny"]["retrying"] == 3, what="3 retrying")
        stats = queue_stats(host.engine)["tiny"]
        assert stats["pending"] == 0 and stats["delivered"] == 0
        assert stats["last_error"] == "ConnectionError: refused"
        assert stats["oldest_pending_age_s"] is not None and stats["oldest_pending_age_s"] >= 0


async def test_permanent_errors_park_and_retry_parked_requeues(make_host):
    exporter = Tiny()
    refuse = {"on": True}

    def picky(events: Sequence[Mapping[str, Any]]) -> None:
        if refuse["on"]:
            raise PermanentSendError("HTTP 400: invalid write key")

    exporter.behave = picky
    async with make_host(TinyPlugin(exporter)) as host:
        ids = {host.emit("e", workspace="w") for _ in range(7)}
        await until(lambda: states(host) == {PARKED: 7}, what="7 parked")
        stats = queue_stats(host.engine)["tiny"]
        assert stats["parked"] == 7 and stats["last_error"] == "HTTP 400: invalid write key"
        assert stats["oldest_pending_age_s"] is None
        refuse["on"] = False
        assert retry_parked(host.engine, "other") == 0
        assert retry_parked(host.engine) == 7
        host._outbox.wake()
        await until(lambda: set(exporter.ids) == ids, what="re-sent after retry-parked")
        await until(lambda: states(host) == {DELIVERED: 7}, what="delivered")


async def test_an_exporter_can_park_single_events(make_host):
    exporter = Tiny()
    bad: set[str] = set()

    def validate(events: Sequence[Mapping[str, Any]]) -> None:
        wrong = {e["id"] for e in events if e["id"] in bad}
        if wrong:
            raise PermanentSendError("malformed", event_ids=wrong)

    exporter.behave = validate
    async with make_host(TinyPlugin(exporter, batch_size=10)) as host:
        ids = [host.emit("e", workspace="w", n=i) for i in range(6)]
        bad.add(ids[2])
        await until(lambda: set(exporter.ids) == set(ids) - {ids[2]}, what="the good five")
        await until(lambda: states(host) == {DELIVERED: 5, PARKED: 1}, what="one parked")
        assert len(exporter.ids) == 5  # nothing sent twice


async def test_max_attempts_parks_after_that_many_failures(make_host):
    exporter = Tiny(max_attempts=2)

    def down(events: Sequence[Mapping[str, Any]]) -> None:
        raise RetryableSendError("HTTP 500")

    exporter.behave = down
    async with make_host(TinyPlugin(exporter)) as host:
        host.emit("e", workspace="w")
        await until(lambda: states(host) == {PARKED: 1}, what="parked after 2 attempts")
        stats = queue_stats(host.engine)["tiny"]
        assert stats["last_error"] == "gave up after 2 attempts: HTTP 500"


async def test_a_partial_batch_waits_for_the_flush_interval_but_shutdown_sends_it(make_host):
    exporter = Tiny(flush_interval_s=3600.0)
    host = make_host(TinyPlugin(exporter, batch_size=10))
    async with host:
        ids = [host.emit("e", workspace="w") for _ in range(3)]
        host.wait_for_events()
        await anyio.sleep(0.5)
        assert exporter.ids == []  # three of ten: waiting to fill
        more = [host.emit("e", workspace="w") for _ in range(10)]
        await until(lambda: len(exporter.ids) == 10, what="the first full batch")
        await anyio.sleep(0.5)
        assert len(exporter.ids) == 10  # the other three wait for the next batch
    assert sorted(exporter.ids) == sorted(ids + more)  # the rest went out at shutdown
    assert states(host) == {DELIVERED: 13}


async def test_shutdown_is_bounded_and_leaves_the_rest_pending(make_host):
    exporter = Tiny(retry_delay_s=0.01, max_retry_delay_s=0.01)

    def slow(events: Sequence[Mapping[str, Any]]) -> None:
        time.sleep(0.3)

    exporter.behave = slow
    host = make_host(TinyPlugin(exporter, batch_size=1), shutdown_timeout_s=1.0)
    async with host:
        for _ in range(40):
            host.emit("e", workspace="w")
        host.wait_for_events()
    # 40 sends of 0.3 s cannot fit the 1 s budget: shutdown stopped sending (the
    # budget is what bounds it) and left the rest pending, not lost.
    counts = states(host)
    assert counts.get(DELIVERED, 0) >= 1
    assert counts.get(PENDING, 0) >= 1  # left for the next start, not lost
    assert counts.get(DELIVERED, 0) + counts.get(PENDING, 0) + counts.get(IN_FLIGHT, 0) == 40


async def test_claims_are_exclusive_and_expired_claims_come_back(make_host):
    exporter = Tiny()
    async with make_host(TinyPlugin(exporter)) as host:
        host._outbox.stop(0)  # drive claims by hand
        exporter.batches.clear()
        for _ in range(200):
            host.emit("e", workspace="w")
        host.wait_for_events()
        workers = [OutboxWorker(host, worker_id=f"w{i}") for i in range(4)]
        got: list[list[tuple[int, str, int]]] = [[] for _ in workers]

        def grab(i: int) -> None:
            while True:
                batch = workers[i].claim("tiny", 7, ttl_s=60)
                if not batch:
                    return
                got[i].extend(batch)

        threads = [threading.Thread(target=grab, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        claimed = [row_id for g in got for row_id, _, _ in g]
        assert len(claimed) == 200 and len(set(claimed)) == 200  # nobody claimed a row twice
        assert states(host) == {IN_FLIGHT: 200}
        # Claims that expire (their worker died) are re-queued by any worker.
        stale = OutboxWorker(host, worker_id="reaper")
        with host.engine.begin() as conn:
            conn.execute(sa.update(OUTBOX).values(claimed_until=_past()))
        assert stale.reap_expired("tiny") == 200
        assert states(host) == {PENDING: 200}
        stats = queue_stats(host.engine)["tiny"]
        assert stats["retrying"] == 200 and "claim expired" in stats["last_error"]


def _past() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) - timedelta(seconds=5)


async def test_migration_upgrades_and_downgrades(make_host):
    async with make_host(TinyPlugin(Tiny())) as host:
        assert "outbox" in sa.inspect(host.engine).get_table_names()
        host._stop_threads()
        host._started = False
        db.downgrade(host.engine, host.registry.migrations, "0001_host")
        host.engine.dispose()
        assert "outbox" not in sa.inspect(host.engine).get_table_names()
        db.upgrade(host.engine, host.registry.migrations)
        assert "outbox" in sa.inspect(host.engine).get_table_names()
        host.engine.dispose()


async def test_cli_queue_stats_and_retry_parked(make_host, db_url, monkeypatch):
    exporter = Tiny()
    exporter.behave = lambda events: (_ for _ in ()).throw(PermanentSendError("HTTP 413: too big"))
    async with make_host(TinyPlugin(exporter)) as host:
        for _ in range(2):
            host.emit("e", workspace="w")
        await until(lambda: states(host) == {PARKED: 2}, what="2 parked")
    from synthhost.cli import cli

    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("SYNTHHOST_LOAD_PLUGINS", "")
    runner = CliRunner()
    result = runner.invoke(cli, ["queue", "stats", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["tiny"]["parked"] == 2 and data["tiny"]["last_error"] == "HTTP 413: too big"
    result = runner.invoke(cli, ["queue", "stats"])
    assert result.exit_code == 0 and "tiny" in result.output and "HTTP 413" in result.output
    result = runner.invoke(cli, ["queue", "retry-parked", "--exporter", "tinny"])
    assert result.exit_code == 2 and "did you mean 'tiny'" in result.output
    result = runner.invoke(cli, ["queue", "retry-parked", "--exporter", "tiny"])
    assert result.exit_code == 0 and "re-queued 2" in result.output
    assert queue_stats(host.engine)["tiny"]["retrying"] == 2


async def test_a_row_whose_event_is_gone_is_parked_not_retried_forever(make_host):
    exporter = Tiny()
    async with make_host(TinyPlugin(exporter)) as host:
        host._outbox.stop(0)
        kept = host.emit("e", workspace="w")
        lost = host.emit("e", workspace="w")
        host.wait_for_events()
        with host.engine.begin() as conn:
            conn.exec_driver_sql(f"DELETE FROM event_logs WHERE id = '{lost}'")
        host._outbox.start()
        await until(lambda: states(host) == {DELIVERED: 1, PARKED: 1}, what="one delivered, one parked")
        assert exporter.ids == [kept]
        assert queue_stats(host.engine)["tiny"]["last_error"] == "event_logs row not found"


async def test_delivered_rows_are_pruned_after_the_retention(make_host):
    from synthhost.outbox import prune_delivered

    exporter = Tiny()
    async with make_host(TinyPlugin(exporter)) as host:
        for _ in range(3):
            host.emit("e", workspace="w")
        await until(lambda: states(host) == {DELIVERED: 3}, what="delivered")
        assert prune_delivered(host.engine, older_than_s=3600) == 0
        with host.engine.begin() as conn:
            conn.execute(sa.update(OUTBOX).values(delivered_at=_past()))
        assert prune_delivered(host.engine, older_than_s=1) == 3
        assert host.count("outbox") == 0 and host.count("event_logs") == 3  # events stay


# -- bulk claims, concurrent batches, crashes (issue 15: the outbox keeps up) ------------

CLAIMER = """
import json, os, sys, time
from synthhost import Host
from synthhost.outbox import OutboxWorker
from synthhost.settings import Settings

url, tag, other, go = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
host = Host(Settings.from_env({"DATABASE_URL": url}), load_entrypoints=False)
worker = OutboxWorker(host, worker_id=tag)
worker.claim("nobody", 1)  # connected before the start
while not os.path.exists(go):  # start together: the claims must race
    time.sleep(0.001)
got = []
while True:
    batch = worker.claim("tiny", 100, ttl_s=60)
    if not batch:
        break
    got.append([row_id for row_id, _, _ in batch])
    if len(got) == 1:  # both in the race before either goes on (however loaded the machine)
        open(go + "." + tag, "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(go + "." + other) and time.monotonic() < deadline:
            time.sleep(0.001)
    time.sleep(0.002)  # as a lane sends between claims
host.engine.dispose()
print(json.dumps(got))
"""


async def test_bulk_claims_from_two_processes_never_share_a_row(make_host, db_url, tmp_path):
    import subprocess
    import sys

    exporter = Tiny()
    async with make_host(TinyPlugin(exporter)) as host:
        host._outbox.stop(0)  # these processes claim, nobody else
        for _ in range(3000):
            host.emit("e", workspace="w")
        assert host.wait_for_events(30)
        script, go = tmp_path / "claim.py", tmp_path / "go"
        script.write_text(CLAIMER)
        procs = [
            subprocess.Popen([sys.executable, str(script), db_url, tag, other, str(go)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for tag, other in (("a", "b"), ("b", "a"))
        ]
        await anyio.sleep(1.0)  # both imported and waiting
        go.write_text("go")
        outputs = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
        claims = [batch for batches in outputs for batch in batches]
        assert all(1 <= len(batch) <= 100 for batch in claims)  # one statement, one bounded batch
        ids = [row_id for batch in claims for row_id in batch]
        assert len(ids) == 3000 and len(set(ids)) == 3000  # every row once, no row twice
        assert all(outputs)  # both processes claimed: the claims did race
        assert states(host) == {IN_FLIGHT: 3000}
        with host.engine.connect() as conn:
            owners = dict(conn.execute(sa.select(OUTBOX.c.claimed_by, sa.func.count())
                                       .group_by(OUTBOX.c.claimed_by)).all())
        assert owners == {"a": sum(len(b) for b in outputs[0]), "b": sum(len(b) for b in outputs[1])}


async def test_concurrent_failed_batches_are_retried_then_parked_with_counts(make_host):
    exporter = Tiny(max_attempts=3, concurrency=4)
    seen: list[int] = []

    def down(events: Sequence[Mapping[str, Any]]) -> None:
        seen.append(len(events))
        raise RetryableSendError("HTTP 503")

    exporter.behave = down
    host = make_host(TinyPlugin(exporter, batch_size=50))
    async with host:
        host._outbox.stop(0)
        for _ in range(200):
            host.emit("e", workspace="w")
        assert host.wait_for_events(10)
        host._outbox.start()  # all 200 due at once: four batches of 50, in flight together
        await until(lambda: states(host) == {PARKED: 200}, what="every row parked")
        lane = host._outbox.stats["tiny"]
        # Two failed tries per row (retried), the third parks it; 600 rows sent in all.
        assert (lane.get("retried"), lane["parked"], sum(seen)) == (400, 200, 600), (lane, seen)
        assert lane.get("delivered", 0) == 0
        assert host.stats["outbox.tiny.parked"] == 200
        assert max(seen) == 50  # in batches
        stats = queue_stats(host.engine)["tiny"]
        assert stats["parked"] == 200 and stats["last_error"] == "gave up after 3 attempts: HTTP 503"
        with host.engine.connect() as conn:
            attempts = set(conn.execute(sa.select(OUTBOX.c.attempts)).scalars())
        assert attempts == {3}
        # Parked is never dropped: re-queued, they go out once the receiver is back.
        exporter.behave = None
        assert retry_parked(host.engine, "tiny") == 200
        host._outbox.wake()
        await until(lambda: states(host) == {DELIVERED: 200}, what="re-queued rows delivered")


async def test_batches_in_flight_when_a_worker_dies_are_sent_after_the_lease(make_host):
    """A worker stopped mid-send (its threads hang, as in a killed process) holds several
    claimed batches; once their lease has passed another worker re-claims and sends them."""
    release = threading.Event()
    in_flight = threading.Semaphore(0)
    exporter = Tiny(concurrency=3, claim_ttl_s=1.0)

    def stuck(events: Sequence[Mapping[str, Any]]) -> None:
        in_flight.release()
        release.wait(30)  # never answered while the "dead" worker matters
        raise RetryableSendError("connection reset")

    exporter.behave = stuck
    host = make_host(TinyPlugin(exporter, batch_size=10))
    async with host:
        host._outbox.stop(0)
        ids = [host.emit("e", workspace="w") for _ in range(60)]
        assert host.wait_for_events(10)
        dead = OutboxWorker(host, worker_id="dead")
        dead.start()
        for _ in range(3):  # three batches in flight at once, one per thread
            assert await anyio.to_thread.run_sync(in_flight.acquire, True, 10)
        assert states(host).get(IN_FLIGHT) == 30
        with host.engine.connect() as conn:
            assert set(conn.execute(sa.select(OUTBOX.c.claimed_by).where(OUTBOX.c.state == IN_FLIGHT))
                       .scalars()) == {"dead"}
        # The "dead" worker never finishes: another worker takes over the queue.
        dead._stopping.set()
        survivor_exporter = Tiny()
        survivor = OutboxWorker(host, worker_id="survivor", reap_interval_s=0.2, poll_interval_s=0.05)
        survivor.host.registry.exporters["tiny"] = dataclasses.replace(
            host.registry.exporters["tiny"], factory=lambda h: survivor_exporter
        )
        survivor.start()
        try:
            await until(lambda: set(survivor_exporter.ids) == set(ids), what="every event sent by the survivor")
            await until(lambda: states(host) == {DELIVERED: 60}, what="all delivered")
        finally:
            release.set()
            survivor.stop(5)
            dead.stop(5)
        with host.engine.connect() as conn:
            rows = conn.execute(sa.select(OUTBOX.c.attempts, OUTBOX.c.last_error)).all()
        requeued = [r for r in rows if r.last_error and "claim expired" in r.last_error]
        assert len(requeued) == 30  # exactly the three batches the dead worker held
        assert all(r.attempts == 2 for r in requeued)  # the lost attempt is counted
        # The dead worker's late failure does not move a delivered row back.
        assert states(host) == {DELIVERED: 60}
