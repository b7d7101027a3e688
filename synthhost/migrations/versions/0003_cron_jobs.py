"""Scheduler state: one row per scheduled (workspace, agent).

Revision ID: 0003_cron_jobs
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_cron_jobs"
down_revision = "0002_outbox"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cron_jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(200), nullable=False),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("schedule", sa.String(200), nullable=True),
        sa.Column("next_run_at", TS, nullable=True),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_run_at", TS, nullable=True),
        sa.Column("last_status", sa.String(20), nullable=True),
        sa.Column("last_run_id", sa.String(32), nullable=True),
        sa.Column("skipped", sa.Integer, nullable=False, server_default="0"),
        sa.Column("running_by", sa.String(100), nullable=True),
        sa.Column("running_until", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("workspace_id", "agent", name="uq_cron_jobs"),
    )


def downgrade() -> None:
    op.drop_table("cron_jobs")
