"""Synchronous administration of the reference library and settings (the CLI's verbs).

Writes go straight to the database; running hosts pick them up on their next refresh
(``SYNTHHOST_SIMILARITY_REFRESH_S``): additions through the ``created_at`` watermark,
removals and settings through ``similarity_settings``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa

from synthhost.call import new_id
from synthhost.errors import UsageError
from synthhost.storage.models import utcnow
from synthhost_similarity.embedders import Embedder
from synthhost_similarity.models import (
    REFERENCE_TEXT_CAP,
    PromptReference,
    SimilaritySettings,
    vector_to_bytes,
)
from synthhost_similarity.service import storable
from synthhost_similarity.store import text_hash

REFS = PromptReference.__table__
SETTINGS = SimilaritySettings.__table__


@dataclass(frozen=True, slots=True)
class KnownPrompt:
    id: str
    workspace: str
    text: str
    embedder: str
    created_at: datetime


def add_known(engine: sa.Engine, embedder: Embedder, workspace: str, text: str) -> tuple[str, bool]:
    """Add a curated known prompt; returns ``(id, created)`` (``created`` is False when
    the same text is already a known prompt of the workspace for this embedder)."""
    text = storable(text)
    if not text.strip():
        raise UsageError("known prompt: TEXT is empty")
    digest = text_hash(text)
    with engine.connect() as conn:
        existing = conn.execute(
            sa.select(REFS.c.id).where(
                REFS.c.workspace_id == workspace,
                REFS.c.kind == "known",
                REFS.c.embedder == embedder.name,
                REFS.c.text_hash == digest,
            )
        ).scalar()
    if existing:
        return str(existing), False
    vector = embedder.embed([text])[0]
    if not vector.any():
        raise UsageError("known prompt: TEXT has nothing to compare (no letters or digits)")
    ref_id = new_id()
    with engine.begin() as conn:
        conn.execute(
            REFS.insert().values(
                id=ref_id,
                workspace_id=workspace,
                kind="known",
                text=text[:REFERENCE_TEXT_CAP],
                text_hash=digest,
                embedder=embedder.name,
                dim=int(vector.shape[-1]),
                vector=vector_to_bytes(vector),
                created_at=utcnow(),
            )
        )
    return ref_id, True


def list_known(engine: sa.Engine, workspace: str) -> list[KnownPrompt]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(REFS.c.id, REFS.c.text, REFS.c.embedder, REFS.c.created_at)
            .where(REFS.c.workspace_id == workspace, REFS.c.kind == "known")
            .order_by(REFS.c.created_at, REFS.c.id)
        ).all()
    return [KnownPrompt(r.id, workspace, r.text, r.embedder, r.created_at) for r in rows]


def remove_known(engine: sa.Engine, workspace: str, ref_id: str) -> None:
    with engine.begin() as conn:
        removed = conn.execute(
            REFS.delete().where(REFS.c.id == ref_id, REFS.c.workspace_id == workspace, REFS.c.kind == "known")
        ).rowcount
        if not removed:
            raise UsageError(f"no known prompt {ref_id!r} in workspace {workspace!r}")
        _touch_settings(conn, workspace, bump_epoch=True)


@dataclass(frozen=True, slots=True)
class Settings:
    workspace: str
    threshold: Decimal | None
    action: str | None
    epoch: int


def read_settings(engine: sa.Engine, workspace: str) -> Settings:
    with engine.connect() as conn:
        row = conn.execute(sa.select(SETTINGS).where(SETTINGS.c.workspace_id == workspace)).first()
    if row is None:
        return Settings(workspace, None, None, 0)
    threshold = Decimal(row.threshold) if row.threshold is not None else None
    return Settings(workspace, threshold, row.action, int(row.epoch))


def save_settings(
    engine: sa.Engine,
    workspace: str,
    *,
    threshold: Decimal | None = None,
    action: str | None = None,
    reset: bool = False,
) -> Settings:
    """Set the workspace's threshold and/or action (``reset`` clears both first)."""
    values: dict[str, object] = {}
    if reset:
        values.update(threshold=None, action=None)
    if threshold is not None:
        values["threshold"] = threshold
    if action is not None:
        values["action"] = action
    with engine.begin() as conn:
        _touch_settings(conn, workspace, bump_epoch=False, **values)
    return read_settings(engine, workspace)


def _touch_settings(conn: sa.Connection, workspace: str, *, bump_epoch: bool, **values: object) -> None:
    values["updated_at"] = utcnow()
    update = dict(values)
    if bump_epoch:
        update["epoch"] = SETTINGS.c.epoch + 1
    done = conn.execute(SETTINGS.update().where(SETTINGS.c.workspace_id == workspace).values(**update)).rowcount
    if not done:
        conn.execute(SETTINGS.insert().values(workspace_id=workspace, epoch=1 if bump_epoch else 0, **values))
