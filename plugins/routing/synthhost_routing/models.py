"""The routing plugin's table (created by its own Alembic branch, ``routing``).

One row per workspace (``'*'``: the global configuration under every workspace's):
the partial document the workspace set, and a version bumped on every write, whose sum
over the table is the change token other processes poll.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from synthhost.storage.models import json_column, ts_column


class RoutingConfigRow(SQLModel, table=True):
    __tablename__ = "routing_configs"

    workspace_id: str = Field(primary_key=True, max_length=200)
    document: Any = json_column(nullable=False)
    version: int = 1
    updated_at: datetime = ts_column()
    updated_by: str | None = Field(default=None, max_length=200)


CONFIGS: sa.Table = RoutingConfigRow.__table__  # type: ignore[attr-defined]
