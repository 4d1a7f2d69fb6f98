"""The conversation operations find their rows by index, never by reading a whole table (docs/store-scale.md).

On a real SQLite file and on PostgreSQL (the `database` fixture), a few thousand conversations and their
messages are stored; then the store calls that starting a conversation, a follow-up, listing a user's
conversations and reading one make are run while every statement they send is captured, and each
statement is explained with its own parameters (SQLite: EXPLAIN QUERY PLAN, no ANALYZE, as the server
runs; PostgreSQL: EXPLAIN after ANALYZE). None may scan conversations, messages or message_feedback whole:
SQLite's `SCAN <table>` (even of a covering index) and PostgreSQL's `Seq Scan on <table>` fail the test.
The last test drops an index and sees the check fail, so the check itself is known to look.
"""

from __future__ import annotations

import random
import re
import time
import uuid

import pytest
from sqlalchemy import event, insert, text

from app.store import raw
from app.store.conversations import (
    Conversation,
    Message,
    SqlConversationStore,
    conversations,
    message_feedback,
    messages,
)

BIG_TABLES = ("conversations", "messages", "message_feedback")
OWNERS, PER_OWNER, TURNS = 300, 10, 5  # 3,000 conversations, 15,000 messages


@pytest.fixture
def store(database, tmp_path):
    """A store on the test's database (a real SQLite file, or a fresh PostgreSQL database) with rows in it."""
    url = database.get("database_url") or f"sqlite:///{tmp_path / 'plans.db'}"
    made = SqlConversationStore(url)
    fill(made)
    yield made
    made.close()


def fill(store: SqlConversationStore) -> None:
    rng = random.Random(5)
    now = time.time()
    convs, rows, ratings = [], [], []
    for n in range(OWNERS * PER_OWNER):
        cid, at = str(uuid.uuid4()), now - rng.random() * 86400 * 365
        parent = None
        for k in range(TURNS):
            mid = str(uuid.uuid4())
            rows.append(
                {
                    "message_id": mid,
                    "conversation_id": cid,
                    "parent_id": parent,
                    "prompt": f"question {k} of {n}",
                    "reply": "an answer " * 20,
                    "model": "m",
                    "account_name": "demo",
                    "upstream_message_id": None,
                    "complete": True,
                    "created_at": at + 60 * k,
                    "completed_at": at + 60 * k + 5,
                }
            )
            parent = mid
        convs.append(
            {
                "conversation_id": cid,
                "owner_id": f"owner-{n % OWNERS}",
                "title": f"conversation {n}",
                "account_name": "demo",
                "token_hash": None,
                "upstream_conversation_id": None,
                "created_at": at,
                "updated_at": at + 60 * TURNS,
            }
        )
        if n % 2 == 0:  # enough ratings that PostgreSQL's planner sees a table worth an index
            ratings.append({"message_id": parent, "conversation_id": cid, "rating": "thumbsUp", "created_at": now})
    with store.write() as db:
        db.execute(insert(conversations), convs)
        db.execute(insert(messages), rows)
        db.execute(insert(message_feedback), ratings)
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect() as db:
            db.execute(text("ANALYZE"))
            db.commit()


def captured(store: SqlConversationStore, calls) -> list[tuple[str, object]]:
    """The distinct statements (with the parameters of their first run) the calls send to the database: through
    SQLAlchemy, and straight to the driver's cursor (app/store/raw.py)."""
    seen: list[tuple[str, object]] = []

    def add(statement: str, parameters) -> None:
        statement = " ".join(statement.split())
        if re.match(r"(?i)(BEGIN|COMMIT|ROLLBACK|PRAGMA|SET |SELECT pg_|SHOW |select current_schema)", statement):
            return
        if all(statement != known for known, _ in seen):
            seen.append((statement, parameters))

    def note(conn, cursor, statement, parameters, context, executemany):
        add(statement, parameters[0] if executemany else parameters)

    raw_run = raw.Raw.run

    def run(statement, db, *params):
        add(statement._text(db.dialect.paramstyle), params)
        return raw_run(statement, db, *params)

    engines = {store.engine, store._writer}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", note)
    raw.Raw.run = run
    try:
        calls()
    finally:
        raw.Raw.run = raw_run
        for engine in engines:
            event.remove(engine, "before_cursor_execute", note)
    return seen


def the_four_operations(store: SqlConversationStore) -> list[tuple[str, object]]:
    """What ChatService and ConversationService ask of the store for a new conversation, a follow-up, the
    list and one conversation's page (app/services/chat.py, conversations.py)."""
    owner = "owner-7"

    def calls():
        now = time.time()
        new = Conversation(str(uuid.uuid4()), owner, "new", "demo", None, None, now, now)
        store.create(new, Message(str(uuid.uuid4()), new.conversation_id, None, "hi", "hello", "m", "demo", None), now)
        # a follow-up on one of the loaded conversations
        conv = store.list(owner, 0, 50)[-1]
        assert store.get(conv.conversation_id).message_count == TURNS
        history = store.messages(conv.conversation_id)
        store.claim_turn(conv.conversation_id, "holder", 60, history[-1].message_id)
        follow = Message(
            str(uuid.uuid4()), conv.conversation_id, history[-1].message_id, "and?", "so", "m", "demo", None
        )
        store.add_message(follow, owner, now - 1)
        store.release_turn(conv.conversation_id, "holder")
        # the list, and one conversation read with its ratings
        assert len(store.list(owner, 0, 50)) == PER_OWNER + 1 and store.count(owner) == PER_OWNER + 1
        read = store.list(owner, 0, 50)[3].conversation_id
        store.get(read)
        store.ratings(read)
        assert len(store.messages(read)) >= TURNS

    statements = captured(store, calls)
    shapes = " | ".join(statement for statement, _ in statements)
    for wanted in (
        r"FROM conversations WHERE (conversations\.)?owner_id",
        r"FROM conversations WHERE (conversations\.)?conversation_id",
        r"FROM messages WHERE (messages\.)?conversation_id",
        r"FROM message_feedback WHERE (message_feedback\.)?conversation_id",
        r"INSERT INTO turn_locks",
        r"DELETE FROM turn_locks",
    ):
        assert re.search(wanted, shapes), f"{wanted!r} was not captured: {shapes[:1000]}"
    return statements


def plan(store: SqlConversationStore, statement: str, parameters) -> list[str]:
    raw = store.engine.raw_connection()
    try:
        if store.engine.dialect.name == "sqlite":
            cursor = raw.cursor()
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters or ())
            return [row[3] for row in cursor.fetchall()]
        import psycopg

        cursor = psycopg.ClientCursor(raw.driver_connection)  # the values inlined: the plan for these very values
        cursor.execute("EXPLAIN " + statement, parameters or None)
        return [row[0] for row in cursor.fetchall()]
    finally:
        raw.rollback()
        raw.close()


def full_scans(store: SqlConversationStore, statements) -> list[str]:
    """Every plan line that reads a big table whole, with its statement."""
    tables = "|".join(BIG_TABLES)
    pattern = rf"\bSCAN ({tables})\b" if store.engine.dialect.name == "sqlite" else rf"\bSeq Scan on ({tables})\b"
    found = []
    for statement, parameters in statements:
        for line in plan(store, statement, parameters):
            if re.search(pattern, line):
                found.append(f"{line.strip()}  <-  {statement[:160]}")
    return found


def test_the_four_operations_read_the_big_tables_by_index(store):
    statements = the_four_operations(store)
    reads = [(s, p) for s, p in statements if not s.startswith("INSERT")]
    assert len(reads) >= 8
    assert full_scans(store, statements) == []
    uses = " ".join(line for s, p in reads for line in plan(store, s, p))
    for index in (
        "ix_conversations_owner_updated",
        "ix_messages_conversation_id",
        "ix_message_feedback_conversation_id",
    ):
        assert index in uses, f"{index} is used by none of the plans"


def test_the_check_fails_without_the_messages_index(store):
    """Drop the index that finds a conversation's messages: the same operations now scan messages, and the check
    above says so (it can fail)."""
    with store.write() as db:
        db.execute(text("DROP INDEX ix_messages_conversation_id"))
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect() as db:
            db.execute(text("ANALYZE"))
            db.commit()
    scans = full_scans(store, the_four_operations(store))
    assert scans and all("messages" in line for line in scans), scans
