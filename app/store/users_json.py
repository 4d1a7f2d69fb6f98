"""Users in a JSON file (users.json), safe across threads and processes.

Every change takes an exclusive file lock, reads the file fresh, applies the change, writes a
temporary file, fsyncs it, atomically replaces users.json and fsyncs the folder. A crash at any
point leaves either the old file or the new one, never half of one. Reads are served from a
cache that is dropped whenever the file's identity (inode, size, mtime) changes.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from filelock import FileLock

from app.errors import Conflict, NotFound
from app.store.users import Guard, User, UserStore

FORMAT_VERSION = 1


class JsonUserStore(UserStore):
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock_owner: tuple[int, FileLock] | None = None
        self._cache_stamp: tuple | None = None
        self._cache: dict[str, User] = {}
        self._by_hash: dict[str, User] = {}
        self._mutex = threading.Lock()

    @property
    def _lock(self) -> FileLock:
        """The file lock, made anew in each process (a lock must not be inherited across fork)."""
        owner = self._lock_owner
        if owner is None or owner[0] != os.getpid():
            owner = self._lock_owner = (os.getpid(), FileLock(str(self.path) + ".lock", timeout=30))
        return owner[1]

    # -- reading -----------------------------------------------------------------------------

    def _stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read_file(self) -> dict[str, User]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {uid: User(user_id=uid, **fields) for uid, fields in raw.get("users", {}).items()}

    def _users(self) -> dict[str, User]:
        stamp = self._stamp()
        with self._mutex:
            if stamp != self._cache_stamp or stamp is None:
                users = self._read_file()
                self._cache, self._cache_stamp = users, stamp
                self._by_hash = {u.key_hash: u for u in users.values()}
            return self._cache

    def get(self, user_id: str) -> User | None:
        return self._users().get(user_id)

    def get_by_key_hash(self, key_hash: str) -> User | None:
        self._users()
        with self._mutex:
            return self._by_hash.get(key_hash)

    def list(self, created_by: str | None = None) -> list[User]:
        users = self._users().values()
        if created_by is not None:
            users = [u for u in users if u.created_by == created_by]
        return sorted(users, key=lambda u: (u.created_at, u.user_id))

    def find_external(self, created_by: str, external_id: str) -> User | None:
        for user in self._users().values():
            if user.created_by == created_by and user.external_id == external_id:
                return user
        return None

    def count(self) -> int:
        return len(self._users())

    # -- writing -----------------------------------------------------------------------------

    def _write_file(self, users: dict[str, User]) -> None:
        data = {
            "version": FORMAT_VERSION,
            "users": {uid: _fields(u) for uid, u in sorted(users.items())},
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _change(self, apply: Callable[[dict[str, User]], object]):
        """Run apply on a fresh copy of all users under the file lock, then save; return its result."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            users = self._read_file()
            result = apply(users)
            self._write_file(users)
        return result

    def add(self, user: User) -> User:
        def apply(users: dict[str, User]) -> User:
            if user.user_id in users:
                raise Conflict(f"user_id {user.user_id!r} already exists", param="user_id")
            if any(u.created_by == user.user_id for u in users.values()):
                # Ownership follows created_by: a new user under a deleted creator's id would inherit its users.
                raise Conflict(f"user_id {user.user_id!r} is still the creator of other users", param="user_id")
            if user.external_id is not None and any(
                u.created_by == user.created_by and u.external_id == user.external_id for u in users.values()
            ):
                raise Conflict(f"user_id {user.external_id!r} already exists for this client", param="user_id")
            users[user.user_id] = user
            return user

        return self._change(apply)

    def delete(self, user_id: str, guard: Guard | None = None) -> User:
        def apply(users: dict[str, User]) -> User:
            user = users.get(user_id)
            if user is None:
                raise NotFound(f"no user {user_id!r}")
            for other in (guard(user, list(users.values())) if guard else None) or ():
                users.pop(other, None)
            return users.pop(user_id)

        return self._change(apply)

    def set_key_hash(self, user_id: str, key_hash: str) -> User:
        def apply(users: dict[str, User]) -> User:
            user = users.get(user_id)
            if user is None:
                raise NotFound(f"no user {user_id!r}")
            users[user_id] = user.replace(key_hash=key_hash)
            return users[user_id]

        return self._change(apply)


def _fields(user: User) -> dict:
    fields = asdict(user)
    fields.pop("user_id")
    return fields
