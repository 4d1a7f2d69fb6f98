"""users_store "sql": users in the database (SQLite and PostgreSQL), with the same rules as users.json;
instances sharing the database share users and browser sessions; users move between the two stores with
their key hashes (users export / import)."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import ADMIN_KEY, settings_for
from sqlalchemy import create_engine, text

from app import create_app
from app.errors import Conflict
from app.store.conversations import SqlConversationStore
from app.store.users_json import JsonUserStore, dump_users, load_users
from app.store.users_sql import SqlUserStore


def sql_users(server) -> dict:
    """The rows of the users table, by id."""
    engine = create_engine(server.app.config["SETTINGS"]["database_url"])
    try:
        with engine.connect() as db:
            return {row.user_id: row for row in db.execute(text("SELECT * FROM users"))}
    finally:
        engine.dispose()


@pytest.fixture
def sql_server(make_server, database):
    return make_server(users_store="sql", **database)


def test_users_live_in_the_database_with_the_same_rules(sql_server, admin, tmp_path):
    """The first admin, a user and a client's users are rows of the users table (keys as their SHA-256, no
    users.json); keys work, rotate, and a deleted client takes its users along; the last admin stays."""
    server = sql_server
    assert not (tmp_path / "users.json").exists()
    alice = server.create_user(admin, "alice", plus=True)
    rows = sql_users(server)
    assert set(rows) == {"admin", alice["user_id"]}
    assert rows[alice["user_id"]].key_hash == hashlib.sha256(alice["api_key"].encode()).hexdigest()
    assert alice["api_key"] not in str(dict(rows[alice["user_id"]]._mapping))
    assert server.chat(alice["api_key"], "hello")["reply"]
    rotated = server.post(f"/api/users/{alice['user_id']}/key", admin).json()["api_key"]
    assert server.get("/api/me", alice["api_key"]).status_code == 401
    assert server.get("/api/me", rotated).json()["username"] == "alice"
    patched = server.call("PATCH", f"/api/users/{alice['user_id']}", admin, json={"limits": {"requests_per_day": 5}})
    assert patched.status_code == 200 and sql_users(server)[alice["user_id"]].limits == '{"requests_per_day": 5}'
    bot = server.create_user(admin, "bot", role="client")
    spoken = server.chat(bot["api_key"], "for my user", user_id="discord-42", username="Dee")
    assert spoken["reply"]
    mine = server.get("/api/users", bot["api_key"]).json()["users"]
    assert [(u["external_id"], u["username"]) for u in mine] == [("discord-42", "Dee")]
    taken = server.post("/api/users", bot["api_key"], json={"username": "dup", "user_id": "discord-42"})
    assert taken.status_code == 409, taken.text
    gone = server.call("DELETE", f"/api/users/{bot['user_id']}", admin)
    assert gone.status_code == 200 and len(gone.json()["deleted_users"]) == 1
    assert set(sql_users(server)) == {"admin", alice["user_id"]}
    demote = server.call("PATCH", "/api/users/admin", admin, json={"role": "user"})
    assert demote.status_code in (400, 403, 409) and "admin" in demote.text


def test_a_clients_user_cap_holds_under_concurrent_creation(make_server, database, admin):
    """max_users_per_client 5, 12 creations at once through the client: exactly 5 succeed."""
    server = make_server(users_store="sql", max_users_per_client=5, **database)
    bot = server.create_user(admin, "bot", role="client")

    def make(n: int) -> int:
        body = {"username": f"u{n}", "user_id": f"ext-{n}"}
        return requests.post(
            server.url + "/api/users", json=body, headers={"Authorization": f"Bearer {bot['api_key']}"}, timeout=30
        ).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = sorted(pool.map(make, range(12)))
    assert statuses.count(201) == 5 and set(statuses) <= {201, 403, 503}, statuses
    assert len([u for u in sql_users(server).values() if u.created_by == bot["user_id"]]) == 5


def test_instances_on_one_database_share_users_and_browser_sessions(tmp_path, database):
    """Two instances (same settings, same database, same app_secret): a user made on one works on the other,
    a browser session made on one is valid on the other, a rotated key stops on both at once."""
    overrides = {"users_store": "sql", **database}
    (tmp_path / "a").mkdir()
    settings = settings_for(tmp_path / "a", None, **overrides)
    settings["app_secret"] = "shared-secret-0123456789"
    from conftest import LiveServer

    one = LiveServer(create_app(settings, base_dir=tmp_path / "a", admin_key=ADMIN_KEY)).start()
    two = LiveServer(create_app(dict(settings), base_dir=tmp_path / "a", admin_key=ADMIN_KEY)).start()
    try:
        made = one.create_user(ADMIN_KEY, "roamer")
        assert two.get("/api/me", made["api_key"]).json()["username"] == "roamer"
        browser = requests.Session()
        browser.trust_env = False
        login = browser.get(one.url + "/login", timeout=30)
        token = login.text.split('name="csrf_token" value="')[1].split('"')[0]
        landed = browser.post(
            one.url + "/login", data={"api_key": made["api_key"], "csrf_token": token}, allow_redirects=False
        )
        assert landed.status_code == 303, landed.text
        page = browser.get(two.url + "/conversations", allow_redirects=False, timeout=30)
        assert page.status_code == 200 and "roamer" in page.text
        two.post(f"/api/users/{made['user_id']}/key", ADMIN_KEY)
        assert one.get("/api/me", made["api_key"]).status_code == 401
        assert browser.get(one.url + "/conversations", allow_redirects=False, timeout=30).status_code == 303
    finally:
        one.stop()
        two.stop()


def test_users_move_between_the_stores_with_their_key_hashes(tmp_path, make_server, admin):
    """users.json -> export -> import into SQL: everyone arrives with the same fields and key hash, so every
    key works on a server using the SQL store; importing again is refused and adds nobody."""
    source = make_server()
    alice = source.create_user(admin, "alice", plus=True)
    bot = source.create_user(admin, "bot", role="client")
    source.chat(bot["api_key"], "hi", user_id="ext-1", username="Ext")
    source.call("PATCH", f"/api/users/{alice['user_id']}", admin, json={"limits": {"tokens_per_day": 9}})
    exported = dump_users(source.services.users.store.list())
    before = sorted(source.services.users.store.list(), key=lambda u: u.user_id)

    store = SqlConversationStore(f"sqlite:///{tmp_path / 'target.db'}")
    target = SqlUserStore(store)
    assert target.put_all(load_users(exported)) == 4
    assert sorted(target.list(), key=lambda u: u.user_id) == before
    with pytest.raises(Conflict):
        target.put_all(load_users(exported))
    assert target.count() == 4
    store.close()

    server = make_server(users_store="sql", database_url=f"sqlite:///{tmp_path / 'target.db'}")
    assert server.get("/api/me", alice["api_key"]).json()["limits"] == {"tokens_per_day": 9}
    assert server.get("/api/me", bot["api_key"]).json()["role"] == "client"

    back = JsonUserStore(tmp_path / "back" / "users.json")
    assert back.put_all(load_users(dump_users(target.list()))) == 4
    assert sorted(back.list(), key=lambda u: u.user_id) == before


def test_a_bad_users_file_is_refused_by_name():
    with pytest.raises(ValueError, match="not JSON"):
        load_users("{nope")
    with pytest.raises(ValueError, match="users"):
        load_users('{"version": 1}')
    with pytest.raises(ValueError, match="'x'"):
        load_users('{"users": {"x": {"username": "a"}}}')
