"""Conversations, messages and pool cursors in SQL through SQLAlchemy Core.

SQLite (a file beside settings.json) by default; any SQLAlchemy URL works, PostgreSQL included,
without the services noticing.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
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
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from app.cooperative import later
from app.errors import Busy, Conflict, NotFound, Unauthorized
from app.store.raw import Raw, insert_into

log = logging.getLogger(__name__)

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
    Column("name", String(160), primary_key=True),  # model cursors ("model:<model>:<plus>") are long
    Column("value", Integer, nullable=False),
)


# One turn at a time per conversation: a follow-up holds its conversation's row here while it runs.
turn_locks = Table(
    "turn_locks",
    metadata,
    Column("conversation_id", String(64), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("expires_at", Float, nullable=False),
)

# When each deleted user id was deleted: a turn begun before that is not stored when it ends, so a later
# user given the same id cannot inherit a turn that was still running when the first one was deleted.
retired_users = Table(
    "retired_users",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("retired_at", Float, nullable=False),
)

# A rating of one reply (go-chatgpt-api's message_feedback): thumbsUp or thumbsDown, the latest one kept.
# Its rows go with their conversation (delete, retire_users) and, where foreign keys are on, with their message.
message_feedback = Table(
    "message_feedback",
    metadata,
    Column(
        "message_id",
        String(64),
        ForeignKey("messages.message_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("conversation_id", String(64), nullable=False, index=True),
    Column("rating", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
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


READ_BUSY_MS = 1000  # SQLite's own wait, for the rare read that finds the database locked (WAL readers seldom do)
WRITE_WAIT = 30.0  # seconds a write waits for SQLite's write lock (cooperatively) before it is a 503
DEFER_AFTER = 0.05  # seconds a deferred write may wait for the next write transaction before one of its own
DEFER_TRIES = 3  # transactions a deferred write may fail in before it is dropped (and logged)


def _sqlite_pragmas(busy_ms: int):
    def apply(dbapi_conn, _record) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        # journal_mode=WAL is kept in the file itself, set once by __init__: asking again on every new
        # connection takes a lock, which a writer's connection (busy_timeout 0) fails to get while another
        # worker or thread is writing.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return apply


def _locked(exc: Exception) -> bool:
    text = str(getattr(exc, "orig", exc)).lower()
    return "locked" in text or "busy" in text


# PostgreSQL: every write transaction first takes this transaction-level advisory lock, so writes on one
# database run one at a time, across workers and instances, as SQLite's write lock makes them run: the
# checks that read before they write (a turn's parent, the pool's cursor, health and room, the limits'
# counts, an alert's claim) see every earlier write and none that comes later.
PG_WRITE_LOCK = 0x636173  # "cas"
# What a contended PostgreSQL write ends with: serialization_failure, deadlock_detected, lock_not_available
# (lock_timeout: WRITE_WAIT passed) and a connection that went. Each is a 503 busy, never a 500.
PG_CONTENDED = frozenset({"40001", "40P01", "55P03"})


def _pg_serialise(db) -> None:
    """Inside a new PostgreSQL transaction: wait up to WRITE_WAIT (off the hub under gevent) for the write lock."""
    db.connection.driver_connection.execute(
        f"SET LOCAL lock_timeout = {max(1, int(WRITE_WAIT * 1000))}; SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})"
    )


def _contended(exc: BaseException) -> bool:
    """True for a PostgreSQL write that failed for want of the database, not for a fault of its own: a lock
    wait too long, a deadlock, a serialization failure, a connection lost or refused. The error comes through
    SQLAlchemy or, from the statements run on the driver's cursor (app/store/raw.py), straight from psycopg."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError):
            return True
        exc = exc.orig
    if getattr(exc, "sqlstate", None) in PG_CONTENDED:
        return True
    return any(kind.__name__ == "OperationalError" for kind in type(exc).__mro__)


class SqlConversationStore:
    def __init__(self, url: str):
        self.engine = create_engine(url, future=True)
        self._writer = self.engine  # other databases wait for their locks on their own, off the hub
        self._serialise = _pg_serialise if self.engine.dialect.name == "postgresql" else None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas(READ_BUSY_MS))
            # Writes have connections of their own that never wait inside SQLite (see _write).
            self._writer = create_engine(url, future=True)
            event.listen(self._writer, "connect", _sqlite_pragmas(0))
            path = self.engine.url.database
            if path and path != ":memory:" and not os.path.exists(path):
                # Conversations are private: make the file owner-only before SQLite creates it
                # (SQLite gives its -wal and -shm files the same mode).
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as db:  # waits up to READ_BUSY_MS if another process is writing
                db.exec_driver_sql("PRAGMA journal_mode=WAL")
        from app.store import migrate  # the schema: Alembic migrations (app/store/migrate.py)

        migrate.upgrade(self.engine)
        atexit.register(self._flush_at_exit)
        self._deferred: list[list] = []  # [write, tries] waiting for this process's next write transaction
        self._deferred_lock = threading.Lock()
        self._defer_armed = False

    # -- writes that may wait --------------------------------------------------------------

    def defer(self, write: Callable) -> None:
        """Run write(db) in this process's next write transaction, or DEFER_AFTER from now if none comes:
        a write that must happen but need not happen alone (the usage ledger's) rides on one that happens anyway."""
        with self._deferred_lock:
            self._deferred.append([write, 0])
        self._arm()

    def _arm(self) -> None:
        with self._deferred_lock:
            if self._defer_armed:
                return
            self._defer_armed = True
        later(DEFER_AFTER, self._on_timer)

    def _on_timer(self) -> None:
        with self._deferred_lock:
            self._defer_armed = False
        self.flush()

    def _flush_at_exit(self) -> None:
        try:
            self.flush()
        except Exception:
            log.exception("could not write %d deferred writes at exit", len(self._deferred))

    def flush(self) -> None:
        """Write what was deferred, now (the timer, if armed, stays armed: one timer per DEFER_AFTER at most)."""
        with self._deferred_lock:
            if not self._deferred:
                return
        with self._write():
            pass

    def _run_deferred(self, db) -> list[list]:
        """Run the deferred writes at the start of a write transaction; return them (put back if it fails)."""
        with self._deferred_lock:
            pending, self._deferred = self._deferred, []
        try:
            for item in pending:
                item[0](db)
        except BaseException:
            self._put_back(pending, failed=True)
            raise
        return pending

    def _put_back(self, pending: list[list], failed: bool = False) -> None:
        """The transaction that ran deferred writes rolled back: they wait for the next one. Writes that failed
        themselves DEFER_TRIES times are dropped (and logged), so one bad write cannot fail every transaction."""
        if failed:
            for item in pending:
                item[1] += 1
        kept = [item for item in pending if item[1] < DEFER_TRIES]
        if len(kept) < len(pending):
            log.error("dropped %d deferred writes that failed %d times", len(pending) - len(kept), DEFER_TRIES)
        if kept:
            with self._deferred_lock:
                self._deferred[:0] = kept
            self._arm()

    def close(self, after_fork: bool = False) -> None:
        """Let go of every pooled connection (after_fork: a forked worker's copies, without closing them)."""
        if after_fork:
            self._deferred, self._defer_armed = [], False  # the parent's to write, not this process's
        else:
            self._flush_at_exit()
        for engine in {self.engine, self._writer}:
            engine.dispose(close=not after_fork)

    def write(self):
        """A write transaction on this database, for shared state kept beside the conversations."""
        return self._write()

    @contextlib.contextmanager
    def _write(self):
        """A write transaction. On SQLite the write lock is taken first (BEGIN IMMEDIATE) and waited for
        here, in short cooperative sleeps: SQLite's own wait is a C call that would hold a whole gevent
        worker (every connection on it) for as long as the other worker writes."""
        if self._writer is self.engine:
            pending = []
            try:
                with self.engine.begin() as db:
                    if self._serialise is not None:
                        self._serialise(db)
                    pending = self._run_deferred(db)
                    yield db
            except BaseException as exc:
                self._put_back(pending)
                if self._serialise is not None and _contended(exc):
                    log.warning("a write found the database busy: %s", getattr(exc, "orig", exc))
                    raise Busy("the database is busy with other writers; try again", retry_after=2) from None
                raise
            return
        deadline, pause = time.monotonic() + WRITE_WAIT, 0.001
        while True:
            db = self._writer.connect()
            driver = db.connection.driver_connection  # BEGIN and COMMIT straight to sqlite3: SQLAlchemy's
            try:  # wrappers around the two cost more than SQLite's own work for a small transaction
                driver.execute("BEGIN IMMEDIATE")
                break
            except (OperationalError, sqlite3.OperationalError) as exc:
                db.close()
                if not _locked(exc):
                    raise
                if time.monotonic() > deadline:
                    raise Busy(
                        "the conversation database stayed locked by other writers; try again", retry_after=2
                    ) from None
            time.sleep(pause)  # gevent's sleep once main.py has patched time: the worker goes on meanwhile
            pause = min(pause * 2, 0.05)
        pending = []
        try:
            pending = self._run_deferred(db)
            yield db
        except BaseException:
            driver.rollback()
            self._put_back(pending)
            raise
        else:
            driver.commit()
        finally:
            db.close()  # also ends SQLAlchemy's own record of a transaction, if a statement through it began one

    # -- conversations -------------------------------------------------------------------

    def create(self, conv: Conversation, first: Message, since: float) -> None:
        """Store a new conversation with its first message, unless its owner was deleted after `since`."""
        row = vars(conv)
        with self._write() as db:  # writes first: SQLite then holds the write lock for the whole check
            _NEW_CONVERSATION.run(db, *(row[name] for name in _CONVERSATION_COLUMNS))
            _insert_message(db, first)
            _refuse_retired(db, conv.owner_id, since)

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
        with self._write() as db:
            db.execute(
                update(conversations).where(conversations.c.conversation_id == conversation_id).values(title=title)
            )

    def delete(self, conversation_ids: list[str]) -> int:
        if not conversation_ids:
            return 0
        with self._write() as db:
            db.execute(message_feedback.delete().where(message_feedback.c.conversation_id.in_(conversation_ids)))
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

    def add_message(
        self,
        message: Message,
        owner_id: str,
        since: float,
        upstream_conversation_id: str | None = None,
        account_name: str | None = None,
    ) -> None:
        """Append a message to the end of its conversation and touch the conversation.

        In one transaction, the conversation must still be owner_id's, the owner must not have been
        deleted after `since` (when the turn began), and the message's parent must still be the last
        message: a turn that lost a race, or whose conversation or user was deleted while it ran, is
        refused rather than stored. account_name re-pins the conversation.
        """
        changes = {"updated_at": message.completed_at or message.created_at}
        if upstream_conversation_id:
            changes["upstream_conversation_id"] = upstream_conversation_id
        if account_name:  # the conversation moved to another account (its own was unusable)
            changes["account_name"] = account_name
        cid = message.conversation_id
        with self._write() as db:  # writes first, checks after: a refusal rolls both back
            touched = _touch(tuple(changes)).run(db, *changes.values(), cid, owner_id).rowcount
            if not touched:
                _refuse_retired(db, owner_id, since)  # the user went, and the conversation with it
                raise NotFound(f"conversation {cid!r} was deleted while this reply was written; it was not kept")
            if _last_id(db, cid) != message.parent_id:
                raise Conflict(f"conversation {cid!r} moved on while this reply was written; it was not kept")
            _insert_message(db, message)
            _refuse_retired(db, owner_id, since)

    def messages(self, conversation_id: str) -> list[Message]:
        query = (
            select(messages)
            .where(messages.c.conversation_id == conversation_id)
            .order_by(messages.c.created_at, messages.c.message_id)
        )
        with self.engine.connect() as db:
            return [Message(**row) for row in db.execute(query).mappings()]

    # -- ratings ---------------------------------------------------------------------------

    def rate(self, conversation_id: str, message_id: str, rating: str) -> None:
        """Keep a rating of one message of the conversation (replacing an earlier one); NotFound if the message
        is not (or no longer) the conversation's, checked in the transaction that writes."""
        missing = NotFound(f"no message {message_id!r} in conversation {conversation_id!r}", param="message_id")
        try:
            with self._write() as db:
                found = db.execute(
                    select(messages.c.message_id).where(
                        messages.c.message_id == message_id, messages.c.conversation_id == conversation_id
                    )
                ).first()
                if found is None:
                    raise missing
                db.execute(delete(message_feedback).where(message_feedback.c.message_id == message_id))
                db.execute(
                    insert(message_feedback).values(
                        message_id=message_id, conversation_id=conversation_id, rating=rating, created_at=time.time()
                    )
                )
        except IntegrityError:  # the message went meanwhile (a database whose writers do not queue, as SQLite's do)
            raise missing from None

    def ratings(self, conversation_id: str) -> dict[str, str]:
        """The ratings of a conversation's messages: {message_id: rating}."""
        query = select(message_feedback.c.message_id, message_feedback.c.rating).where(
            message_feedback.c.conversation_id == conversation_id
        )
        with self.engine.connect() as db:
            return {row.message_id: row.rating for row in db.execute(query)}

    # -- one turn at a time -----------------------------------------------------------------

    def claim_turn(self, conversation_id: str, holder: str, seconds: float, last_id: str | None) -> None:
        """Take the conversation for one turn (for seconds, renewable), planned on history ending at last_id.

        Conflict while another turn holds it, or if a turn ended after this one read the history (it
        would go upstream on old history); both checked in the one transaction that takes the claim.
        """
        for _ in range(2):
            try:
                with self._write() as db:
                    db.execute(
                        insert(turn_locks).values(
                            conversation_id=conversation_id, holder=holder, expires_at=time.time() + seconds
                        )
                    )
                    if _last_id(db, conversation_id) != last_id:  # the claim rolls back with this
                        raise Conflict(
                            "this conversation moved on while this turn was being prepared; send it again",
                            param="conversation_id",
                        )
                return
            except IntegrityError:
                with self._write() as db:  # a holder that died leaves its claim to expire
                    stale = db.execute(
                        delete(turn_locks).where(
                            turn_locks.c.conversation_id == conversation_id, turn_locks.c.expires_at < time.time()
                        )
                    ).rowcount
                if not stale:
                    break
        raise Conflict(
            "another turn of this conversation is still running; send this one when it has finished",
            param="conversation_id",
        )

    def renew_turn(self, conversation_id: str, holder: str, seconds: float) -> None:
        with self._write() as db:
            db.execute(
                update(turn_locks)
                .where(turn_locks.c.conversation_id == conversation_id, turn_locks.c.holder == holder)
                .values(expires_at=time.time() + seconds)
            )

    def release_turn(self, conversation_id: str, holder: str) -> None:
        with self._write() as db:
            db.execute(
                delete(turn_locks).where(turn_locks.c.conversation_id == conversation_id, turn_locks.c.holder == holder)
            )

    # -- deleted users ----------------------------------------------------------------------

    def retire_users(self, user_ids: list[str]) -> int:
        """Delete the users' conversations and record when they went; return how many conversations went."""
        if not user_ids:
            return 0
        user_ids = list(dict.fromkeys(user_ids))
        with self._write() as db:  # only writes: SQLite holds its write lock from the first statement
            owned = select(conversations.c.conversation_id).where(conversations.c.owner_id.in_(user_ids))
            db.execute(message_feedback.delete().where(message_feedback.c.conversation_id.in_(owned)))
            db.execute(messages.delete().where(messages.c.conversation_id.in_(owned)))
            removed = db.execute(conversations.delete().where(conversations.c.owner_id.in_(user_ids))).rowcount
            db.execute(delete(retired_users).where(retired_users.c.user_id.in_(user_ids)))
            db.execute(insert(retired_users), [{"user_id": uid, "retired_at": time.time()} for uid in user_ids])
        return removed


# A turn's writes, sent straight to the driver (app/store/raw.py): storing a new conversation through
# SQLAlchemy cost about 700 µs, most of it SQLAlchemy's own (issue 13's profile).
_NEW_CONVERSATION, _CONVERSATION_COLUMNS = insert_into(conversations)
_NEW_MESSAGE, _MESSAGE_COLUMNS = insert_into(messages)
_RETIRED = Raw("SELECT 1 FROM retired_users WHERE user_id = ? AND retired_at >= ? LIMIT 1")
_LAST_ID = Raw(
    "SELECT message_id FROM messages WHERE conversation_id = ? ORDER BY created_at DESC, message_id DESC LIMIT 1"
)


def _touch(columns: tuple) -> Raw:
    """UPDATE of the named columns of one conversation of one owner (one statement per set of columns)."""
    assigned = ", ".join(f"{name} = ?" for name in columns)
    return Raw.once(f"UPDATE conversations SET {assigned} WHERE conversation_id = ? AND owner_id = ?")  # noqa: S608


def _insert_message(db, message: Message) -> None:
    row = vars(message)
    _NEW_MESSAGE.run(db, *(row[name] for name in _MESSAGE_COLUMNS))


def _refuse_retired(db, owner_id: str, since: float) -> None:
    """Inside a writing transaction: refuse (and so roll back) a turn begun at `since` by a user deleted since."""
    if _RETIRED.run(db, owner_id, since).fetchone():
        raise Unauthorized("this user was deleted while the reply was written; the reply was not kept")


def _last_id(db, conversation_id: str) -> str | None:
    """The id of the conversation's last message (None if it has none), inside a transaction."""
    row = _LAST_ID.run(db, conversation_id).fetchone()
    return row[0] if row else None
