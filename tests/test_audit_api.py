"""The audit log over real HTTP: an entry for every change made through the API (users, keys, limits,
accounts), for settings.json edited by hand and for the pool's own account state changes; who, what, whom
and from where; filters and paging; admins only, append-only, and never a secret."""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import ExitStack
from datetime import UTC, datetime

import pytest
from fakes import FakeOpenAI
from upstream_fixtures import FAST, openai_account

ACCOUNT_KEY = "sk-audit-account-secret-4242424242"
NEW_ACCOUNT_KEY = "sk-audit-replacement-secret-5353535353"
PROXY_PASSWORD = "proxy-password-audit-9191"
FIELDS = {"id", "at", "actor", "actor_role", "action", "target", "detail", "address"}
HEALTH = {"rate_limit_cooldown": 30, "rate_limit_max": 3600, "backoff_start": 30, "backoff_max": 600}


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def fakes():
    with ExitStack() as stack:
        yield lambda n: [stack.enter_context(FakeOpenAI()) for _ in range(n)]


@pytest.fixture
def server(make_server, database):
    """A demo server, on SQLite and on PostgreSQL (tests/pg.py)."""
    return make_server(**database)


def audit(server, key, **params) -> dict:
    response = server.get("/api/audit", key, params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert all(set(e) == FIELDS for e in body["entries"]), body["entries"]
    return body


def entries(server, key, **params) -> list[dict]:
    return audit(server, key, **params)["entries"]


def actions(server, key, **params) -> list[str]:
    """The actions of the matching entries, oldest first."""
    return [e["action"] for e in reversed(entries(server, key, **params))]


def only(server, key, action: str, **params) -> dict:
    found = entries(server, key, action=action, **params)
    assert len(found) == 1, (action, found)
    return found[0]


def moment() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def assert_by(entry: dict, actor: str | None, role: str | None, target: str | None) -> None:
    assert (entry["actor"], entry["actor_role"], entry["target"]) == (actor, role, target), entry
    assert entry["address"] == ("127.0.0.1" if actor else None), entry
    assert entry["at"].endswith("Z")
    assert abs(datetime.fromisoformat(entry["at"].replace("Z", "+00:00")).timestamp() - time.time()) < 60


def patch_user(server, key, target: str, **changes):
    return server.call("PATCH", f"/api/users/{target}", key, json=changes)


def ok(response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json()


# -- users -------------------------------------------------------------------------------------


def test_every_user_change_is_recorded_with_who_what_whom_and_where(server, admin):
    bot = server.create_user(admin, "bot", role="client", plus=True)
    carol = server.create_user(bot["api_key"], "carol", user_id="c-1")
    spoken = server.chat(bot["api_key"], "hi", user_id="d-1")  # speaking for a new id creates that user
    dave = spoken["api_user"]
    ok(server.call("PATCH", f"/api/users/{carol['user_id']}", bot["api_key"], json={"username": "Carol", "plus": True}))
    ok(server.call("PATCH", f"/api/users/{carol['user_id']}", admin, json={"limits": {"requests_per_day": 5}}))
    ok(server.call("PATCH", f"/api/users/{carol['user_id']}", bot["api_key"], json={"limits": {}}))
    ok(server.post(f"/api/users/{carol['user_id']}/key", bot["api_key"]))
    ok(server.post(f"/api/users/{bot['user_id']}/key", admin))
    assert server.get("/api/users", admin).json()["total"] == 4  # admin, bot, carol, dave
    ok(server.call("DELETE", f"/api/users/{bot['user_id']}", admin))

    assert actions(server, admin) == [
        "user.create",  # the bot, by the admin
        "user.create",  # carol, by the bot
        "user.create",  # dave, by the bot speaking for d-1
        "user.update",
        "user.limits",
        "user.limits",
        "user.key_rotated",
        "user.key_rotated",
        "user.delete",
    ]
    made = list(reversed(entries(server, admin, action="user.create")))
    assert_by(made[0], "admin", "admin", bot["user_id"])
    assert made[0]["detail"] == {"username": "bot", "role": "client", "plus": True, "external_id": None}
    assert_by(made[1], bot["user_id"], "client", carol["user_id"])
    assert made[1]["detail"] == {"username": "carol", "role": "user", "plus": False, "external_id": "c-1"}
    assert_by(made[2], bot["user_id"], "client", dave)
    assert made[2]["detail"]["external_id"] == "d-1"
    update = only(server, admin, "user.update")
    assert_by(update, bot["user_id"], "client", carol["user_id"])
    assert update["detail"] == {"changes": {"username": ["carol", "Carol"], "plus": [False, True]}}
    limits = list(reversed(entries(server, admin, action="user.limits")))
    assert_by(limits[0], "admin", "admin", carol["user_id"])
    assert limits[0]["detail"] == {"before": {}, "after": {"requests_per_day": 5}}
    assert_by(limits[1], bot["user_id"], "client", carol["user_id"])
    assert limits[1]["detail"] == {"before": {"requests_per_day": 5}, "after": {}}
    rotated = list(reversed(entries(server, admin, action="user.key_rotated")))
    assert_by(rotated[0], bot["user_id"], "client", carol["user_id"])
    assert_by(rotated[1], "admin", "admin", bot["user_id"])
    deleted = only(server, admin, "user.delete")
    assert_by(deleted, "admin", "admin", bot["user_id"])
    assert sorted(deleted["detail"]["with_users"]) == sorted([carol["user_id"], dave])


def test_a_change_that_changes_nothing_or_is_refused_is_not_recorded(server, admin):
    user = server.create_user(admin, "alice")
    before = audit(server, admin)["total"]
    ok(server.call("PATCH", f"/api/users/{user['user_id']}", admin, json={"username": "alice", "limits": {}}))
    assert patch_user(server, admin, user["user_id"], role="wizard").status_code == 400
    assert patch_user(server, admin, "admin", role="user").status_code == 409
    assert patch_user(server, user["api_key"], user["user_id"], username="x").status_code == 403
    assert server.post("/api/users", user["api_key"], json={"username": "nope"}).status_code == 403
    assert audit(server, admin)["total"] == before


# -- accounts and settings.json ------------------------------------------------------------------------


def test_every_account_change_is_recorded_with_its_secrets_only_named(make_server, admin, fakes):
    a, b = fakes(2)
    server = make_server([openai_account(a, name="oa", api_key=ACCOUNT_KEY)], from_file=True, timeouts=FAST)
    added = {
        "name": "ob",
        "type": "openai",
        "api_key": NEW_ACCOUNT_KEY,
        "base_url": b.url,
        "proxy": f"socks5h://someone:{PROXY_PASSWORD}@127.0.0.1:1080",
    }
    ok(server.post("/api/accounts", admin, json=added), 201)
    ok(server.call("PATCH", "/api/accounts/ob", admin, json={"enabled": False}))
    ok(server.call("PATCH", "/api/accounts/ob", admin, json={"enabled": True}))
    ok(server.call("PATCH", "/api/accounts/ob", admin, json={"model": "gpt-4o", "api_key": ACCOUNT_KEY, "proxy": None}))
    ok(server.call("DELETE", "/api/accounts/ob", admin))
    assert server.call("DELETE", "/api/accounts/ob", admin).status_code == 404  # refused: not recorded

    assert actions(server, admin, action="account.") == [
        "account.add",
        "account.disable",
        "account.enable",
        "account.update",
        "account.remove",
    ]
    for entry in entries(server, admin, action="account."):
        assert_by(entry, "admin", "admin", "ob")
    assert only(server, admin, "account.add")["detail"] == {
        "fields": {"name": "ob", "type": "openai", "api_key": "set", "base_url": b.url, "proxy": "set"}
    }
    assert only(server, admin, "account.disable")["detail"] == {"fields": {"enabled": False}}
    assert only(server, admin, "account.update")["detail"] == {
        "fields": {"model": "gpt-4o", "api_key": "set", "proxy": "removed"}
    }
    assert entries(server, admin, action="settings.reload") == []  # its own changes are not a reload


def test_a_hand_edit_of_settings_json_is_recorded_once_as_a_reload(make_server, admin, fakes):
    (fake,) = fakes(1)
    server = make_server([openai_account(fake, name="oa")], from_file=True, timeouts=FAST)
    ok(server.call("PATCH", "/api/accounts/oa", admin, json={"rpm": 100}))  # through the API: no reload entry
    time.sleep(1.1)
    ok(server.get("/api/health"))
    assert entries(server, admin, action="settings.reload") == []
    path = server.services.accounts.file.path
    raw = json.loads(path.read_text())
    raw["accounts"].append({"name": "by-hand", "type": "openai", "base_url": fake.url})
    path.write_text(json.dumps(raw, indent=2))
    time.sleep(1.1)  # a worker looks at the file at most once a second
    ok(server.get("/api/health"))
    reload = only(server, admin, "settings.reload")
    assert_by(reload, None, None, "settings.json")
    assert reload["detail"] == {"accounts": 2}
    assert [a["name"] for a in ok(server.get("/api/accounts", admin))["accounts"]] == ["oa", "by-hand"]
    time.sleep(1.1)
    ok(server.get("/api/health"))
    assert len(entries(server, admin, action="settings.reload")) == 1  # once per change, not per look


# -- the pool's own state changes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure, action, fault",
    [
        ("500", "account.cooling", "transient"),
        ("429", "account.cooling", "rate_limited"),
        ("401", "account.needs_attention", "credentials"),
    ],
)
def test_an_accounts_state_change_is_recorded_by_the_server(
    make_server, admin, fakes, failure, action, fault, database
):
    (fake,) = fakes(1)
    if failure == "429":
        fake.rate_limit(retry_after="20")
    elif failure == "401":
        fake.require_key = "sk-some-other-key-000000000000"
    else:
        fake.fail_status = 500
    server = make_server(
        [openai_account(fake, name="oa", api_key=ACCOUNT_KEY)], timeouts=FAST, health=HEALTH, **database
    )
    key = server.create_user(admin, "alice")["api_key"]
    assert server.post("/api/chat", key, json={"prompt": "hi"}).status_code in (429, 502, 503)
    entry = only(server, admin, action)
    assert_by(entry, None, None, "oa")
    assert entry["detail"]["fault"] == fault, entry
    assert "oa" in entry["detail"]["error"]
    if action == "account.cooling":
        expected = 20 if failure == "429" else HEALTH["backoff_start"]
        assert abs(entry["detail"]["until"] - time.time() - expected) < 5, entry
    else:
        assert entry["detail"]["until"] is None
    # the account is resting or waiting for an admin: another refused chat is no new state change
    server.post("/api/chat", key, json={"prompt": "again"})
    assert len(entries(server, admin, action="account.")) == 1


# -- reading: filters and paging --------------------------------------------------------------------------


def test_filters_by_actor_target_action_and_time_and_pages(server, admin):
    bot = server.create_user(admin, "bot", role="client")
    made = [server.create_user(bot["api_key"], f"u{i}") for i in range(3)]
    time.sleep(0.02)
    mark = moment()
    time.sleep(0.02)
    for user in made:
        ok(server.call("PATCH", f"/api/users/{user['user_id']}", admin, json={"username": user["username"] + "!"}))
    ok(server.post(f"/api/users/{made[0]['user_id']}/key", bot["api_key"]))
    everything = audit(server, admin)
    assert everything["total"] == 8 and len(everything["entries"]) == 8
    ids = [e["id"] for e in everything["entries"]]
    assert ids == sorted(ids, reverse=True), "newest first"

    assert audit(server, admin, actor=bot["user_id"])["total"] == 4
    assert {e["actor"] for e in entries(server, admin, actor="admin")} == {"admin"}
    assert audit(server, admin, actor="admin")["total"] == 4
    assert actions(server, admin, target=made[0]["user_id"]) == ["user.create", "user.update", "user.key_rotated"]
    assert audit(server, admin, action="user.create")["total"] == 4
    assert audit(server, admin, action="user.")["total"] == 8
    assert audit(server, admin, action="user")["total"] == 0  # exact unless it ends in "."
    assert audit(server, admin, action="account.")["total"] == 0
    assert audit(server, admin, action="user.create", actor=bot["user_id"])["total"] == 3
    assert audit(server, admin, **{"from": mark})["total"] == 4
    assert actions(server, admin, to=mark) == ["user.create"] * 4
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert audit(server, admin, **{"from": today, "to": today})["total"] == 8  # a date "to" takes the whole day
    assert audit(server, admin, to="2020-01-01")["total"] == 0
    assert audit(server, admin, **{"from": "2999-01-01"})["total"] == 0

    pages = [audit(server, admin, limit=3, offset=offset) for offset in (0, 3, 6, 9)]
    assert [len(p["entries"]) for p in pages] == [3, 3, 2, 0]
    assert all(p["total"] == 8 for p in pages)
    assert [(p["offset"], p["limit"]) for p in pages] == [(0, 3), (3, 3), (6, 3), (9, 3)]
    assert [e["id"] for p in pages for e in p["entries"]] == ids
    default = ok(server.get("/api/audit", admin))
    assert (default["offset"], default["limit"], default["total"]) == (0, 50, 8)


@pytest.mark.parametrize(
    "params, param",
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"from": "last tuesday"}, "from"),
        ({"to": "2026-13-01"}, "to"),
    ],
)
def test_bad_audit_parameters_answer_400_naming_them(server, admin, params, param):
    response = server.get("/api/audit", admin, params=params)
    assert response.status_code == 400, response.text
    assert response.json()["param"] == param, response.text


def test_only_admins_read_the_log_and_no_route_changes_it(server, admin):
    client = server.create_user(admin, "bot", role="client")
    user = server.create_user(admin, "alice")
    before = audit(server, admin)
    for key, status in ((client["api_key"], 403), (user["api_key"], 403), (None, 401)):
        response = server.get("/api/audit", key)
        assert response.status_code == status, response.text
        assert "entries" not in response.text
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = server.call(method, "/api/audit", admin, json={"action": "user.create"})
        assert response.status_code == 405, (method, response.text)
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        one = server.call(method, f"/api/audit/{before['entries'][0]['id']}", admin, json={"action": "x"})
        assert one.status_code in (404, 405), (method, one.text)
    assert audit(server, admin) == before


# -- never a secret ---------------------------------------------------------------------------------


def test_no_key_token_or_password_appears_in_any_entry(make_server, admin, fakes):
    a, b = fakes(2)
    a.fail_status, a.fail_message = 500, f"exploded while using {ACCOUNT_KEY}"
    proxy = f"socks5h://someone:{PROXY_PASSWORD}@127.0.0.1:1080"
    server = make_server(
        [openai_account(a, name="oa", api_key=ACCOUNT_KEY)], from_file=True, timeouts=FAST, health=HEALTH
    )
    bot = server.create_user(admin, "bot", role="client")
    user = server.create_user(bot["api_key"], "carol")
    rotated = ok(server.post(f"/api/users/{user['user_id']}/key", bot["api_key"]))["api_key"]
    ok(server.call("PATCH", f"/api/users/{user['user_id']}", admin, json={"username": "carol2", "limits": {}}))
    ok(server.post("/api/accounts", admin, json={"name": "ob", "type": "openai", "base_url": b.url}), 201)
    ok(server.call("PATCH", "/api/accounts/ob", admin, json={"api_key": NEW_ACCOUNT_KEY, "proxy": proxy}))
    ok(server.call("PATCH", "/api/accounts/ob", admin, json={"enabled": False}))
    assert server.post("/api/chat", rotated, json={"prompt": "hi"}).status_code == 502  # oa fails: cooling
    ok(server.call("DELETE", f"/api/users/{bot['user_id']}", admin))
    text = json.dumps(audit(server, admin))
    assert "exploded while using" in only(server, admin, "account.cooling")["detail"]["error"]  # kept, key scrubbed
    assert {"user.create", "user.key_rotated", "account.update", "account.cooling", "user.delete"} <= set(
        actions(server, admin)
    )
    keys = [admin, bot["api_key"], user["api_key"], rotated]
    secrets = [ACCOUNT_KEY, NEW_ACCOUNT_KEY, PROXY_PASSWORD, "someone:", *keys]
    secrets += [hashlib.sha256(k.encode()).hexdigest() for k in keys]
    for secret in secrets:
        assert secret not in text, f"{secret[:12]}... is in the audit log"
