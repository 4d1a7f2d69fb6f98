"""gajosu/chat-gpt-rest-api's conversation routes: form-encoded bodies, `Authorization: KEY`, answers in
its shapes ({"response": ...}, 204 for removals) and its `{"error": ...}` errors. A thin front over the
same services. Its list of conversations is GET /conversations (app/api/linweiyuan.py) with shape gajosu."""

from __future__ import annotations

from flask import jsonify

from app.api.params import number
from app.context import services
from app.services.principal import Principal


def gajosu_error(exc) -> dict:
    return {"error": exc.message}


def conversation_list(principal: Principal, params: dict):
    """Its GET /conversations?limit&offset (limit default 10): a plain array of the web backend's items."""
    from app.api.linweiyuan import backend_item

    offset, limit = number(params, "offset", 0), number(params, "limit", 10)
    page = services().conversations.list(principal, offset, limit)
    return jsonify([backend_item(c) for c in page["conversations"]])


VIEWS: dict = {}
