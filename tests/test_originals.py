"""The original systems' request shapes: acheong08's /api/ask with a bare `Authorization: KEY`, and what
an Authorization header this server does not read is told."""

from __future__ import annotations

import pytest
import requests
from fakes import Socks5Server
from sqlalchemy import text as sql

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
    server.services.usage.usage.flush()
    with server.services.store.engine.connect() as db:
        query = sql("SELECT front FROM usage_ledger WHERE user_id = :u")
        assert [row[0] for row in db.execute(query, {"u": user["user_id"]})] == ["acheong08", "acheong08"]


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


# -- acheong08's /admin/users routes --------------------------------------------------------------


def test_acheong_admin_users_add_list_delete_with_admin_key(server, admin):
    """POST /admin/users/add {admin_key} -> {user_id, token}, the token chats; GET /admin/users?admin_key= lists
    the user (token null: keys are kept hashed); POST /admin/users/delete -> {"message": "User deleted"}; each
    change is in the audit log under the admin."""
    added = server.session.post(server.url + "/admin/users/add", json={"admin_key": admin}, timeout=30)
    assert added.status_code == 200, added.text
    body = added.json()
    assert set(body) == {"user_id", "token"} and body["token"].startswith("cas-")
    assert server.chat(body["token"], "hello from an acheong08 user")["reply"]
    listed = server.session.get(server.url + "/admin/users", params={"admin_key": admin}, timeout=30)
    assert listed.status_code == 200 and listed.headers["Content-Type"] == "application/json", listed.text
    users = {u["user_id"]: u for u in listed.json()["users"]}
    assert users[body["user_id"]]["token"] is None and users[body["user_id"]]["role"] == "user"
    assert body["token"] not in listed.text
    gone = server.session.post(
        server.url + "/admin/users/delete", json={"admin_key": admin, "user_id": body["user_id"]}, timeout=30
    )
    assert gone.status_code == 200 and gone.json() == {"message": "User deleted"}, gone.text
    assert server.get("/api/me", body["token"]).status_code == 401
    actions = [
        e["action"] for e in server.get("/api/audit", admin, params={"target": body["user_id"]}).json()["entries"]
    ]
    assert actions == ["user.delete", "user.create"], actions


def test_acheong_admin_users_errors_come_in_its_shape(server, admin, user):
    """A wrong admin_key is a 401 {"error"}; a user's key is refused (403); deleting without user_id is a 400
    naming it; an unknown user a 404; a browser at /admin/users still gets the page."""
    wrong = server.session.post(server.url + "/admin/users/add", json={"admin_key": "cas-not-a-key"}, timeout=30)
    assert wrong.status_code == 401 and set(wrong.json()) == {"error"}, wrong.text
    as_user = server.session.post(server.url + "/admin/users/add", json={"admin_key": user["api_key"]}, timeout=30)
    assert as_user.status_code == 403 and set(as_user.json()) == {"error"}, as_user.text
    no_id = server.session.post(server.url + "/admin/users/delete", json={"admin_key": admin}, timeout=30)
    assert no_id.status_code == 400 and "user_id" in no_id.json()["error"]
    unknown = server.session.post(
        server.url + "/admin/users/delete", json={"admin_key": admin, "user_id": "nobody"}, timeout=30
    )
    assert unknown.status_code == 404 and set(unknown.json()) == {"error"}
    listed = server.session.get(server.url + "/admin/users", params={"admin_key": "cas-wrong"}, timeout=30)
    assert listed.status_code == 401 and "cas-wrong" not in listed.text
    browser = requests.get(
        server.url + "/admin/users", headers={"Accept": "text/html"}, timeout=30, allow_redirects=False
    )
    assert browser.status_code == 303 and "/login" in browser.headers["Location"]


# -- the original's /api/access-token -------------------------------------------------------------


@pytest.fixture
def session_server(make_server, web_fake):
    """A server whose byo_account trades session tokens at the fake chatgpt.com, through a real SOCKS proxy."""
    with Socks5Server() as proxy:
        web_fake.sessions["good-session-token"] = "fresh-access-token-0123"
        server = make_server(default_proxy=proxy.url, byo_account={"auth_base": web_fake.base_url})
        yield server, web_fake, proxy


def test_access_token_from_a_session_token_through_the_default_proxy(session_server, user_for):
    """session_token -> {"Access Token": ...}, fetched through the default proxy; the page gives the same."""
    server, web, proxy = session_server
    key = user_for(server)
    answer = server.session.post(
        server.url + "/api/access-token", json={"user": key, "session_token": "good-session-token"}, timeout=30
    )
    assert answer.status_code == 200 and answer.json() == {"Access Token": "fresh-access-token-0123"}, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    assert proxy.connections and proxy.connections[-1][1] == web.port
    by_get = server.session.get(
        server.url + "/api/access-token", params={"user": key, "session_token": "good-session-token"}, timeout=30
    )
    assert by_get.json() == {"Access Token": "fresh-access-token-0123"}


def test_access_token_errors_in_the_originals_shape(session_server, user_for):
    """{"Error": ...}: no key 401; no session token 400; email/password told the flow is gone; a refused session
    token 400 saying to sign in again (never echoing it); the session endpoint down 502."""
    server, web, _proxy = session_server
    key = user_for(server)
    post = lambda body: server.session.post(server.url + "/api/access-token", json=body, timeout=30)  # noqa: E731
    assert post({"session_token": "good-session-token"}).status_code == 401
    missing = post({"user": key})
    assert missing.status_code == 400 and "session_token" in missing.json()["Error"]
    old = post({"user": key, "email": "a@b.c", "password": "pw"})
    assert old.status_code == 400 and "no longer possible" in old.json()["Error"]
    refused = post({"user": key, "session_token": "expired-session-token"})
    assert refused.status_code == 400 and set(refused.json()) == {"Error"}, refused.text
    assert "sign in" in refused.json()["Error"] and "expired-session-token" not in refused.text
    web.session_fail_status = 500
    down = post({"user": key, "session_token": "good-session-token"})
    assert down.status_code == 502 and set(down.json()) == {"Error"}, down.text
    assert down.json()["Error"].startswith(f"the ChatGPT session endpoint ({web.base_url})"), down.text


def test_access_token_page(session_server, user_for):
    """The /access-token page: log in, paste the session token, read the access token; a bad one is told."""
    from test_web_pages import Browser

    server, _web, _proxy = session_server
    browser = Browser(server).log_in(user_for(server))
    shown = browser.page("/access-token")
    assert shown.status == 200 and shown.doc.find("input", name="session_token") is not None
    got = browser.submit("/access-token", {"session_token": "good-session-token"})
    assert got.status == 200 and got.doc.find("textarea", id="access-token").text == "fresh-access-token-0123"
    assert got.response.headers["Cache-Control"] == "no-store"
    refused = browser.submit("/access-token", {"session_token": "expired"})
    assert (
        refused.status == 400 and "sign in" in refused.text and refused.doc.find("textarea", id="access-token") is None
    )
    empty = browser.submit("/access-token", {"session_token": ""})
    assert empty.status == 400
    assert Browser(server).page("/access-token").status == 303  # not logged in: the login page


@pytest.fixture
def user_for(admin):
    def make(server) -> str:
        return server.create_user(admin, "tokenuser")["api_key"]

    return make
