"""linweiyuan/go-chatgpt-api's conversation routes, answered as the ChatGPT web backend answers them (its
`{"errorMessage": ...}` errors): a thin front over the same services. GET /conversations is also
gajosu/chat-gpt-rest-api's list (a plain array) for a caller that asks for shape gajosu or whose record
says so.

Our stored message is one turn (a prompt and its reply); the web backend's conversation is a tree of
messages. Each turn is shown as two nodes: the user's, id `<message_id>-prompt`, and the assistant's,
id `<message_id>` (the stored message id, the one to send back as parent_message_id and to rate)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

from flask import jsonify, request

from app import auth
from app.api import gajosu
from app.api.backend import backend_finish, backend_message
from app.api.params import choice, errors_as, flag, number, request_params, text
from app.context import services
from app.errors import AppError, BadRequest
from app.services.principal import Principal
from app.sse import event, opened, sse_response
from app.store.conversations import Conversation, Message

MAX_LIMIT = 100  # the web backend's own cap on ?limit
FRONT = "go-chatgpt-api"  # the usage ledger's name for turns asked through POST /conversation
PROMPT_SUFFIX = "-prompt"  # a turn's user node is its message id with this suffix
# Replies stream as the backend's events, each with the whole text so far. So that a long reply does not
# cost the square of its length, an event goes once the text has grown by 1/GROWTH of itself since the
# last one, or EVENT_EVERY seconds after it (a short reply gets every piece).
GROWTH = 16
EVENT_EVERY = 0.25
# Keys a PATCH may carry besides the change: the caller's key and whom a client or admin speaks for.
NOT_CHANGES = {"_method", "user_id", "username", "user_id_plus", *auth.KEY_PARAMS}
log = logging.getLogger(__name__)


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
    if request.method == "PATCH":
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


def _hide(params: dict) -> None:
    """PATCH's only change here is {is_visible: false}, which removes (the web backend hides; we delete)."""
    if "is_visible" not in params or flag(params, "is_visible", True):
        raise BadRequest('send {"is_visible": false} to remove (the only change made here)', param="is_visible")


# -- one conversation ------------------------------------------------------------------------


@errors_as(go_error)
def conversation(conversation_id: str):
    """GET: the conversation as the web backend gives it (a mapping of message nodes, epoch times).
    PATCH {title}: rename; PATCH {is_visible: false}: remove. Both answer {"success": true}."""
    params = request_params()
    principal = auth.principal(params)
    if request.method == "PATCH":
        changes = sorted(set(params) - NOT_CHANGES)
        extra = [name for name in changes if name not in ("title", "is_visible")]
        if extra:
            raise BadRequest(f"{extra[0]}: cannot be changed here (title and is_visible can)", param=extra[0])
        if "is_visible" in params:
            _hide(params)
            services().conversations.delete(principal, conversation_id)
        elif "title" in params:
            services().conversations.rename(principal, conversation_id, text(params, "title", max_len=1000))
        else:
            raise BadRequest('send {"title": "..."} to rename or {"is_visible": false} to remove', param="title")
        return jsonify({"success": True})
    conv, messages, ratings = services().conversations.records(principal, conversation_id)
    return jsonify(backend_conversation(conv, messages, ratings))


def backend_conversation(conv: Conversation, messages: list[Message], ratings: dict) -> dict:
    """A stored conversation as the web backend's: each turn a user node and an assistant node, in a line."""
    mapping: dict = {}
    parent = None
    for m in messages:
        asked = m.message_id + PROMPT_SUFFIX
        mapping[asked] = {"id": asked, "message": _user_message(asked, m), "parent": parent, "children": [m.message_id]}
        if parent is not None:
            mapping[parent]["children"].append(asked)
        reply = backend_message(
            m.message_id,
            m.reply,
            "finished_successfully" if m.complete else "finished_partial_completion",
            m.model,
            "stop" if m.complete else "interrupted",
            m.completed_at or m.created_at,
        )
        reply["metadata"]["rating"] = ratings.get(m.message_id)
        mapping[m.message_id] = {"id": m.message_id, "message": reply, "parent": asked, "children": []}
        parent = m.message_id
    return {
        "title": conv.title,
        "create_time": conv.created_at,
        "update_time": conv.updated_at,
        "mapping": mapping,
        "moderation_results": [],
        "current_node": parent,
        "conversation_id": conv.conversation_id,
    }


def _user_message(node_id: str, m: Message) -> dict:
    return {
        "id": node_id,
        "author": {"role": "user", "name": None, "metadata": {}},
        "create_time": m.created_at,
        "update_time": None,
        "content": {"content_type": "text", "parts": [m.prompt]},
        "status": "finished_successfully",
        "end_turn": None,
        "weight": 1.0,
        "metadata": {"timestamp_": "absolute"},
        "recipient": "all",
    }


# -- asking ----------------------------------------------------------------------------------


@errors_as(go_error)
def ask():
    """The web backend's POST /conversation {action: "next", messages: [the user's message], model,
    parent_message_id, conversation_id|null}, answered as its event stream: the assistant message with
    the whole text so far per event, the last one "finished_successfully" with the stored message id,
    then `data: [DONE]`. A follow-up continues from its conversation's last message."""
    params = request_params()
    actor = auth.caller(params)  # 401 before any 400
    prompt = _prompt(params)
    conversation_id = text(params, "conversation_id", max_len=64)
    text(params, "parent_message_id", max_len=64)  # read (a string, if sent), not needed: see the docstring
    principal = auth.principal(params, create=True, actor=actor)
    model = services().chat.served(principal, text(params, "model", max_len=128))
    message_id, new_id = str(uuid.uuid4()), str(uuid.uuid4())  # the turn is stored under these
    turn = services().chat.ask_stream(
        principal, prompt, conversation_id=conversation_id, model=model, front=FRONT, ids=(message_id, new_id)
    )
    # The turn's first piece comes before the answer does: an upstream failing first is a JSON error.
    return sse_response(backend_events(opened(turn), message_id, conversation_id or new_id, model))


def _prompt(params: dict) -> str:
    """The new message's text, from the backend's body; 400 naming the field that is wrong."""
    action = params.get("action", "next")
    if action != "next":
        if action in ("variant", "continue"):
            raise BadRequest(
                f'action "{action}" is not supported here: send action "next" with a new user message',
                param="action",
            )
        raise BadRequest('action must be "next"', param="action")
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages is required: a list holding the new user message", param="messages")
    if len(messages) != 1:
        raise BadRequest("messages must hold exactly one message (the new user message)", param="messages")
    message = messages[0]
    if not isinstance(message, dict):
        raise BadRequest("messages[0] must be an object {id, author, content}", param="messages[0]")
    if message.get("id") is not None and not isinstance(message["id"], str):
        raise BadRequest("messages[0].id must be a string", param="messages[0].id")
    author = message.get("author")
    if not isinstance(author, dict) or author.get("role") != "user":
        raise BadRequest('messages[0].author.role must be "user"', param="messages[0].author.role")
    content = message.get("content")
    if not isinstance(content, dict):
        raise BadRequest("messages[0].content must be an object {content_type, parts}", param="messages[0].content")
    if content.get("content_type", "text") != "text":
        raise BadRequest('messages[0].content.content_type must be "text"', param="messages[0].content.content_type")
    parts = content.get("parts")
    name = "messages[0].content.parts"
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
        raise BadRequest(f"{name} must be a list of strings (the message's text)", param=name)
    prompt = text({name: "\n".join(parts)}, name, max_len=services().chat.max_prompt_chars)
    if not prompt or not prompt.strip():
        raise BadRequest(f"{name} holds no text", param=name)
    return prompt


def backend_events(events: opened, message_id: str, conversation_id: str, model: str | None) -> Iterator[str]:
    """A turn's events as the web backend's: the assistant message with the cumulative text, then [DONE].

    Every event carries the ids the turn is stored under (the message's, the conversation's); the last one
    has the whole reply and the model that answered. A failure after the stream began is a last event with
    "error" set (and the text so far), then [DONE]."""
    pieces: list[str] = []
    size, sent, sent_at = 0, 0, 0.0  # the text's length now and at the last event, and when that went

    def progress(status: str = "in_progress", finish: str | None = None, error: str | None = None) -> str:
        message = backend_message(message_id, "".join(pieces), status, model, finish)
        return event({"message": message, "conversation_id": conversation_id, "error": error})

    try:
        for item in events:
            if isinstance(item, dict):
                finish = backend_finish(item.get("finish_reason"))
                message = backend_message(
                    item["message_id"], item["reply"], "finished_successfully", item["model"], finish, time.time()
                )
                yield event({"message": message, "conversation_id": item["conversation_id"], "error": None})
                continue
            pieces.append(item.text)
            size += len(item.text)
            now = time.monotonic()
            if _due(size, sent, now - sent_at):
                sent, sent_at = size, now
                yield progress()
    except AppError as exc:  # the upstream failed after the stream began: say so in the stream
        yield progress("finished_partial_completion", "interrupted", exc.message)
    except Exception:  # never a silent end: the caller learns the turn failed
        log.exception("unexpected error in a go-chatgpt-api stream")
        yield progress("finished_partial_completion", "interrupted", "the server hit an unexpected error")
    finally:
        events.close()  # the caller went away: close the upstream now and keep the partial reply
    yield "data: [DONE]\n\n"


def _due(size: int, sent: int, waited: float) -> bool:
    """Whether text of `size` characters (`sent` of them in the last event, `waited` seconds ago) has grown
    enough, or waited long enough, for an event."""
    grown = size - sent
    return grown > 0 and (grown >= max(1, sent // GROWTH) or waited >= EVENT_EVERY)


# -- titles and ratings ----------------------------------------------------------------------


@errors_as(go_error)
def gen_title(conversation_id: str):
    """The web backend's POST /conversation/gen_title/<id> {message_id, model}: {"title": ...}. Titles here
    are made when a conversation starts (the upstream's, or from the first prompt), so this answers that."""
    params = request_params()
    principal = auth.principal(params)
    text(params, "message_id", max_len=64)
    text(params, "model", max_len=128)
    return jsonify({"title": services().conversations.get(principal, conversation_id)["title"]})


@errors_as(go_error)
def feedback():
    """The web backend's POST /conversation/message_feedback {message_id, conversation_id, rating}: the
    rating (thumbsUp or thumbsDown) is kept with the reply, answered as the backend answers it."""
    params = request_params()
    principal = auth.principal(params)
    conversation_id = text(params, "conversation_id", required=True, max_len=64)
    message_id = text(params, "message_id", required=True, max_len=64)
    rating = text(params, "rating", required=True, max_len=32)
    rated = services().conversations.rate(principal, conversation_id, message_id, rating)
    return jsonify(
        {
            "message_id": rated["message_id"],
            "conversation_id": rated["conversation_id"],
            "user_id": rated["user_id"],
            "rating": rated["rating"],
            "content": "{}",
        }
    )


VIEWS: dict = {
    "go_conversations": (conversations, ["GET", "PATCH"]),
    "go_conversation": (conversation, ["GET", "PATCH"]),
    "go_ask": (ask, ["POST"]),
    "go_gen_title": (gen_title, ["POST"]),
    "go_feedback": (feedback, ["POST"]),
}
