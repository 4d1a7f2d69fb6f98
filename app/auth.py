"""Turn a request into a Principal: who holds the key, and for whom it speaks.

Scripts send their key with each request (Bearer header or a key parameter). Browsers log in once:
the signed session cookie then holds the user id and a proof derived from the key's hash, so a
rotated key or a deleted user loses the session at its next request. The key itself never enters
the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from flask import current_app, g, request, session

from app.api.params import flag, text
from app.context import services
from app.errors import Forbidden, Unauthorized
from app.services.principal import Principal
from app.store.users import User

# Where a key may come from besides the Authorization header; the original server used these.
KEY_PARAMS = ("user", "api_key", "client", "admin", "admin_key")  # admin_key: acheong08's


def note_arrival() -> None:
    """Remember when the request arrived (the app runs this before anything else looks up a key or session)."""
    g.arrived = time.time()


def arrived() -> float:
    """When this request arrived, before its key or session was looked up."""
    return g.get("arrived") or time.time()


def request_key(params: dict) -> str | None:
    """Return the API key from the Authorization header (Bearer KEY, or the bare KEY the original systems
    sent) or a key parameter."""
    header = request.headers.get("Authorization", "").strip()
    if header.lower().startswith("bearer ") and header[7:].strip():
        return header[7:].strip()
    if header and " " not in header:  # `Authorization: KEY`, as acheong08's and gajosu's clients send it
        return header
    for name in KEY_PARAMS:
        value = params.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def unread_authorization() -> str | None:
    """The scheme of an Authorization header this server does not read (Basic, Token ...), if one came."""
    header = request.headers.get("Authorization", "").strip()
    if " " in header and not header.lower().startswith("bearer "):
        return header.split(" ", 1)[0]
    return None


def caller(params: dict) -> User:
    """Return the user whose key came with the request, or raise Unauthorized."""
    key = request_key(params)
    scheme = unread_authorization()
    if key is None and scheme:
        raise Unauthorized(
            f"no API key this server reads: an Authorization header of scheme {scheme!r} came; "
            "send 'Authorization: Bearer KEY' (or the key alone)"
        )
    return services().users.authenticate(key, request.remote_addr)


def principal(params: dict, create: bool = False, actor: User | None = None) -> Principal:
    """Resolve the caller and, for clients and admins, the user named by user_id.

    A client's user_id is its own id for one of its users (created on the fly when create is set,
    as a chat request does); an admin's user_id names any user, for reading. Pass actor when the
    caller was already authenticated, so the key is not looked up twice.
    """
    actor = actor or caller(params)
    target_id = text(params, "user_id", max_len=64)
    if target_id is None:
        return Principal(actor, actor, arrived())
    users = services().users
    if actor.role == "client":
        user = users.speak_for(
            actor, target_id, text(params, "username", max_len=64), flag(params, "user_id_plus"), create
        )
        return Principal(actor, user, arrived())
    if actor.role == "admin":
        return Principal(actor, users.visible(actor, target_id), arrived())
    if target_id == actor.user_id:
        return Principal(actor, actor, arrived())
    raise Forbidden("only admins and clients may pass user_id", param="user_id")


# -- browser sessions ----------------------------------------------------------------------


def _proof(user: User) -> str:
    """Tie a session to the user's current key without putting the key (or its hash) in the cookie."""
    secret = current_app.secret_key
    secret = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(secret, b"session:" + user.key_hash.encode(), hashlib.sha256).hexdigest()


def _record(user: User) -> dict:
    return {"uid": user.user_id, "proof": _proof(user)}


def _user_of(record) -> User | None:
    """Return the user a session record names, if that user still exists with the same key."""
    if not isinstance(record, dict) or not isinstance(record.get("uid"), str):
        return None
    user = services().users.store.get(record["uid"])
    if user is None or not hmac.compare_digest(str(record.get("proof", "")), _proof(user)):
        return None
    return user


def log_in(user: User) -> None:
    """Start a fresh browser session for user (a new session, so none can be planted beforehand)."""
    session.clear()
    g.pop("csrf_token", None)  # Flask-WTF's per-request cache: pages rendered now need the new session's token
    session.permanent = True
    session["auth"] = _record(user)
    g.session_user = user


def offer_log_in(user: User) -> None:
    """Remember a key that came in a link, to be confirmed by a POST (a link alone never logs anyone in)."""
    session["pending"] = _record(user)


def pending_log_in(take: bool = False) -> User | None:
    """Return the user a link offered to log in as (removing the offer when take is set), or None."""
    return _user_of(session.pop("pending", None) if take else session.get("pending"))


def log_out() -> None:
    session.clear()
    g.pop("csrf_token", None)
    g.session_user = None


def session_user() -> User | None:
    """Return the logged-in user, or None; a session whose user is gone or whose key changed ends here."""
    if "session_user" in g:
        return g.session_user
    user = None
    if "auth" in session:
        user = _user_of(session["auth"])
        if user is None:
            session.clear()
    g.session_user = user
    return user
