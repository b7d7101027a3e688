"""The batched writer's queue is bounded: with a slow database, submit waits
(backpressure) instead of queueing without limit, and no row is lost."""

from __future__ import annotations

import threading
import time
from typing import Any

import sqlalchemy as sa

from synthhost.storage import db
from synthhost.storage.writer import BatchedWriter

META = sa.MetaData()
ROWS = sa.Table("bound_rows", META, sa.Column("id", sa.Integer, primary_key=True), sa.Column("body", sa.Text))


def wait_until(condition: Any, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.01)


def test_slow_database_never_exceeds_the_bound_and_loses_nothing(db_url: str) -> None:
    engine = db.create_engine(db_url)
    META.create_all(engine)
    bound, total = 50, 400
    writer = BatchedWriter(engine, max_batch=10, max_delay_s=0.001, max_pending=bound)
    gate = threading.Event()  # the "database" accepts nothing until set (failure injection)
    real_write = writer._write
    depths: list[int] = []

    def slow_write(batch: Any) -> None:
        depths.append(len(writer._queue))
        gate.wait()
        real_write(batch)

    writer._write = slow_write  # type: ignore[method-assign]
    writer.start()

    def produce() -> None:
        for i in range(total):
            writer.submit_values(ROWS, {"id": i, "body": f"row {i}"})
            depths.append(len(writer._queue))

    producer = threading.Thread(target=produce)
    producer.start()
    wait_until(lambda: writer.stats["writer_backpressure_waits"] > 0)
    assert producer.is_alive()  # held back while the database is blocked
    assert len(writer._queue) <= bound
    gate.set()
    producer.join(60)
    assert not producer.is_alive()
    assert writer.close(30)
    assert max(depths) <= bound
    assert writer.stats["writer_queue_max"] <= bound
    with engine.connect() as conn:
        ids = sorted(conn.execute(sa.select(ROWS.c.id)).scalars())
    assert ids == list(range(total))
    engine.dispose()


def test_without_a_writer_thread_submit_does_not_wait(db_url: str) -> None:
    engine = db.create_engine(db_url)
    META.create_all(engine)
    writer = BatchedWriter(engine, max_pending=5)
    for i in range(20):  # not started: nothing would drain the queue, so no waiting
        writer.submit_values(ROWS, {"id": i, "body": "x"})
    assert writer.flush_sync(30)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ROWS)).scalar() == 20
    engine.dispose()
