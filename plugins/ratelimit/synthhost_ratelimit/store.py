"""Reading and writing the limits table, and the in-memory view the call path reads.

The call path never touches the database: :class:`LimitTable` holds every row (the
table is small: a few rows per workspace) and is reloaded off the call path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from synthhost_ratelimit.limits import DEFAULT_LIMITS, SCOPES, Limit
from synthhost_ratelimit.models import GLOBAL_WORKSPACE, RateLimitConfig

log = logging.getLogger("synthhost.ratelimit")

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class Row:
    workspace: str
    scope: str
    limit: Limit
    updated_by: str | None = None
    updated_at: datetime | None = None


def load_rows(engine: sa.Engine) -> list[Row]:
    with Session(engine) as session:
        rows = session.exec(select(RateLimitConfig)).all()
        return [
            Row(r.workspace_id, r.scope, Limit(r.requests, r.tokens, float(r.window_s)),
                r.updated_by, r.updated_at)
            for r in rows
        ]


def resolve(rows: Iterable[Row], workspace: str) -> dict[str, Limit]:
    """Effective limits of a workspace, scope by scope: its own row, else the '*' row,
    else the built-in default."""
    out: dict[str, Limit] = dict(DEFAULT_LIMITS)
    own: dict[str, Limit] = {}
    for row in rows:
        if row.workspace == GLOBAL_WORKSPACE:
            out[row.scope] = row.limit
        elif row.workspace == workspace:
            own[row.scope] = row.limit
    out.update(own)
    return out


class LimitTable:
    """Every configured row, with the resolved limits of each workspace cached.
    ``reload()`` swaps in a fresh snapshot (atomic reference swap: readers never lock)."""

    def __init__(self, rows: Iterable[Row] = ()) -> None:
        self._rows: tuple[Row, ...] = tuple(rows)
        self._cache: dict[str, dict[str, Limit]] = {}

    @property
    def rows(self) -> tuple[Row, ...]:
        return self._rows

    def replace(self, rows: Iterable[Row]) -> bool:
        new = tuple(sorted(rows, key=lambda r: (r.workspace, r.scope)))
        key = [(r.workspace, r.scope, r.limit) for r in new]
        if key == [(r.workspace, r.scope, r.limit) for r in self._rows]:
            return False
        self._rows, self._cache = new, {}
        return True

    def for_workspace(self, workspace: str) -> Mapping[str, Limit]:
        cached = self._cache.get(workspace)
        if cached is None:
            cached = self._cache[workspace] = resolve(self._rows, workspace)
        return cached


class Refresher:
    """Reloads the table every ``interval`` seconds in a daemon thread (works under any
    event loop, and a slow database never touches the call path)."""

    def __init__(self, engine: sa.Engine, table: LimitTable, interval: float) -> None:
        self.engine, self.table, self.interval = engine, table, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0

    def reload(self) -> bool:
        return self.table.replace(load_rows(self.engine))

    def start(self) -> None:
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, name="ratelimit-config", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reload()
            except Exception as exc:  # keep the last good snapshot
                self.failures += 1
                log.warning("ratelimit: reloading limits failed (%s)", type(exc).__name__)

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


# -- writes (CLI) ------------------------------------------------------------------------


def set_limit(engine: sa.Engine, workspace: str, scope: str, *, requests: Any = _UNSET,
              tokens: Any = _UNSET, window_s: Any = _UNSET, updated_by: str | None = None) -> Row:
    """Create or update one row; options left out keep their current value (the row's,
    or else what the workspace inherits)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    with Session(engine) as session:
        row = session.exec(
            select(RateLimitConfig).where(
                RateLimitConfig.workspace_id == workspace, RateLimitConfig.scope == scope
            )
        ).first()
        if row is None:
            base = resolve(load_rows(engine), workspace).get(scope, Limit())
            row = RateLimitConfig(workspace_id=workspace, scope=scope, requests=base.requests,
                                  tokens=base.tokens, window_s=base.window_s)
        if requests is not _UNSET:
            row.requests = requests
        if tokens is not _UNSET:
            row.tokens = tokens
        if window_s is not _UNSET:
            row.window_s = window_s
        row.updated_by = updated_by
        row.updated_at = datetime.now(UTC)
        session.add(row)
        session.commit()
        session.refresh(row)
        return Row(row.workspace_id, row.scope, Limit(row.requests, row.tokens, row.window_s),
                   row.updated_by, row.updated_at)


def unset_limit(engine: sa.Engine, workspace: str, scope: str) -> bool:
    with Session(engine) as session:
        row = session.exec(
            select(RateLimitConfig).where(
                RateLimitConfig.workspace_id == workspace, RateLimitConfig.scope == scope
            )
        ).first()
        if row is None:
            return False
        session.delete(row)
        session.commit()
        return True
