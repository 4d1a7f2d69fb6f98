"""The few statements every turn runs, sent straight to the database driver's cursor.

On SQLite, SQLAlchemy's execution of a small precompiled statement costs about three times the
statement itself (bench: an admission of 3 statements, 125 µs through SQLAlchemy, 45 µs here).
These statements are plain SQL that SQLite and PostgreSQL both take; they run on the connection
(and inside the transaction) SQLAlchemy holds, with `?` placeholders turned into the driver's own.
"""

from __future__ import annotations


class Raw:
    """One SQL statement with `?` placeholders, ready for any driver's paramstyle."""

    def __init__(self, sql: str):
        self.sql = " ".join(sql.split())
        self._texts: dict[str, str] = {}

    def _text(self, style: str) -> str:
        text = self._texts.get(style)
        if text is None:
            if style == "qmark":
                text = self.sql
            elif style in ("format", "pyformat"):
                text = self.sql.replace("%", "%%").replace("?", "%s")
            else:  # numeric, named: number the placeholders
                parts = self.sql.split("?")
                text = parts[0] + "".join(f":{i}{part}" for i, part in enumerate(parts[1:], 1))
            self._texts[style] = text
        return text

    def run(self, db, *params):
        """Execute on db (a SQLAlchemy Connection) and return the driver's cursor."""
        cursor = db.connection.driver_connection.cursor()
        cursor.execute(self._text(db.dialect.paramstyle), params)
        return cursor
