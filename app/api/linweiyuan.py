"""linweiyuan/go-chatgpt-api's conversation routes, answered as the ChatGPT web backend answers them (its
`{"errorMessage": ...}` errors): a thin front over the same services. GET /conversations is also
gajosu/chat-gpt-rest-api's list (a plain array) for a caller that asks for shape gajosu or whose record
says so."""

from __future__ import annotations

from flask import jsonify

from app import auth
from app.api import gajosu
from app.api.params import choice, errors_as, number, request_params
from app.context import services
from app.errors import BadRequest
from app.services.principal import Principal

MAX_LIMIT = 100  # the web backend's own cap on ?limit


def go_error(exc) -> dict:
    return {"errorMessage": exc.message}


def backend_item(summary: dict) -> dict:
    """One conversation as the web backend lists it."""
    return {
        "id": summary["conversation_id"],
        "title": summary["title"],
        "create_time": summary["created_at"],
        "update_time": summary["updated_at"],
        "mapping": None,
        "current_node": None,
    }


def wants_gajosu(params: dict, principal: Principal) -> bool:
    shape = choice(params, "shape", ("auto", "gajosu", "default"), "auto")
    return shape == "gajosu" or (shape == "auto" and "gajosu" in (principal.actor.shape, principal.user.shape))


@errors_as(go_error)
def conversations():
    """GET: the caller's conversations, newest first, as {items, total, limit, offset,
    has_missing_conversations} (limit 1-100, default 20); gajosu's callers get the items alone.
    PATCH {is_visible: false}: remove them all, answered {"success": true}."""
    params = request_params()
    principal = auth.principal(params)
    if wants_gajosu(params, principal):
        return gajosu.conversation_list(principal, params)
    if _patching():
        _hide(params)
        services().conversations.delete_all(principal)
        return jsonify({"success": True})
    offset, limit = number(params, "offset", 0), number(params, "limit", 20)
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}", param="limit")
    page = services().conversations.list(principal, offset, limit)
    return jsonify(
        {
            "items": [backend_item(c) for c in page["conversations"]],
            "total": page["total"],
            "limit": limit,
            "offset": offset,
            "has_missing_conversations": False,
        }
    )


def _patching() -> bool:
    from flask import request

    return request.method == "PATCH"


def _hide(params: dict) -> None:
    """PATCH's only change here is {is_visible: false}, which removes (the web backend hides; we delete)."""
    if params.get("is_visible") is not False:
        raise BadRequest('send {"is_visible": false} to remove every conversation', param="is_visible")


VIEWS: dict = {
    "go_conversations": (conversations, ["GET", "PATCH"]),
}
