"""The schema is Alembic's: the migrations build exactly the store's tables, a database of the last release
(tests/data/release-5c5338f.sql, made by that release's own server) is upgraded in place on start with its
data kept, `db upgrade` does the same by hand, and processes starting at once on a new database take turns."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from app.store import migrate

RELEASE_DUMP = Path(__file__).with_name("data") / "release-5c5338f.sql"
RELEASE_CONVERSATION = "5fd7a0cf-d3a8-4a8e-aba6-3ad6047016d2"  # two turns by user "admin" in the dump
ROOT = Path(__file__).resolve().parents[1]


def release_database(path: Path) -> str:
    db = sqlite3.connect(path)
    db.executescript(RELEASE_DUMP.read_text())
    db.close()
    return f"sqlite:///{path}"


def schema_differences(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as db:
            return compare_metadata(MigrationContext.configure(db), migrate.all_metadata())
    finally:
        engine.dispose()


def test_the_migrations_build_exactly_the_stores_tables(tmp_path):
    """Alembic's own `upgrade head` on an empty database makes a schema with no difference from the store's
    metadata: tables, columns, types, indexes."""
    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    engine = create_engine(url)
    with engine.begin() as db:
        config = migrate.alembic_config()
        config.attributes["connection"] = db
        command.upgrade(config, "head")
    assert migrate.current(engine) == migrate.head()
    engine.dispose()
    assert schema_differences(url) == []


def test_a_new_database_is_created_at_the_newest_revision(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert migrate.upgrade_url(url) == migrate.head()
    assert schema_differences(url) == []
    assert migrate.upgrade_url(url) == migrate.head()  # again: nothing to do


def test_the_last_releases_database_is_upgraded_on_start_with_its_data(make_server, admin, tmp_path):
    """A server started on the release's database: the tables it lacked are made, the revision is the newest,
    and its conversation (two turns), pool cursors and account health are there and usable."""
    url = release_database(tmp_path / "release.db")
    engine = create_engine(url)
    before = set(inspect(engine).get_table_names())
    assert "alembic_version" not in before and "usage_ledger" not in before
    engine.dispose()
    server = make_server(database_url=url)
    engine = create_engine(url)
    assert migrate.current(engine) == migrate.head()
    assert set(inspect(engine).get_table_names()) >= before | {"usage_ledger", "audit_log", "message_feedback"}
    engine.dispose()
    assert schema_differences(url) == []
    old = server.get(f"/api/conversations/{RELEASE_CONVERSATION}", admin)
    assert old.status_code == 200, old.text
    assert [m["prompt"] for m in old.json()["messages"]] == ["What did the release store?", "And a follow-up"]
    follow = server.chat(admin, "A third turn after the upgrade", conversation_id=RELEASE_CONVERSATION)
    assert follow["parent_id"] == old.json()["messages"][-1]["message_id"]
    health = {a["name"]: a for a in server.get("/api/accounts", admin).json()["accounts"]}
    assert health["demo"]["requests"] >= 4  # the release's 3 turns, counted on, and this one


def test_db_upgrade_by_hand_and_a_second_start_changes_nothing(tmp_path):
    """`python3 main.py db upgrade`'s function on the release's database: the newest revision, rows kept."""
    url = release_database(tmp_path / "release.db")
    assert migrate.upgrade_url(url) == migrate.head()
    engine = create_engine(url)
    with engine.connect() as db:
        assert db.execute(text("SELECT count(*) FROM messages")).scalar() == 2
        assert db.execute(text("SELECT count(*) FROM pool_cursors")).scalar() == 2
    engine.dispose()
    assert migrate.upgrade_url(url) == migrate.head()


def test_processes_starting_at_once_on_a_new_database_take_turns(tmp_path):
    """Four processes open the same new database at once (as gunicorn's workers and other instances do):
    each succeeds and the schema is made once."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    code = (
        "import sys; from app.store.conversations import SqlConversationStore; "
        "from app.store import migrate; s = SqlConversationStore(sys.argv[1]); print(migrate.current(s.engine))"
    )
    runs = [
        subprocess.Popen([sys.executable, "-c", code, url], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, [err.decode()[-500:] for _, err in outputs]
    assert {out.decode().strip() for out, _ in outputs} == {migrate.head()}
    assert schema_differences(url) == []


def test_the_migrations_build_exactly_the_stores_tables_on_postgresql(pg_url):
    """The same on PostgreSQL, where column types are enforced (64-bit seconds, 160-character cursor names)."""
    engine = create_engine(pg_url)
    with engine.begin() as db:
        config = migrate.alembic_config()
        config.attributes["connection"] = db
        command.upgrade(config, "head")
    assert migrate.current(engine) == migrate.head()
    with engine.connect() as db:
        kinds = {c["name"]: str(c["type"]) for c in inspect(db).get_columns("usage_seconds")}
        length = next(c["type"].length for c in inspect(db).get_columns("pool_cursors") if c["name"] == "name")
    engine.dispose()
    assert kinds["second"] == "BIGINT" and length == 160
    assert schema_differences(pg_url) == []
    assert migrate.upgrade_url(pg_url) == migrate.head()
