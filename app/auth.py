"""Turn a request into a Principal: who holds the key, and for whom it speaks."""

from __future__ import annotations

from flask import request

from app.api.params import flag, text
from app.context import services
from app.errors import Forbidden
from app.services.principal import Principal
from app.store.users import User

# Where a key may come from besides the Authorization header; the original server used these.
KEY_PARAMS = ("user", "api_key", "client", "admin")


def request_key(params: dict) -> str | None:
    """Return the API key from the Bearer header or a key parameter."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer ") and header[7:].strip():
        return header[7:].strip()
    for name in KEY_PARAMS:
        value = params.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def caller(params: dict) -> User:
    """Return the user whose key came with the request, or raise Unauthorized."""
    return services().users.authenticate(request_key(params))


def principal(params: dict, create: bool = False, actor: User | None = None) -> Principal:
    """Resolve the caller and, for clients and admins, the user named by user_id.

    A client's user_id is its own id for one of its users (created on the fly when create is set,
    as a chat request does); an admin's user_id names any user, for reading. Pass actor when the
    caller was already authenticated, so the key is not looked up twice.
    """
    actor = actor or caller(params)
    target_id = params.get("user_id")
    if target_id in (None, ""):
        return Principal(actor, actor)
    target_id = str(target_id)
    users = services().users
    if actor.role == "client":
        user = users.speak_for(
            actor, target_id, text(params, "username", max_len=64), flag(params, "user_id_plus"), create
        )
        return Principal(actor, user)
    if actor.role == "admin":
        return Principal(actor, users.visible(actor, target_id))
    if target_id == actor.user_id:
        return Principal(actor, actor)
    raise Forbidden("only admins and clients may pass user_id", param="user_id")
