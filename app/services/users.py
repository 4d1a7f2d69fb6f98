"""Users and keys: who may create, list, delete and rotate whom.

admin  — creates, lists, deletes and rotates anyone (never the last admin).
client — creates plain users it owns (plus only if it is plus itself); lists, deletes, rotates
         only those; may speak for one of them by its own id for that person.
user   — rotates its own key.

Changes are recorded in the audit log; a wrong key counts against its client address, which is
refused for a while (429) after too many (app/store/audit.py).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from datetime import UTC, datetime

from app.errors import BadRequest, Conflict, Forbidden, NotFound, RateLimited, Unauthorized
from app.store.conversations import SqlConversationStore
from app.store.users import ROLES, User, UserStore

MAX_PAGE = 1000

KEY_PREFIX = "cas-"
ID_PATTERN = re.compile(r"[A-Za-z0-9_.@:-]{1,64}")
MAX_USERNAME = 64


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """Hash a key for storage; keys are 256 random bits, so one SHA-256 is enough to keep them safe."""
    return hashlib.sha256(key.encode()).hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def check_username(username) -> str:
    if username is not None and not isinstance(username, str):
        raise BadRequest("username must be a string", param="username")
    username = (username or "").strip()
    if not username:
        raise BadRequest("username is required", param="username")
    if len(username) > MAX_USERNAME or not username.isprintable():
        raise BadRequest(f"username must be 1-{MAX_USERNAME} printable characters", param="username")
    return username


def check_id(value: str, param: str = "user_id") -> str:
    if not ID_PATTERN.fullmatch(value):
        raise BadRequest(f"{param} must be 1-64 letters, digits or _ . @ : -", param=param)
    return value


SHAPES = ("original", "gajosu")  # answer shapes a user or client may take by default (PATCH shape)


class UserService:
    def __init__(
        self,
        store: UserStore,
        conversations: SqlConversationStore,
        max_users_per_client: int = 0,
        *,
        quota=None,
        audit=None,
        throttle=None,
    ):
        self.store = store
        self.conversations = conversations
        self.max_users_per_client = max_users_per_client  # 0: no limit
        self.quota = quota  # QuotaService: the limits that apply, and who may grant which
        self.audit = audit  # AuditService
        self.throttle = throttle  # SqlKeyThrottle: wrong keys per client address

    # -- authentication ------------------------------------------------------------------

    def authenticate(self, key: str | None, address: str | None = None) -> User:
        """The user whose key this is; Unauthorized if none. From an address that sent too many wrong keys
        in the last minute, RateLimited before the key is even looked at (a right key waits too, or guessing
        would go on at full speed)."""
        if not key:
            raise Unauthorized("no API key: send 'Authorization: Bearer KEY' or the 'user' parameter")
        if address and self.throttle is not None:
            wait = self.throttle.wait(address)
            if wait is not None:
                raise RateLimited(
                    f"too many wrong API keys from this address; try again in {wait:.0f} s", retry_after=wait
                )
        user = self.store.get_by_key_hash(hash_key(key)) if key.isascii() else None
        if user is None:
            if address and self.throttle is not None:
                self.throttle.failed(address)
            raise Unauthorized("unknown API key")
        return user

    def _audit(self, actor: User | None, action: str, target: str | None, **detail) -> None:
        if self.audit is not None:
            self.audit.record(actor, action, target, **detail)

    def ensure_admin(self, key: str | None = None) -> str | None:
        """Create the first admin if there are no users; return its key (None if none was made)."""
        if self.store.count():
            return None
        key = key or new_key()
        self.store.add(
            User(
                user_id="admin",
                username="admin",
                role="admin",
                plus=True,
                key_hash=hash_key(key),
                created_by=None,
                external_id=None,
                created_at=now_iso(),
            )
        )
        return key

    # -- creating ------------------------------------------------------------------------

    def create(
        self, actor: User, username: str | None, role: str = "user", plus: bool = False, user_id: str | None = None
    ) -> tuple[User, str]:
        """Create a user as actor allows; return it with its key (shown only now)."""
        username = check_username(username)
        if role not in ROLES:
            raise BadRequest(f"role must be one of {', '.join(ROLES)}", param="role")
        if actor.role == "user":
            raise Forbidden("users cannot create users; ask an admin or your client")
        external_id = None
        if actor.role == "client":
            if role != "user":
                raise Forbidden("clients can create only users, not clients or admins", param="role")
            if plus and not actor.plus:
                raise Forbidden("a client without plus cannot grant plus", param="plus")
            external_id = check_id(user_id) if user_id else None
            user_id = None
        new_id = check_id(user_id) if user_id else f"u-{uuid.uuid4().hex[:16]}"
        key = new_key()
        user = User(
            user_id=new_id,
            username=username,
            role=role,
            plus=bool(plus),
            key_hash=hash_key(key),
            created_by=actor.user_id,
            external_id=external_id,
            created_at=now_iso(),
        )
        limit = self.max_users_per_client if actor.role == "client" else 0
        added = self.store.add(user, limit=limit, require_creator=True)
        self._audit(actor, "user.create", added.user_id, **_described(added))
        return added, key

    def speak_for(self, client: User, external_id: str, username: str | None, plus: bool | None, create: bool) -> User:
        """Find the user a client knows by its own id, creating it when create is set."""
        check_id(external_id)
        user = self.store.find_external(client.user_id, external_id)
        if user is None:
            user = self._owned(client, external_id)
        if user is not None:
            if plus and not user.plus:
                raise Forbidden("this user is not plus", param="user_id_plus")
            return user
        if not create:
            raise NotFound(f"no user {external_id!r} among this client's users", param="user_id")
        try:
            user, _key = self.create(client, username or external_id, "user", bool(plus), external_id)
        except Conflict:  # created by a concurrent request a moment ago
            user = self.store.find_external(client.user_id, external_id)
            if user is None:
                raise
        return user

    # -- reading and changing --------------------------------------------------------------

    def visible(self, actor: User, user_id: str) -> User:
        """Return a user actor may manage, or NotFound (others' users are not even named)."""
        if actor.role == "admin":
            user = self.store.get(user_id)
        elif actor.role == "client":
            user = self.store.find_external(actor.user_id, user_id) or self._owned(actor, user_id)
        else:
            user = actor if user_id == actor.user_id else None
            if user is None:
                raise Forbidden("users can manage only themselves")
        if user is None:
            raise NotFound(f"no user {user_id!r}", param="user_id")
        return user

    def _owned(self, client: User, user_id: str) -> User | None:
        """Return the plain user with this server id that client created, or None."""
        user = self.store.get(user_id)
        return user if user and self._is_owned(client, user) else None

    @staticmethod
    def _is_owned(client: User, user: User) -> bool:
        """A client owns the plain users it created, and nothing else."""
        return user.role == "user" and user.created_by == client.user_id

    def list(self, actor: User) -> list[User]:
        if actor.role == "admin":
            return self.store.list()
        if actor.role == "client":
            return [u for u in self.store.list(created_by=actor.user_id) if self._is_owned(actor, u)]
        raise Forbidden("users cannot list users")

    def search(self, actor: User, q: str | None = None, offset: int = 0, limit: int = 100) -> tuple[list[User], int]:
        """One page of the users actor manages, oldest first, whose username, id or client's own id holds q
        (any case); and how many match in all."""
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"limit must be from 1 to {MAX_PAGE}", param="limit")
        if offset < 0:
            raise BadRequest("offset must be 0 or more", param="offset")
        users = self.list(actor)
        needle = (q or "").strip().casefold()
        if needle:
            users = [u for u in users if needle in _haystack(u)]
        return users[offset : offset + limit], len(users)

    def update(self, actor: User, user_id: str, changes: dict) -> User:
        """Change a user's username, plus, limits (and, by an admin, role), by the rules of creation."""
        if actor.role == "user":
            raise Forbidden("users cannot change users; ask an admin or your client")
        unknown = sorted(set(changes) - {"username", "plus", "limits", "role", "shape"})
        if unknown:
            raise BadRequest(
                f"{unknown[0]}: cannot be changed (username, plus, limits, role, shape can)", param=unknown[0]
            )
        target = self.visible(actor, user_id)
        fields = {}
        if "username" in changes:
            fields["username"] = check_username(changes["username"])
        if "plus" in changes:
            if not isinstance(changes["plus"], bool):
                raise BadRequest("plus must be true or false", param="plus")
            if changes["plus"] and not target.plus and actor.role == "client" and not actor.plus:
                raise Forbidden("a client without plus cannot grant plus", param="plus")
            fields["plus"] = changes["plus"]
        if "limits" in changes:
            fields["limits"] = self.quota.check_grant(actor, changes["limits"]) or None
        if "shape" in changes:
            if changes["shape"] not in (None, *SHAPES):
                raise BadRequest(
                    'shape must be "original" (the original server\'s), "gajosu" (gajosu/chat-gpt-rest-api\'s '
                    "list of conversations) or null (this server's own)",
                    param="shape",
                )
            fields["shape"] = changes["shape"]
        if "role" in changes:
            if changes["role"] not in ROLES:
                raise BadRequest(f"role must be one of {', '.join(ROLES)}", param="role")
            if actor.role != "admin" and changes["role"] != target.role:
                raise Forbidden("only an admin may change a role", param="role")
            fields["role"] = changes["role"]

        def change(user: User, everyone: list[User]) -> User:
            role = fields.get("role", user.role)
            if user.role == "admin" and role != "admin" and sum(u.role == "admin" for u in everyone) <= 1:
                raise Conflict("cannot demote the last admin", param="role")
            if user.role == "client" and role != "client":
                owned = sum(self._is_owned(user, u) for u in everyone)
                if owned:
                    raise Conflict(f"this client still has {owned} user(s); delete them first", param="role")
            return user.replace(**fields)

        before, after = self.store.update(target.user_id, change)
        self._audit_changes(actor, before, after)
        return after

    def _audit_changes(self, actor: User, before: User, after: User) -> None:
        changed = {
            name: [getattr(before, name), getattr(after, name)]
            for name in ("username", "plus", "role", "shape")
            if getattr(before, name) != getattr(after, name)
        }
        if changed:
            self._audit(actor, "user.update", after.user_id, changes=changed)
        if (before.limits or {}) != (after.limits or {}):
            self._audit(actor, "user.limits", after.user_id, before=before.limits or {}, after=after.limits or {})

    def delete(self, actor: User, user_id: str) -> list[User]:
        """Delete a user (a client takes its own users with it) and their conversations; return them all."""
        if actor.role == "user":
            raise Forbidden("users cannot delete users")
        target = self.visible(actor, user_id)
        removed: list[User] = []

        def plan(user: User, everyone: list[User]) -> list[str]:
            if user.role == "admin" and sum(u.role == "admin" for u in everyone) <= 1:
                raise Conflict("cannot delete the last admin")
            owned = [u for u in everyone if user.role == "client" and self._is_owned(user, u)]
            removed[:] = [user, *owned]
            return [u.user_id for u in owned]

        self.store.delete(target.user_id, guard=plan)
        # Their conversations go, and the deletion is recorded: a turn that was running for one of them is not
        # stored when it ends, so a later user given the same id inherits nothing.
        self.conversations.retire_users([user.user_id for user in removed])
        self._audit(
            actor, "user.delete", target.user_id, **_described(target), with_users=[u.user_id for u in removed[1:]]
        )
        return removed

    def rotate_key(self, actor: User, user_id: str) -> tuple[User, str]:
        target = self.visible(actor, user_id)
        key = new_key()
        updated = self.store.set_key_hash(target.user_id, hash_key(key))
        self._audit(actor, "user.key_rotated", updated.user_id, username=updated.username)
        return updated, key


def _described(user: User) -> dict:
    """What the audit log keeps of a user (never its key hash)."""
    return {"username": user.username, "role": user.role, "plus": user.plus, "external_id": user.external_id}


def _haystack(user: User) -> str:
    return "\0".join((user.username, user.user_id, user.external_id or "")).casefold()
