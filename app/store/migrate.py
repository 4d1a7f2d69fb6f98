"""The database's schema, managed by Alembic migrations (app/store/migrations/versions).

`upgrade(engine)` brings any database to the newest revision, once per process, under a lock so
that workers and instances starting at once take turns:
- a new (empty) database is built by the migrations, first to last (tests/test_migrations.py checks
  that they build exactly the tables of app.store's metadata);
- a database at the newest revision is left as it is (one query);
- anything else — a database of a release before migrations, or of an older revision — is upgraded
  in place by the migrations, keeping its data. The first migration creates only the tables that
  are missing, so a database made before migrations existed is taken over as it is.

`python3 main.py db upgrade` does the same from the command line.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from filelock import FileLock
from sqlalchemy import MetaData, create_engine, inspect, text
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"
LOCK_WAIT = 120.0  # seconds a start waits for another process's migration


def all_metadata() -> MetaData:
    """Every table of the store (each module adds its own to the one metadata)."""
    from app.store import audit, conversations, pool_state, responses, usage, users_sql  # noqa: F401  (tables)

    return conversations.metadata


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@functools.cache
def head() -> str:
    """The newest revision (read once per process)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current(engine: Engine) -> str | None:
    """The database's revision; None for a database without one (new, or from before migrations)."""
    with engine.connect() as db:
        if not inspect(db).has_table(VERSION_TABLE):
            return None
        return db.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()  # noqa: S608 (a constant)


def upgrade(engine: Engine | str) -> str:
    """Bring the database (an engine, or a URL) to the newest revision; return it."""
    if isinstance(engine, str):
        return upgrade_url(engine)
    newest = head()
    if current(engine) == newest:
        return newest
    with _exclusive(engine):
        if current(engine) != newest:  # still, now that this process holds the lock
            with engine.begin() as db:
                config = alembic_config()
                config.attributes["connection"] = db
                command.upgrade(config, "head")
    return current(engine)


def upgrade_url(url: str) -> str:
    """upgrade() for a database URL (the CLI's `db upgrade`)."""
    engine = create_engine(url)
    try:
        return upgrade(engine)
    finally:
        engine.dispose()


@contextlib.contextmanager
def _exclusive(engine: Engine):
    """One migration at a time: a lock file beside a SQLite database, an advisory lock on PostgreSQL."""
    if engine.dialect.name == "sqlite":
        path = engine.url.database
        if not path or path == ":memory:":
            yield
            return
        with FileLock(path + ".migrate.lock", timeout=LOCK_WAIT, mode=0o600):
            yield
    elif engine.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(b"chatgpt-api-server:migrate").digest()[:8], "big", signed=True)
        with engine.connect() as db:
            db.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                db.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                db.commit()
    else:
        yield
