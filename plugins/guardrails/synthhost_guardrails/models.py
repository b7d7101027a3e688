"""The guardrails plugin's table (created by its own Alembic branch, ``guardrails``).

Append-only: every apply is a new ``(workspace_id, version)`` row; a removal is a
tombstone version with ``document`` NULL (the workspace falls back to the global set,
then to the built-in default). The rows are the audit trail: who, when, what.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from synthhost.storage.models import json_column, ts_column


class GuardrailSetRow(SQLModel, table=True):
    __tablename__ = "guardrail_sets"
    __table_args__ = (sa.UniqueConstraint("workspace_id", "version", name="uq_guardrail_sets_version"),)

    id: str = Field(primary_key=True, max_length=32)
    workspace_id: str = Field(max_length=200)  # '*' = global
    version: int
    document: Any = json_column()  # NULL: removed (tombstone version)
    created_at: datetime = ts_column()
    created_by: str | None = Field(default=None, max_length=200)
    summary: str = ""


SETS: sa.Table = GuardrailSetRow.__table__  # type: ignore[attr-defined]
