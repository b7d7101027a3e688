"""The outbox: at-least-once delivery of ``event_logs`` rows to exporters.

``Host.emit`` writes the event row and, through the same batched writer (same commit),
one ``outbox`` row per exporter that wants the event (:func:`outbox_rows`). An
:class:`OutboxWorker` per process runs, per exporter (a "lane"), one or more threads that
each claim due rows, loads their events, calls ``exporter.send(events)`` and records the outcome:

- ``send`` returned: the rows are ``delivered`` (never before).
- :class:`RetryableSendError` (or any unexpected exception): back to ``pending`` with
  ``attempts + 1``, ``last_error`` and ``next_attempt_at`` pushed out by exponential
  backoff with jitter; the lane itself pauses for the same delay, so a dead receiver
  is probed once per delay, not once per batch.
- :class:`PermanentSendError`: ``parked`` with its error: counted by
  :func:`queue_stats`, re-queued by ``synthhost queue retry-parked``, never dropped.

Claims are in bulk and safe across processes: on PostgreSQL one statement claims a
batch and returns its events (``WITH picked AS MATERIALIZED (SELECT ... FOR UPDATE SKIP
LOCKED), claimed AS (UPDATE ... FROM picked RETURNING ...) SELECT ... FROM claimed LEFT
JOIN event_logs``), on SQLite one ``UPDATE ... WHERE id IN (SELECT ...)`` (atomic under
SQLite's single writer lock) then one SELECT of the events. Finishing a batch is one
UPDATE (``id = ANY(array)`` on PostgreSQL), per outcome. A
claim carries ``claimed_by``/``claimed_until``; a claim whose holder died is re-queued
once ``claimed_until`` has passed (the batch may then be sent twice: receivers
de-duplicate on the event id, which exporters send as the message id).

An exporter object may carry optional tuning attributes (read once at start-up):
``batch_size`` (overrides the registered one), ``flush_interval_s`` (how long a partial
batch may wait to fill; default 0), ``retry_delay_s`` (backoff base, default 1),
``max_retry_delay_s`` (backoff cap, default 60), ``concurrency`` (batches in flight at
once, one thread each; default 1), ``max_attempts`` (park after that many
failed attempts; default ``None``: retry until the receiver is back), ``claim_ttl_s``
(default 60; must exceed the longest ``send``), and ``close()`` (called at stop). A
factory may return ``None``: the exporter is not configured in this host (the
RudderStack plugin without a write key) and nothing is queued for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY as PG_ARRAY
from sqlmodel import Field, SQLModel

from synthhost.registry import Exporter, ExporterSpec
from synthhost.storage.models import EventLog, utcnow

if TYPE_CHECKING:
    from synthhost.host import Host

log = logging.getLogger("synthhost.outbox")

PENDING, IN_FLIGHT, DELIVERED, PARKED = "pending", "in_flight", "delivered", "parked"
STATES = (PENDING, IN_FLIGHT, DELIVERED, PARKED)
MAX_ERROR_CHARS = 2000


class RetryableSendError(Exception):
    """The batch may be accepted later (network error, 5xx, 429): retry with backoff.

    ``event_ids``, when given, limits the failure to those events; the other events of
    the batch were not sent and go straight back to ``pending``."""

    def __init__(self, message: str, *, event_ids: Iterable[str] | None = None) -> None:
        super().__init__(message)
        self.event_ids = frozenset(event_ids) if event_ids is not None else None


class PermanentSendError(Exception):
    """The receiver will never accept this batch (a non-retryable 4xx): park it.

    ``event_ids`` as for :class:`RetryableSendError` (an exporter that can tell which
    events are bad parks only those)."""

    def __init__(self, message: str, *, event_ids: Iterable[str] | None = None) -> None:
        super().__init__(message)
        self.event_ids = frozenset(event_ids) if event_ids is not None else None


def _big_int() -> sa.types.TypeEngine[int]:
    # SQLite only auto-increments an INTEGER PRIMARY KEY.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts_null() -> Any:
    return Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=True))


class OutboxRow(SQLModel, table=True):
    """One (event, exporter) delivery. ``attempts`` counts sends tried (delivered rows
    included); ``last_attempt_at`` orders errors for :func:`queue_stats`."""

    __tablename__ = "outbox"
    __table_args__ = (sa.Index("ix_outbox_exporter_state_due", "exporter", "state", "next_attempt_at"),
                      sa.Index("ux_outbox_event_exporter", "event_id", "exporter", unique=True))

    id: int | None = Field(default=None, sa_column=sa.Column(_big_int(), primary_key=True, autoincrement=True))
    event_id: str = Field(max_length=32)
    exporter: str = Field(max_length=100)
    state: str = Field(default=PENDING, max_length=12)
    attempts: int = 0
    next_attempt_at: datetime = Field(
        default_factory=utcnow, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False)
    )
    claimed_by: str | None = Field(default=None, max_length=100)
    claimed_until: datetime | None = _ts_null()
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    last_attempt_at: datetime | None = _ts_null()
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False)
    )
    delivered_at: datetime | None = _ts_null()


OUTBOX: sa.Table = OutboxRow.__table__  # type: ignore[attr-defined]
EVENTS: sa.Table = EventLog.__table__  # type: ignore[attr-defined]

# What the call path inserts: no ``id`` column (the database numbers rows; an explicit
# NULL would be refused by PostgreSQL) and nothing that is NULL on a fresh row.
OUTBOX_INSERT = sa.Table(
    "outbox",
    sa.MetaData(),
    *(
        sa.Column(c.name, c.type, nullable=c.nullable)
        for c in OUTBOX.columns
        if c.name in ("event_id", "exporter", "state", "attempts", "next_attempt_at", "created_at")
    ),
    # One row per (event, exporter): what a durable step executed again inserts is ignored.
    sa.Index("ux_outbox_event_exporter", "event_id", "exporter", unique=True),
)


class OutboxEntry:
    """A fresh outbox row as the call path builds it: a slotted object (sub-µs, where an
    SQLModel instance costs ~25 µs) that ``host.writer.submit()`` accepts (it reads
    ``type(row).__table__`` and one attribute per column)."""

    __slots__ = ("created_at", "event_id", "exporter", "next_attempt_at")
    __table__ = OUTBOX_INSERT
    state = PENDING
    attempts = 0

    def __init__(self, event_id: str, exporter: str, created_at: datetime) -> None:
        self.event_id = event_id
        self.exporter = exporter
        self.created_at = created_at
        self.next_attempt_at = created_at

    def values(self) -> dict[str, Any]:
        """The row for ``host.writer.submit_values(OUTBOX_INSERT, entry.values())``."""
        return {
            "event_id": self.event_id,
            "exporter": self.exporter,
            "state": PENDING,
            "attempts": 0,
            "next_attempt_at": self.next_attempt_at,
            "created_at": self.created_at,
        }

    def __repr__(self) -> str:
        return f"OutboxEntry({self.event_id!r}, {self.exporter!r})"


def _live_specs(host: Host) -> Sequence[ExporterSpec]:
    worker = getattr(host, "outbox", None) or getattr(host, "_outbox", None)
    if isinstance(worker, OutboxWorker):
        return worker.live_specs
    # Not started yet: queue for every registered exporter (the worker decides later).
    return tuple(host.registry.exporters.values())


def outbox_rows(host: Host, event: Mapping[str, Any]) -> list[OutboxEntry]:
    """The outbox rows for one ``event_logs`` row (its column values): one per exporter
    whose ``event_types`` match, whose plugin is active for the event's workspace and
    which is configured in this host. Submit each right after the event row, so both
    land in the same commit: ``host.writer.submit_values(OUTBOX_INSERT, row.values())``
    (``host.writer.submit(row)`` works too)."""
    specs = _live_specs(host)
    if not specs:
        return []
    event_type = event["event_type"]
    workspace = event["workspace_id"]
    rows: list[OutboxEntry] = []
    for spec in specs:
        if spec.event_types is not None and event_type not in spec.event_types:
            continue
        if not host.is_active(spec.plugin, workspace):
            continue
        rows.append(OutboxEntry(event["id"], spec.name, event["created_at"]))
    return rows


# -- reading -----------------------------------------------------------------------------


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def event_dict(row: Mapping[Any, Any]) -> dict[str, Any]:
    """An ``event_logs`` row as exporters receive it (JSON-ready; ``created_at`` ISO)."""
    created = _aware(row["created_at"])
    return {
        "id": row["id"],
        "event_type": row["event_type"],
        "workspace_id": row["workspace_id"],
        "user_id": row["user_id"],
        "org_id": row["org_id"],
        "status": row["status"],
        "context": row["context"] if row["context"] is not None else {},
        "trace_id": row["trace_id"],
        "run_id": row["run_id"],
        "span_id": row["span_id"],
        "latency_ms": row["latency_ms"],
        "created_at": created.isoformat() if created is not None else None,
    }


def retry_due_now(engine: sa.Engine, exporter: str | None = None) -> int:
    """Make pending rows that are backing off due now (for ``synthhost queue drain``)."""
    t = OUTBOX
    query = sa.update(t).where(t.c.state == PENDING).values(next_attempt_at=utcnow())
    if exporter is not None:
        query = query.where(t.c.exporter == exporter)
    with engine.begin() as conn:
        return int(conn.execute(query).rowcount or 0)


def queue_stats(engine: sa.Engine, exporters: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Per exporter: ``pending`` (never tried), ``retrying`` (pending after a failed
    attempt), ``in_flight``, ``delivered`` (kept for the retention window), ``parked``,
    ``oldest_pending_age_s`` (oldest row not yet delivered nor parked, ``None`` if
    none) and ``last_error`` (the most recent error of a row not yet delivered).
    ``exporters`` adds zero rows for exporters with nothing queued."""
    empty = {
        "pending": 0, "in_flight": 0, "delivered": 0, "retrying": 0, "parked": 0,
        "oldest_pending_age_s": None, "last_error": None,
    }
    out: dict[str, dict[str, Any]] = {name: dict(empty) for name in exporters}
    t = OUTBOX
    retried = sa.case((t.c.attempts > 0, 1), else_=0).label("retried")
    query = (
        sa.select(t.c.exporter, t.c.state, retried, sa.func.count(), sa.func.min(t.c.created_at))
        .group_by(t.c.exporter, t.c.state, retried)
    )
    now = utcnow()
    oldest: dict[str, datetime] = {}
    with engine.connect() as conn:
        for exporter, state, was_retried, count, first in conn.execute(query):
            stats = out.setdefault(exporter, dict(empty))
            key = "retrying" if state == PENDING and was_retried else state
            if key in stats:
                stats[key] += int(count)
            first = _aware(first)
            if state in (PENDING, IN_FLIGHT) and first is not None:
                oldest[exporter] = min(first, oldest.get(exporter, first))
        for exporter, stats in out.items():
            if exporter in oldest:
                stats["oldest_pending_age_s"] = round((now - oldest[exporter]).total_seconds(), 3)
            if stats["retrying"] or stats["parked"] or stats["in_flight"]:
                stats["last_error"] = conn.execute(
                    sa.select(t.c.last_error)
                    .where(
                        t.c.exporter == exporter,
                        t.c.state.in_((PENDING, IN_FLIGHT, PARKED)),
                        t.c.last_error.is_not(None),
                    )
                    .order_by(t.c.last_attempt_at.desc().nulls_last())
                    .limit(1)
                ).scalar()
    return out


def retry_parked(engine: sa.Engine, exporter: str | None = None) -> int:
    """Put parked rows back to pending (due now). Returns how many."""
    t = OUTBOX
    stmt = sa.update(t).where(t.c.state == PARKED).values(state=PENDING, next_attempt_at=utcnow())
    if exporter is not None:
        stmt = stmt.where(t.c.exporter == exporter)
    with engine.begin() as conn:
        return int(conn.execute(stmt).rowcount or 0)


def prune_delivered(engine: sa.Engine, older_than_s: float, limit: int = 5000) -> int:
    """Delete delivered rows older than ``older_than_s`` (at most ``limit`` per call;
    the events themselves stay in ``event_logs``)."""
    t = OUTBOX
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    ids = (
        sa.select(t.c.id)
        .where(t.c.state == DELIVERED, t.c.delivered_at < cutoff)
        .limit(limit)
        .scalar_subquery()
    )
    with engine.begin() as conn:
        return int(conn.execute(sa.delete(t).where(t.c.id.in_(ids))).rowcount or 0)


# -- the worker -------------------------------------------------------------------------


def _worker_id() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, (RetryableSendError, PermanentSendError)):
        text = f"{type(exc).__name__}: {text}"
    return text[:MAX_ERROR_CHARS]


class _Lane:
    """One exporter's settings and state inside one worker."""

    def __init__(self, spec: ExporterSpec, exporter: Exporter) -> None:
        self.spec = spec
        self.name = spec.name
        self.exporter = exporter
        self.batch_size = max(1, int(getattr(exporter, "batch_size", None) or spec.batch_size))
        self.flush_interval_s = float(getattr(exporter, "flush_interval_s", 0.0) or 0.0)
        self.retry_delay_s = float(getattr(exporter, "retry_delay_s", 1.0))
        self.max_retry_delay_s = float(getattr(exporter, "max_retry_delay_s", 60.0))
        max_attempts = getattr(exporter, "max_attempts", None)
        self.max_attempts: int | None = int(max_attempts) if max_attempts else None
        self.claim_ttl_s = float(getattr(exporter, "claim_ttl_s", 60.0))
        # Batches in flight at once (threads); each claims its own rows.
        self.concurrency = max(1, int(getattr(exporter, "concurrency", 1) or 1))
        self.wake = threading.Event()
        self.threads: list[threading.Thread] = []
        self.failures = 0  # consecutive failed sends: drives the lane's pause
        self.paused_until = 0.0  # time.monotonic() before which the lane sends nothing
        self.send_s = 0.0  # recent send duration (moving average), for the shutdown budget
        self.stats: Counter[str] = Counter()

    def delay(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random."""
        base = min(self.max_retry_delay_s, self.retry_delay_s * 2 ** max(0, attempt - 1))
        return base * random.uniform(0.5, 1.0)


class OutboxWorker:
    """Forwards outbox rows to exporters in background threads (``concurrency`` per
    exporter, default one).

    ``start()`` builds the exporters (``factory(host)``) and starts the threads;
    ``wake()`` makes them look now (it is chained to the writer's commit callback);
    ``stop(timeout)`` sends what is due within ``timeout`` seconds and leaves the rest
    pending for the next start (or another process)."""

    def __init__(
        self,
        host: Host,
        *,
        poll_interval_s: float = 0.2,
        reap_interval_s: float = 5.0,
        retention_s: float | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.host = host
        self.engine: sa.Engine = host.engine
        self.poll_interval_s = poll_interval_s
        self.reap_interval_s = reap_interval_s
        env = getattr(host.settings, "env", {}) or {}
        self.retention_s = (
            retention_s
            if retention_s is not None
            else float(env.get("SYNTHHOST_OUTBOX_RETENTION_S", 86400.0))
        )
        self.worker_id = worker_id or _worker_id()
        self.lanes: dict[str, _Lane] = {}
        self.live_specs: tuple[ExporterSpec, ...] = ()
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self._started = False
        self._lock = threading.Lock()
        self._prev_on_commit: Any = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        lanes: dict[str, _Lane] = {}
        for spec in self.host.registry.exporters.values():
            exporter = spec.factory(self.host)  # a bad configuration fails start-up here
            if exporter is None:
                log.info("exporter %s is not configured; nothing will be queued for it", spec.name)
                continue
            lanes[spec.name] = _Lane(spec, exporter)
        self.lanes = lanes
        self._started = True
        # A fresh event per run: a thread of an earlier run that outlived its stop()
        # (still sending at the deadline) sees it is stale and exits, instead of
        # resuming with its old lane when this run clears the flag.
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self.live_specs = tuple(lane.spec for lane in self.lanes.values())
        writer = getattr(self.host, "writer", None)
        if writer is not None and hasattr(writer, "on_commit"):
            self._prev_on_commit = writer.on_commit
            writer.on_commit = self._on_commit
        for lane in self.lanes.values():
            for index in range(lane.concurrency):
                suffix = f"-{index}" if index else ""
                thread = threading.Thread(
                    target=self._run_lane,
                    args=(lane, index),
                    name=f"synthhost-outbox-{lane.name}{suffix}",
                    daemon=True,
                )
                lane.threads.append(thread)
                thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Send what is due (partial batches included) for up to ``timeout`` seconds,
        then stop. Returns False if a lane was still busy at the deadline (its claimed
        rows become claimable again when the claim expires)."""
        if not self._started:
            return True
        if timeout is None:
            timeout = float(getattr(self.host.settings, "shutdown_timeout_s", 10.0))
        self._deadline = time.monotonic() + max(0.0, timeout)
        self._stopping.set()
        for lane in self.lanes.values():
            lane.wake.set()
        clean = True
        for lane in self.lanes.values():
            for thread in lane.threads:
                thread.join(max(0.0, self._deadline - time.monotonic()) + 0.05)
            if any(thread.is_alive() for thread in lane.threads):
                clean = False
                log.warning("outbox lane %s still sending at shutdown", lane.name)
        for lane in self.lanes.values():
            close = getattr(lane.exporter, "close", None)
            if close is not None and not any(thread.is_alive() for thread in lane.threads):
                try:
                    close()
                except Exception as exc:  # an exporter's close must not break shutdown
                    log.error("exporter %s failed to close: %s", lane.name, exc)
        writer = getattr(self.host, "writer", None)
        if writer is not None and getattr(writer, "on_commit", None) == self._on_commit:
            writer.on_commit = self._prev_on_commit
        self._started = False
        return clean

    def wake(self) -> None:
        for lane in self.lanes.values():
            lane.wake.set()

    def _on_commit(self, items: list[Any]) -> None:
        prev = self._prev_on_commit
        if prev is not None:
            prev(items)
        for item in items:
            if getattr(item[0], "name", None) == "outbox":
                self.wake()
                return

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        """In-process counters per exporter: batches, delivered, retried, parked, errors."""
        return {name: dict(lane.stats) for name, lane in self.lanes.items()}

    def _count(self, lane: _Lane, key: str, n: int = 1) -> None:
        with self._lock:
            lane.stats[key] += n
            stats = getattr(self.host, "stats", None)
            if stats is not None:
                stats[f"outbox.{lane.name}.{key}"] += n

    # -- the lane loop ---------------------------------------------------------------

    def _run_lane(self, lane: _Lane, index: int) -> None:
        housekeeping = index == 0  # one thread per lane reaps expired claims and prunes
        next_reap = 0.0
        next_prune = time.monotonic() + 60.0
        peek = True
        stopping = self._stopping  # this run's
        while True:
            if stopping is not self._stopping:
                return  # stopped, and a newer start() runs its own threads
            draining = stopping.is_set()
            now = time.monotonic()
            # While draining, start a batch only if it can finish before the deadline.
            if draining and now + 2 * lane.send_s >= self._deadline:
                return
            if not draining and now < lane.paused_until:
                # After a failed send the whole lane pauses: a dead receiver is probed
                # once per backoff delay, not once per batch or per thread.
                stopping.wait(lane.paused_until - now)
                continue
            try:
                if housekeeping and now >= next_reap:
                    self.reap_expired(lane.name)
                    next_reap = now + self.reap_interval_s
                if housekeeping and now >= next_prune and not draining:
                    prune_delivered(self.engine, self.retention_s)
                    next_prune = now + 3600.0
                outcome, wait_hint = self._step(lane, draining, peek)
            except Exception as exc:  # database trouble: keep the lane alive
                log.warning("outbox lane %s: %s", lane.name, exc)
                outcome, wait_hint = "idle", 1.0
            if draining and outcome in ("idle", "failed"):
                return  # nothing due, or the receiver is down: leave the rest pending
            if outcome == "full" and (lane.flush_interval_s <= 0 or draining):
                peek = False  # a full batch went out: more is likely due, claim directly
                continue
            peek = True
            if outcome in ("sent", "full", "failed"):
                continue
            wait = self.poll_interval_s if wait_hint is None else min(self.poll_interval_s, wait_hint)
            lane.wake.wait(wait)
            lane.wake.clear()

    def _step(self, lane: _Lane, draining: bool, peek: bool = True) -> tuple[str, float | None]:
        """Claim one batch and send it. Returns (outcome, wait hint); outcome is idle,
        sent, full (a full batch was sent) or failed."""
        if peek:
            t = OUTBOX
            now = utcnow()
            due = (t.c.exporter == lane.name, t.c.state == PENDING, t.c.next_attempt_at <= now)
            # A read first: an idle poll takes no write lock (SQLite) and claims nothing.
            with self.engine.connect() as conn:
                seen = conn.execute(
                    sa.select(t.c.created_at)
                    .where(*due)
                    .order_by(t.c.next_attempt_at)
                    .limit(lane.batch_size)
                ).scalars().all()
            if not seen:
                return "idle", None
            if lane.flush_interval_s > 0 and not draining and len(seen) < lane.batch_size:
                oldest = min(_aware(c) or now for c in seen)
                ready_in = lane.flush_interval_s - (now - oldest).total_seconds()
                if ready_in > 0:
                    return "idle", ready_in  # let the batch fill, as the SDK's upload interval would
        claimed, events = self.claim_events(lane.name, lane.batch_size, lane.claim_ttl_s)
        if not claimed:
            return "idle", None
        outcome, hint = self._deliver(lane, claimed, events)
        if outcome == "sent" and len(claimed) == lane.batch_size:
            outcome = "full"
        return outcome, hint

    @contextlib.contextmanager
    def _bookkeeping(self) -> Iterator[sa.Connection]:
        """A transaction for outbox state changes. On PostgreSQL it commits without
        waiting for the WAL flush: a database crash can only forget the last few changes, and
        each is safe to forget (a lost claim or retry mark expires and is re-claimed; a
        lost delivered mark means a re-send, which the message id makes harmless)."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            yield conn

    def claim(self, exporter: str, limit: int, ttl_s: float = 60.0) -> list[tuple[int, str, int]]:
        """Claim up to ``limit`` due rows: ``[(outbox id, event id, attempts)]``."""
        stmt = self._claim_statement(exporter, limit, ttl_s)
        with self._bookkeeping() as conn:
            rows = conn.execute(stmt).all()
        return sorted((int(r[0]), str(r[1]), int(r[2])) for r in rows)

    def claim_events(
        self, exporter: str, limit: int, ttl_s: float = 60.0
    ) -> tuple[list[tuple[int, str, int]], dict[str, dict[str, Any]]]:
        """Claim up to ``limit`` due rows and load their events: ``(claimed as from
        :meth:`claim`, {event id: event_dict})``; a claimed row whose event is gone has
        no entry. On PostgreSQL one statement does both (the claiming UPDATE as a CTE
        joined to ``event_logs``); on SQLite a claim, then one SELECT."""
        if self.engine.dialect.name != "postgresql":
            claimed = self.claim(exporter, limit, ttl_s)
            if not claimed:
                return [], {}
            with self.engine.connect() as conn:
                found = conn.execute(
                    sa.select(EVENTS).where(EVENTS.c.id.in_([event_id for _, event_id, _ in claimed]))
                ).mappings().all()
            return claimed, {row["id"]: event_dict(row) for row in found}
        updated = self._claim_statement(exporter, limit, ttl_s).cte("claimed")
        stmt = sa.select(
            updated.c.id.label("outbox_id"), updated.c.event_id.label("outbox_event_id"),
            updated.c.attempts.label("outbox_attempts"), *EVENTS.columns,
        ).select_from(updated.outerjoin(EVENTS, EVENTS.c.id == updated.c.event_id))
        with self._bookkeeping() as conn:
            rows = conn.execute(stmt).mappings().all()
        claimed = sorted((int(r["outbox_id"]), str(r["outbox_event_id"]), int(r["outbox_attempts"])) for r in rows)
        return claimed, {r["id"]: event_dict(r) for r in rows if r["id"] is not None}

    def _claim_statement(self, exporter: str, limit: int, ttl_s: float) -> Any:
        t = OUTBOX
        now = utcnow()
        candidates = (
            sa.select(t.c.id)
            .where(t.c.exporter == exporter, t.c.state == PENDING, t.c.next_attempt_at <= now)
            .order_by(t.c.next_attempt_at)
            .limit(limit)
        )
        if self.engine.dialect.name == "postgresql":
            # A materialized CTE runs the locking SELECT exactly once. (As an IN
            # subquery PostgreSQL may re-run it per row, and with SKIP LOCKED each run
            # can return other rows: the claim would exceed its LIMIT.)
            picked = (
                candidates.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
            )
            where: Any = t.c.id == picked.c.id
        else:
            # SQLite: one UPDATE statement is atomic (one writer at a time).
            where = t.c.id.in_(candidates.scalar_subquery())
        return (
            sa.update(t)
            .where(where, t.c.state == PENDING)
            .values(state=IN_FLIGHT, claimed_by=self.worker_id, claimed_until=now + timedelta(seconds=ttl_s))
            .returning(t.c.id, t.c.event_id, t.c.attempts)
        )

    def reap_expired(self, exporter: str) -> int:
        """Re-queue rows whose claim expired (their worker died or hung)."""
        t = OUTBOX
        now = utcnow()
        expired = (t.c.exporter == exporter, t.c.state == IN_FLIGHT, t.c.claimed_until < now)
        with self.engine.connect() as conn:
            if conn.execute(sa.select(t.c.id).where(*expired).limit(1)).first() is None:
                return 0
        with self._bookkeeping() as conn:
            n = conn.execute(
                sa.update(t)
                .where(*expired)
                .values(
                    state=PENDING,
                    attempts=t.c.attempts + 1,  # the batch may have gone out: count it
                    next_attempt_at=now,
                    claimed_by=None,
                    claimed_until=None,
                    last_error="claim expired (worker stopped or send hung)",
                    last_attempt_at=now,
                )
            ).rowcount
        if n:
            log.warning("outbox %s: re-queued %d rows whose claim expired", exporter, n)
        return int(n or 0)

    def _deliver(
        self, lane: _Lane, claimed: list[tuple[int, str, int]], events: Mapping[str, dict[str, Any]]
    ) -> tuple[str, float | None]:
        by_event = {event_id: (row_id, attempts) for row_id, event_id, attempts in claimed}
        missing = [by_event[e][0] for e in by_event if e not in events]
        if missing:  # the event row was rejected or purged: nothing to send, ever
            self._finish(lane, missing, PARKED, "event_logs row not found")
            self._count(lane, "parked", len(missing))
        batch = [events[e] for e in by_event if e in events]
        if not batch:
            return "sent", None
        ids = [by_event[e["id"]][0] for e in batch]
        self._count(lane, "batches")
        started = time.monotonic()
        try:
            try:
                lane.exporter.send(batch)
            finally:
                took = time.monotonic() - started
                lane.send_s = max(took, 0.8 * lane.send_s + 0.2 * took)
        except PermanentSendError as exc:
            hit, rest = self._split(batch, by_event, exc.event_ids)
            self._finish(lane, hit, PARKED, _error_text(exc))
            self._release(rest)
            self._count(lane, "parked", len(hit))
            log.error("outbox %s: parked %d events: %s", lane.name, len(hit), _error_text(exc))
            lane.failures = 0
            return "sent", None
        except Exception as exc:
            event_ids = exc.event_ids if isinstance(exc, RetryableSendError) else None
            hit, rest = self._split(batch, by_event, event_ids)
            lane.failures += 1
            parked = self._retry(lane, hit, _error_text(exc), by_event)
            self._release(rest)
            key = "retried" if isinstance(exc, RetryableSendError) else "errors"
            if len(hit) > parked:  # rows that gave up are counted as parked only
                self._count(lane, key, len(hit) - parked)
            log.warning(
                "outbox %s: send failed (%d events, attempt %d): %s",
                lane.name, len(hit), lane.failures, _error_text(exc),
            )
            delay = lane.delay(lane.failures)
            lane.paused_until = max(lane.paused_until, time.monotonic() + delay)
            return "failed", delay
        lane.failures = 0
        self._finish(lane, ids, DELIVERED, None)
        self._count(lane, "delivered", len(ids))
        return "sent", None

    @staticmethod
    def _split(
        batch: list[dict[str, Any]],
        by_event: Mapping[str, tuple[int, int]],
        event_ids: frozenset[str] | None,
    ) -> tuple[list[int], list[int]]:
        if event_ids is None:
            return [by_event[e["id"]][0] for e in batch], []
        hit = [by_event[e["id"]][0] for e in batch if e["id"] in event_ids]
        rest = [by_event[e["id"]][0] for e in batch if e["id"] not in event_ids]
        return hit, rest

    def _ids(self, ids: list[int]) -> sa.ColumnElement[bool]:
        """``outbox.id`` among ``ids``: one array parameter on PostgreSQL (``= ANY``),
        so a batch's statement is the same text whatever its size; ``IN`` on SQLite."""
        if self.engine.dialect.name == "postgresql":
            return OUTBOX.c.id == sa.any_(sa.bindparam(None, list(ids), type_=PG_ARRAY(sa.BigInteger())))
        return OUTBOX.c.id.in_(ids)

    def _finish(self, lane: _Lane, ids: list[int], state: str, error: str | None) -> None:
        if not ids:
            return
        t = OUTBOX
        now = utcnow()
        values: dict[str, Any] = {
            "state": state,
            "attempts": t.c.attempts + 1,
            "claimed_by": None,
            "claimed_until": None,
            "last_attempt_at": now,
        }
        guard: sa.ColumnElement[bool]
        if state == DELIVERED:
            values["delivered_at"] = now
            # Delivered is true whoever holds the claim now: never regress it.
            guard = t.c.state.in_((PENDING, IN_FLIGHT))
        else:
            values["last_error"] = error
            guard = sa.and_(t.c.state == IN_FLIGHT, t.c.claimed_by == self.worker_id)
        with self._bookkeeping() as conn:
            conn.execute(sa.update(t).where(self._ids(ids), guard).values(**values))

    def _retry(
        self, lane: _Lane, ids: list[int], error: str, by_event: Mapping[str, tuple[int, int]]
    ) -> int:
        """Back to pending with backoff, or parked past ``max_attempts``: how many parked."""
        if not ids:
            return 0
        t = OUTBOX
        now = utcnow()
        attempts = {row_id: n for row_id, n in by_event.values()}
        park = [i for i in ids if lane.max_attempts is not None and attempts[i] + 1 >= lane.max_attempts]
        if park:
            self._finish(lane, park, PARKED, f"gave up after {lane.max_attempts} attempts: {error}")
            self._count(lane, "parked", len(park))
        parked = set(park)
        retry = [i for i in ids if i not in parked]
        if not retry:
            return len(park)
        # One delay for the batch: it was one request, it is retried as one.
        delay = lane.delay(max(attempts[i] for i in retry) + 1)
        with self._bookkeeping() as conn:
            conn.execute(
                sa.update(t)
                .where(self._ids(retry), t.c.state == IN_FLIGHT, t.c.claimed_by == self.worker_id)
                .values(
                    state=PENDING,
                    attempts=t.c.attempts + 1,
                    next_attempt_at=now + timedelta(seconds=delay),
                    claimed_by=None,
                    claimed_until=None,
                    last_error=error,
                    last_attempt_at=now,
                )
            )
        return len(park)

    def _release(self, ids: list[int]) -> None:
        """Give back rows that were claimed but not sent (due now, attempts unchanged)."""
        if not ids:
            return
        t = OUTBOX
        with self._bookkeeping() as conn:
            conn.execute(
                sa.update(t)
                .where(self._ids(ids), t.c.state == IN_FLIGHT, t.c.claimed_by == self.worker_id)
                .values(state=PENDING, claimed_by=None, claimed_until=None, next_attempt_at=utcnow())
            )
