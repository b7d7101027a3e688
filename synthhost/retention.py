"""Retention: log tables age out in small batches.

Cost rows, similarity logs, events, delivered outbox rows, spans and runs grow with every
call. Each plugin declares its log tables (``register_retention``); the operator says
how long to keep them:

- ``SYNTHHOST_RETENTION_DAYS``: every declared table (unset: keep forever);
- ``SYNTHHOST_RETENTION_<TABLE>_DAYS`` (``SYNTHHOST_RETENTION_EVENT_LOGS_DAYS=30``): one
  table, overriding the default (``0`` or ``forever`` keeps that table).

:func:`prune` deletes rows older than that in batches of ``batch`` (default 5,000), one
short transaction per batch with the GIL and the database handed back in between, so
neither calls nor the batched writer wait long behind it. ``synthhost db prune`` runs it
once; ``synthhost worker`` runs it every ``SYNTHHOST_RETENTION_INTERVAL_S`` (3600) when a
retention is configured.

Events are the outbox's payloads: keep ``event_logs`` longer than an exporter may stay
down (a pending outbox row whose event was pruned is parked as "event_logs row not
found", counted, never silently dropped).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa

from synthhost.errors import UsageError
from synthhost.gil import pause
from synthhost.registry import RetentionSpec
from synthhost.storage.models import utcnow

BATCH = 5_000
FOREVER = ("", "0", "forever", "none")


@dataclass(frozen=True, slots=True)
class Pruned:
    table: str
    days: float
    rows: int
    dry_run: bool
    seconds: float


def _days(env: Mapping[str, str], name: str) -> float | None:
    raw = (env.get(name) or "").strip().lower()
    if raw in FOREVER:
        return None
    try:
        days = float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r}: expected a number of days, or 'forever'") from None
    if not (0 < days < 100_000):
        raise UsageError(f"{name}={raw!r}: days must be between 0 and 100000")
    return days


def retention_days(env: Mapping[str, str], table: str) -> float | None:
    """Days to keep ``table``'s rows, or ``None`` to keep them forever."""
    own = f"SYNTHHOST_RETENTION_{table.upper()}_DAYS"
    if own in env:
        return _days(env, own)
    return _days(env, "SYNTHHOST_RETENTION_DAYS")


def configured(env: Mapping[str, str], specs: Mapping[str, RetentionSpec]) -> dict[str, float]:
    """Declared tables with a retention, and their days."""
    out = {}
    for table in sorted(specs):
        days = retention_days(env, table)
        if days is not None:
            out[table] = days
    return out


def prune(engine: sa.Engine, env: Mapping[str, str], specs: Mapping[str, RetentionSpec], *,
          batch: int = BATCH, dry_run: bool = False) -> list[Pruned]:
    """Delete what is past its retention in every declared table (``dry_run``: count it)."""
    metadata = sa.MetaData()
    existing = set(sa.inspect(engine).get_table_names())
    out: list[Pruned] = []
    for table_name, days in configured(env, specs).items():
        if table_name not in existing:
            continue  # the plugin's migrations have not run here
        spec = specs[table_name]
        table = sa.Table(table_name, metadata, autoload_with=engine)
        pk = list(table.primary_key.columns)
        if len(pk) != 1:
            raise UsageError(f"retention: table {table_name} needs a single-column primary key")
        cond = [table.c[spec.time_column] < utcnow() - timedelta(days=days)]
        cond += [table.c[column] == value for column, value in spec.only]
        started = time.monotonic()
        if dry_run:
            with engine.connect() as conn:
                n = int(conn.execute(sa.select(sa.func.count()).select_from(table).where(*cond)).scalar_one())
        else:
            n = 0
            ids = sa.select(pk[0]).where(*cond).limit(batch).scalar_subquery()
            while True:
                with engine.begin() as conn:
                    deleted = conn.execute(sa.delete(table).where(pk[0].in_(ids))).rowcount or 0
                n += deleted
                if deleted < batch:
                    break
                pause()  # between short transactions: calls and the writer go first
        out.append(Pruned(table_name, days, n, dry_run, round(time.monotonic() - started, 3)))
    return out
