"""usage_seconds.second and usage_days.tokens in 64 bits: PostgreSQL's integer ends in January 2038, and a
day's token quota may be up to 10**12

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_seconds") as batch_op:
        batch_op.alter_column("second", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)
    with op.batch_alter_table("usage_days") as batch_op:
        batch_op.alter_column("tokens", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("usage_days") as batch_op:
        batch_op.alter_column("tokens", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
    with op.batch_alter_table("usage_seconds") as batch_op:
        batch_op.alter_column("second", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
