"""Roles over HTTP: who may create, list, delete and re-key whom, read whose conversations, speak for whom."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from conftest import ADMIN_KEY

# Who acts: "admin", "client" (no plus), "plus_client", "user" (made by an admin), all fresh for each test.
# Extra targets: "clients_user" (made by client), "plus_clients_user" (made by plus_client), "admin2".


@pytest.fixture
def live(shared_server):
    """The module's one live server (each test gets its own fresh people on it)."""
    return shared_server


@pytest.fixture
def cast(live) -> dict:
    """Everyone the matrix needs, each as {'user_id', 'api_key', 'username', 'role', 'plus', ...}."""
    tag = uuid.uuid4().hex[:8]
    people = {
        "admin": live.create_user(ADMIN_KEY, f"admin-{tag}", role="admin"),
        "admin2": live.create_user(ADMIN_KEY, f"admin2-{tag}", role="admin"),
        "client": live.create_user(ADMIN_KEY, f"bot-{tag}", role="client"),
        "plus_client": live.create_user(ADMIN_KEY, f"plus-bot-{tag}", role="client", plus=True),
        "user": live.create_user(ADMIN_KEY, f"alice-{tag}"),
    }
    people["clients_user"] = live.create_user(people["client"]["api_key"], f"carol-{tag}")
    people["plus_clients_user"] = live.create_user(people["plus_client"]["api_key"], f"dave-{tag}")
    return people


def key_works(live, key: str) -> bool:
    """True when /api/me accepts key, False on 401."""
    status = live.get("/api/me", key).status_code
    assert status in (200, 401)
    return status == 200


def listed_names(live, key: str) -> list[str]:
    """The sorted usernames GET /api/users answers to key (every page: a shared server holds many)."""
    response = live.get("/api/users", key, params={"limit": 1000})
    assert response.status_code == 200, response.text
    assert response.json()["total"] == len(response.json()["users"])
    return sorted(u["username"] for u in response.json()["users"])


CREATE = [
    ("admin", "admin", False, 201),
    ("admin", "client", False, 201),
    ("admin", "client", True, 201),
    ("admin", "user", False, 201),
    ("admin", "user", True, 201),
    ("client", "user", False, 201),
    ("client", "user", True, 403),
    ("client", "client", False, 403),
    ("client", "admin", False, 403),
    ("plus_client", "user", True, 201),
    ("plus_client", "user", False, 201),
    ("plus_client", "client", False, 403),
    ("plus_client", "admin", False, 403),
    ("user", "user", False, 403),
    ("user", "client", False, 403),
    ("user", "admin", False, 403),
]


@pytest.mark.parametrize(("actor", "role", "plus", "status"), CREATE)
def test_who_may_create_whom(live, cast, actor, role, plus, status):
    """Admins create anyone; clients only users (plus only when plus themselves); users nobody."""
    name = f"newbie-{uuid.uuid4().hex[:8]}"
    response = live.post("/api/users", cast[actor]["api_key"], json={"username": name, "role": role, "plus": plus})
    assert response.status_code == status, response.text
    if status == 201:
        body = response.json()
        assert (body["role"], body["plus"], body["created_by"]) == (role, plus, cast[actor]["user_id"])
        me = live.get("/api/me", body["api_key"]).json()
        assert (me["user_id"], me["role"], me["plus"]) == (body["user_id"], role, plus)
    else:
        assert name not in listed_names(live, ADMIN_KEY)


def test_admin_lists_everyone(live, cast):
    """An admin's list holds every user, whoever made them, the first admin included."""
    names = set(listed_names(live, cast["admin"]["api_key"]))
    assert {"admin", *(person["username"] for person in cast.values())} <= names


def test_clients_list_only_their_own_users(live, cast):
    """Each client lists exactly the users it made; a user may not list."""
    live.create_user(cast["client"]["api_key"], "erin", user_id="ext-erin")
    live.create_user(cast["plus_client"]["api_key"], "frank", plus=True)
    assert listed_names(live, cast["client"]["api_key"]) == sorted([cast["clients_user"]["username"], "erin"])
    assert listed_names(live, cast["plus_client"]["api_key"]) == sorted(
        [cast["plus_clients_user"]["username"], "frank"]
    )
    assert live.get("/api/users", cast["user"]["api_key"]).status_code == 403


DELETE = [
    ("admin", "user", 200),
    ("admin", "client", 200),
    ("admin", "clients_user", 200),
    ("admin", "admin2", 200),
    ("admin2", "admin", 200),
    ("client", "clients_user", 200),
    ("plus_client", "plus_clients_user", 200),
    ("client", "plus_clients_user", 404),
    ("plus_client", "clients_user", 404),
    ("client", "user", 404),
    ("client", "admin", 404),
    ("client", "plus_client", 404),
    ("user", "user", 403),
    ("user", "clients_user", 403),
    ("user", "admin", 403),
]


@pytest.mark.parametrize(("actor", "target", "status"), DELETE)
def test_who_may_delete_whom(live, cast, actor, target, status):
    """Admins delete anyone, clients only their own (others' are not even found), users nobody."""
    victim = cast[target]
    response = live.call("DELETE", f"/api/users/{victim['user_id']}", cast[actor]["api_key"])
    assert response.status_code == status, response.text
    assert key_works(live, victim["api_key"]) is (status != 200)
    exists = live.get(f"/api/users/{victim['user_id']}", ADMIN_KEY)
    assert exists.status_code == (404 if status == 200 else 200)


def test_the_last_admin_cannot_be_deleted(server, admin):
    """While another admin exists an admin can go; the last one never can."""
    second = server.create_user(admin, "second-admin", role="admin")
    assert server.call("DELETE", "/api/users/admin", second["api_key"]).status_code == 200
    last = server.call("DELETE", f"/api/users/{second['user_id']}", second["api_key"])
    assert last.status_code == 409, last.text
    assert key_works(server, second["api_key"])
    assert [u["role"] for u in server.get("/api/users", second["api_key"]).json()["users"]] == ["admin"]


def test_a_lone_admin_cannot_delete_itself(server, admin):
    """With a single admin, deleting it is a 409 and the admin keeps working."""
    response = server.call("DELETE", "/api/users/admin", admin)
    assert response.status_code == 409, response.text
    assert key_works(server, admin)


ROTATE = [
    ("admin", "user", 200),
    ("admin", "client", 200),
    ("admin", "plus_clients_user", 200),
    ("admin", "admin", 200),
    ("client", "clients_user", 200),
    ("plus_client", "plus_clients_user", 200),
    ("client", "plus_clients_user", 404),
    ("client", "user", 404),
    ("client", "client", 404),
    ("user", "user", 200),
    ("user", "clients_user", 403),
    ("user", "admin", 403),
    ("clients_user", "clients_user", 200),
    ("clients_user", "client", 403),
]


@pytest.mark.parametrize(("actor", "target", "status"), ROTATE)
def test_who_may_rotate_whose_key(live, cast, actor, target, status):
    """After a rotation the old key is refused and the new one works; a refused rotation changes nothing."""
    victim = cast[target]
    response = live.post(f"/api/users/{victim['user_id']}/key", cast[actor]["api_key"])
    assert response.status_code == status, response.text
    if status == 200:
        new_key = response.json()["api_key"]
        assert new_key != victim["api_key"]
        assert not key_works(live, victim["api_key"])
        assert live.get("/api/me", new_key).json()["user_id"] == victim["user_id"]
    else:
        assert key_works(live, victim["api_key"])


def test_client_rotates_its_user_by_its_own_id(live, cast):
    """A client may name its user by the id it gave that user."""
    made = live.create_user(cast["client"]["api_key"], "gina", user_id="discord-77")
    response = live.post("/api/users/discord-77/key", cast["client"]["api_key"])
    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == made["user_id"]
    assert not key_works(live, made["api_key"])
    assert key_works(live, response.json()["api_key"])


def test_admin_reads_anyones_conversations(live, cast):
    """An admin lists and reads any user's conversations."""
    conv = live.chat(cast["user"]["api_key"], "private thoughts")["conversation_id"]
    admin = cast["admin"]["api_key"]
    listed = live.get("/api/conversations", admin, params={"user_id": cast["user"]["user_id"]})
    assert listed.status_code == 200, listed.text
    assert [c["conversation_id"] for c in listed.json()["conversations"]] == [conv]
    for params in ({}, {"user_id": cast["user"]["user_id"]}):
        read = live.get(f"/api/conversations/{conv}", admin, params=params)
        assert read.status_code == 200, read.text
        assert read.json()["messages"][0]["prompt"] == "private thoughts"


@pytest.mark.parametrize("with_user_id", [False, True])
@pytest.mark.parametrize(
    ("method", "body"),
    [("PATCH", {"title": "hijacked"}), ("DELETE", {}), ("POST", {"_method": "DELETE"}), ("POST", {"title": "x"})],
)
def test_admin_cannot_change_others_conversations(live, cast, method, body, with_user_id):
    """An admin may not rename or delete someone else's conversation, nor chat in it."""
    alice = cast["user"]
    conv = live.chat(alice["api_key"], "keep me")["conversation_id"]
    if with_user_id:
        body = {**body, "user_id": alice["user_id"]}
    response = live.call(method, f"/api/conversations/{conv}", cast["admin"]["api_key"], json=body)
    assert response.status_code == 403, response.text
    still = live.get(f"/api/conversations/{conv}", alice["api_key"])
    assert still.status_code == 200 and still.json()["title"] == "keep me"
    follow_up = {"prompt": "as alice", "conversation_id": conv, "user_id": alice["user_id"]}
    assert live.post("/api/chat", cast["admin"]["api_key"], json=follow_up).status_code == 403


@pytest.mark.parametrize(
    ("actor", "user_id_plus", "status"),
    [("client", False, 200), ("client", True, 403), ("plus_client", True, 200), ("plus_client", False, 200)],
)
def test_client_speaks_for_its_user(live, cast, actor, user_id_plus, status):
    """A client's user_id creates that user on first chat and reuses it after; api_client_id is the client."""
    client = cast[actor]
    ask = {"prompt": "hello", "user_id": "discord-42", "username": "Bob", "user_id_plus": user_id_plus}
    first = live.post("/api/chat", client["api_key"], json=ask)
    assert first.status_code == status, first.text
    if status != 200:
        assert "Bob" not in listed_names(live, client["api_key"])
        return
    body = first.json()
    assert body["api_client_id"] == client["user_id"]
    assert body["api_username"] == "Bob"
    assert body["api_user"] not in (client["user_id"], "discord-42")
    again = live.chat(client["api_key"], "again", user_id="discord-42", conversation_id=body["conversation_id"])
    assert (again["api_user"], again["api_client_id"]) == (body["api_user"], client["user_id"])
    mine = [u for u in live.get("/api/users", client["api_key"]).json()["users"] if u["username"] == "Bob"]
    assert [(u["user_id"], u["external_id"], u["plus"]) for u in mine] == [
        (body["api_user"], "discord-42", user_id_plus)
    ]
    made = live.get(f"/api/users/{body['api_user']}", cast["admin"]["api_key"]).json()
    assert made["created_by"] == client["user_id"]


def test_clients_cannot_read_each_others_users_conversations(live, cast):
    """Another client's user's conversations are not found, whichever id is used; the owner client reads them."""
    owner, other = cast["client"]["api_key"], cast["plus_client"]["api_key"]
    answer = live.chat(owner, "for bob only", user_id="discord-42", username="Bob")
    conv, bob = answer["conversation_id"], answer["api_user"]
    for params in ({}, {"user_id": "discord-42"}, {"user_id": bob}):
        assert live.get(f"/api/conversations/{conv}", other, params=params).status_code == 404, params
    for user_id in ("discord-42", bob):
        assert live.get("/api/conversations", other, params={"user_id": user_id}).status_code == 404
    own = live.get("/api/conversations", owner, params={"user_id": "discord-42"}).json()["conversations"]
    assert [c["conversation_id"] for c in own] == [conv]
    theirs = live.chat(other, "who am i", user_id="discord-42")
    assert theirs["api_user"] != bob
    listed = live.get("/api/conversations", other, params={"user_id": "discord-42"}).json()["conversations"]
    assert [c["conversation_id"] for c in listed] == [theirs["conversation_id"]]


@pytest.mark.parametrize("path", ["/api/chat", "/api/conversations", "/api/users/{other}"])
def test_user_passing_another_users_id_is_forbidden(live, cast, path):
    """A user may name only itself in user_id."""
    alice, other = cast["user"], cast["clients_user"]["user_id"]
    params = {"prompt": "hi", "user_id": other}
    response = live.get(path.format(other=other), alice["api_key"], params=params)
    assert response.status_code == 403, response.text
    params["user_id"] = alice["user_id"]
    assert live.get(path.format(other=alice["user_id"]), alice["api_key"], params=params).status_code == 200


def test_user_listings_never_reveal_keys(live, cast):
    """No user listing or view carries a key or a key hash."""
    keys = [p["api_key"] for p in cast.values()]
    secrets = keys + [hashlib.sha256(k.encode()).hexdigest() for k in keys]
    responses = [
        live.get("/api/users", cast["admin"]["api_key"]),
        live.get("/api/users", cast["client"]["api_key"]),
        live.get(f"/api/users/{cast['user']['user_id']}", cast["admin"]["api_key"]),
        live.get(f"/api/users/{cast['clients_user']['user_id']}", cast["client"]["api_key"]),
        *(live.get("/api/me", key) for key in keys),
    ]
    for response in responses:
        assert response.status_code == 200, response.text
        assert "key_hash" not in response.text and "api_key" not in response.text
        assert not [s for s in secrets if s in response.text]


@pytest.mark.parametrize("who", ["admin", "client", "plus_client", "user", "clients_user"])
def test_me_answers_the_caller(live, cast, who):
    """/api/me gives the caller's own user_id, username, role and plus."""
    person = cast[who]
    me = live.get("/api/me", person["api_key"])
    assert me.status_code == 200, me.text
    expected = {k: person[k] for k in ("user_id", "username", "role", "plus")}
    assert {k: me.json()[k] for k in expected} == expected
