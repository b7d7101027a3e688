"""The outbox: one row per (event, exporter) delivery.

Revision ID: 0002_outbox
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_outbox"
down_revision = "0001_host"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "outbox",
        # SQLite only auto-increments an INTEGER PRIMARY KEY.
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("event_id", sa.String(32), nullable=False),
        sa.Column("exporter", sa.String(100), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("claimed_by", sa.String(100), nullable=True),
        sa.Column("claimed_until", TS, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_attempt_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("delivered_at", TS, nullable=True),
    )
    op.create_index(
        "ix_outbox_exporter_state_due", "outbox", ["exporter", "state", "next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_exporter_state_due", table_name="outbox")
    op.drop_table("outbox")
