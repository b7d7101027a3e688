"""Reading and writing ``routing_configs``. Every write is validated against what it
will be merged with, so a stored configuration always compiles: a workspace document
with the global one, and a global document with every workspace's."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from synthhost.errors import UsageError
from synthhost.storage.models import utcnow
from synthhost_routing.config import GLOBAL, merge, validate
from synthhost_routing.models import CONFIGS

MAX_RETRIES = 5


@dataclass(frozen=True, slots=True)
class Stored:
    workspace: str
    document: dict[str, Any]
    version: int
    updated_at: datetime
    updated_by: str | None


def _doc(value: Any) -> dict[str, Any]:
    if isinstance(value, str):  # some drivers hand JSON back as text
        value = json.loads(value)
    return dict(value or {})


def _row(r: Any) -> Stored:
    at = r.updated_at
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at  # SQLite hands back naive UTC
    return Stored(r.workspace_id, _doc(r.document), int(r.version), at, r.updated_by)


def load_all(engine: sa.Engine) -> dict[str, Stored]:
    with engine.connect() as conn:
        return {r.workspace_id: _row(r) for r in conn.execute(sa.select(CONFIGS))}


def get(engine: sa.Engine, workspace: str) -> Stored | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(CONFIGS).where(CONFIGS.c.workspace_id == workspace)).first()
    return _row(row) if row is not None else None


def change_token(conn: sa.Connection) -> int:
    """Versions only grow, so their sum moves on every write, in any process."""
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(CONFIGS.c.version), 0))).scalar() or 0)


def _where(workspace: str) -> str:
    return "global routing config" if workspace == GLOBAL else f"routing config of workspace {workspace!r}"


def check(engine: sa.Engine, workspace: str, document: Mapping[str, Any]) -> None:
    """Refuse a document that would not compile once merged (raises UsageError)."""
    others = load_all(engine)
    if workspace == GLOBAL:
        validate(document, _where(GLOBAL))
        for ws, stored in sorted(others.items()):
            if ws != GLOBAL:
                validate(merge(document, stored.document), f"{_where(ws)} (merged with this global config)")
        return
    base = others[GLOBAL].document if GLOBAL in others else {}
    validate(merge(base, document), _where(workspace))


def save(engine: sa.Engine, workspace: str, document: Mapping[str, Any], actor: str | None) -> int:
    """Validate and store ``document`` as the workspace's whole configuration; returns its
    version. An identical document is not a change."""
    document = {k: v for k, v in document.items() if k != "workspace"}
    check(engine, workspace, document)
    for attempt in range(MAX_RETRIES):
        try:
            with engine.begin() as conn:
                query = sa.select(CONFIGS).where(CONFIGS.c.workspace_id == workspace)
                if conn.dialect.name == "postgresql":
                    query = query.with_for_update()
                row = conn.execute(query).first()
                if row is None:
                    conn.execute(
                        CONFIGS.insert().values(
                            workspace_id=workspace, document=document, version=1, updated_at=utcnow(), updated_by=actor
                        )
                    )
                    return 1
                current = _row(row)
                if current.document == document:
                    return current.version
                conn.execute(
                    CONFIGS.update()
                    .where(CONFIGS.c.workspace_id == workspace)
                    .values(document=document, version=current.version + 1, updated_at=utcnow(), updated_by=actor)
                )
                return current.version + 1
        except sa.exc.IntegrityError:  # a concurrent first write took the row: read it again
            if attempt == MAX_RETRIES - 1:
                raise UsageError(f"{_where(workspace)} is being changed concurrently; try again") from None
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover
