"""Rate-limit plugin table: ratelimit_limits (per-workspace limits per scope).

Revision ID: ratelimit_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "ratelimit_0001"
down_revision = None
branch_labels = ("ratelimit",)
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ratelimit_limits",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(200), nullable=False),
        sa.Column("scope", sa.String(20), nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=True),
        sa.Column("tokens", sa.BigInteger, nullable=True),
        sa.Column("window_s", sa.Float, nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("workspace_id", "scope", name="uq_ratelimit_limits"),
    )
    op.create_index("ix_ratelimit_limits_workspace_id", "ratelimit_limits", ["workspace_id"])


def downgrade() -> None:
    op.drop_index("ix_ratelimit_limits_workspace_id", table_name="ratelimit_limits")
    op.drop_table("ratelimit_limits")
