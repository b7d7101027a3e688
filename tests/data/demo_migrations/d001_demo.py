"""A test plugin's own Alembic branch."""

import sqlalchemy as sa
from alembic import op

revision = "d001_demo"
down_revision = None
branch_labels = ("demo",)
depends_on = None


def upgrade() -> None:
    op.create_table("demo_notes", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("text", sa.String(100)))


def downgrade() -> None:
    op.drop_table("demo_notes")
