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

    @classmethod
    def once(cls, sql: str) -> Raw:
        """The Raw of sql, made the first time it is asked for: for statements whose text depends on the call
        (an IN list's length, the columns an UPDATE sets), each shape built once."""
        made = _MADE.get(sql)
        if made is None:
            made = _MADE[sql] = cls(sql)
        return made


_MADE: dict[str, Raw] = {}


def marks(count: int) -> str:
    """count placeholders, comma-separated: "?, ?, ?"."""
    return ", ".join("?" * count)


def insert_into(table) -> tuple[Raw, list[str]]:
    """INSERT of every column of a SQLAlchemy Table, and the column names in the order it takes them."""
    names = [c.name for c in table.columns]
    return Raw(f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({marks(len(names))})"), names  # noqa: S608
