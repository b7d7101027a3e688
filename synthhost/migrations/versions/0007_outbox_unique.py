"""One outbox row per (event, exporter): a durable step executed again after a crash
re-emits its events with the same ids, and its outbox rows are then ignored, not
queued twice (see synthhost.storage.writer._keep_first).

Revision ID: 0007_outbox_unique
"""

from alembic import op

revision = "0007_outbox_unique"
down_revision = "0006_durable_workers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Duplicates written before this revision (a re-executed durable step): keep the first.
    op.execute("DELETE FROM outbox WHERE id NOT IN (SELECT MIN(id) FROM outbox GROUP BY event_id, exporter)")
    op.create_index("ux_outbox_event_exporter", "outbox", ["event_id", "exporter"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_outbox_event_exporter", table_name="outbox")
