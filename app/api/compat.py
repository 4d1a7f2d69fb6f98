"""The original systems' answer shapes, for scripts written against them: the original Flask server's
recall, remove-conversation and add-user, and acheong08/ChatGPT-API-server's /api/ask. Each is a thin
front over the same services."""

from __future__ import annotations

from flask import jsonify

from app import auth
from app.api.backend import backend_finish, backend_message
from app.api.params import errors_as, flag, request_params, text
from app.context import services
from app.errors import BadRequest


def original_answer(answer: dict) -> dict:
    """An /api/chat answer as the original server gave it: the ChatGPT backend's final event (the reply in
    message.content.parts[0], message.id), then its api_* fields (api_user the username,
    api_response_time_taken a string)."""
    message = backend_message(
        answer["message_id"],
        answer["reply"],
        "finished_successfully",
        answer["model"],
        backend_finish(answer["finish_reason"]),
    )
    shaped = {
        "message": message,
        "conversation_id": answer["conversation_id"],
        "error": None,
        "conversation_title": answer["conversation_title"],
        "api_prompt": answer["api_prompt"],
        "api_prompt_time_origin": answer["api_prompt_time_origin"],
        "api_prompt_time_origin_readable": answer["api_prompt_time_origin_readable"],
        "api_user": answer["api_username"],
        "api_client_id": answer["api_client_id"],
        "api_response_time_taken": str(answer["api_response_time_taken"]),
        "status": "success",
    }
    for name in ("last_message_prompt", "last_message_reply"):
        if name in answer:
            shaped[name] = answer[name]
    return shaped


def recall():
    """No id: {id: {"title": ...}}; with an id: the conversation and its messages keyed by id."""
    params = request_params()
    principal = auth.principal(params)
    conversation_id = text(params, "conversation_id", max_len=64)
    if not conversation_id:
        return jsonify(
            {c["conversation_id"]: {"title": c["title"]} for c in services().conversations.all_summaries(principal)}
        )
    conv = services().conversations.get(principal, conversation_id)
    return jsonify(
        {
            "conversation_id": conv["conversation_id"],
            "conversation_title": conv["title"],
            "messages": [
                {m["message_id"]: {"prompt": m["prompt"], "reply": m["reply"], "origin_time": m["created_at"]}}
                for m in conv["messages"]
            ],
        }
    )


def remove_conversation():
    params = request_params()
    principal = auth.principal(params)
    conversation_id = text(params, "conversation_id", required=True, max_len=64)
    services().conversations.delete(principal, conversation_id)
    return jsonify({"status": "success", "message": f"conversation {conversation_id} removed"})


def add_user():
    """The original add-user: the key in admin or client, then userid, username, plus, is_client."""
    params = request_params()
    actor = auth.caller(params)
    userid = text(params, "userid", max_len=64) or text(params, "user_id", max_len=64)
    username = text(params, "username", max_len=64) or userid
    if not username:
        raise BadRequest("username (or userid) is required", param="username")
    role = "client" if flag(params, "is_client") else "user"
    user, key = services().users.create(actor, username, role=role, plus=flag(params, "plus"), user_id=userid)
    return jsonify(
        {"status": "success", "message": f"{role} {user.username} created", "user_id": user.user_id, "api_key": key}
    ), 201


@errors_as(lambda exc: {"error": exc.message})
def ask():
    """acheong08's POST /api/ask {content, conversation_id?, parent_id?} with `Authorization: KEY` ->
    {id, response_id, conversation_id, content, error}; its errors are {"error": message} with the status.
    A follow-up always continues from its conversation's last message (parent_id is read, not needed)."""
    params = request_params()
    actor = auth.caller(params)
    prompt = text(params, "content", required=True, max_len=services().chat.max_prompt_chars)
    principal = auth.principal({}, actor=actor)
    conversation_id = text(params, "conversation_id", max_len=64)
    answer = services().chat.ask(principal, prompt, conversation_id=conversation_id, front="acheong08")
    return jsonify(
        {
            "id": "",
            "response_id": answer["message_id"],
            "conversation_id": answer["conversation_id"],
            "content": answer["reply"],
            "error": "",
        }
    )


def access_token_of(params: dict) -> str:
    """The access token for params' session_token; 400 naming what is missing or gone (email and password)."""
    session_token = text(params, "session_token", max_len=1 << 20)  # the service checks its size and form
    if session_token is None:
        if params.get("email") or params.get("password"):
            raise BadRequest(
                "signing in with email and password is no longer possible (OpenAI closed that flow); send "
                "session_token, the __Secure-next-auth.session-token cookie of a signed-in chatgpt.com",
                param="session_token",
            )
        raise BadRequest("session_token is required (the chatgpt.com session cookie)", param="session_token")
    return services().chat.access_token(session_token)


@errors_as(lambda exc: {"Error": exc.message})
def access_token():
    """The original's /api/access-token: the key, then session_token -> {"Access Token": ...}; errors
    {"Error": message} with the right status."""
    params = request_params()
    auth.caller(params)
    return jsonify({"Access Token": access_token_of(params)})


VIEWS = {
    "access_token": (access_token, ["GET", "POST"]),
    "ask": (ask, ["POST"]),
    "recall": (recall, ["GET", "POST"]),
    "remove_conversation": (remove_conversation, ["GET", "POST"]),
    "add_user": (add_user, ["GET", "POST"]),
}
