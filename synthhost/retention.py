"""Retention: log tables age out in small batches, per workspace.

Cost rows, similarity logs, events, delivered outbox rows, spans and runs grow with every
call. Each plugin declares its log tables (``register_retention``); the operator says
how long to keep them, per workspace and table, most specific first (like flags):

1. ``synthhost retention set DAYS --workspace W --table T`` (one workspace, one table);
2. ``... --workspace W`` (one workspace, every table);
3. ``... --global --table T`` and ``... --global`` (every workspace without its own row);
4. ``SYNTHHOST_RETENTION_<TABLE>_DAYS``, then ``SYNTHHOST_RETENTION_DAYS`` (the
   deployment's defaults; ``0`` or ``forever`` keeps a table); unset: keep forever.

``forever`` at any level keeps the rows (a workspace on a longer plan than the default).
Tables without a ``workspace_id`` column (the outbox) follow the global levels only.

:func:`prune` deletes rows older than that in batches of ``batch`` (default 5,000), one
short transaction per batch with the GIL and the database handed back in between, so
neither calls nor the batched writer wait long behind it. ``synthhost db prune`` runs it
once; ``synthhost worker`` runs it every ``SYNTHHOST_RETENTION_INTERVAL_S`` (3600).

Events are the outbox's payloads: keep ``event_logs`` longer than an exporter may stay
down (a pending outbox row whose event was pruned is parked as "event_logs row not
found", counted, never silently dropped).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from synthhost.errors import UsageError
from synthhost.gil import pause
from synthhost.registry import RetentionSpec
from synthhost.storage.models import RetentionPolicy, utcnow

BATCH = 5_000
FOREVER = ("", "0", "forever", "none")


GLOBAL = "*"  # every workspace (or every table) without its own row
Policies = dict[tuple[str, str], float | None]  # (workspace, table) -> days; None: forever
POLICIES = RetentionPolicy.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Pruned:
    table: str
    days: float
    rows: int
    dry_run: bool
    seconds: float
    workspace: str = GLOBAL  # GLOBAL: every workspace without a retention of its own


@dataclass(frozen=True, slots=True)
class Scope:
    """One delete: ``table``'s rows of ``workspace`` (GLOBAL: of every workspace not in
    ``excluded``) older than ``days``."""

    table: str
    workspace: str
    days: float
    excluded: tuple[str, ...] = ()


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


def parse_days(raw: str, what: str = "DAYS") -> float | None:
    """A command line's days: a number of days, or ``forever`` (``None``)."""
    return _days({what: raw}, what)


def retention_days(env: Mapping[str, str], table: str) -> float | None:
    """Days to keep ``table``'s rows by the environment alone, or ``None`` (forever)."""
    own = f"SYNTHHOST_RETENTION_{table.upper()}_DAYS"
    if own in env:
        return _days(env, own)
    return _days(env, "SYNTHHOST_RETENTION_DAYS")


def resolve(policies: Policies, env: Mapping[str, str], workspace: str, table: str) -> float | None:
    """Days to keep ``workspace``'s rows of ``table`` (``None``: forever)."""
    for key in ((workspace, table), (workspace, GLOBAL), (GLOBAL, table), (GLOBAL, GLOBAL)):
        if key in policies:
            return policies[key]
    return retention_days(env, table)


def load_policies(engine: sa.Engine) -> Policies:
    """The ``retention_policies`` rows (none before the host's 0005 migration ran)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(POLICIES.c.workspace_id, POLICIES.c.table_name, POLICIES.c.days)).all()
    except sa.exc.ProgrammingError:  # PostgreSQL: the table is not there yet
        return {}
    except sa.exc.OperationalError as exc:
        if "no such table" in str(exc.orig):
            return {}
        raise
    return {(w, t): (None if d is None else float(d)) for w, t, d in rows}


def scopes(env: Mapping[str, str], specs: Mapping[str, RetentionSpec], policies: Policies,
           per_workspace: Mapping[str, bool] | None = None) -> list[Scope]:
    """Every delete :func:`prune` makes: per table, one per workspace with a retention of
    its own, then one for every other workspace. ``per_workspace[table]`` False: the
    table has no ``workspace_id`` column (global levels only)."""
    overridden = sorted({w for w, _ in policies if w != GLOBAL})
    out: list[Scope] = []
    for table in sorted(specs):
        own = [w for w in overridden if (w, table) in policies or (w, GLOBAL) in policies]
        if per_workspace is not None and not per_workspace.get(table, True):
            own = []
        for workspace in own:
            days = resolve(policies, env, workspace, table)
            if days is not None:
                out.append(Scope(table, workspace, days))
        default = resolve(policies, env, GLOBAL, table)
        if default is not None:
            out.append(Scope(table, GLOBAL, default, tuple(own)))
    return out


def reflect(engine: sa.Engine, specs: Mapping[str, RetentionSpec]) -> dict[str, sa.Table]:
    """The declared tables present in this database (a plugin's migrations may not have
    run here), as they are."""
    metadata = sa.MetaData()
    existing = set(sa.inspect(engine).get_table_names())
    return {name: sa.Table(name, metadata, autoload_with=engine) for name in specs if name in existing}


def prune(engine: sa.Engine, env: Mapping[str, str], specs: Mapping[str, RetentionSpec], *,
          batch: int = BATCH, dry_run: bool = False, policies: Policies | None = None) -> list[Pruned]:
    """Delete what is past its retention in every declared table (``dry_run``: count it)."""
    if policies is None:
        policies = load_policies(engine)
    tables = reflect(engine, specs)
    per_workspace = {name: "workspace_id" in t.c for name, t in tables.items()}
    out: list[Pruned] = []
    for scope in scopes(env, {n: s for n, s in specs.items() if n in tables}, policies, per_workspace):
        spec, table = specs[scope.table], tables[scope.table]
        pk = list(table.primary_key.columns)
        if len(pk) != 1:
            raise UsageError(f"retention: table {scope.table} needs a single-column primary key")
        cond = [table.c[spec.time_column] < utcnow() - timedelta(days=scope.days)]
        cond += [table.c[column] == value for column, value in spec.only]
        if scope.workspace != GLOBAL:
            cond.append(table.c.workspace_id == scope.workspace)
        elif scope.excluded:
            cond.append(table.c.workspace_id.not_in(scope.excluded))
        out.append(_delete(engine, table, pk[0], cond, scope, batch=batch, dry_run=dry_run))
    return out


def _delete(engine: sa.Engine, table: sa.Table, pk: sa.Column[Any], cond: list[Any], scope: Scope, *,
            batch: int, dry_run: bool) -> Pruned:
    started = time.monotonic()
    if dry_run:
        with engine.connect() as conn:
            n = int(conn.execute(sa.select(sa.func.count()).select_from(table).where(*cond)).scalar_one())
    else:
        n = 0
        ids = sa.select(pk).where(*cond).limit(batch).scalar_subquery()
        while True:
            with engine.begin() as conn:
                deleted = conn.execute(sa.delete(table).where(pk.in_(ids))).rowcount or 0
            n += deleted
            if deleted < batch:
                break
            pause()  # between short transactions: calls and the writer go first
    return Pruned(scope.table, scope.days, n, dry_run, round(time.monotonic() - started, 3), scope.workspace)


# -- the operator's rows ---------------------------------------------------------------------


def _check_table(table: str, specs: Mapping[str, RetentionSpec]) -> str:
    if table != GLOBAL and table not in specs:
        from synthhost.flags import suggest

        raise UsageError(f"--table {table!r}: not a table with a retention{suggest(table, list(specs))} "
                         f"(declared: {', '.join(sorted(specs))})")
    return table


def set_policy(engine: sa.Engine, specs: Mapping[str, RetentionSpec], workspace: str, table: str,
               days: float | None, actor: str | None = None) -> None:
    """Keep ``workspace``'s (GLOBAL: everyone's) rows of ``table`` (GLOBAL: every table)
    ``days`` days (``None``: forever)."""
    _check_table(table, specs)
    with engine.begin() as conn:
        key = (POLICIES.c.workspace_id == workspace, POLICIES.c.table_name == table)
        values = {"days": days, "updated_by": actor, "updated_at": utcnow()}
        if not conn.execute(POLICIES.update().where(*key).values(**values)).rowcount:
            conn.execute(POLICIES.insert().values(workspace_id=workspace, table_name=table, **values))


def unset_policy(engine: sa.Engine, specs: Mapping[str, RetentionSpec], workspace: str, table: str) -> bool:
    _check_table(table, specs)
    with engine.begin() as conn:
        return bool(conn.execute(POLICIES.delete().where(
            POLICIES.c.workspace_id == workspace, POLICIES.c.table_name == table)).rowcount)
