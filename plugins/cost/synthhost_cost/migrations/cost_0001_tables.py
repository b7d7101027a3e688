"""Cost plugin tables: model_cost_logs and model_price_overrides.

Revision ID: cost_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "cost_0001"
down_revision = None
branch_labels = ("cost",)
depends_on = None

TS = sa.DateTime(timezone=True)
# NUMERIC(20, 10); on SQLite an integer count of 1e-10 units (synthhost_cost.models.Money).
MONEY = sa.Numeric(20, 10).with_variant(sa.BigInteger(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "model_cost_logs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("workspace_id", sa.String(200), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("org_id", sa.String(200), nullable=True),
        sa.Column("run_id", sa.String(32), nullable=True),
        sa.Column("trace_id", sa.String(32), nullable=True),
        sa.Column("span_id", sa.String(32), nullable=True),
        sa.Column("agent", sa.String(200), nullable=True),
        sa.Column("step", sa.String(200), nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("provider", sa.String(100), nullable=False),
        sa.Column("model_requested", sa.String(200), nullable=False),
        sa.Column("model_billed", sa.String(200), nullable=False),
        sa.Column("price_provider", sa.String(100), nullable=True),
        sa.Column("price_model", sa.String(200), nullable=True),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("cache_read_tokens", sa.Integer, nullable=False),
        sa.Column("cache_write_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("reasoning_tokens", sa.Integer, nullable=False),
        sa.Column("input_cost", MONEY, nullable=True),
        sa.Column("cache_read_cost", MONEY, nullable=True),
        sa.Column("cache_write_cost", MONEY, nullable=True),
        sa.Column("output_cost", MONEY, nullable=True),
        sa.Column("total_cost", MONEY, nullable=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("priced", sa.Boolean, nullable=False),
        sa.Column("price_source", sa.String(20), nullable=True),
        sa.Column("price_version", sa.String(100), nullable=True),
        sa.Column("note", sa.String(300), nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_model_cost_logs_ws_time", "model_cost_logs", ["workspace_id", "created_at"])
    op.create_index("ix_model_cost_logs_run_id", "model_cost_logs", ["run_id"])
    op.create_table(
        "model_price_overrides",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(100), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("input_mtok", MONEY, nullable=False),
        sa.Column("output_mtok", MONEY, nullable=False),
        sa.Column("cache_read_mtok", MONEY, nullable=True),
        sa.Column("cache_write_mtok", MONEY, nullable=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("valid_from", TS, nullable=False),
        sa.Column("note", sa.String(500), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("workspace_id", "provider", "model", "valid_from", name="uq_model_price_overrides"),
    )


def downgrade() -> None:
    op.drop_table("model_price_overrides")
    op.drop_index("ix_model_cost_logs_run_id", "model_cost_logs")
    op.drop_index("ix_model_cost_logs_ws_time", "model_cost_logs")
    op.drop_table("model_cost_logs")
