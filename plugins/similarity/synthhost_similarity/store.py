"""Per-workspace reference libraries, kept in step with ``prompt_references``.

Each workspace gets its own :class:`~synthhost_similarity.index.VectorIndex` (strict
tenant isolation: a search only ever sees its own workspace's rows), loaded lazily on
first use. Prompts this process adds go into the index at once; other processes'
prompts arrive through :meth:`ReferenceStore.refresh`, at most every ``refresh_s``:

- Rows are read incrementally by ``created_at``. Ids are made and ``created_at`` is
  stamped by the writing process before its batched writer commits, so a row can become
  visible after rows stamped later: each refresh re-reads an overlap window
  (``overlap_s``, default 15 s) behind the newest row seen, fetching only the ids first
  and the vectors of the ids it does not know yet.
- Removing a reference (``known rm``) bumps the workspace's ``epoch`` in
  ``similarity_settings``; a process that sees a new epoch rebuilds the index.
- The same query round reads the workspace's threshold and action.
- A library holds at most ``max_references`` (``SYNTHHOST_SIMILARITY_MAX_REFERENCES``)
  automatically logged prompts: past that, the oldest (in index order: load order by
  ``created_at``, then arrival) are evicted down to 90 % of the bound, so the in-place
  compaction runs once per ``max_references / 10`` additions, not per add. Known
  prompts (``known add``) are never evicted and do not count. Evictions are counted
  (``similarity.references_evicted`` in the host's stats), logged once per workspace,
  and deleted from ``prompt_references`` by the next refresh (with the workspace's
  prompt rows beyond the bound, oldest first, for rows other processes wrote).

Blocking database work: call :meth:`refresh` from a worker thread, never the event loop.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from synthhost_similarity.embedders import Vector
from synthhost_similarity.index import EXACT_LIMIT, Match, VectorIndex
from synthhost_similarity.models import (
    LOG_REFERENCE_TEXT_CAP,
    PromptReference,
    SimilaritySettings,
)

log = logging.getLogger("synthhost.similarity")

LOAD_BATCH = 2_000
REFS = PromptReference.__table__
SETTINGS = SimilaritySettings.__table__


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Ref:
    """What the index keeps per row: enough to log a match without a database read."""

    id: str
    kind: str
    preview: str
    text_hash: str = ""  # to forget the text when the row is evicted


@dataclass
class WorkspaceLibrary:
    workspace: str
    index: VectorIndex[Ref] | None = None
    ids: set[str] = field(default_factory=set)
    hashes: set[str] = field(default_factory=set)
    watermark: datetime | None = None
    epoch: int = 0
    threshold: Decimal | None = None
    action: str | None = None
    loaded: bool = False
    next_refresh: float = 0.0
    exact_limit: int = EXACT_LIMIT
    keep_recent_s: float = 15.0
    max_references: int = 0  # logged prompts kept; 0: no bound
    prompts: int = 0  # logged prompts (kind "prompt") in the index
    evicted_ids: list[str] = field(default_factory=list)  # to delete from the table
    warned: set[str] = field(default_factory=set)  # workspaces whose eviction was logged (shared)
    stats: Counter[str] = field(default_factory=Counter)
    growing: bool = False  # a GrowJob is queued for this library's index
    # Rows this process added lately: their commit may trail a full reload, which must
    # not drop them from the index.
    recent: deque[tuple[float, Ref, str, Vector]] = field(default_factory=deque)
    refresh_lock: threading.Lock = field(default_factory=threading.Lock)
    mutate_lock: threading.Lock = field(default_factory=threading.Lock)

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else 0

    def search(self, vector: Vector, threshold: float | None = None) -> Match[Ref] | None:
        index = self.index
        if index is None or index.dim != vector.shape[-1]:
            return None
        return index.search(vector, threshold=threshold)

    def add(self, ref: Ref, text_hash: str, vector: Vector) -> bool:
        """Index a row this process has just queued; False if already indexed."""
        with self.mutate_lock:
            now = time.monotonic()
            self.recent.append((now, ref, text_hash, vector))
            while self.recent and self.recent[0][0] < now - self.keep_recent_s:
                self.recent.popleft()
            return self._add(ref, text_hash, vector)

    def _add(self, ref: Ref, text_hash: str, vector: Vector) -> bool:
        if ref.id in self.ids:
            return False
        if self.index is None:
            self.index = VectorIndex(int(vector.shape[-1]), exact_limit=self.exact_limit)
        elif self.index.dim != vector.shape[-1]:
            return False
        # Index first: a reader that sees the id (searches take no lock) must also find
        # the vector (a race a loaded CI machine hit between these lines).
        self.index.add(vector, ref)
        self.ids.add(ref.id)
        self.hashes.add(text_hash)
        if ref.kind == "prompt":
            self.prompts += 1
            self.evict()
        return True

    def evict(self) -> int:
        """Drop the oldest logged prompts once there are more than ``max_references``,
        down to 90 % of it (callers hold ``mutate_lock``). Returns how many."""
        index = self.index
        if index is None or not self.max_references or self.prompts <= self.max_references:
            return 0
        drop = self.prompts - (self.max_references - self.max_references // 10)
        items = index.items()
        keep = np.ones(len(items), dtype=bool)
        dropped: list[Ref] = []
        for row, ref in enumerate(items):
            if ref.kind == "prompt":
                keep[row] = False
                dropped.append(ref)
                if len(dropped) == drop:
                    break
        index.compact(keep)
        for ref in dropped:
            self.ids.discard(ref.id)
            self.hashes.discard(ref.text_hash)
            self.evicted_ids.append(ref.id)
        self.prompts -= len(dropped)
        self.stats["similarity.references_evicted"] += len(dropped)
        if self.workspace not in self.warned:
            self.warned.add(self.workspace)
            log.warning(
                "similarity: workspace %s reached %d logged references; evicting the oldest "
                "(%d now; SYNTHHOST_SIMILARITY_MAX_REFERENCES, counted in "
                "similarity.references_evicted; logged once)",
                self.workspace,
                self.max_references,
                len(dropped),
            )
        return len(dropped)

    def replace(self, fresh: WorkspaceLibrary, epoch: int) -> None:
        """Take a freshly loaded library's contents (holders of ``self`` see them), and
        keep this process's recent additions that the load did not see yet."""
        with self.mutate_lock:
            self.index, self.ids, self.hashes = fresh.index, fresh.ids, fresh.hashes
            self.prompts = fresh.prompts
            self.evicted_ids.extend(fresh.evicted_ids)
            self.watermark, self.epoch, self.loaded = fresh.watermark, epoch, True
            for _, ref, digest, vector in self.recent:
                self._add(ref, digest, vector)


class ReferenceStore:
    def __init__(
        self,
        engine: Engine,
        embedder_name: str,
        *,
        refresh_s: float = 1.0,
        overlap_s: float = 15.0,
        exact_limit: int | None = None,
        max_references: int = 0,
        stats: Counter[str] | None = None,
    ) -> None:
        self.engine = engine
        self.embedder_name = embedder_name
        self.refresh_s = refresh_s
        self.overlap = timedelta(seconds=overlap_s)
        self.exact_limit = EXACT_LIMIT if exact_limit is None else exact_limit
        self.max_references = max_references
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._warned: set[str] = set()
        self._libraries: dict[str, WorkspaceLibrary] = {}
        self._lock = threading.Lock()

    def library(self, workspace: str) -> WorkspaceLibrary:
        lib = self._libraries.get(workspace)
        if lib is None:
            with self._lock:
                lib = self._libraries.setdefault(workspace, self._new_library(workspace))
        return lib

    def _new_library(self, workspace: str) -> WorkspaceLibrary:
        return WorkspaceLibrary(
            workspace,
            exact_limit=self.exact_limit,
            keep_recent_s=self.overlap.total_seconds(),
            max_references=self.max_references,
            stats=self.stats,
            warned=self._warned,
        )

    def needs_refresh(self, workspace: str) -> bool:
        lib = self._libraries.get(workspace)
        return lib is None or not lib.loaded or time.monotonic() >= lib.next_refresh

    def workspaces(self) -> list[str]:
        return list(self._libraries)

    # -- database side (blocking) -------------------------------------------------------

    def refresh(self, workspace: str, *, force: bool = False) -> WorkspaceLibrary:
        """Bring a workspace's library up to date with the tables (if due). A failed
        refresh of a loaded library keeps serving what it has (and retries after the
        interval); a library that never loaded raises."""
        lib = self.library(workspace)
        with lib.refresh_lock:  # concurrent callers wait for one refresh, then skip
            if not force and lib.loaded and time.monotonic() < lib.next_refresh:
                return lib
            try:
                self._refresh_locked(lib)
            except Exception as exc:
                if not lib.loaded:
                    raise
                log.warning("similarity refresh of %s failed: %s", workspace, exc)
            lib.next_refresh = time.monotonic() + self.refresh_s
            return lib

    def _refresh_locked(self, lib: WorkspaceLibrary) -> None:
        workspace = lib.workspace
        with self.engine.connect() as conn:
            settings = conn.execute(
                sa.select(SETTINGS.c.threshold, SETTINGS.c.action, SETTINGS.c.epoch).where(
                    SETTINGS.c.workspace_id == workspace
                )
            ).first()
            epoch = int(settings.epoch) if settings is not None else 0
            if not lib.loaded or epoch != lib.epoch:
                lib.replace(self._load(conn, workspace), epoch)
            else:
                self._load_new(conn, lib)
        if lib.evicted_ids:
            self._delete_evicted(lib)
        if settings is None:
            lib.threshold, lib.action = None, None
        else:
            threshold = settings.threshold
            lib.threshold = Decimal(threshold) if threshold is not None else None
            lib.action = settings.action

    def _delete_evicted(self, lib: WorkspaceLibrary) -> None:
        """Delete the rows this library evicted, then any logged prompts of the
        workspace beyond the bound (other processes' rows, rows committed after their
        eviction), oldest first. Known prompts are never touched."""
        t = REFS
        with lib.mutate_lock:
            ids, lib.evicted_ids = lib.evicted_ids, []
        prompts = sa.and_(self._where(lib.workspace), t.c.kind == "prompt")
        with self.engine.begin() as conn:
            for start in range(0, len(ids), 500):
                conn.execute(sa.delete(t).where(prompts, t.c.id.in_(ids[start : start + 500])))
            beyond = (
                sa.select(t.c.id)
                .where(prompts)
                .order_by(t.c.created_at.desc(), t.c.id.desc())
                .offset(self.max_references)
                .limit(LOAD_BATCH)
            )
            while self.max_references and (old := [row.id for row in conn.execute(beyond)]):
                conn.execute(sa.delete(t).where(t.c.id.in_(old)))

    def _columns(self) -> list[sa.ColumnElement[object]]:
        t = REFS
        return [
            t.c.id,
            t.c.kind,
            sa.func.substr(t.c.text, 1, LOG_REFERENCE_TEXT_CAP).label("preview"),
            t.c.text_hash,
            t.c.dim,
            t.c.vector,
            t.c.created_at,
        ]

    def _where(self, workspace: str) -> sa.ColumnElement[bool]:
        t = REFS
        return sa.and_(t.c.workspace_id == workspace, t.c.embedder == self.embedder_name)

    def _load(self, conn: sa.Connection, workspace: str) -> WorkspaceLibrary:
        t = REFS
        lib = self._new_library(workspace)
        query = (
            sa.select(*self._columns())
            .where(self._where(workspace))
            .order_by(t.c.created_at, t.c.id)
            .execution_options(yield_per=LOAD_BATCH)
        )
        for rows in _batches(conn.execute(query)):
            self._ingest(lib, rows)
        return lib

    def _load_new(self, conn: sa.Connection, lib: WorkspaceLibrary) -> None:
        t = REFS
        where = self._where(lib.workspace)
        if lib.watermark is not None:
            where = sa.and_(where, t.c.created_at >= lib.watermark - self.overlap)
        recent = conn.execute(sa.select(t.c.id, t.c.created_at).where(where)).all()
        unknown = [row.id for row in recent if row.id not in lib.ids]
        if recent:
            # Advance past rows this process indexed itself too, or the window would
            # grow with every prompt this process adds.
            newest = max(_aware(row.created_at) for row in recent)
            with lib.mutate_lock:
                if lib.watermark is None or newest > lib.watermark:
                    lib.watermark = newest
        for start in range(0, len(unknown), 500):
            chunk = unknown[start : start + 500]
            rows = conn.execute(
                sa.select(*self._columns()).where(t.c.id.in_(chunk)).order_by(t.c.created_at, t.c.id)
            ).all()
            self._ingest(lib, rows)

    def _ingest(self, lib: WorkspaceLibrary, rows: Sequence[Any]) -> None:
        with lib.mutate_lock:  # local adds may run at the same time (event loop)
            self._ingest_locked(lib, rows)

    def _ingest_locked(self, lib: WorkspaceLibrary, rows: Sequence[Any]) -> None:
        vectors: list[bytes] = []
        refs: list[Ref] = []
        dim = lib.index.dim if lib.index is not None else None
        for row in rows:
            created = _aware(row.created_at)
            if lib.watermark is None or created > lib.watermark:
                lib.watermark = created
            if row.id in lib.ids:
                continue
            if dim is None:
                dim = int(row.dim)
            if int(row.dim) != dim or len(row.vector) != dim * 4:
                continue  # another dimension of the same embedder name: not comparable
            lib.ids.add(row.id)
            lib.hashes.add(row.text_hash)
            refs.append(Ref(row.id, row.kind, row.preview or "", row.text_hash))
            vectors.append(bytes(row.vector))
        if not refs or dim is None:
            return
        matrix = np.frombuffer(b"".join(vectors), dtype="<f4").astype(np.float32).reshape(-1, dim)
        if lib.index is None:
            lib.index = VectorIndex(dim, capacity=max(256, len(refs)), exact_limit=lib.exact_limit)
        lib.index.add_many(matrix, refs)
        lib.prompts += sum(ref.kind == "prompt" for ref in refs)
        lib.evict()


def _batches(result: sa.CursorResult[Any]) -> Iterator[Sequence[Any]]:
    while True:
        rows = result.fetchmany(LOAD_BATCH)
        if not rows:
            return
        yield rows


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes for DateTime(timezone=True) columns.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
