"""Per-workspace retention (``synthhost retention``).

Revision ID: 0005_retention_policies
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_retention_policies"
down_revision = "0004_api_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retention_policies",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(200), nullable=False),
        sa.Column("table_name", sa.String(200), nullable=False),
        sa.Column("days", sa.Float, nullable=True),
        sa.Column("updated_by", sa.String(200), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("workspace_id", "table_name", name="uq_retention_policies"),
    )


def downgrade() -> None:
    op.drop_table("retention_policies")
