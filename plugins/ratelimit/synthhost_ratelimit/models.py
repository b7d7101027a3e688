"""The per-workspace limits table (created by this plugin's Alembic branch)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from synthhost.storage.models import ts_column
from synthhost_ratelimit.limits import GLOBAL_WORKSPACE as GLOBAL_WORKSPACE


class RateLimitConfig(SQLModel, table=True):
    """``(workspace, scope)`` → limits. ``workspace_id = '*'`` applies to every
    workspace without its own row; a ``None`` limit is unlimited. A row replaces the
    built-in default of its scope entirely."""

    __tablename__ = "ratelimit_limits"
    __table_args__ = (sa.UniqueConstraint("workspace_id", "scope", name="uq_ratelimit_limits"),)

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: str = Field(max_length=200, index=True)
    scope: str = Field(max_length=20)
    requests: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    tokens: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    window_s: float = Field(default=60.0, sa_column=sa.Column(sa.Float, nullable=False))
    updated_by: str | None = Field(default=None, max_length=200)
    created_at: datetime = ts_column()
    updated_at: datetime = ts_column()
