"""Alembic's environment: the schema is app.store's metadata; the connection is the one migrate.py gives."""

from __future__ import annotations

from alembic import context

from app.store.migrate import all_metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic` on the command line: a URL from alembic's own -x url=... or its ini
    from sqlalchemy import create_engine

    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    connection = create_engine(url).connect()
context.configure(connection=connection, target_metadata=all_metadata(), render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
