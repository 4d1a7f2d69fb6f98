"""baseline: the schema as of issue 11

Revision ID: 0001
Revises: (none)
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Every table of the schema as of issue 11; a table that exists already (a database made before
    migrations, by create_all) is kept as it is."""
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "account_health" not in existing:
        op.create_table(
            "account_health",
            sa.Column("name", sa.String(length=128), nullable=False),
            sa.Column("state", sa.String(length=32), nullable=False),
            sa.Column("cooling_until", sa.Float(), nullable=True),
            sa.Column("backoff", sa.Float(), nullable=False),
            sa.Column("last_error", sa.Text(), nullable=True),
            sa.Column("last_error_at", sa.Float(), nullable=True),
            sa.Column("requests", sa.Integer(), nullable=False),
            sa.Column("errors", sa.Integer(), nullable=False),
            sa.Column("last_used", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("name"),
        )
    if "account_hits" not in existing:
        op.create_table(
            "account_hits",
            sa.Column("hit_id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("name", sa.String(length=128), nullable=False),
            sa.Column("at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("hit_id"),
        )
        with op.batch_alter_table("account_hits", schema=None) as batch_op:
            batch_op.create_index("ix_account_hits_name_at", ["name", "at"], unique=False)
    if "account_leases" not in existing:
        op.create_table(
            "account_leases",
            sa.Column("lease_id", sa.String(length=32), nullable=False),
            sa.Column("name", sa.String(length=128), nullable=False),
            sa.Column("expires_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("lease_id"),
        )
        with op.batch_alter_table("account_leases", schema=None) as batch_op:
            batch_op.create_index(batch_op.f("ix_account_leases_name"), ["name"], unique=False)
    if "alerts_sent" not in existing:
        op.create_table(
            "alerts_sent",
            sa.Column("event", sa.String(length=160), nullable=False),
            sa.Column("until", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("event"),
        )
    if "audit_log" not in existing:
        op.create_table(
            "audit_log",
            sa.Column("entry_id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("at", sa.Float(), nullable=False),
            sa.Column("actor_id", sa.String(length=128), nullable=True),
            sa.Column("actor_role", sa.String(length=16), nullable=True),
            sa.Column("action", sa.String(length=64), nullable=False),
            sa.Column("target", sa.String(length=160), nullable=True),
            sa.Column("detail", sa.Text(), nullable=True),
            sa.Column("address", sa.String(length=64), nullable=True),
            sa.PrimaryKeyConstraint("entry_id"),
        )
        with op.batch_alter_table("audit_log", schema=None) as batch_op:
            batch_op.create_index("ix_audit_log_action", ["action", "entry_id"], unique=False)
            batch_op.create_index("ix_audit_log_actor", ["actor_id", "entry_id"], unique=False)
            batch_op.create_index("ix_audit_log_at", ["at"], unique=False)
            batch_op.create_index("ix_audit_log_target", ["target", "entry_id"], unique=False)
    if "conversations" not in existing:
        op.create_table(
            "conversations",
            sa.Column("conversation_id", sa.String(length=64), nullable=False),
            sa.Column("owner_id", sa.String(length=128), nullable=False),
            sa.Column("title", sa.Text(), nullable=False),
            sa.Column("account_name", sa.String(length=128), nullable=True),
            sa.Column("token_hash", sa.String(length=64), nullable=True),
            sa.Column("upstream_conversation_id", sa.String(length=128), nullable=True),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("updated_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("conversation_id"),
        )
        with op.batch_alter_table("conversations", schema=None) as batch_op:
            batch_op.create_index(batch_op.f("ix_conversations_owner_id"), ["owner_id"], unique=False)
            batch_op.create_index("ix_conversations_owner_updated", ["owner_id", "updated_at"], unique=False)
    if "key_failures" not in existing:
        op.create_table(
            "key_failures",
            sa.Column("failure_id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("address", sa.String(length=64), nullable=False),
            sa.Column("at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("failure_id"),
        )
        with op.batch_alter_table("key_failures", schema=None) as batch_op:
            batch_op.create_index("ix_key_failures_address_at", ["address", "at"], unique=False)
    if "pool_cursors" not in existing:
        op.create_table(
            "pool_cursors",
            sa.Column("name", sa.String(length=32), nullable=False),
            sa.Column("value", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("name"),
        )
    if "retired_users" not in existing:
        op.create_table(
            "retired_users",
            sa.Column("user_id", sa.String(length=128), nullable=False),
            sa.Column("retired_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("user_id"),
        )
    if "stored_responses" not in existing:
        op.create_table(
            "stored_responses",
            sa.Column("response_id", sa.String(length=64), nullable=False),
            sa.Column("owner_id", sa.String(length=128), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("response", sa.Text(), nullable=False),
            sa.Column("messages", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("response_id"),
        )
        with op.batch_alter_table("stored_responses", schema=None) as batch_op:
            batch_op.create_index("ix_stored_responses_owner", ["owner_id"], unique=False)
    if "turn_locks" not in existing:
        op.create_table(
            "turn_locks",
            sa.Column("conversation_id", sa.String(length=64), nullable=False),
            sa.Column("holder", sa.String(length=64), nullable=False),
            sa.Column("expires_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("conversation_id"),
        )
    if "usage_days" not in existing:
        op.create_table(
            "usage_days",
            sa.Column("subject", sa.String(length=128), nullable=False),
            sa.Column("day", sa.String(length=10), nullable=False),
            sa.Column("requests", sa.Integer(), nullable=False),
            sa.Column("tokens", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("subject", "day"),
        )
    if "usage_ledger" not in existing:
        op.create_table(
            "usage_ledger",
            sa.Column("entry_id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("at", sa.Float(), nullable=False),
            sa.Column("day", sa.String(length=10), nullable=False),
            sa.Column("user_id", sa.String(length=128), nullable=False),
            sa.Column("client_id", sa.String(length=128), nullable=True),
            sa.Column("owner_id", sa.String(length=128), nullable=True),
            sa.Column("account", sa.String(length=128), nullable=True),
            sa.Column("model", sa.String(length=128), nullable=True),
            sa.Column("front", sa.String(length=32), nullable=False),
            sa.Column("prompt_tokens", sa.Integer(), nullable=False),
            sa.Column("completion_tokens", sa.Integer(), nullable=False),
            sa.Column("estimated", sa.Boolean(), nullable=False),
            sa.Column("duration_ms", sa.Integer(), nullable=False),
            sa.Column("outcome", sa.String(length=8), nullable=False),
            sa.Column("status", sa.Integer(), nullable=True),
            sa.PrimaryKeyConstraint("entry_id"),
        )
        with op.batch_alter_table("usage_ledger", schema=None) as batch_op:
            batch_op.create_index("ix_usage_ledger_day", ["day"], unique=False)
            batch_op.create_index("ix_usage_ledger_owner_day", ["owner_id", "day"], unique=False)
            batch_op.create_index("ix_usage_ledger_user_day", ["user_id", "day"], unique=False)
    if "usage_seconds" not in existing:
        op.create_table(
            "usage_seconds",
            sa.Column("subject", sa.String(length=128), nullable=False),
            sa.Column("second", sa.Integer(), nullable=False),
            sa.Column("requests", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("subject", "second"),
        )
    if "messages" not in existing:
        op.create_table(
            "messages",
            sa.Column("message_id", sa.String(length=64), nullable=False),
            sa.Column("conversation_id", sa.String(length=64), nullable=False),
            sa.Column("parent_id", sa.String(length=64), nullable=True),
            sa.Column("prompt", sa.Text(), nullable=False),
            sa.Column("reply", sa.Text(), nullable=False),
            sa.Column("model", sa.String(length=128), nullable=True),
            sa.Column("account_name", sa.String(length=128), nullable=True),
            sa.Column("upstream_message_id", sa.String(length=128), nullable=True),
            sa.Column("complete", sa.Boolean(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("completed_at", sa.Float(), nullable=True),
            sa.ForeignKeyConstraint(["conversation_id"], ["conversations.conversation_id"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("message_id"),
        )
        with op.batch_alter_table("messages", schema=None) as batch_op:
            batch_op.create_index(batch_op.f("ix_messages_conversation_id"), ["conversation_id"], unique=False)
    if "message_feedback" not in existing:
        op.create_table(
            "message_feedback",
            sa.Column("message_id", sa.String(length=64), nullable=False),
            sa.Column("conversation_id", sa.String(length=64), nullable=False),
            sa.Column("rating", sa.String(length=16), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.ForeignKeyConstraint(["message_id"], ["messages.message_id"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("message_id"),
        )
        with op.batch_alter_table("message_feedback", schema=None) as batch_op:
            batch_op.create_index(batch_op.f("ix_message_feedback_conversation_id"), ["conversation_id"], unique=False)


def downgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    with op.batch_alter_table("message_feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_message_feedback_conversation_id"))

    op.drop_table("message_feedback")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_conversation_id"))

    op.drop_table("messages")
    op.drop_table("usage_seconds")
    with op.batch_alter_table("usage_ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_ledger_user_day")
        batch_op.drop_index("ix_usage_ledger_owner_day")
        batch_op.drop_index("ix_usage_ledger_day")

    op.drop_table("usage_ledger")
    op.drop_table("usage_days")
    op.drop_table("turn_locks")
    with op.batch_alter_table("stored_responses", schema=None) as batch_op:
        batch_op.drop_index("ix_stored_responses_owner")

    op.drop_table("stored_responses")
    op.drop_table("retired_users")
    op.drop_table("pool_cursors")
    with op.batch_alter_table("key_failures", schema=None) as batch_op:
        batch_op.drop_index("ix_key_failures_address_at")

    op.drop_table("key_failures")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index("ix_conversations_owner_updated")
        batch_op.drop_index(batch_op.f("ix_conversations_owner_id"))

    op.drop_table("conversations")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_target")
        batch_op.drop_index("ix_audit_log_at")
        batch_op.drop_index("ix_audit_log_actor")
        batch_op.drop_index("ix_audit_log_action")

    op.drop_table("audit_log")
    op.drop_table("alerts_sent")
    with op.batch_alter_table("account_leases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_account_leases_name"))

    op.drop_table("account_leases")
    with op.batch_alter_table("account_hits", schema=None) as batch_op:
        batch_op.drop_index("ix_account_hits_name_at")

    op.drop_table("account_hits")
    op.drop_table("account_health")
    # ### end Alembic commands ###
