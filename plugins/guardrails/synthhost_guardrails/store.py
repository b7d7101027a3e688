"""Reading and writing guard sets: one versioned, append-only history per workspace.

A set is written into exactly one scope: a workspace, or the global scope (``'*'``)
with an explicit ``global_=True``. Writers of one scope are serialised (a PostgreSQL
advisory lock; SQLite serialises writers itself), with the unique (workspace, version)
constraint and a retry loop as the backstop.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from synthhost.call import new_id
from synthhost.errors import UsageError
from synthhost.storage.models import utcnow
from synthhost.workspace import validate_workspace
from synthhost_guardrails.models import SETS

GLOBAL = "*"
MAX_RETRIES = 8


@dataclass(frozen=True, slots=True)
class SetVersion:
    workspace: str
    version: int
    document: dict[str, Any] | None
    created_at: datetime
    created_by: str | None
    summary: str

    @property
    def removed(self) -> bool:
        return self.document is None

    @property
    def label(self) -> str:
        scope = "global" if self.workspace == GLOBAL else f"workspace {self.workspace}"
        return f"{scope} v{self.version}"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    workspace: str
    version: int
    changed: bool
    summary: str


def target_workspace(workspace: str | None, global_: bool) -> str:
    if global_:
        if workspace not in (None, GLOBAL):
            raise UsageError("--global and --workspace are exclusive")
        return GLOBAL
    ws = workspace or "default"
    if ws == GLOBAL:
        raise UsageError("workspace '*' is the global scope: use --global")
    validate_workspace(ws, what="--workspace")
    return ws


def scope_name(workspace: str) -> str:
    return "the global scope" if workspace == GLOBAL else f"workspace {workspace!r}"


def _utc(value: datetime) -> datetime:
    # SQLite hands timezone-aware columns back naive; they were written in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _row(r: Any) -> SetVersion:
    doc = r.document
    if isinstance(doc, str):  # some drivers hand JSON back as text
        doc = json.loads(doc)
    return SetVersion(r.workspace_id, int(r.version), doc, _utc(r.created_at), r.created_by, r.summary or "")


def _lock(conn: sa.Connection, workspace: str) -> None:
    if conn.dialect.name == "postgresql":
        digest = hashlib.blake2b(f"guardrails\x00{workspace}".encode(), digest_size=8).digest()
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": int.from_bytes(digest, "big", signed=True)})


def _latest(conn: sa.Connection, workspace: str) -> SetVersion | None:
    row = conn.execute(
        sa.select(SETS).where(SETS.c.workspace_id == workspace).order_by(SETS.c.version.desc()).limit(1)
    ).first()
    return _row(row) if row is not None else None


def summarize(document: dict[str, Any] | None) -> str:
    if document is None:
        return "removed"

    def names(side: str) -> str:
        return ", ".join(f"{e['validator']}->{e['on_fail']}" for e in document.get(side, [])) or "none"

    return f"input: {names('input')}; output: {names('output')}"


def _write(engine: sa.Engine, workspace: str, document: dict[str, Any] | None, actor: str | None) -> ApplyResult:
    for attempt in range(MAX_RETRIES):
        try:
            with engine.begin() as conn:
                _lock(conn, workspace)
                latest = _latest(conn, workspace)
                if document is None and (latest is None or latest.removed):
                    raise UsageError(f"no guard set in {scope_name(workspace)}")
                if latest is not None and latest.document == document:
                    return ApplyResult(workspace, latest.version, False, "no change")
                version = 1 if latest is None else latest.version + 1
                summary = summarize(document)
                conn.execute(
                    SETS.insert().values(
                        id=new_id(),
                        workspace_id=workspace,
                        version=version,
                        document=document,
                        created_at=utcnow(),
                        created_by=actor,
                        summary=summary,
                    )
                )
                return ApplyResult(workspace, version, True, summary)
        except sa.exc.IntegrityError:
            # Another writer took this version number: read again and retry.
            if attempt == MAX_RETRIES - 1:
                raise UsageError(f"the guard set of {scope_name(workspace)} is being changed concurrently") from None
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
    raise AssertionError("unreachable")  # pragma: no cover


def apply_document(engine: sa.Engine, workspace: str, document: dict[str, Any], actor: str | None) -> ApplyResult:
    """Store ``document`` as the scope's next version; the same document again is not a
    change (no new version)."""
    return _write(engine, workspace, document, actor)


def remove(engine: sa.Engine, workspace: str, actor: str | None) -> ApplyResult:
    """A tombstone version: the scope falls back (workspace → global → default)."""
    return _write(engine, workspace, None, actor)


def get_version(engine: sa.Engine, workspace: str, version: int | None = None) -> SetVersion | None:
    with engine.connect() as conn:
        if version is None:
            return _latest(conn, workspace)
        row = conn.execute(sa.select(SETS).where(SETS.c.workspace_id == workspace, SETS.c.version == version)).first()
        return _row(row) if row is not None else None


def current_sets(engine: sa.Engine) -> list[SetVersion]:
    """The latest version of every scope (tombstones included)."""
    sub = (
        sa.select(SETS.c.workspace_id.label("ws"), sa.func.max(SETS.c.version).label("v"))
        .group_by(SETS.c.workspace_id)
        .subquery()
    )
    query = sa.select(SETS).join(sub, sa.and_(SETS.c.workspace_id == sub.c.ws, SETS.c.version == sub.c.v))
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(query)]


def history(engine: sa.Engine, workspace: str) -> list[SetVersion]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(SETS).where(SETS.c.workspace_id == workspace).order_by(SETS.c.version))
        return [_row(r) for r in rows]


def change_token(engine: sa.Engine) -> int:
    """Rows are only ever added, so the count moves on every change, whichever process
    made it and in whatever order concurrent transactions commit."""
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(SETS)).scalar() or 0)
