"""similarity: prompt_references, prompt_similarity_logs, similarity_settings

Revision ID: similarity_0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "similarity_0001"
down_revision = None
branch_labels = ("similarity",)
depends_on = None


def _ts(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "prompt_references",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("workspace_id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("text_hash", sa.String(64), nullable=False),
        sa.Column("embedder", sa.String(100), nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        _ts("created_at"),
    )
    op.create_index(
        "ix_prompt_references_ws_emb_time",
        "prompt_references",
        ["workspace_id", "embedder", "created_at"],
    )
    op.create_table(
        "prompt_similarity_logs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("workspace_id", sa.String(200), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("org_id", sa.String(200), nullable=True),
        sa.Column("run_id", sa.String(32), nullable=True),
        sa.Column("span_id", sa.String(32), nullable=True),
        sa.Column("trace_id", sa.String(32), nullable=True),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("prompt_hash", sa.String(64), nullable=False),
        sa.Column("score", sa.Numeric(6, 5), nullable=True),
        sa.Column("threshold", sa.Numeric(6, 5), nullable=False),
        sa.Column("method", sa.String(120), nullable=False),
        sa.Column("reference_id", sa.String(32), nullable=True),
        sa.Column("reference_kind", sa.String(10), nullable=True),
        sa.Column("reference_text", sa.Text, nullable=True),
        sa.Column("action", sa.String(10), nullable=False),
        sa.Column("mode", sa.String(10), nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=True),
        _ts("created_at"),
    )
    op.create_index(
        "ix_prompt_similarity_logs_ws_time",
        "prompt_similarity_logs",
        ["workspace_id", "created_at"],
    )
    op.create_index("ix_prompt_similarity_logs_run_id", "prompt_similarity_logs", ["run_id"])
    op.create_table(
        "similarity_settings",
        sa.Column("workspace_id", sa.String(200), primary_key=True),
        sa.Column("threshold", sa.Numeric(6, 5), nullable=True),
        sa.Column("action", sa.String(10), nullable=True),
        sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
        _ts("updated_at"),
    )


def downgrade() -> None:
    op.drop_table("similarity_settings")
    op.drop_index("ix_prompt_similarity_logs_run_id", table_name="prompt_similarity_logs")
    op.drop_index("ix_prompt_similarity_logs_ws_time", table_name="prompt_similarity_logs")
    op.drop_table("prompt_similarity_logs")
    op.drop_index("ix_prompt_references_ws_emb_time", table_name="prompt_references")
    op.drop_table("prompt_references")
