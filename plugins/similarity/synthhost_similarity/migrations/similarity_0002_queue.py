"""similarity: similarity_queue (durable logging backlog)

Revision ID: similarity_0002
Revises: similarity_0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "similarity_0002"
down_revision = "similarity_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "similarity_queue",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("workspace_id", sa.String(200), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("org_id", sa.String(200), nullable=True),
        sa.Column("run_id", sa.String(32), nullable=True),
        sa.Column("span_id", sa.String(32), nullable=True),
        sa.Column("trace_id", sa.String(32), nullable=True),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_similarity_queue_time", "similarity_queue", ["created_at"])


def downgrade() -> None:
    op.drop_table("similarity_queue")
