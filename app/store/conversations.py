"""Conversations, messages and pool cursors in SQL through SQLAlchemy Core.

SQLite (a file beside settings.json) by default; any SQLAlchemy URL works, PostgreSQL included,
without the services noticing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

metadata = MetaData()

conversations = Table(
    "conversations",
    metadata,
    Column("conversation_id", String(64), primary_key=True),
    Column("owner_id", String(128), nullable=False, index=True),
    Column("title", Text, nullable=False),
    Column("account_name", String(128)),
    Column("token_hash", String(64)),
    Column("upstream_conversation_id", String(128)),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
Index("ix_conversations_owner_updated", conversations.c.owner_id, conversations.c.updated_at)

messages = Table(
    "messages",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column(
        "conversation_id",
        String(64),
        ForeignKey("conversations.conversation_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("parent_id", String(64)),
    Column("prompt", Text, nullable=False),
    Column("reply", Text, nullable=False),
    Column("model", String(128)),
    Column("account_name", String(128)),
    Column("upstream_message_id", String(128)),
    Column("complete", Boolean, nullable=False, default=True),
    Column("created_at", Float, nullable=False),
    Column("completed_at", Float),
)

pool_cursors = Table(
    "pool_cursors",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", Integer, nullable=False),
)


@dataclass
class Conversation:
    conversation_id: str
    owner_id: str
    title: str
    account_name: str | None
    token_hash: str | None
    upstream_conversation_id: str | None
    created_at: float
    updated_at: float
    message_count: int = 0


@dataclass
class Message:
    message_id: str
    conversation_id: str
    parent_id: str | None
    prompt: str
    reply: str
    model: str | None
    account_name: str | None
    upstream_message_id: str | None
    complete: bool = True
    created_at: float = field(default_factory=time.time)
    completed_at: float | None = None


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class SqlConversationStore:
    def __init__(self, url: str):
        self.engine = create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            path = self.engine.url.database
            if path and path != ":memory:" and not os.path.exists(path):
                # Conversations are private: make the file owner-only before SQLite creates it
                # (SQLite gives its -wal and -shm files the same mode).
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- conversations -------------------------------------------------------------------

    def create(self, conv: Conversation, first: Message) -> None:
        """Store a new conversation together with its first message."""
        values = {k: v for k, v in vars(conv).items() if k != "message_count"}
        with self.engine.begin() as db:
            db.execute(insert(conversations).values(**values))
            db.execute(insert(messages).values(**vars(first)))

    def get(self, conversation_id: str) -> Conversation | None:
        query = self._select_conversations().where(conversations.c.conversation_id == conversation_id)
        with self.engine.connect() as db:
            row = db.execute(query).mappings().first()
        return Conversation(**row) if row else None

    def list(self, owner_id: str, offset: int = 0, limit: int | None = 50) -> list[Conversation]:
        query = (
            self._select_conversations()
            .where(conversations.c.owner_id == owner_id)
            .order_by(conversations.c.updated_at.desc(), conversations.c.conversation_id)
            .offset(offset)
        )
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as db:
            return [Conversation(**row) for row in db.execute(query).mappings()]

    def count(self, owner_id: str) -> int:
        query = select(func.count()).select_from(conversations).where(conversations.c.owner_id == owner_id)
        with self.engine.connect() as db:
            return db.execute(query).scalar_one()

    def rename(self, conversation_id: str, title: str) -> None:
        with self.engine.begin() as db:
            db.execute(
                update(conversations).where(conversations.c.conversation_id == conversation_id).values(title=title)
            )

    def delete(self, conversation_ids: list[str]) -> int:
        if not conversation_ids:
            return 0
        with self.engine.begin() as db:
            db.execute(messages.delete().where(messages.c.conversation_id.in_(conversation_ids)))
            result = db.execute(conversations.delete().where(conversations.c.conversation_id.in_(conversation_ids)))
        return result.rowcount

    def owned_ids(self, owner_id: str) -> list[str]:
        query = select(conversations.c.conversation_id).where(conversations.c.owner_id == owner_id)
        with self.engine.connect() as db:
            return list(db.execute(query).scalars())

    def _select_conversations(self):
        count = (
            select(func.count())
            .where(messages.c.conversation_id == conversations.c.conversation_id)
            .scalar_subquery()
            .label("message_count")
        )
        return select(*conversations.c, count)

    # -- messages ------------------------------------------------------------------------

    def add_message(self, message: Message, upstream_conversation_id: str | None = None) -> None:
        """Append a message and touch its conversation."""
        changes = {"updated_at": message.completed_at or message.created_at}
        if upstream_conversation_id:
            changes["upstream_conversation_id"] = upstream_conversation_id
        with self.engine.begin() as db:
            db.execute(insert(messages).values(**vars(message)))
            db.execute(
                update(conversations)
                .where(conversations.c.conversation_id == message.conversation_id)
                .values(**changes)
            )

    def messages(self, conversation_id: str) -> list[Message]:
        query = (
            select(messages)
            .where(messages.c.conversation_id == conversation_id)
            .order_by(messages.c.created_at, messages.c.message_id)
        )
        with self.engine.connect() as db:
            return [Message(**row) for row in db.execute(query).mappings()]

    def last_message(self, conversation_id: str) -> Message | None:
        query = (
            select(messages)
            .where(messages.c.conversation_id == conversation_id)
            .order_by(messages.c.created_at.desc(), messages.c.message_id.desc())
            .limit(1)
        )
        with self.engine.connect() as db:
            row = db.execute(query).mappings().first()
        return Message(**row) if row else None

    # -- pool cursors --------------------------------------------------------------------

    def next_cursor(self, name: str) -> int:
        """Advance a round-robin counter shared by every process on this database; return its old value."""
        for _ in range(2):
            with self.engine.begin() as db:
                value = db.execute(
                    update(pool_cursors)
                    .where(pool_cursors.c.name == name)
                    .values(value=pool_cursors.c.value + 1)
                    .returning(pool_cursors.c.value)
                ).scalar()
            if value is not None:
                return value - 1
            try:
                with self.engine.begin() as db:
                    db.execute(insert(pool_cursors).values(name=name, value=0))
            except IntegrityError:
                pass  # another process created it first; the update will find it now
        raise RuntimeError(f"pool cursor {name!r} could not be advanced")
