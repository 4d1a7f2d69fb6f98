"""Who is asking (the key's owner) and on whose behalf (the same user, or one a client speaks for)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.store.users import User


@dataclass(frozen=True)
class Principal:
    actor: User  # whose key came with the request
    user: User  # whose conversations the request is about
    # When the request arrived, before its key or session was looked up: a deletion of the user after this
    # voids what the request would store (ChatService refuses to store a turn of a user deleted since).
    arrived: float = field(default_factory=time.time)

    @property
    def may_write(self) -> bool:
        """True when actor is the user, or the client that owns it (admins only read others)."""
        if self.actor.user_id == self.user.user_id:
            return True
        return self.actor.role == "client" and self.user.created_by == self.actor.user_id

    @property
    def client_id(self) -> str:
        """The original server's api_client_id: "self", or the client speaking for its user."""
        return "self" if self.actor.user_id == self.user.user_id else self.actor.user_id
