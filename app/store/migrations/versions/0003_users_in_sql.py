"""users in SQL: the table of users_store "sql" (made in every database; empty unless used)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "users" in sa.inspect(op.get_bind()).get_table_names():  # a database stamped late by hand: keep it
        return
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("plus", sa.Boolean(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=True),
        sa.Column("external_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.String(length=40), nullable=False),
        sa.Column("limits", sa.Text(), nullable=True),
        sa.Column("shape", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("user_id"),
        sa.UniqueConstraint("key_hash"),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index("ix_users_created_by", ["created_by"], unique=False)
        batch_op.create_index("ix_users_external", ["created_by", "external_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index("ix_users_external")
        batch_op.drop_index("ix_users_created_by")

    op.drop_table("users")
