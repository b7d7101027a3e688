"""The policy plugin's tables (created by its own Alembic branch, ``policy``).

Both tables are append-only: every change to a set is a new ``policy_sets`` row (a
removal is a tombstone version with ``document`` NULL), and every change has a
``policy_audit`` row saying who, when and what.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from synthhost.storage.models import json_column, ts_column


class PolicySetRow(SQLModel, table=True):
    __tablename__ = "policy_sets"
    __table_args__ = (
        sa.UniqueConstraint("workspace_id", "name", "version", name="uq_policy_sets_version"),
        sa.Index("ix_policy_sets_ws_name", "workspace_id", "name"),
    )

    id: str = Field(primary_key=True, max_length=32)
    workspace_id: str = Field(max_length=200)  # '*' = global
    name: str = Field(max_length=200)
    version: int
    priority: int = 0
    enabled: bool = True
    document: Any = json_column()  # NULL: removed (tombstone version)
    created_at: datetime = ts_column()
    created_by: str | None = Field(default=None, max_length=200)


class PolicyAudit(SQLModel, table=True):
    __tablename__ = "policy_audit"
    __table_args__ = (sa.Index("ix_policy_audit_ws_name", "workspace_id", "set_name"),)

    id: str = Field(primary_key=True, max_length=32)
    workspace_id: str = Field(max_length=200)
    set_name: str = Field(max_length=200)
    version: int
    action: str = Field(max_length=20)  # apply | rm
    actor: str | None = Field(default=None, max_length=200)
    created_at: datetime = ts_column()
    summary: str = ""


SETS: sa.Table = PolicySetRow.__table__  # type: ignore[attr-defined]
AUDIT: sa.Table = PolicyAudit.__table__  # type: ignore[attr-defined]
