"""Reading and writing policy sets: versions, tombstones, audit rows.

Scoping rule (the original let one tenant overwrite another's sets): a set is written
into exactly one workspace, the caller's; a document naming another workspace is
refused, and a global set (``'*'``) is only written with an explicit ``global_=True``.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from synthhost.call import new_id
from synthhost.errors import UsageError
from synthhost.storage.models import utcnow
from synthhost.workspace import validate_workspace
from synthhost_policy.document import GLOBAL, PolicySet
from synthhost_policy.models import AUDIT, SETS

MAX_RETRIES = 8


@dataclass(frozen=True, slots=True)
class SetVersion:
    workspace: str
    name: str
    version: int
    priority: int
    enabled: bool
    document: dict[str, Any] | None
    created_at: datetime
    created_by: str | None

    @property
    def removed(self) -> bool:
        return self.document is None

    @property
    def scope(self) -> str:
        return "global" if self.workspace == GLOBAL else self.workspace


@dataclass(frozen=True, slots=True)
class AuditEntry:
    workspace: str
    name: str
    version: int
    action: str
    actor: str | None
    at: datetime
    summary: str


@dataclass(frozen=True, slots=True)
class ApplyResult:
    workspace: str
    name: str
    version: int
    changed: bool
    summary: str


def target_workspace(declared: str | None, workspace: str | None, global_: bool) -> str:
    """Where a set from a file goes, or a one-line refusal."""
    if global_:
        if workspace not in (None, GLOBAL):
            raise UsageError("--global and --workspace are exclusive")
        if declared not in (None, GLOBAL):
            raise UsageError(
                f"the file names workspace {declared!r} but --global was given; "
                "a global set must omit workspace or say '*'"
            )
        return GLOBAL
    ws = workspace or "default"
    if ws == GLOBAL:
        raise UsageError("workspace '*' is the global scope: use --global")
    validate_workspace(ws, what="--workspace")
    if declared == GLOBAL:
        raise UsageError("the file declares a global set (workspace '*'): apply it with --global")
    if declared is not None and declared != ws:
        raise UsageError(
            f"the file names workspace {declared!r} but this command acts on workspace {ws!r}; "
            f"a workspace's sets can only be changed from that workspace"
        )
    return ws


def _utc(value: datetime) -> datetime:
    # SQLite hands timezone-aware columns back naive; they were written in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _row(r: Any) -> SetVersion:
    doc = r.document
    if isinstance(doc, str):  # some drivers hand JSON back as text
        doc = json.loads(doc)
    return SetVersion(
        r.workspace_id,
        r.name,
        int(r.version),
        int(r.priority),
        bool(r.enabled),
        doc,
        _utc(r.created_at),
        r.created_by,
    )


def _lock_set(conn: sa.Connection, workspace: str, name: str) -> None:
    """Serialise writers of one set on PostgreSQL (a transaction-scoped advisory lock);
    SQLite serialises writers itself. The unique (workspace, name, version) constraint
    and the retry loop remain the backstop."""
    if conn.dialect.name == "postgresql":
        digest = hashlib.blake2b(f"{workspace}\x00{name}".encode(), digest_size=8).digest()
        key = int.from_bytes(digest, "big", signed=True)
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _latest(conn: sa.Connection, workspace: str, name: str) -> SetVersion | None:
    row = conn.execute(
        sa.select(SETS)
        .where(SETS.c.workspace_id == workspace, SETS.c.name == name)
        .order_by(SETS.c.version.desc())
        .limit(1)
    ).first()
    return _row(row) if row is not None else None


def _rule_map(document: Mapping[str, Any] | None) -> dict[str, Any]:
    return {r["name"]: r for r in (document or {}).get("rules", [])}


def diff_summary(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> str:
    """A short human summary of what a version changed."""
    if new is None:
        count = len((old or {}).get("rules", []))
        return f"removed ({count} rule{'s' if count != 1 else ''})"
    rules = [r["name"] for r in new.get("rules", [])]
    if old is None:
        return f"created with {len(rules)} rule{'s' if len(rules) != 1 else ''}: {', '.join(rules)}"
    parts: list[str] = []
    for key in ("priority", "enabled"):
        if old.get(key) != new.get(key):
            parts.append(f"{key} {json.dumps(old.get(key))} -> {json.dumps(new.get(key))}")
    if old.get("description") != new.get("description"):
        parts.append("description changed")
    before, after = _rule_map(old), _rule_map(new)
    added = [n for n in after if n not in before]
    removed = [n for n in before if n not in after]
    changed = [n for n in after if n in before and after[n] != before[n]]
    if added:
        parts.append("rules added: " + ", ".join(added))
    if removed:
        parts.append("rules removed: " + ", ".join(removed))
    if changed:
        parts.append("rules changed: " + ", ".join(changed))
    if not (added or removed or changed) and list(before) != list(after):
        parts.append("rules reordered")
    return "; ".join(parts) or "no change"


def _insert(
    conn: sa.Connection,
    workspace: str,
    name: str,
    version: int,
    document: dict[str, Any] | None,
    priority: int,
    enabled: bool,
    actor: str | None,
    action: str,
    summary: str,
) -> None:
    now = utcnow()
    conn.execute(
        SETS.insert().values(
            id=new_id(),
            workspace_id=workspace,
            name=name,
            version=version,
            priority=priority,
            enabled=enabled,
            document=document,
            created_at=now,
            created_by=actor,
        )
    )
    conn.execute(
        AUDIT.insert().values(
            id=new_id(),
            workspace_id=workspace,
            set_name=name,
            version=version,
            action=action,
            actor=actor,
            created_at=now,
            summary=summary,
        )
    )


def apply_set(engine: sa.Engine, policy: PolicySet, workspace: str, actor: str | None) -> ApplyResult:
    """Write ``policy`` as the next version of ``(workspace, name)``; an identical
    document is not a change (no version, no audit row)."""
    document = policy.document()
    for attempt in range(MAX_RETRIES):
        try:
            with engine.begin() as conn:
                _lock_set(conn, workspace, policy.name)
                latest = _latest(conn, workspace, policy.name)
                old = None if latest is None else latest.document
                if old is not None and old == document:
                    return ApplyResult(workspace, policy.name, latest.version, False, "no change")  # type: ignore[union-attr]
                version = 1 if latest is None else latest.version + 1
                summary = diff_summary(old, document)
                if latest is not None and latest.removed:
                    summary = "re-" + summary
                _insert(
                    conn,
                    workspace,
                    policy.name,
                    version,
                    document,
                    policy.priority,
                    policy.enabled,
                    actor,
                    "apply",
                    summary,
                )
                return ApplyResult(workspace, policy.name, version, True, summary)
        except sa.exc.IntegrityError:
            # Another writer took this version number: read again and retry.
            if attempt == MAX_RETRIES - 1:
                raise UsageError(f"policy set {policy.name!r} is being changed concurrently; try again") from None
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
    raise AssertionError("unreachable")  # pragma: no cover


def remove_set(engine: sa.Engine, workspace: str, name: str, actor: str | None) -> ApplyResult:
    for attempt in range(MAX_RETRIES):
        try:
            with engine.begin() as conn:
                _lock_set(conn, workspace, name)
                latest = _latest(conn, workspace, name)
                if latest is None or latest.removed:
                    hint = ""
                    if workspace != GLOBAL and _latest(conn, GLOBAL, name) is not None:
                        hint = " (a global set has that name: use --global)"
                    state = "no policy set" if latest is None else "already removed: policy set"
                    raise UsageError(f"{state} {name!r} in {_scope(workspace)}{hint}")
                summary = diff_summary(latest.document, None)
                _insert(
                    conn,
                    workspace,
                    name,
                    latest.version + 1,
                    None,
                    latest.priority,
                    False,
                    actor,
                    "rm",
                    summary,
                )
                return ApplyResult(workspace, name, latest.version + 1, True, summary)
        except sa.exc.IntegrityError:
            if attempt == MAX_RETRIES - 1:
                raise UsageError(f"policy set {name!r} is being changed concurrently; try again") from None
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
    raise AssertionError("unreachable")  # pragma: no cover


def _scope(workspace: str) -> str:
    return "the global scope" if workspace == GLOBAL else f"workspace {workspace!r}"


def current_sets(engine: sa.Engine, workspaces: list[str] | None = None) -> list[SetVersion]:
    """The latest version of every set (of the given workspaces), tombstones included."""
    latest = sa.select(
        SETS.c.workspace_id.label("ws"),
        SETS.c.name.label("nm"),
        sa.func.max(SETS.c.version).label("v"),
    ).group_by(SETS.c.workspace_id, SETS.c.name)
    if workspaces is not None:
        latest = latest.where(SETS.c.workspace_id.in_(workspaces))
    sub = latest.subquery()
    query = (
        sa.select(SETS)
        .join(
            sub,
            sa.and_(SETS.c.workspace_id == sub.c.ws, SETS.c.name == sub.c.nm, SETS.c.version == sub.c.v),
        )
        .order_by(SETS.c.workspace_id, SETS.c.name)
    )
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(query)]


def get_version(engine: sa.Engine, workspace: str, name: str, version: int | None = None) -> SetVersion | None:
    with engine.connect() as conn:
        if version is None:
            return _latest(conn, workspace, name)
        row = conn.execute(
            sa.select(SETS).where(SETS.c.workspace_id == workspace, SETS.c.name == name, SETS.c.version == version)
        ).first()
        return _row(row) if row is not None else None


def history(engine: sa.Engine, workspace: str, name: str) -> list[AuditEntry]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(AUDIT)
            .where(AUDIT.c.workspace_id == workspace, AUDIT.c.set_name == name)
            .order_by(AUDIT.c.version)
        )
        return [
            AuditEntry(
                r.workspace_id,
                r.set_name,
                int(r.version),
                r.action,
                r.actor,
                _utc(r.created_at),
                r.summary,
            )
            for r in rows
        ]


def change_token(conn: sa.Connection) -> int:
    """Rows are only ever added, so the row count moves on every change, whichever
    process made it and in whatever order concurrent transactions commit."""
    return int(conn.execute(sa.select(sa.func.count()).select_from(SETS)).scalar() or 0)
