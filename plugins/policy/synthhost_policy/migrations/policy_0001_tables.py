"""Policy sets (versioned) and their audit trail.

Revision ID: policy_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "policy_0001"
down_revision = None
branch_labels = ("policy",)
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "policy_sets",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("workspace_id", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("document", sa.JSON, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=True),
        sa.UniqueConstraint("workspace_id", "name", "version", name="uq_policy_sets_version"),
    )
    op.create_index("ix_policy_sets_ws_name", "policy_sets", ["workspace_id", "name"])
    op.create_table(
        "policy_audit",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("workspace_id", sa.String(200), nullable=False),
        sa.Column("set_name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("actor", sa.String(200), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("summary", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("ix_policy_audit_ws_name", "policy_audit", ["workspace_id", "set_name"])


def downgrade() -> None:
    op.drop_table("policy_audit")
    op.drop_table("policy_sets")
