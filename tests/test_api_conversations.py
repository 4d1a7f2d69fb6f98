"""Conversations, users, /api/me, the original server's routes and custom paths, over real HTTP."""

from __future__ import annotations

import itertools
from datetime import datetime

import pytest
from conftest import ADMIN_KEY, start_server

_names = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory):
    """The module's one demo server, on SQLite and on PostgreSQL (tests/pg.py); each test uses fresh users."""
    database = {}
    if request.param == "postgresql":
        database["database_url"] = request.getfixturevalue("pg_cluster").create_database()
    server = start_server(tmp_path_factory.mktemp("shared"), **database)
    yield server
    server.stop()


def fresh(server, role="user", **fields) -> dict:
    """Create a user nobody else in the module uses and return it with its key."""
    return server.create_user(ADMIN_KEY, f"{role}-{next(_names)}", role=role, **fields)


@pytest.fixture
def alice(server):
    """A fresh plain user."""
    return fresh(server)


@pytest.fixture
def client_role(server):
    """A fresh client."""
    return fresh(server, "client")


def ok(response) -> dict:
    """Assert a 200 JSON answer and return it."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def listing(server, key, **params) -> list[dict]:
    """Return the conversations /api/conversations lists."""
    return ok(server.get("/api/conversations", key, params=params))["conversations"]


def ids(items) -> list[str]:
    """Return the conversation ids of listed items."""
    return [c["conversation_id"] for c in items]


def start(server, key, count: int, **params) -> list[str]:
    """Start count conversations and return their ids, oldest first."""
    return [server.chat(key, f"topic {i}", **params)["conversation_id"] for i in range(count)]


def assert_not_found(response):
    """Assert a JSON 404 error."""
    assert response.status_code == 404, response.text
    assert response.json()["status"] == "error"


def test_list_is_newest_first_with_counts(server, alice):
    """The list shows every conversation newest first, with times and message counts."""
    key = alice["api_key"]
    started = start(server, key, 3)
    server.chat(key, "follow-up", conversation_id=started[2])
    items = listing(server, key)
    assert ids(items) == started[::-1]
    assert [c["message_count"] for c in items] == [2, 1, 1]
    assert items[2]["title"] == "topic 0"
    for item in items:
        created = datetime.fromisoformat(item["created_at"].replace("Z", "+00:00"))
        updated = datetime.fromisoformat(item["updated_at"].replace("Z", "+00:00"))
        assert created <= updated


def test_offset_and_limit_page_through_the_list(server, alice):
    """offset and limit cut the newest-first list into pages with no gaps or repeats."""
    key = alice["api_key"]
    newest_first = start(server, key, 5)[::-1]
    pages = [ids(listing(server, key, offset=o, limit=2)) for o in (0, 2, 4)]
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:]]
    assert listing(server, key, offset=5, limit=2) == []
    assert ids(listing(server, key, limit=100)) == newest_first
    assert ids(ok(server.post("/api/conversations", key, json={"offset": "1", "limit": 1}))["conversations"]) == [
        newest_first[1]
    ]


def test_get_has_messages_oldest_first_with_parents(server, alice):
    """One conversation lists its turns oldest first, each naming the one before."""
    key = alice["api_key"]
    turns = [server.chat(key, "one")]
    for prompt in ("two", "three"):
        turns.append(server.chat(key, prompt, conversation_id=turns[0]["conversation_id"]))
    body = ok(server.get(f"/api/conversations/{turns[0]['conversation_id']}", key))
    messages = body["messages"]
    assert body["conversation_id"] == turns[0]["conversation_id"]
    assert body["message_count"] == 3
    assert [m["prompt"] for m in messages] == ["one", "two", "three"]
    assert [m["message_id"] for m in messages] == [t["message_id"] for t in turns]
    assert [m["reply"] for m in messages] == [t["reply"] for t in turns]
    assert [m["parent_id"] for m in messages] == [None, turns[0]["message_id"], turns[1]["message_id"]]
    assert [m["created_at"] for m in messages] == sorted(m["created_at"] for m in messages)


@pytest.mark.parametrize(("method", "how"), [("PATCH", "json"), ("PATCH", "data"), ("POST", "json"), ("POST", "data")])
def test_rename_shows_in_list_and_get(server, alice, method, how):
    """PATCH (or POST) with a title renames; the list and the conversation show it; a GET never renames."""
    key = alice["api_key"]
    (cid,) = start(server, key, 1)
    response = server.call(method, f"/api/conversations/{cid}", key, **{how: {"title": "  My   renamed chat "}})
    assert ok(response)["title"] == "My renamed chat"
    assert listing(server, key)[0]["title"] == "My renamed chat"
    assert ok(server.get(f"/api/conversations/{cid}", key, params={"title": "not this"}))["title"] == "My renamed chat"


DELETES = [("DELETE", {}), ("POST", {"json": {"_method": "delete"}}), ("POST", {"data": {"_method": "DELETE"}})]


@pytest.mark.parametrize(("method", "kwargs"), DELETES)
def test_delete_one_conversation(server, alice, method, kwargs):
    """DELETE (or POST _method=DELETE) removes one conversation and leaves the others."""
    key = alice["api_key"]
    keep, gone = start(server, key, 2)
    assert ok(server.call(method, f"/api/conversations/{gone}", key, **kwargs))["status"] == "success"
    assert_not_found(server.get(f"/api/conversations/{gone}", key))
    assert ids(listing(server, key)) == [keep]


@pytest.mark.parametrize(("method", "kwargs"), DELETES)
def test_delete_all_removes_only_the_callers(server, alice, method, kwargs):
    """Deleting all conversations empties the caller's list and nobody else's."""
    bob = fresh(server)
    start(server, alice["api_key"], 3)
    bobs = start(server, bob["api_key"], 1)
    assert ok(server.call(method, "/api/conversations", alice["api_key"], **kwargs))["status"] == "success"
    assert listing(server, alice["api_key"]) == []
    assert ids(listing(server, bob["api_key"])) == bobs


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("GET", {}),
        ("PATCH", {"json": {"title": "mine now"}}),
        ("POST", {"json": {"title": "mine now"}}),
        ("DELETE", {}),
        ("POST", {"json": {"_method": "DELETE"}}),
    ],
)
def test_someone_elses_conversation_is_not_found(server, alice, method, kwargs):
    """Another user's conversation answers 404 to read, rename and delete, and stays intact."""
    bob = fresh(server)
    (cid,) = start(server, alice["api_key"], 1)
    assert_not_found(server.call(method, f"/api/conversations/{cid}", bob["api_key"], **kwargs))
    assert_not_found(server.post("/api/chat", bob["api_key"], json={"prompt": "hi", "conversation_id": cid}))
    body = ok(server.get(f"/api/conversations/{cid}", alice["api_key"]))
    assert body["title"] == "topic 0" and body["message_count"] == 1


def test_admin_reads_another_users_conversations(server, alice):
    """An admin lists a user's conversations with user_id and reads one."""
    started = start(server, alice["api_key"], 2)
    assert ids(listing(server, ADMIN_KEY, user_id=alice["user_id"])) == started[::-1]
    body = ok(server.get(f"/api/conversations/{started[0]}", ADMIN_KEY))
    assert body["messages"][0]["prompt"] == "topic 0"


def test_client_lists_its_users_conversations(server, client_role):
    """A client lists one of its users' conversations by that user's id, apart from its own."""
    key = client_role["api_key"]
    theirs = start(server, key, 2, user_id="discord-7", username="Gus")
    own = start(server, key, 1)
    assert ids(listing(server, key, user_id="discord-7")) == theirs[::-1]
    assert ids(listing(server, key)) == own
    assert ok(server.get(f"/api/conversations/{theirs[0]}", key, params={"user_id": "discord-7"}))["title"] == "topic 0"


def test_users_create_list_get_delete(server):
    """An admin creates a user (201 with its key), sees it listed, reads it and deletes it."""
    made = server.create_user(ADMIN_KEY, "Carol", role="user", plus="yes", user_id="carol.c@x")
    assert made["user_id"] == "carol.c@x" and made["username"] == "Carol"
    assert made["role"] == "user" and made["plus"] is True and made["created_by"] == "admin"
    assert isinstance(made["api_key"], str) and len(made["api_key"]) >= 20
    listed = ok(server.get("/api/users", ADMIN_KEY))["users"]
    assert "carol.c@x" in [u["user_id"] for u in listed]
    assert all("api_key" not in u and "key_hash" not in u for u in listed)
    assert ok(server.get("/api/users/carol.c@x", ADMIN_KEY))["username"] == "Carol"
    assert ok(server.get("/api/me", made["api_key"]))["user_id"] == "carol.c@x"
    assert ok(server.call("DELETE", "/api/users/carol.c@x", ADMIN_KEY))["status"] == "success"
    assert_not_found(server.get("/api/users/carol.c@x", ADMIN_KEY))
    assert server.get("/api/me", made["api_key"]).status_code == 401


def test_client_creates_and_lists_only_its_users(server, client_role):
    """A client's users list holds only the users it made."""
    made = server.create_user(client_role["api_key"], "Hal")
    other = fresh(server)
    listed = [u["user_id"] for u in ok(server.get("/api/users", client_role["api_key"]))["users"]]
    assert made["user_id"] in listed and other["user_id"] not in listed
    assert made["created_by"] == client_role["user_id"]


@pytest.mark.parametrize("rotator", ["admin", "self"])
def test_rotating_a_key_retires_the_old_one(server, alice, rotator):
    """POST /api/users/<id>/key answers a new key that works while the old one stops working."""
    key = ADMIN_KEY if rotator == "admin" else alice["api_key"]
    body = ok(server.post(f"/api/users/{alice['user_id']}/key", key))
    assert body["user_id"] == alice["user_id"] and body["api_key"] != alice["api_key"]
    assert ok(server.get("/api/me", body["api_key"]))["user_id"] == alice["user_id"]
    assert server.get("/api/me", alice["api_key"]).status_code == 401


@pytest.mark.parametrize("role", ["admin", "client", "user"])
def test_me_describes_the_caller(server, role):
    """/api/me answers the caller's id, name and role and never its key."""
    person = fresh(server, role)
    body = ok(server.get("/api/me", params={"user": person["api_key"]}))
    assert (body["user_id"], body["username"], body["role"]) == (person["user_id"], person["username"], role)
    assert "api_key" not in body and "key_hash" not in body


def test_recall_lists_ids_with_titles(server, alice):
    """/api/recall without an id answers {conversation_id: {"title": ...}} for every conversation."""
    started = start(server, alice["api_key"], 2)
    body = ok(server.get("/api/recall", params={"user": alice["api_key"]}))
    assert body == {started[0]: {"title": "topic 0"}, started[1]: {"title": "topic 1"}}


def test_recall_one_conversation_keys_messages_by_id(server, alice):
    """/api/recall with an id answers the title and its messages as {msg_id: {prompt, reply}}, oldest first."""
    first = server.chat(alice["api_key"], "one")
    second = server.chat(alice["api_key"], "two", conversation_id=first["conversation_id"])
    body = ok(server.post("/api/recall", alice["api_key"], data={"conversation_id": first["conversation_id"]}))
    assert body["conversation_id"] == first["conversation_id"]
    assert body["conversation_title"] == first["conversation_title"]
    assert [list(m) for m in body["messages"]] == [[first["message_id"]], [second["message_id"]]]
    assert body["messages"][1][second["message_id"]]["prompt"] == "two"
    assert body["messages"][0][first["message_id"]]["reply"] == first["reply"]


@pytest.mark.parametrize(("method", "how"), [("GET", "params"), ("POST", "json"), ("POST", "data")])
def test_remove_conversation(server, alice, method, how):
    """/api/remove-conversation deletes the named conversation (key in the `user` parameter)."""
    gone, keep = start(server, alice["api_key"], 2)
    fields = {"user": alice["api_key"], "conversation_id": gone}
    assert ok(server.call(method, "/api/remove-conversation", **{how: fields}))["status"] == "success"
    assert ids(listing(server, alice["api_key"])) == [keep]


def test_add_user_admin_makes_client_which_makes_user(server):
    """The original add-user: admin makes a client, the client makes a user, and that key chats."""
    made = server.post("/api/client/add-user", json={"admin": ADMIN_KEY, "userid": "bot-9", "is_client": "true"})
    assert made.status_code == 201, made.text
    client = made.json()
    assert client["status"] == "success" and isinstance(client["message"], str)
    assert ok(server.get("/api/me", client["api_key"]))["role"] == "client"

    made = server.get(
        "/api/client/add-user",
        params={"client": client["api_key"], "userid": "discord-55", "username": "Ivy", "plus": "false"},
    )
    assert made.status_code == 201, made.text
    person = made.json()
    assert person["status"] == "success"
    me = ok(server.get("/api/me", person["api_key"]))
    assert (me["username"], me["role"], me["created_by"]) == ("Ivy", "user", "bot-9")

    answer = server.chat(person["api_key"], "hello from Ivy")
    assert answer["api_client_id"] == "self"
    assert ids(listing(server, client["api_key"], user_id="discord-55")) == [answer["conversation_id"]]


def test_custom_route_paths(make_server, admin):
    """Paths from settings move the routes; the default paths then answer 404."""
    routes = {"chat": "/ask", "conversations": "/talks", "conversation": "/talks/<conversation_id>", "me": "/whoami"}
    custom = make_server(routes=routes)
    answer = ok(custom.post("/ask", admin, json={"prompt": "hi"}))
    assert ids(ok(custom.get("/talks", admin))["conversations"]) == [answer["conversation_id"]]
    assert ok(custom.get(f"/talks/{answer['conversation_id']}", admin))["message_count"] == 1
    assert ok(custom.get("/whoami", admin))["user_id"] == "admin"
    for path in ("/api/chat", "/api/conversations", "/api/me"):
        response = custom.post(path, admin, json={"prompt": "hi"})
        assert response.status_code == 404, path
        assert response.json()["status"] == "error"
    assert ok(custom.get("/api/users", admin))["users"]  # routes not named keep their default path


@pytest.mark.parametrize(
    ("method", "path", "status"), [("POST", "/ask", 401), ("PUT", "/ask", 405), ("GET", "/talks/nope", 404)]
)
def test_custom_route_errors_are_json(make_server, method, path, status):
    """Errors on a custom path are the same JSON errors as on /api paths."""
    custom = make_server(routes={"chat": "/ask", "conversations": "/talks", "conversation": "/talks/<conversation_id>"})
    key = ADMIN_KEY if status == 404 else None
    response = custom.call(method, path, key, json={"prompt": "hi"})
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.text[:200]
    assert response.json()["status"] == "error"
