"""Similarity logging: a durable backlog, worked off by whichever process delivers.

``post_call`` (``enable_similarity_logging``) writes the prompt to ``similarity_queue``
through the batched writer: one row, and the call never waits. A :class:`LogConsumer`
thread in each *delivering* process (``SYNTHHOST_DELIVERY=inline``, the default, or a
``synthhost worker``) claims queued rows in batches, embeds and searches each prompt,
writes its log row, event and reference, and deletes the queue rows once those are
committed.

Why a table and not an in-memory queue: when the logger falls behind nothing is dropped
(the backlog waits in the database; its depth is in ``synthhost health``), a crash loses
nothing (a claim expires after ``CLAIM_TTL_S`` and the rows are taken again; a prompt
may then be logged twice, never zero times), and with ``SYNTHHOST_DELIVERY=worker`` the
embedding and search run in the worker process, on another core, instead of competing
with calls for the serving process's GIL.

Claims are safe across processes as the outbox's are: PostgreSQL ``FOR UPDATE SKIP
LOCKED`` in a materialized CTE, SQLite one atomic ``UPDATE ... WHERE id IN (SELECT ...)``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from synthhost.gil import pause
from synthhost.storage.models import utcnow
from synthhost_similarity.models import SimilarityQueued

if TYPE_CHECKING:
    from synthhost_similarity.service import SimilarityService

log = logging.getLogger("synthhost.similarity")

QUEUE = SimilarityQueued.__table__
BATCH = 64
CLAIM_TTL_S = 120.0
IDLE_POLL_S = 0.2


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a logged prompt came from: the ids its log row and event carry (a
    :class:`~synthhost.Call` has the same attributes)."""

    workspace: str
    user: str | None
    org: str | None
    run_id: str | None
    span_id: str | None
    trace_id: str | None

    @classmethod
    def of_row(cls, row: Mapping[str, Any]) -> Origin:
        return cls(row["workspace_id"], row["user_id"], row["org_id"], row["run_id"], row["span_id"],
                   row["trace_id"])


def pending(engine: sa.Engine) -> int:
    """Prompts waiting to be logged (claimed or not)."""
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(QUEUE)).scalar_one())


class LogConsumer:
    def __init__(self, service: SimilarityService, *, batch: int = BATCH, poll_s: float = IDLE_POLL_S,
                 claim_ttl_s: float = CLAIM_TTL_S) -> None:
        self.service = service
        self.engine = service.host.engine
        self.batch = batch
        self.poll_s = poll_s
        self.claim_ttl_s = claim_ttl_s
        self.worker_id = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="synthhost-similarity-log", daemon=True)
            self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Log what is queued (bounded by ``timeout``), then stop. What is left stays in
        the table for the next delivering process."""
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        deadline = time.monotonic() + timeout
        try:
            self.service.host.writer.flush_sync(max(0.1, timeout / 2))  # our own prompts reach the table
            while time.monotonic() < deadline and self.run_once() == self.batch:
                pass
        except Exception as exc:
            log.warning("similarity logging at shutdown: %s", exc)
        self._stop.set()
        self._wake.set()
        thread.join(max(0.1, deadline - time.monotonic()))
        return not thread.is_alive()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                taken = self.run_once()
            except Exception as exc:  # the database may be away: try again later
                log.warning("similarity logging: %s: %s", type(exc).__name__, exc)
                taken = 0
                self._stop.wait(1.0)
            if taken < self.batch:
                self._wake.wait(self.poll_s)
                self._wake.clear()
                # Let the writer's group commit put the rows that woke us in the table.
                self._stop.wait(self.service.host.writer.max_delay_s)

    # -- the work -----------------------------------------------------------------------

    def run_once(self) -> int:
        """Claim, log and delete one batch; returns how many prompts it took."""
        rows = self.claim(self.batch)
        if not rows:
            return 0
        for row in rows:
            pause()  # one prompt per GIL hold (synthhost.gil)
            self.service.log_prompt(Origin.of_row(row), row["prompt"])
        # The log rows, events and references are committed before the queue rows go:
        # a crash in between logs these prompts again, never not at all.
        if not self.service.host.writer.flush_sync(30.0):
            raise RuntimeError("log rows not committed within 30 s; the claim will expire")
        self.finish([row["id"] for row in rows])
        self.service.host.stats["similarity.logged"] += len(rows)
        return len(rows)

    def claim(self, limit: int) -> Sequence[Mapping[str, Any]]:
        t = QUEUE
        now = utcnow()
        candidates = (
            sa.select(t.c.id)
            .where(sa.or_(t.c.claimed_until.is_(None), t.c.claimed_until < now))
            .order_by(t.c.created_at, t.c.id)
            .limit(limit)
        )
        if self.engine.dialect.name == "postgresql":
            picked = candidates.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
            where: Any = t.c.id == picked.c.id
        else:
            where = t.c.id.in_(candidates.scalar_subquery())
        stmt = (
            sa.update(t)
            .where(where)
            .values(claimed_by=self.worker_id, claimed_until=now + timedelta(seconds=self.claim_ttl_s))
            .returning(*t.c)
        )
        with self.engine.begin() as conn:
            rows = [dict(r) for r in conn.execute(stmt).mappings()]
        rows.sort(key=lambda r: (r["created_at"], r["id"]))
        return rows

    def finish(self, ids: list[str]) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(QUEUE).where(QUEUE.c.id.in_(ids), QUEUE.c.claimed_by == self.worker_id))
