"""The original systems' request shapes: acheong08's /api/ask with a bare `Authorization: KEY`, and what
an Authorization header this server does not read is told."""

from __future__ import annotations

import requests

ASK = "/api/ask"


def ask(server, headers: dict, body: dict) -> requests.Response:
    return server.session.post(server.url + ASK, json=body, headers=headers, timeout=30)


def test_ask_with_a_bare_key_starts_and_continues_a_conversation(server, user):
    """`Authorization: KEY` (no Bearer), {content} -> {id, response_id, conversation_id, content, error}; a
    follow-up with conversation_id continues the same conversation."""
    first = ask(server, {"Authorization": user["api_key"]}, {"content": "Hello there"})
    assert first.status_code == 200, first.text
    body = first.json()
    assert set(body) == {"id", "response_id", "conversation_id", "content", "error"}
    assert body["error"] == "" and body["id"] == "" and "demo" in body["content"].lower()
    again = ask(
        server,
        {"Authorization": user["api_key"]},
        {"content": "And again", "conversation_id": body["conversation_id"], "parent_id": body["response_id"]},
    )
    assert again.status_code == 200, again.text
    assert again.json()["conversation_id"] == body["conversation_id"]
    stored = server.get(f"/api/conversations/{body['conversation_id']}", user["api_key"]).json()
    assert [m["prompt"] for m in stored["messages"]] == ["Hello there", "And again"]
    assert stored["messages"][1]["message_id"] == again.json()["response_id"]


def test_ask_errors_come_in_its_own_shape(server, user):
    """Errors are {"error": message} with the right status: no key 401, bad key 401, no content 400, a
    stranger's conversation 404."""
    no_key = ask(server, {}, {"content": "hi"})
    assert no_key.status_code == 401 and set(no_key.json()) == {"error"}, no_key.text
    bad_key = ask(server, {"Authorization": "cas-nobody-has-this-key"}, {"content": "hi"})
    assert bad_key.status_code == 401 and bad_key.json() == {"error": "unknown API key"}
    empty = ask(server, {"Authorization": user["api_key"]}, {})
    assert empty.status_code == 400 and "content" in empty.json()["error"]
    unknown = ask(server, {"Authorization": user["api_key"]}, {"content": "hi", "conversation_id": "nope"})
    assert unknown.status_code == 404 and set(unknown.json()) == {"error"}


def test_a_bare_key_works_on_every_api_route_and_an_unread_scheme_is_named(server, user):
    """The bare key is read on /api routes too; a Basic (or any other scheme's) header is told apart from no key."""
    me = server.session.get(server.url + "/api/me", headers={"Authorization": user["api_key"]}, timeout=30)
    assert me.status_code == 200 and me.json()["user_id"] == user["user_id"]
    basic = server.session.get(server.url + "/api/me", headers={"Authorization": "Basic dXNlcjpwYXNz"}, timeout=30)
    assert basic.status_code == 401
    assert "'Basic'" in basic.json()["message"] and "Bearer" in basic.json()["message"]
    none = server.session.get(server.url + "/api/me", timeout=30)
    assert none.status_code == 401 and none.json()["message"].startswith("no API key:")


def test_the_original_servers_reply_shape_by_parameter_and_by_the_users_record(server, admin, user):
    """shape=original gives the original's answer (the reply in message.content.parts[0], api_user the username,
    api_response_time_taken a string); a user whose record says "shape": "original" gets it without asking."""
    plain = server.chat(user["api_key"], "hello")
    assert "message" not in plain and isinstance(plain["api_response_time_taken"], float)
    shaped = server.chat(user["api_key"], "hello", shape="original")
    assert shaped["message"]["content"]["parts"][0] == plain["reply"]
    assert shaped["message"]["id"] and shaped["status"] == "success" and shaped["error"] is None
    assert shaped["api_user"] == "alice" and isinstance(shaped["api_response_time_taken"], str)
    follow = server.chat(user["api_key"], "again", conversation_id=shaped["conversation_id"], shape="original")
    assert follow["last_message_prompt"] == "hello"
    patched = server.call("PATCH", f"/api/users/{user['user_id']}", admin, json={"shape": "original"})
    assert patched.status_code == 200 and patched.json()["shape"] == "original"
    unasked = server.chat(user["api_key"], "by default")
    assert unasked["message"]["content"]["parts"][0] and "reply" not in unasked
    assert "reply" in server.chat(user["api_key"], "ours", shape="default")
    bad = server.call("PATCH", f"/api/users/{user['user_id']}", admin, json={"shape": "weird"})
    assert bad.status_code == 400 and bad.json()["param"] == "shape"
    log = server.get("/api/audit", admin, params={"action": "user.update"}).json()["entries"]
    assert log[0]["detail"]["changes"]["shape"] == [None, "original"]
