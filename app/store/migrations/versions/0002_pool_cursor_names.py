"""pool_cursors.name holds model cursors ("model:<model>:<plus>"): 160 characters, not 32

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pool_cursors") as batch_op:
        batch_op.alter_column("name", existing_type=sa.String(length=32), type_=sa.String(length=160))


def downgrade() -> None:
    with op.batch_alter_table("pool_cursors") as batch_op:
        batch_op.alter_column("name", existing_type=sa.String(length=160), type_=sa.String(length=32))
