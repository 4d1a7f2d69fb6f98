"""The user record and the narrow interface every user store implements."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

ROLES = ("admin", "client", "user")
# A user's own limits, over its role's defaults (settings "limits"): a number, or None for no limit.
LIMIT_KEYS = ("requests_per_minute", "requests_per_day", "tokens_per_day")


@dataclass(frozen=True)
class User:
    user_id: str
    username: str
    role: str
    plus: bool
    key_hash: str
    created_by: str | None
    external_id: str | None
    created_at: str
    # The limits set for this user alone ({key: number or None}); keys not here follow the role's defaults.
    limits: dict | None = field(default=None, hash=False)
    shape: str | None = None  # "original" or "gajosu": the answer shape its requests get by default

    def replace(self, **changes) -> User:
        return dataclasses.replace(self, **changes)

    def public(self) -> dict:
        """Return the fields a caller may see (never the key hash)."""
        return {
            "user_id": self.user_id,
            "username": self.username,
            "role": self.role,
            "plus": self.plus,
            "created_by": self.created_by,
            "external_id": self.external_id,
            "created_at": self.created_at,
            "limits": dict(self.limits or {}),
            "shape": self.shape,
        }


Guard = Callable[[User, list[User]], Iterable[str] | None]


class UserStore(ABC):
    @abstractmethod
    def get(self, user_id: str) -> User | None:
        """Return the user with this id, or None."""

    @abstractmethod
    def get_by_key_hash(self, key_hash: str) -> User | None:
        """Return the user whose key hashes to key_hash, or None."""

    @abstractmethod
    def list(self, created_by: str | None = None) -> list[User]:
        """Return all users (or those one creator made), oldest first."""

    @abstractmethod
    def count(self) -> int:
        """Return how many users there are."""

    @abstractmethod
    def add(self, user: User, limit: int = 0, require_creator: bool = False) -> User:
        """Add a user; Conflict if its id, or its (creator, external id), is taken.

        With a limit, Forbidden if its creator already has that many users (checked in the same
        change, so parallel adds cannot overshoot). With require_creator, Unauthorized if the creator
        no longer exists (deleted while this request waited).
        """

    @abstractmethod
    def delete(self, user_id: str, guard: Guard | None = None) -> User:
        """Delete a user, atomically; NotFound if absent.

        guard(user, all_users) runs inside the same change: it may raise to refuse, and may return
        the ids of other users to delete along with this one.
        """

    @abstractmethod
    def set_key_hash(self, user_id: str, key_hash: str) -> User:
        """Replace a user's key hash."""

    @abstractmethod
    def update(self, user_id: str, change: Callable[[User, list[User]], User]) -> tuple[User, User]:
        """Replace a user with change(user, all_users), atomically; return (before, after). NotFound if absent.

        change runs inside the same change of the store: it may raise to refuse (the last admin).
        """

    def find_external(self, created_by: str, external_id: str) -> User | None:
        """Return the user a client knows by its own id, or None."""
        for user in self.list(created_by=created_by):
            if user.external_id == external_id:
                return user
        return None
