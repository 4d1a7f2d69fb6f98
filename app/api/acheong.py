"""acheong08/ChatGPT-API-server's user routes: POST /admin/users/add and /admin/users/delete with
{admin_key}, GET /admin/users?admin_key=. Its answers ({user_id, token}, {"message": "User deleted"},
{users: [...]}) and its {"error": ...} errors, over UserService (its rules, its audit log). GET
/admin/users is also the users page: a request with admin_key or an Authorization header gets this."""

from __future__ import annotations

import secrets

from flask import jsonify

from app import auth
from app.api.params import errors_as, request_params, text
from app.context import services

PAGE = 1000  # users read per query when listing them all


def acheong_error(exc) -> dict:
    return {"error": exc.message}


@errors_as(acheong_error)
def users():
    """Every user the key may see, as {"users": [{user_id, token, username, role}]}. Keys are kept hashed,
    so `token` is null: a new key comes from add, or from POST /api/users/<id>/key."""
    actor = auth.caller(request_params())
    found, offset = [], 0
    while True:
        page, total = services().users.search(actor, None, offset, PAGE)
        found += page
        offset += len(page)
        if not page or offset >= total:
            break
    return jsonify(
        {"users": [{"user_id": u.user_id, "token": None, "username": u.username, "role": u.role} for u in found]}
    )


@errors_as(acheong_error)
def add():
    """{admin_key} (an admin's or a client's key; username optional) -> {user_id, token}: a new user."""
    params = request_params()
    actor = auth.caller(params)
    username = text(params, "username", max_len=64) or f"user-{secrets.token_hex(4)}"
    user, key = services().users.create(actor, username)
    return jsonify({"user_id": user.user_id, "token": key})


@errors_as(acheong_error)
def delete():
    """{admin_key, user_id} -> {"message": "User deleted"} (a client's users go with it, as /api/users)."""
    params = request_params()
    actor = auth.caller(params)
    services().users.delete(actor, text(params, "user_id", required=True, max_len=64))
    return jsonify({"message": "User deleted"})


VIEWS: dict = {
    "acheong_users": (users, ["GET"]),
    "acheong_users_add": (add, ["POST"]),
    "acheong_users_delete": (delete, ["POST"]),
}
