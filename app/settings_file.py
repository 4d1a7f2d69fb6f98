"""settings.json as a file that changes at run time: edited under a lock, replaced atomically, watched.

An edit reads the file as it is, changes only the `accounts` list, checks the whole result with
config.validate, and writes it back in one os.replace (mode 0600, fsync), with every other key
and every `_comment` kept. Workers notice a change by the file's stamp (inode, size, mtime),
looked at no more than once a second, so an edit through the API and a hand edit are picked up
alike.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from filelock import FileLock, Timeout

from app import config
from app.errors import Busy, ConfigError

LOCK_WAIT = 10.0
LOOK_EVERY = 1.0  # seconds between looks at the file's stamp


class SettingsFile:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock_owner: tuple[int, FileLock] | None = None
        self.stamp = self._stamp()
        self._looked = time.monotonic()

    @property
    def _lock(self) -> FileLock:
        """The file lock, made anew in each process (a lock must not be inherited across fork)."""
        if self._lock_owner is None or self._lock_owner[0] != os.getpid():
            lock = FileLock(str(self.path.with_name(f".{self.path.name}.lock")), timeout=LOCK_WAIT, mode=0o600)
            self._lock_owner = (os.getpid(), lock)
        return self._lock_owner[1]

    def _stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def read(self) -> dict:
        """The file's JSON as it is (comments and all)."""
        try:
            raw = json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{self.path.name}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.path.name}: the top level must be a JSON object")
        return raw

    def edit(self, change, then=None) -> dict:
        """Apply change(raw) to the file's JSON, check the result whole and write it; return the new settings.

        A result that does not validate raises ConfigError and the file is not touched. then(settings, stamp)
        runs while the lock is still held, so that edits made at once are applied in the order they were written.
        """
        try:
            with self._lock:
                raw = self.read()
                change(raw)
                settings = config.validate(raw, self.path.parent)
                config.write_private_json(self.path, raw)
                self.stamp = self._stamp()
                if then is not None:
                    then(settings, self.stamp)
        except Timeout:
            raise Busy("settings.json stayed locked by another edit; try again", retry_after=2) from None
        return settings

    def changed(self) -> dict | None:
        """Return the new settings if the file changed since it was last seen (looked at once a second at most).

        A file that no longer validates raises ConfigError; the caller keeps what it had.
        """
        now = time.monotonic()
        if now - self._looked < LOOK_EVERY:
            return None
        self._looked = now
        stamp = self._stamp()
        if stamp == self.stamp or stamp is None:
            return None
        self.stamp = stamp
        return config.validate(self.read(), self.path.parent)
