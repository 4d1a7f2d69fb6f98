"""Users in the SQL database (settings `users_store: "sql"`), beside the conversations: for several
instances that share one PostgreSQL, or anyone who prefers one database to users.json.

The same rules as JsonUserStore (app/store/users_json.py), each change in one write transaction of
the store (SQLite's write lock, PostgreSQL's advisory lock), so every instance sees a change at its
next request and two changes at once cannot both pass a check (a client's user count, the last
admin). Keys are stored as their SHA-256, as in users.json; `python3 main.py users export|import`
moves users between the two without touching a hash.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy import Boolean, Column, Index, String, Table, Text, delete, func, insert, select, update

from app.errors import Conflict, Forbidden, NotFound, Unauthorized
from app.store.conversations import SqlConversationStore, metadata
from app.store.users import Guard, User, UserStore

users = Table(
    "users",
    metadata,
    Column("user_id", String(128), primary_key=True),
    Column("username", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("plus", Boolean, nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_by", String(128)),
    Column("external_id", String(128)),
    Column("created_at", String(40), nullable=False),
    Column("limits", Text),  # JSON, or NULL: the role's defaults
    Column("shape", String(16)),
)
Index("ix_users_created_by", users.c.created_by)
Index("ix_users_external", users.c.created_by, users.c.external_id, unique=True)


def _row(user: User) -> dict:
    values = {column.name: getattr(user, column.name) for column in users.columns}
    values["limits"] = json.dumps(user.limits, sort_keys=True) if user.limits is not None else None
    return values


def _user(row) -> User:
    values = dict(row._mapping)
    values["limits"] = json.loads(values["limits"]) if values["limits"] is not None else None
    values["plus"] = bool(values["plus"])
    return User(**values)


class SqlUserStore(UserStore):
    def __init__(self, store: SqlConversationStore):
        self._store = store
        self._engine = store.engine

    # -- reading -------------------------------------------------------------------------

    def _one(self, condition) -> User | None:
        with self._engine.connect() as db:
            row = db.execute(select(users).where(condition)).first()
        return _user(row) if row is not None else None

    def get(self, user_id: str) -> User | None:
        return self._one(users.c.user_id == user_id)

    def get_by_key_hash(self, key_hash: str) -> User | None:
        return self._one(users.c.key_hash == key_hash)

    def find_external(self, created_by: str, external_id: str) -> User | None:
        return self._one((users.c.created_by == created_by) & (users.c.external_id == external_id))

    def list(self, created_by: str | None = None) -> list[User]:
        query = select(users).order_by(users.c.created_at, users.c.user_id)
        if created_by is not None:
            query = query.where(users.c.created_by == created_by)
        with self._engine.connect() as db:
            return [_user(row) for row in db.execute(query)]

    def count(self) -> int:
        with self._engine.connect() as db:
            return db.execute(select(func.count()).select_from(users)).scalar()

    # -- changing ------------------------------------------------------------------------

    def add(self, user: User, limit: int = 0, require_creator: bool = False) -> User:
        with self._store.write() as db:

            def exists(condition) -> bool:
                return db.execute(select(users.c.user_id).where(condition).limit(1)).first() is not None

            if require_creator and not exists(users.c.user_id == user.created_by):
                raise Unauthorized("the key that asked for this was deleted meanwhile")
            if exists(users.c.user_id == user.user_id):
                raise Conflict(f"user_id {user.user_id!r} already exists", param="user_id")
            if exists(users.c.created_by == user.user_id):
                raise Conflict(f"user_id {user.user_id!r} is still the creator of other users", param="user_id")
            if user.external_id is not None and exists(
                (users.c.created_by == user.created_by) & (users.c.external_id == user.external_id)
            ):
                raise Conflict(f"user_id {user.external_id!r} already exists for this client", param="user_id")
            if limit:
                made = db.execute(
                    select(func.count()).select_from(users).where(users.c.created_by == user.created_by)
                ).scalar()
                if made >= limit:
                    raise Forbidden(
                        f"this client already has {limit} users, the most max_users_per_client allows; "
                        "delete some first"
                    )
            db.execute(insert(users).values(**_row(user)))
        return user

    def delete(self, user_id: str, guard: Guard | None = None) -> User:
        with self._store.write() as db:
            everyone = [_user(row) for row in db.execute(select(users))]
            user = next((u for u in everyone if u.user_id == user_id), None)
            if user is None:
                raise NotFound(f"no user {user_id!r}")
            others = (guard(user, everyone) if guard else None) or ()
            known = {u.user_id for u in everyone}
            drop = [user_id, *(o for o in dict.fromkeys(others) if o != user_id and o in known)]
            db.execute(delete(users).where(users.c.user_id.in_(drop)))
        return user

    def set_key_hash(self, user_id: str, key_hash: str) -> User:
        return self.update(user_id, lambda user, _everyone: user.replace(key_hash=key_hash))[1]

    def update(self, user_id: str, change: Callable[[User, list[User]], User]) -> tuple[User, User]:
        with self._store.write() as db:
            everyone = [_user(row) for row in db.execute(select(users))]
            user = next((u for u in everyone if u.user_id == user_id), None)
            if user is None:
                raise NotFound(f"no user {user_id!r}")
            updated = change(user, everyone)
            if updated.user_id != user_id:
                raise ValueError("a user's id cannot change")
            values = _row(updated)
            del values["user_id"]
            db.execute(update(users).where(users.c.user_id == user_id).values(**values))
        return user, updated

    def put_all(self, given: list[User]) -> int:
        """Add users as they are, key hashes included (`users import`); Conflict naming the first whose id
        or key is taken. All or nothing."""
        with self._store.write() as db:
            taken = {row.user_id for row in db.execute(select(users.c.user_id))}
            hashes = {row.key_hash for row in db.execute(select(users.c.key_hash))}
            for user in given:
                if user.user_id in taken or user.key_hash in hashes:
                    raise Conflict(f"user {user.user_id!r} (or its key) is already in the database", param="user_id")
                taken.add(user.user_id)
                hashes.add(user.key_hash)
            if given:
                db.execute(insert(users), [_row(u) for u in given])
        return len(given)
