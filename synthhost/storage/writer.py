"""The batched writer (group commit).

Rows submitted on the call path go to an in-memory queue; one background thread takes
everything queued, inserts it table by table in one transaction, and commits. A call
never waits for its own row. ``flush()`` waits until every row submitted before it is
committed: the runner calls it before a run reports done, and the host calls it on
shutdown (normal exit, Ctrl-C, SIGTERM).

If the database is unreachable the batch is kept and retried with backoff, so rows are
delayed, not lost, while the process lives.

The queue is bounded (``max_pending`` rows, ``SYNTHHOST_WRITER_MAX_PENDING``, default
50,000): when the database is slower than the calls and the queue is full, ``submit``
waits until the writer thread has committed a batch (backpressure on the call path:
calls slow down to the database's pace instead of memory growing without bound, and no
row is dropped). ``stats["writer_backpressure_waits"]`` counts the submits that waited,
``stats["writer_queue_max"]`` is the queue's high-water mark. A submit never waits when
the writer thread is not running (not started, stopped or crashed), or from the writer
thread itself. One transaction takes at most ``10 x max_batch`` rows.
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel

from synthhost.call import ID_SCOPE
from synthhost.gil import CHUNK_ROWS, chunks, pause
from synthhost.storage import spool

log = logging.getLogger("synthhost.writer")

_Item = tuple[sa.Table, dict[str, Any], tuple[str, ...] | None]


def row_values(row: SQLModel) -> tuple[sa.Table, dict[str, Any]]:
    table: sa.Table = type(row).__table__  # type: ignore[attr-defined]
    return table, {c.name: getattr(row, c.name) for c in table.columns}


class BatchedWriter:
    def __init__(
        self,
        engine: sa.Engine,
        *,
        max_batch: int = 1000,
        max_delay_s: float = 0.02,
        max_pending: int = 50_000,
        stats: Counter[str] | None = None,
        on_commit: Callable[[list[_Item]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self.max_pending = max_pending
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.on_commit = on_commit
        self._queue: deque[tuple[int, _Item]] = deque()
        # submit_values takes the lock itself (a C-level context manager, not Condition's
        # Python-level one: a call submits ten rows).
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._submitted = 0
        self._committed = 0
        self._closing = False
        self._abandon = False
        self._flush_waiters = 0
        self._thread: threading.Thread | None = None
        # Per-table value transforms applied in the writer thread, off the call path
        # (the host uses one to redact secrets from spans and events).
        self.transforms: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        self._prepared: dict[tuple[Any, tuple[str, ...]], _Prepared | None] = {}

    # -- producer side (any thread, the event loop included) ------------------------

    def submit(self, row: SQLModel, *, upsert_on: tuple[str, ...] | None = None) -> None:
        """Queue one row. ``upsert_on`` names the conflict columns for an upsert (the
        run row is written when it starts and again when it ends)."""
        table, values = row_values(row)
        self.submit_values(table, values, upsert_on=upsert_on)

    def submit_values(
        self, table: sa.Table, values: dict[str, Any], *, upsert_on: tuple[str, ...] | None = None
    ) -> None:
        scope = ID_SCOPE.get()
        if scope is not None:  # inside a durable run (synthhost.steps)
            if scope.abandoned:
                return
            if upsert_on is None:
                upsert_on = _keep_first(table, values)
        with self._lock:
            if len(self._queue) >= self.max_pending:
                self._wait_for_room()
            self._submitted += 1
            self._queue.append((self._submitted, (table, values, upsert_on)))
            depth = len(self._queue)
            if depth >= self.max_batch:
                self._cond.notify_all()
        self.stats["rows_submitted"] += 1
        if depth > self.stats["writer_queue_max"]:
            self.stats["writer_queue_max"] = depth

    def _wait_for_room(self) -> None:
        """Backpressure (holding ``self._cond``): wait until the queue is below
        ``max_pending``, while a writer thread is there to drain it."""
        waited = False
        while len(self._queue) >= self.max_pending:
            thread = self._thread
            if thread is None or not thread.is_alive() or thread is threading.current_thread() or self._closing:
                return
            if not waited:
                waited = True
                self.stats["writer_backpressure_waits"] += 1
            self._cond.notify_all()  # the writer may be sleeping on a group-commit wait
            self._cond.wait(0.5)

    @property
    def pending(self) -> int:
        return self._submitted - self._committed

    def flush_sync(self, timeout: float | None = None) -> bool:
        """Block until everything submitted so far is committed. False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            self._flush_waiters += 1
            self._cond.notify_all()
            try:
                return self._wait_committed(target, deadline)
            finally:
                self._flush_waiters -= 1

    def _wait_committed(self, target: int, deadline: float | None) -> bool:
        """Wait (holding ``self._cond``) until row ``target`` is committed."""
        while self._committed < target:
            if self._thread is None or not self._thread.is_alive():
                self._drain_locked()
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._cond.wait(remaining if remaining is not None else 0.5)
        return True

    async def flush(self, timeout: float | None = None) -> bool:
        if self._submitted == self._committed:
            return True
        return await anyio.to_thread.run_sync(self.flush_sync, timeout, abandon_on_cancel=True)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="synthhost-writer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0, spool_dir: Path | None = None) -> bool:
        """Flush and stop. If the database did not take every row by the deadline, the
        rest is written to a spool file in ``spool_dir`` (replayed by the next host that
        starts on the same spool directory) and False is returned."""
        ok = self.flush_sync(timeout)
        with self._cond:
            self._closing = True
            if not ok:
                self._abandon = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(0.1, timeout))
            self._thread = None
        if not ok:
            with self._cond:
                items = [item for _, item in self._queue]
                self._queue.clear()
            if spool_dir is not None and items:
                path = spool.write(spool_dir, items)
                self.stats["rows_spooled"] += len(items)
                log.error("database unavailable at shutdown: %d rows spooled to %s", len(items), path)
            else:
                log.error("writer closed with %d rows not committed", len(items))
        return ok

    # -- consumer side -------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.05
        while True:
            with self._cond:
                if not self._queue and not self._closing:
                    self._cond.wait(self.max_delay_s * 10)
                if not self._queue:
                    if self._closing:
                        return
                    continue
                batch = self._take()
            if len(batch) < self.max_batch and not self._closing and not self._flush_waiters:
                # Group commit: let concurrent calls join the batch, unless someone (a
                # run about to report done) is waiting for it.
                time.sleep(self.max_delay_s)
                with self._cond:
                    batch = self._take()
            try:
                self._write(batch)
            except sa.exc.OperationalError as exc:
                if self._abandon:
                    return  # close() spools what is left
                self.stats["writer_retries"] += 1
                log.warning("database unavailable, retrying %d rows: %s", len(batch), exc.orig)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception:
                self._write_one_by_one(batch)
            backoff = 0.05
            self._mark_done(batch)

    def _take(self) -> list[tuple[int, _Item]]:
        return list(itertools.islice(self._queue, 10 * self.max_batch))

    def _drain_locked(self) -> None:
        # No thread (not started or crashed): write in the caller's thread.
        batch = list(self._queue)
        try:
            self._write(batch)
        except Exception:
            self._write_one_by_one(batch)
        self._committed = max(self._committed, batch[-1][0] if batch else self._submitted)
        for _ in batch:
            self._queue.popleft()
        self._cond.notify_all()

    def _mark_done(self, batch: list[tuple[int, _Item]]) -> None:
        with self._cond:
            for _ in batch:
                self._queue.popleft()
            self._committed = batch[-1][0]
            self._cond.notify_all()
        self.stats["rows_committed"] += len(batch)
        self.stats["commits"] += 1

    def _write(self, batch: list[tuple[int, _Item]]) -> None:
        # Inserts grouped by table and column set; upserts keep their submission order
        # (a run's "running" row must not overwrite its final one), consecutive rows of
        # one shape sharing an executemany.
        inserts: dict[tuple[sa.Table, tuple[str, ...]], list[dict[str, Any]]] = defaultdict(list)
        upserts: list[tuple[Any, tuple[str, ...], list[dict[str, Any]]]] = []
        dialect = self.engine.dialect.name
        for n, (_, (table, values, upsert_on)) in enumerate(batch, 1):
            if not n % CHUNK_ROWS:
                pause()  # transforms (redaction) run Python per row: hand the GIL back between chunks
            transform = self.transforms.get(table.name)
            values = transform(values) if transform else values
            columns = tuple(values)
            if upsert_on is None:
                inserts[(table, columns)].append(values)
                continue
            stmt = _upsert_statement(dialect, table, upsert_on, columns)
            if upserts and upserts[-1][0] is stmt:
                upserts[-1][2].append(values)
            else:
                upserts.append((stmt, columns, [values]))
        with self.engine.begin() as conn:
            # Small statements with a GIL hand-off between them (see synthhost.gil).
            for (table, columns), rows in inserts.items():
                self._execute(conn, table, table.insert(), columns, rows)
            for stmt, columns, rows in upserts:
                self._execute(conn, stmt, stmt, columns, rows)
        if self.on_commit is not None:
            self.on_commit([item for _, item in batch])

    def _execute(self, conn: sa.Connection, key: Any, stmt: Any, columns: tuple[str, ...],
                 rows: list[dict[str, Any]]) -> None:
        """``executemany`` in chunks; through a prepared statement when there is one."""
        cache_key = (key, columns)
        if cache_key in self._prepared:
            prepared = self._prepared[cache_key]
        else:
            prepared = self._prepared[cache_key] = _Prepared.build(conn.dialect, stmt, columns)
        for part in chunks(rows):
            if prepared is None:
                conn.execute(stmt, part)
            else:
                conn.exec_driver_sql(prepared.sql, prepared.parameters(part))

    def _write_one_by_one(self, batch: list[tuple[int, _Item]]) -> None:
        for _, (table, values, upsert_on) in batch:
            transform = self.transforms.get(table.name)
            values = transform(values) if transform else values
            try:
                with self.engine.begin() as conn:
                    if upsert_on is None:
                        conn.execute(table.insert(), [values])
                    else:
                        conn.execute(_upsert_statement(conn.dialect.name, table, upsert_on, tuple(values)), [values])
            except Exception as exc:
                self.stats["rows_rejected"] += 1
                log.error("row rejected by %s: %s", table.name, exc)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A statement compiled once for one column set, with the dialect's bind processors
    in parameter order. SQLAlchemy's ``executemany`` rebuilds every row's parameters
    through the compiler's generic path (``construct_params``: about 20 µs a row here,
    most of the writer thread's time, all of it holding the GIL the calls need); this
    applies the same processors to the same values, then hands the driver the rows."""

    sql: str
    keys: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]
    positional: bool

    @classmethod
    def build(cls, dialect: sa.Dialect, stmt: Any, columns: tuple[str, ...]) -> _Prepared | None:
        """None when the statement needs what only the generic path does: Python-side
        column defaults, escaped or expanding parameters, a parameter that is not one of
        ``columns``."""
        try:
            compiled: Any = stmt.compile(dialect=dialect, column_keys=list(columns))
        except Exception:
            return None
        if (compiled.insert_prefetch or compiled.escaped_bind_names or compiled.literal_execute_params
                or compiled.post_compile_params):
            return None
        names = list(compiled.positiontup) if compiled.positional else list(compiled.bind_names.values())
        keys = tuple(compiled.binds[name].key for name in names)
        if not set(keys) <= set(columns) or (not compiled.positional and tuple(names) != keys):
            return None
        processors = compiled._bind_processors
        return cls(compiled.string, keys, tuple(processors.get(name) for name in names), compiled.positional)

    def parameters(self, rows: Sequence[dict[str, Any]]) -> list[Any]:
        keys = self.keys
        get = operator.itemgetter(*keys)  # one C call per row for every value
        processed = [(i, p) for i, p in enumerate(self.processors) if p is not None]
        out: list[Any] = []
        for row in rows:
            values = get(row)
            if len(keys) == 1:
                values = (values,)
            if processed:
                values = list(values)
                for i, process in processed:
                    values[i] = process(values[i])
            out.append(tuple(values) if self.positional else dict(zip(keys, values, strict=True)))
        return out


# ``upsert_on`` starting with this marker: insert or ignore (the first write wins).
KEEP_FIRST = "!keep-first"


def _keep_first(table: sa.Table, values: dict[str, Any]) -> tuple[str, ...] | None:
    """The idempotent path for rows written inside a durable step (their ids are
    deterministic, see ``synthhost.call.IdScope``): a step executed again after a crash
    submits the same rows, and the ones already committed are ignored, not counted
    twice. A table whose primary key the row does not carry (the outbox numbers its
    rows) is keyed by a unique index the row does carry (the outbox's (event,
    exporter)); without one, the row inserts as usual."""
    keys = tuple(c.name for c in table.primary_key.columns)
    if keys and all(k in values for k in keys):
        return (KEEP_FIRST, *keys)
    for index in table.indexes:
        columns = tuple(c.name for c in index.columns)
        if index.unique and columns and all(c in values for c in columns):
            return (KEEP_FIRST, *columns)
    return None


@functools.lru_cache(maxsize=1024)
def _upsert_statement(dialect: str, table: sa.Table, keys: tuple[str, ...], columns: tuple[str, ...]) -> Any:
    """``INSERT .. ON CONFLICT (keys) DO UPDATE`` for rows with these columns, built once:
    building ``excluded`` copies every column of the table (it was a quarter of the
    writer thread's time, and the writer competes with calls for the GIL)."""
    stmt = (postgresql if dialect == "postgresql" else sqlite).insert(table)
    if keys[0] == KEEP_FIRST:
        return stmt.on_conflict_do_nothing(index_elements=list(keys[1:]))
    update = {k: stmt.excluded[k] for k in columns if k not in keys}
    if not update:
        return stmt.on_conflict_do_nothing(index_elements=list(keys))
    return stmt.on_conflict_do_update(index_elements=list(keys), set_=update)
