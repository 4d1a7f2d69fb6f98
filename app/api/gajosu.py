"""gajosu/chat-gpt-rest-api's conversation routes: form-encoded bodies, `Authorization: KEY`, answers in
its shapes ({"response": ...}, 204 for removals) and its `{"error": ...}` errors. A thin front over the
same services. Its list of conversations is GET /conversations (app/api/linweiyuan.py) with shape gajosu."""

from __future__ import annotations

from flask import Response, jsonify

from app import auth
from app.api.backend import backend_finish
from app.api.params import errors_as, flag, number, request_params, text
from app.context import services
from app.services.conversations import MAX_TITLE
from app.services.principal import Principal


def gajosu_error(exc) -> dict:
    return {"error": exc.message}


def conversation_list(principal: Principal, params: dict):
    """Its GET /conversations?limit&offset (limit default 10): a plain array of the web backend's items."""
    from app.api.linweiyuan import backend_item

    offset, limit = number(params, "offset", 0), number(params, "limit", 10)
    page = services().conversations.list(principal, offset, limit)
    return jsonify([backend_item(c) for c in page["conversations"]])


# -- its answers ----------------------------------------------------------------------------------------


def ask_item(answer: dict) -> dict:
    """An answer as revChatGPT V1's last ask() item, which the original returned as "response": the whole
    reply in message, parent_id the reply's message id (the parent of the next prompt), finish_details
    the web backend's type as a string ("stop", "max_tokens")."""
    return {
        "author": {"role": "assistant", "name": None, "metadata": {}},
        "message": answer["reply"],
        "conversation_id": answer["conversation_id"],
        "parent_id": answer["message_id"],
        "model": answer["model"],
        "finish_details": backend_finish(answer["finish_reason"]),
        "end_turn": True,
        "recipient": "all",
        "citations": [],
    }


# -- its routes -----------------------------------------------------------------------------------------


def _turn(params: dict, conversation_id: str | None) -> dict:
    """Check the caller (401 first), the prompt (400 "prompt is required") and the model, then ask.

    model: passed on when this caller's accounts serve it (services().chat.models, as GET /v1/models lists),
    otherwise ignored for the default model (revChatGPT's model names mean nothing to other accounts). A
    follow-up stays on its conversation's account: a listed model that account does not serve is a 400.
    parent_id and autocontinue are read, not needed: a follow-up continues from the last message."""
    actor = auth.caller(params)
    prompt = text(params, "prompt", required=True, max_len=services().chat.max_prompt_chars)
    text(params, "parent_id", max_len=128)
    flag(params, "autocontinue")
    principal = auth.principal(params, create=True, actor=actor)
    model = services().chat.served(principal, text(params, "model", max_len=128))
    title = text(params, "title", max_len=MAX_TITLE) if conversation_id is None else None
    answer = services().chat.ask(principal, prompt, conversation_id=conversation_id, model=model, front="gajosu")
    if title and title.split():  # the original renamed the new conversation to its title
        services().conversations.rename(principal, answer["conversation_id"], title)
    return {"response": ask_item(answer)}


@errors_as(gajosu_error)
def new():
    """POST /conversations/new {prompt, title?, model?} -> {"response": revChatGPT's last ask() item}."""
    return jsonify(_turn(request_params(), None))


@errors_as(gajosu_error)
def ask(conversation_id: str):
    """POST /conversations/<id>/ask {prompt, parent_id?, model?} -> the same, continuing the conversation."""
    return jsonify(_turn(request_params(), conversation_id))


@errors_as(gajosu_error)
def messages(conversation_id: str):
    """GET /conversations/<id>/messages -> what revChatGPT's get_msg_history gave: the web backend's
    conversation (title, epoch times, mapping of message nodes, current_node)."""
    from app.api.linweiyuan import backend_conversation  # go-chatgpt-api's GET /conversation/<id>: the same shape

    conv, turns, ratings = services().conversations.records(auth.principal(request_params()), conversation_id)
    return jsonify(backend_conversation(conv, turns, ratings))


@errors_as(gajosu_error)
def delete(conversation_id: str):
    """DELETE /conversations/<id> -> 204, empty."""
    services().conversations.delete(auth.principal(request_params()), conversation_id)
    return Response(status=204)


@errors_as(gajosu_error)
def delete_all():
    """DELETE /conversations/all -> 204, empty: every conversation of the caller goes."""
    services().conversations.delete_all(auth.principal(request_params()))
    return Response(status=204)


VIEWS: dict = {
    "gajosu_new": (new, ["POST"]),
    "gajosu_ask": (ask, ["POST"]),
    "gajosu_messages": (messages, ["GET"]),
    "gajosu_conversation": (delete, ["DELETE"]),
    "gajosu_delete_all": (delete_all, ["DELETE"]),
}
