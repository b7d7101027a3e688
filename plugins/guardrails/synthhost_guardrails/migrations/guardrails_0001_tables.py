"""Guard sets (versioned, per workspace).

Revision ID: guardrails_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "guardrails_0001"
down_revision = None
branch_labels = ("guardrails",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "guardrail_sets",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("workspace_id", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("document", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=True),
        sa.Column("summary", sa.Text, nullable=False, server_default=""),
        sa.UniqueConstraint("workspace_id", "version", name="uq_guardrail_sets_version"),
    )


def downgrade() -> None:
    op.drop_table("guardrail_sets")
