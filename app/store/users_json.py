"""Users in a JSON file (users.json), safe across threads and processes.

Beside users.json, all mode 0600:
  users.json          {"version":1,"gen":N,"users":{ one user per line }} — the truth
  users.json.lock     the exclusive lock every change takes (a timeout is Busy, 503)
  users.json.journal  one JSON line per recent change:
                      {"gen":N,"base":STAMP,"stamp":STAMP,"put":{id:fields},"del":[ids]}
A STAMP is users.json's (inode, size, mtime_ns): "base" before the change, "stamp" after it.

Every change takes the lock, brings this process's cache up to date, checks and applies the
change, writes a temporary file and fsyncs it, appends the change to the journal, atomically
replaces users.json and fsyncs the folder. A crash at any point leaves either the old users.json
or the new one, never half of one; its temporary files are removed at start-up, under the lock.

Reads come from an in-process cache labelled with the stamp of the users.json it equals and with
how far into the journal it has read, so an unchanged file costs two stat calls. When users.json
changed, the cache applies the journal's entries in generation order, each only if its base is
the cache's stamp, until its stamp is users.json's; when the journal cannot prove that (a hand
edit, a missing or trimmed journal, a crash between journal and replace) it reloads the whole
file. An entry is written before the replace that makes it true, so a reader that sees a new
users.json finds its entry; an entry whose replace has not happened yet waits, unapplied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _quote
from pathlib import Path

from filelock import FileLock, Timeout

from app.errors import Busy, Conflict, Forbidden, NotFound, Unauthorized
from app.store.users import Guard, User, UserStore

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LOCK_TIMEOUT = 10.0  # seconds a change waits for the lock before answering Busy
JOURNAL_MAX_BYTES = 256 * 1024  # past this the journal is trimmed to its last JOURNAL_KEEP entries
JOURNAL_KEEP = 100
FIELDS = frozenset(f.name for f in dataclasses.fields(User)) - {"user_id"}
OPTIONAL = ("limits", "shape")  # written only when set (a user from before they existed has none)
BASE_FIELDS = FIELDS - set(OPTIONAL)

Stamp = tuple[int, int, int]
Delta = tuple[dict[str, User], list[str]]  # users to put (new or changed), ids to delete


class JsonUserStore(UserStore):
    def __init__(self, path: Path | str, lock_timeout: float = LOCK_TIMEOUT):
        self.path = Path(path)
        self.journal_path = self.path.with_name(self.path.name + ".journal")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout = lock_timeout
        self.full_reloads = 0  # how often the whole file was parsed (tests and bench/users.py read it)
        self._lock_owner: tuple[int, FileLock] | None = None
        self._mutex = threading.RLock()  # guards the cache's slow path and the indexes' consistency
        # What the cache equals: (users.json stamp, (journal inode, bytes of it read)); None: nothing read.
        self._version: tuple | None = None
        self._gen = 0
        self._reset({}, {})
        self._tmp_pattern = re.compile(rf"\.{re.escape(self.path.name)}\.\d+\.\d+\.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.chmod(self.lock_path, 0o600)  # a lock file others can open is a lock others can hold
        self._remove_leftovers()

    @property
    def _lock(self) -> FileLock:
        """The file lock, made anew in each process (a lock must not be inherited across fork)."""
        owner = self._lock_owner
        if owner is None or owner[0] != os.getpid():
            owner = self._lock_owner = (os.getpid(), FileLock(str(self.lock_path), mode=0o600, poll_interval=0.005))
        return owner[1]

    @contextlib.contextmanager
    def _locked(self):
        try:
            self._lock.acquire(timeout=self.lock_timeout)
        except Timeout:
            raise Busy(
                f"the users file stayed locked by another change for {self.lock_timeout:g} s; try again shortly",
                retry_after=2,
            ) from None
        try:
            yield
        finally:
            self._lock.release()

    def _tmp_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")

    def _remove_leftovers(self) -> None:
        """Remove temporary files a killed writer left beside users.json (each holds every key hash)."""

        def leftovers() -> list[Path]:
            try:
                return [p for p in self.path.parent.iterdir() if self._tmp_pattern.fullmatch(p.name)]
            except FileNotFoundError:
                return []

        if not leftovers():
            return
        try:
            with self._locked():  # a live writer's temporary file exists only while it holds the lock
                for stale in leftovers():
                    with contextlib.suppress(FileNotFoundError):
                        stale.unlink()
                    log.warning("removed %s, left by a writer that was killed mid-write", stale.name)
        except Busy:
            log.warning("users file locked at start-up; crash leftovers beside %s stay until next start", self.path)

    # -- the cache -----------------------------------------------------------------------------

    def _reset(self, users: dict[str, User], lines: dict[str, str]) -> None:
        """Make users the cache and build its indexes from scratch.

        lines holds users' lines in users.json (user id -> "id":{fields}): all of them, or after
        reading a file laid out otherwise some; a change fills in the rest once.
        """
        self._users, self._lines = users, lines
        self._by_hash = {u.key_hash: u for u in users.values()}
        self._by_external = {(u.created_by, u.external_id): u for u in users.values() if u.external_id is not None}
        self._created = Counter(u.created_by for u in users.values() if u.created_by is not None)
        # Duplicate hashes or (creator, external id) only come from hand edits; then indexes are rebuilt on change.
        self._dupes = len(self._by_hash) != len(users) or len(self._by_external) != sum(
            u.external_id is not None for u in users.values()
        )

    def _apply(self, put: dict[str, User], drop: list[str]) -> None:
        """Apply one change to the cache in place (callers hold the mutex; readers only look up single keys)."""
        users, by_hash, by_external, created = self._users, self._by_hash, self._by_external, self._created
        olds = [users.pop(uid, None) for uid in drop] + [users.get(uid) for uid in put]
        for old in olds:
            if old is None:
                continue
            if by_hash.get(old.key_hash) is old:
                del by_hash[old.key_hash]
            if old.external_id is not None and by_external.get((old.created_by, old.external_id)) is old:
                del by_external[(old.created_by, old.external_id)]
            if old.created_by is not None:
                created[old.created_by] -= 1
                if created[old.created_by] <= 0:
                    del created[old.created_by]
        for user_id in drop:
            self._lines.pop(user_id, None)
        for user_id, user in put.items():
            self._lines[user_id] = _encode(user)
            users[user_id] = user
            if by_hash.setdefault(user.key_hash, user) is not user:
                self._dupes = True
            external = (user.created_by, user.external_id)
            if user.external_id is not None and by_external.setdefault(external, user) is not user:
                self._dupes = True
            if user.created_by is not None:
                created[user.created_by] += 1
        if self._dupes:
            self._reset(users, self._lines)

    def _fresh(self) -> None:
        """Bring the cache up to date with users.json: two stat calls when nothing changed."""
        if (_stamp(self.path), _journal_stat(self.journal_path)) != self._version:
            with self._mutex:
                self._refresh()

    def _refresh(self) -> None:
        for _attempt in range(2):  # a second look covers a journal trimmed while it was being read
            current = _stamp(self.path)
            journal = _journal_stat(self.journal_path)
            if (current, journal) == self._version:
                return
            if current is None:  # no users.json (yet, or removed by hand): no users
                self._reset({}, {})
                self._gen, self._version = 0, (None, journal)
                return
            if self._version is not None and self._catch_up(current):
                return
        self._reload()

    def _catch_up(self, current: Stamp) -> bool:
        """Apply the journal's entries after what the cache has read; True if it now equals users.json.

        The entries that follow on from the cache's stamp form a chain of (stamp before, stamp after);
        the longest start of that chain that ends at users.json's stamp is applied. Its end, not the
        first match, counts: a file can come back to an old stamp (an inode reused for a file of the
        same size within one clock tick), and an entry appended just before its file's replace must
        wait for it.
        """
        stamp, journal = self._version
        try:
            fd = os.open(self.journal_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            info = os.fstat(fd)
            offset = journal[1] if journal and journal[0] == info.st_ino and journal[1] <= info.st_size else 0
            data = os.pread(fd, info.st_size - offset, offset)
        finally:
            os.close(fd)
        chain, at, gen, end = [], stamp, self._gen, offset
        best = (0, offset) if stamp == current else None  # (entries to apply, journal position after them)
        for raw in data.split(b"\n")[:-1]:  # complete lines only: a line being written is read next time
            end += len(raw) + 1
            entry = _parse_entry(raw)
            if entry is None or entry[0] <= gen:
                continue
            if entry[0] > gen + 1:
                break  # a gap: an entry is missing
            if entry[1] != at:
                continue  # another history's entry for this generation (a hand edit came between)
            chain.append(entry)
            gen, at = entry[0], entry[2]
            if at == current:
                best = (len(chain), end)
        if best is None:
            return False
        count, position = best
        for gen, _base, _after, put, drop in chain[:count]:
            self._apply(put, drop)
            self._gen = gen
        self._version = (current, (info.st_ino, position))
        return True

    def _reload(self) -> None:
        """Read the whole of users.json; the stamp comes from the very file read."""
        journal = _journal_stat(self.journal_path)  # before the read: entries after it are newer than the file
        try:
            with open(self.path, encoding="utf-8") as handle:
                info = os.fstat(handle.fileno())
                text = handle.read()
        except FileNotFoundError:
            self._reset({}, {})
            self._gen, self._version = 0, (None, journal)
            return
        raw = json.loads(text)
        users = {uid: _user(uid, fields) for uid, fields in raw.get("users", {}).items()}
        self._reset(users, _lines_of(text, users))
        self._gen = int(raw.get("gen", 0))
        self._version = ((info.st_ino, info.st_size, info.st_mtime_ns), journal)
        self.full_reloads += 1

    # -- reading -------------------------------------------------------------------------------

    def get(self, user_id: str) -> User | None:
        self._fresh()
        return self._users.get(user_id)

    def get_by_key_hash(self, key_hash: str) -> User | None:
        self._fresh()
        return self._by_hash.get(key_hash)

    def list(self, created_by: str | None = None) -> list[User]:
        self._fresh()
        with self._mutex:
            users = list(self._users.values())
        if created_by is not None:
            users = [u for u in users if u.created_by == created_by]
        return sorted(users, key=lambda u: u.created_at)  # stable: within a second, in the order they were made

    def find_external(self, created_by: str, external_id: str) -> User | None:
        self._fresh()
        return self._by_external.get((created_by, external_id))

    def count(self) -> int:
        self._fresh()
        return len(self._users)

    # -- writing -------------------------------------------------------------------------------

    def _change(self, apply: Callable[[], tuple[object, Delta]]):
        """Under the file lock, with the cache up to date, run apply and save the change it returns."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(), self._mutex:
            self._refresh()
            result, (put, drop) = apply()
            self._commit(put, drop)
        return result

    def _commit(self, put: dict[str, User], drop: list[str]) -> None:
        """Write the changed users.json and its journal entry; then update the cache."""
        gen, base = self._gen + 1, self._version[0]
        self._trim_journal()
        if len(self._lines) != len(self._users):  # the file read was laid out otherwise: encode the rest, once
            self._lines = {uid: self._lines.get(uid) or _encode(u) for uid, u in self._users.items()}
        lines = dict(self._lines)
        for uid in drop:
            del lines[uid]
        lines.update((uid, _encode(u)) for uid, u in put.items())
        body = f'{{"version":{FORMAT_VERSION},"gen":{gen},"users":{{\n' + ",\n".join(lines.values()) + "\n}}\n"
        tmp = self._tmp_path()
        try:
            after = _write_synced(tmp, body.encode())
            entry = json.dumps({"gen": gen, "base": base, "stamp": after, "del": drop}, separators=(",", ":"))
            entry = entry[:-1] + ',"put":{' + ",".join(lines[uid] for uid in put) + "}}\n"
            journal, start = self._append_journal(entry.encode())
            try:
                os.replace(tmp, self.path)
            except BaseException:
                _truncate(self.journal_path, journal[0], start)  # the entry must not outlive a failed replace
                raise
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        _fsync_dir(self.path.parent)
        self._apply(put, drop)
        self._lines = lines
        self._gen, self._version = gen, (after, journal)

    def _append_journal(self, entry: bytes) -> tuple[tuple[int, int], int]:
        """Append an entry after what the cache has read; return (journal inode, end) and where it starts."""
        fd = os.open(self.journal_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            info = os.fstat(fd)
            read = self._version[1]
            end = read[1] if read and read[0] == info.st_ino else info.st_size
            if end < info.st_size:  # under the lock, anything past what was read is a dead writer's entry or half line
                os.ftruncate(fd, end)
            if end and os.pread(fd, 1, end - 1) != b"\n":
                end += os.pwrite(fd, b"\n", end)
            os.pwrite(fd, entry, end)
            return (info.st_ino, end + len(entry)), end
        finally:
            os.close(fd)

    def _trim_journal(self) -> None:
        """Replace a journal grown past JOURNAL_MAX_BYTES with its last JOURNAL_KEEP entries."""
        journal = self._version[1]
        if journal is None or journal[1] <= JOURNAL_MAX_BYTES:
            return
        try:
            with open(self.journal_path, "rb") as handle:
                if os.fstat(handle.fileno()).st_ino != journal[0]:
                    return
                read = handle.read(journal[1])  # only what was read: anything after it is a dead writer's
        except FileNotFoundError:
            return
        kept = b"".join(line + b"\n" for line in read.split(b"\n")[:-1][-JOURNAL_KEEP:])
        tmp = self._tmp_path()
        try:
            inode = _write_synced(tmp, kept)[0]
            os.replace(tmp, self.journal_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        self._version = (self._version[0], (inode, len(kept)))

    def add(self, user: User, limit: int = 0, require_creator: bool = False) -> User:
        def apply() -> tuple[User, Delta]:
            if require_creator and user.created_by not in self._users:
                # Its creator was deleted while this request waited for the lock: nobody may speak for it now.
                raise Unauthorized("the key that asked for this was deleted meanwhile")
            if user.user_id in self._users:
                raise Conflict(f"user_id {user.user_id!r} already exists", param="user_id")
            if self._created[user.user_id]:
                # Ownership follows created_by: a new user under a deleted creator's id would inherit its users.
                raise Conflict(f"user_id {user.user_id!r} is still the creator of other users", param="user_id")
            if user.external_id is not None and (user.created_by, user.external_id) in self._by_external:
                raise Conflict(f"user_id {user.external_id!r} already exists for this client", param="user_id")
            if limit and self._created[user.created_by] >= limit:
                raise Forbidden(
                    f"this client already has {limit} users, the most max_users_per_client allows; delete some first"
                )
            return user, ({user.user_id: user}, [])

        return self._change(apply)

    def delete(self, user_id: str, guard: Guard | None = None) -> User:
        def apply() -> tuple[User, Delta]:
            user = self._users.get(user_id)
            if user is None:
                raise NotFound(f"no user {user_id!r}")
            others = (guard(user, list(self._users.values())) if guard else None) or ()
            drop = [user_id, *(o for o in dict.fromkeys(others) if o != user_id and o in self._users)]
            return user, ({}, drop)

        return self._change(apply)

    def put_all(self, given: list[User]) -> int:
        """Add users as they are, key hashes included (`users import`), in one change; Conflict naming the
        first whose id or key is taken. All or nothing."""

        def apply() -> tuple[int, Delta]:
            hashes = {u.key_hash for u in self._users.values()}
            put: dict[str, User] = {}
            for user in given:
                if user.user_id in self._users or user.user_id in put or user.key_hash in hashes:
                    raise Conflict(
                        f"user {user.user_id!r} (or its key) is already in {self.path.name}", param="user_id"
                    )
                hashes.add(user.key_hash)
                put[user.user_id] = user
            return len(put), (put, [])

        return self._change(apply)

    def set_key_hash(self, user_id: str, key_hash: str) -> User:
        return self.update(user_id, lambda user, _everyone: user.replace(key_hash=key_hash))[1]

    def update(self, user_id: str, change: Callable[[User, list[User]], User]) -> tuple[User, User]:
        def apply() -> tuple[tuple[User, User], Delta]:
            user = self._users.get(user_id)
            if user is None:
                raise NotFound(f"no user {user_id!r}")
            updated = change(user, list(self._users.values()))
            if updated.user_id != user_id:
                raise ValueError("a user's id cannot change")
            return (user, updated), ({user_id: updated}, [])

        return self._change(apply)


# -- files -------------------------------------------------------------------------------------


def _stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _journal_stat(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size)


def _write_synced(path: Path, data: bytes) -> Stamp:
    """Write a new private file, fsync it and return its stamp (a rename keeps inode, size and mtime)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _truncate(path: Path, inode: int, size: int) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY)
        try:
            if os.fstat(fd).st_ino == inode:
                os.ftruncate(fd, size)
        finally:
            os.close(fd)


# -- encoding ----------------------------------------------------------------------------------


def dump_users(given: list[User]) -> str:
    """Users in users.json's own format (`users export`): a file any store can import, or use as users.json."""
    return f'{{"version":{FORMAT_VERSION},"gen":0,"users":{{\n' + ",\n".join(_encode(u) for u in given) + "\n}}\n"


def load_users(text: str) -> list[User]:
    """The users of a users.json-format text (`users import`); ValueError naming what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    found = data.get("users") if isinstance(data, dict) else None
    if not isinstance(found, dict):
        raise ValueError('not a users file: it needs {"users": {user_id: {...}}}')
    loaded = []
    for user_id, fields in found.items():
        try:
            loaded.append(_user(user_id, fields))
        except TypeError as exc:
            raise ValueError(f"user {user_id!r}: {exc}") from None
    return loaded


def _user(user_id: str, fields: dict) -> User:
    """A User from its stored fields, without the frozen dataclass's slow __init__ (3x faster: a full
    read of 20,000 users is mostly this and json.loads)."""
    if not isinstance(fields, dict) or not BASE_FIELDS <= fields.keys() <= FIELDS:
        return User(user_id=user_id, **fields)  # raises, naming the missing or unknown field
    user = object.__new__(User)
    attributes = user.__dict__
    attributes.update(fields)
    attributes["user_id"] = user_id
    for name in OPTIONAL:
        attributes.setdefault(name, None)
    return user


def _encode(user: User) -> str:
    """One user's line in users.json: "id":{fields}, compact (the C string encoder, no indent)."""

    def text(value: str | None) -> str:
        return "null" if value is None else _quote(value)

    return (
        f'{_quote(user.user_id)}:{{"username":{_quote(user.username)},"role":{_quote(user.role)},'
        f'"plus":{"true" if user.plus else "false"},"key_hash":{_quote(user.key_hash)},'
        f'"created_by":{text(user.created_by)},"external_id":{text(user.external_id)},'
        f'"created_at":{_quote(user.created_at)}'
        + (f',"limits":{json.dumps(user.limits, separators=(",", ":"), sort_keys=True)}' if user.limits else "")
        + (f',"shape":{_quote(user.shape)}' if user.shape else "")
        + "}"
    )


def _lines_of(text: str, users: dict[str, User]) -> dict[str, str]:
    """The users' lines as the file holds them, when it is laid out one user per line (as this store writes)."""
    parts = text.split("\n")
    if len(parts) != len(users) + 3 or parts[-2:] != ["}}", ""]:
        return {}
    lines = {}
    for uid, line in zip(users, parts[1:-2], strict=True):
        line = line.removesuffix(",")
        # One '":{' per user: a hand-joined line holding two users is never reused.
        objects = 2 if '"limits":{' in line else 1  # a user's own limits are an object inside its line
        if line.startswith(f'"{uid}":{{') and line.endswith("}") and line.count('":{') == objects:
            lines[uid] = line
    return lines


def _parse_entry(raw: bytes) -> tuple | None:
    """A journal line as (gen, base, stamp, put, drop), or None if it is not a whole, well-formed entry."""
    try:
        entry = json.loads(raw)
        gen, put, drop = entry["gen"], entry["put"], entry["del"]
        base = tuple(entry["base"]) if entry["base"] is not None else None
        after = tuple(entry["stamp"])
        if not isinstance(gen, int) or not isinstance(drop, list):
            return None
        return gen, base, after, {uid: _user(uid, fields) for uid, fields in put.items()}, drop
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
