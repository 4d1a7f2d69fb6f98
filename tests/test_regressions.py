"""One test per defect fixed in 6039d9b ("Review fixes"): each failed before it, and passes now."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from fakes.raw_sse import RawSSE
from upstream_fixtures import chat_requests, conversation_total, openai_account, start_with_user, web_account

from app.services.principal import Principal
from app.services.users import hash_key


def assert_error(response, status: int, param: str | None = None) -> dict:
    """Check an error answer: the exact status, JSON, and the parameter it names."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error"
    if param is not None:
        assert body.get("param") == param, body
    return body


def web_event(message_id: str | None, text: str = "", **message_fields) -> str:
    """One ChatGPT web event in conversation c-raw: an assistant message with text (fields override any key)."""
    message = {"author": {"role": "assistant"}, "content": {"content_type": "text", "parts": [text]}}
    if message_id is not None:
        message["id"] = message_id
    return json.dumps({"conversation_id": "c-raw", "message": {**message, **message_fields}})


def openai_delta(text: str, finish: str | None = None) -> str:
    """One OpenAI stream chunk carrying text, with finish_reason finish."""
    return json.dumps(
        {"id": "chatcmpl-raw", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
    )


@pytest.fixture
def raw_chat(make_server, admin):
    """Return ask(kind, events, done): one chat on an account whose upstream sends exactly those events."""
    fakes: list[RawSSE] = []

    def ask(kind: str, events: list[str], done: bool = True):
        fake = RawSSE(events, done).start()
        fakes.append(fake)
        account = openai_account(fake) if kind == "openai" else web_account(fake)
        server, key = start_with_user(make_server, admin, [account])
        return server, key, server.post("/api/chat", key, json={"prompt": "hi"})

    yield ask
    for fake in fakes:
        fake.stop()


# -- 1. ids, ownership and deletion -----------------------------------------------------------


def test_reused_creator_id_is_refused(server, admin):
    """An id that still created other users cannot be given to a new user: it would inherit them."""
    ops = server.create_user(admin, "ops", role="admin", user_id="ops")["api_key"]
    assert server.call("DELETE", "/api/users/admin", ops).status_code == 200
    response = server.post("/api/users", ops, json={"username": "bot", "role": "client", "user_id": "admin"})
    assert_error(response, 409, "user_id")


def test_client_sharing_a_creator_id_cannot_reach_an_admin(tmp_path, make_server):
    """A client whose id created an admin (users.json from before the fix) cannot read, rotate or speak as it."""
    client_key, ops_key = "cas-legacy-client-key", "cas-legacy-ops-key"
    users = {
        "ops": dict(role="admin", key_hash=hash_key(ops_key), created_by="admin", created_at="2026-01-01T00:00:00Z"),
        "admin": dict(
            role="client", key_hash=hash_key(client_key), created_by="ops", created_at="2026-01-01T00:00:01Z"
        ),
    }
    for uid, fields in users.items():
        fields.update(username=uid, plus=False, external_id=None)
    (tmp_path / "users.json").write_text(json.dumps({"version": 1, "users": users}))
    server = make_server()
    assert_error(server.get("/api/users/ops", client_key), 404, "user_id")
    assert_error(server.post("/api/users/ops/key", client_key), 404, "user_id")
    spoken = server.chat(client_key, "hello", user_id="ops")
    assert spoken["api_user"] != "ops"
    assert server.get("/api/me", ops_key).json()["user_id"] == "ops"
    listed = [u["user_id"] for u in server.get("/api/users", client_key).json()["users"]]
    assert "ops" not in listed
    deleted = server.call("DELETE", "/api/users/admin", ops_key)
    assert deleted.status_code == 200 and "ops" not in deleted.json()["deleted_users"]
    assert server.get("/api/me", ops_key).status_code == 200  # the admin did not delete itself by cascade


def test_deleting_a_client_deletes_its_users(server, admin, client_role):
    """The client's users go with it: named in deleted_users, keys dead, conversations gone; the id starts clean."""
    bot, bot_key = client_role["user_id"], client_role["api_key"]
    made = server.create_user(bot_key, "carol", user_id="carol-ext")
    server.chat(made["api_key"], "carol's secret")
    spoken = server.chat(bot_key, "dave's secret", user_id="dave-ext")
    owned = {made["user_id"], spoken["api_user"]}
    response = server.call("DELETE", f"/api/users/{bot}", admin)
    assert response.status_code == 200, response.text
    assert response.json()["deleted"] == bot
    assert set(response.json()["deleted_users"]) == owned
    for key in (bot_key, made["api_key"]):
        assert_error(server.get("/api/me", key), 401)
    assert all(server.services.store.owned_ids(uid) == [] for uid in owned)
    again = server.create_user(admin, "new bot", role="client", user_id=bot)
    listed = server.get("/api/users", again["api_key"])
    assert listed.status_code == 200 and listed.json()["users"] == []


def test_user_id_with_trailing_newline_is_refused(server, admin):
    """`$` matched before a final newline, so "bob\\n" passed as an id."""
    assert_error(server.post("/api/users", admin, json={"username": "bob", "user_id": "bob\n"}), 400, "user_id")


# -- 2-6. request parsing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "fields", "key_in_body"),
    [
        ("application/json", None, False),
        ("application/x-www-form-urlencoded", {"prompt": "chunked hello"}, False),
        ("application/x-www-form-urlencoded", {"prompt": "chunked hello"}, True),
    ],
    ids=["json", "form", "form-with-key"],
)
def test_chunked_body_is_read(server, user, content_type, fields, key_in_body):
    """A chunked body under the limit reaches the view, key included."""
    key = user["api_key"]
    if fields is None:
        body = json.dumps({"prompt": "chunked hello"}).encode()
    else:
        body = urlencode({**fields, **({"user": key} if key_in_body else {})}).encode()
    response = server.post(
        "/api/chat",
        None if key_in_body else key,
        data=iter([body[:7], body[7:]]),
        headers={"Content-Type": content_type},
    )
    assert response.status_code == 200, response.text
    assert "You said: chunked hello" in response.json()["reply"]


@pytest.mark.parametrize(("param", "value"), [("limit", "1e3"), ("offset", "5 0"), ("limit", "0x10")])
def test_number_with_junk_is_400(server, user, param, value):
    """Only the leading digits used to be checked; int() of the rest was a 500."""
    assert_error(server.get("/api/conversations", user["api_key"], params={param: value}), 400, param)


def test_deeply_nested_json_is_400(server, user):
    """Nesting deeper than the JSON parser goes was a RecursionError (500)."""
    response = server.post("/api/me", user["api_key"], data="[" * 100_000, headers={"Content-Type": "application/json"})
    assert_error(response, 400)


@pytest.mark.parametrize("access_token", ["tok\u2603en", "tok\nen"], ids=["non-latin-1", "newline"])
def test_access_token_that_cannot_be_a_header_is_400(make_server, admin, web_fake, access_token):
    """A token that cannot travel in an Authorization header is refused before any upstream call."""
    server = make_server(byo_account={"base_url": web_fake.url})
    key = server.create_user(admin, "alice")["api_key"]
    response = server.post("/api/chat", key, json={"prompt": "hi", "access_token": access_token})
    assert_error(response, 400, "access_token")
    assert chat_requests(web_fake) == []


def test_lone_surrogate_key_is_401(server):
    """A key that cannot be encoded to hash it is simply unknown."""
    response = server.post("/api/me", data='{"user": "\\ud800"}', headers={"Content-Type": "application/json"})
    assert_error(response, 401)


# -- 7-9. upstream event streams ----------------------------------------------------------------

MALFORMED_OPENAI = ['{"choices": ["x"]}', '{"choices": [{"delta": "oops"}]}', '{"choices": "x"}']


@pytest.mark.parametrize("junk", MALFORMED_OPENAI)
def test_malformed_openai_event_is_skipped(raw_chat, junk):
    """An event of the wrong shape is skipped; the reply around it comes through."""
    _, _, response = raw_chat("openai", [junk, openai_delta("ok", "stop")])
    assert response.status_code == 200, response.text
    assert response.json()["reply"] == "ok"


@pytest.mark.parametrize("done", [True, False])
@pytest.mark.parametrize("junk", MALFORMED_OPENAI)
def test_only_malformed_openai_events_are_502(raw_chat, junk, done):
    """A stream holding nothing usable is an upstream error (not an empty success), with or without [DONE]."""
    server, key, response = raw_chat("openai", [junk], done=done)
    assert_error(response, 502)
    assert conversation_total(server, key) == 0


@pytest.mark.parametrize("junk", MALFORMED_OPENAI)
def test_malformed_openai_event_in_a_cut_stream_is_502(raw_chat, junk):
    """A stream holding only a malformed event and no end is an upstream error, not a crash."""
    server, key, response = raw_chat("openai", [junk], done=False)
    assert_error(response, 502)
    assert conversation_total(server, key) == 0


@pytest.mark.parametrize(
    ("events", "status", "reply"),
    [
        ([web_event("m1", "Hello", metadata="oops")], 200, "Hello"),
        ([web_event("m1", "Hello", metadata={"finish_details": "oops"})], 200, "Hello"),
        ([web_event("m0", content="x"), web_event("m2", "Fine.")], 200, "Fine."),
        ([web_event(None, content="x")], 502, "ended without a reply"),
        ([web_event("m0", content="x")], 502, "ended without a reply"),
    ],
    ids=["metadata-str", "finish-details-str", "content-junk-then-reply", "content-junk-only", "id-but-no-text"],
)
def test_malformed_web_event_is_not_500(raw_chat, events, status, reply):
    """Message fields of the wrong type are ignored: the reply text if there is one, else 502."""
    _, _, response = raw_chat("chatgpt-web", events)
    if status == 200:
        assert response.status_code == 200, response.text
        assert response.json()["reply"] == reply
    else:
        assert reply in assert_error(response, status)["message"]


@pytest.mark.parametrize(
    ("kind", "events", "status"),
    [
        ("openai", [openai_delta("Hel")], 502),
        ("openai", [openai_delta("Hello", "stop")], 200),
        ("chatgpt-web", [web_event("m1", "Hello")], 502),
    ],
    ids=["openai-cut", "openai-finished", "web-cut"],
)
def test_stream_without_done(raw_chat, kind, events, status):
    """No [DONE]: 502 and nothing stored, unless an OpenAI stream already said finish_reason."""
    server, key, response = raw_chat(kind, events, done=False)
    assert response.status_code == status, response.text
    assert conversation_total(server, key) == (1 if status == 200 else 0)
    if status == 502:
        assert "before finishing it" in assert_error(response, 502)["message"]


@pytest.mark.parametrize(
    ("events", "reply"),
    [
        (
            [
                web_event("t1", "Searching the web...", recipient="browser"),
                web_event("m2", "Paris is the capital of France."),
            ],
            "Paris is the capital of France.",
        ),
        ([web_event("m1", "First."), web_event("m2", "Second.")], "First.\n\nSecond."),
    ],
    ids=["tool-call-then-answer", "two-visible"],
)
def test_web_answer_with_several_messages(raw_chat, events, reply):
    """Tool messages are hidden; visible messages are each shown whole, joined by a blank line."""
    _, _, response = raw_chat("chatgpt-web", events)
    assert response.status_code == 200, response.text
    assert response.json()["reply"] == reply


# -- 10. a reply cut short ----------------------------------------------------------------------


def test_partial_first_turn_keeps_upstream_ids(make_server, admin, web_fake):
    """A first turn cut mid-reply still records the upstream conversation, so a follow-up continues it."""
    web_fake.chunk_size, web_fake.stream_delay = 3, 0.05
    server, key = start_with_user(make_server, admin, [web_account(web_fake)])
    me = server.services.users.authenticate(key)
    stream = server.services.chat.ask_stream(Principal(me, me), "hello there friend")
    next(stream), next(stream)
    stream.close()
    [upstream_id] = web_fake.conversations
    [conv] = server.services.store.list(me.user_id)
    assert conv.upstream_conversation_id == upstream_id
    [message] = server.services.store.messages(conv.conversation_id)
    assert message.complete is False and message.reply
    follow = server.chat(key, "and then?", conversation_id=conv.conversation_id)
    assert follow["reply"] == "web echo: and then?"
    assert chat_requests(web_fake)[-1]["body"]["conversation_id"] == upstream_id
