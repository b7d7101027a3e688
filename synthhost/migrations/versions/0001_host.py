"""Host tables: feature flags, event log, runs and spans.

Revision ID: 0001_host
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_host"
down_revision = None
branch_labels = ("synthhost",)
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "feature_flags",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(200), nullable=False),
        sa.Column("flag_name", sa.String(200), nullable=False),
        sa.Column("is_enabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("value", sa.JSON, nullable=True),
        sa.Column("updated_by", sa.String(200), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("workspace_id", "flag_name", name="uq_feature_flags"),
    )
    op.create_index("ix_feature_flags_workspace_id", "feature_flags", ["workspace_id"])
    op.create_table(
        "flag_epoch",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.execute("INSERT INTO flag_epoch (id, epoch) VALUES (1, 0)")
    op.create_table(
        "event_logs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("workspace_id", sa.String(200), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("org_id", sa.String(200), nullable=True),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("context", sa.JSON, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=True),
        sa.Column("trace_id", sa.String(32), nullable=True),
        sa.Column("run_id", sa.String(32), nullable=True),
        sa.Column("span_id", sa.String(32), nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_event_logs_workspace_id", "event_logs", ["workspace_id"])
    op.create_index("ix_event_logs_trace_id", "event_logs", ["trace_id"])
    op.create_index("ix_event_logs_run_id", "event_logs", ["run_id"])
    op.create_index("ix_event_logs_created_at", "event_logs", ["created_at"])
    op.create_index(
        "ix_event_logs_ws_type_time", "event_logs", ["workspace_id", "event_type", "created_at"]
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("workspace_id", sa.String(200), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("org_id", sa.String(200), nullable=True),
        sa.Column("agent", sa.String(200), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("input", sa.JSON, nullable=True),
        sa.Column("output", sa.JSON, nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("attributes", sa.JSON, nullable=True),
    )
    op.create_index("ix_runs_trace_id", "runs", ["trace_id"])
    op.create_index("ix_runs_ws_started", "runs", ["workspace_id", "started_at"])
    op.create_table(
        "spans",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("parent_id", sa.String(32), nullable=True),
        sa.Column("workspace_id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("attributes", sa.JSON, nullable=True),
    )
    op.create_index("ix_spans_trace_id", "spans", ["trace_id"])
    op.create_index("ix_spans_run_id", "spans", ["run_id"])


def downgrade() -> None:
    for table in ("spans", "runs", "event_logs", "flag_epoch", "feature_flags"):
        op.drop_table(table)
