"""Per-workspace routing configuration.

Revision ID: routing_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "routing_0001"
down_revision = None
branch_labels = ("routing",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "routing_configs",
        sa.Column("workspace_id", sa.String(200), primary_key=True),
        sa.Column("document", sa.JSON, nullable=False),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("routing_configs")
