"""Durable-run workers' heartbeats (``synthhost worker``, see synthhost.durable).

Revision ID: 0006_durable_workers
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_durable_workers"
down_revision = "0005_retention_policies"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "durable_workers",
        sa.Column("executor_id", sa.String(100), primary_key=True),
        sa.Column("hostname", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("app_version", sa.String(100), nullable=False),
        sa.Column("queues", sa.String(1000), nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("durable_workers")
