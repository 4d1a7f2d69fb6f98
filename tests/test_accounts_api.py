"""The runtime accounts API over real HTTP: list, get, add, change, remove and test accounts, admins only,
secrets write-only, every change written to settings.json atomically and used at once."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime

import pytest
import requests
from fakes import FakeOpenAI
from upstream_fixtures import FAST, chat_requests, closed_port, openai_account, timed_chat

from app import config

KEY_A = "sk-account-a-secret-0123456789"
KEY_B = "sk-account-b-secret-9876543210"
WEB_TOKEN = "web-access-token-secret-abcdef012345"
WEB_SESSION = "web-session-token-secret-fedcba543210"
PROXY_PASSWORD = "proxy-pass-secret-777"
ENV_KEY = "sk-from-the-environment-secret-555"
HEALTH = {"rate_limit_cooldown": 30, "rate_limit_max": 3600, "backoff_start": 30, "backoff_max": 600}
FIELDS = {
    "name",
    "type",
    "plus",
    "model",
    "base_url",
    "enabled",
    "state",
    "cooling_until",
    "last_error",
    "in_flight",
    "requests",
    "errors",
    "last_used",
    "proxy",
    "max_concurrent",
    "rpm",
    "models",
    "responses",
    "secrets",
}


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def fakes():
    """Return make(n): n running FakeOpenAI servers, all stopped after the test."""
    with ExitStack() as stack:
        yield lambda n: [stack.enter_context(FakeOpenAI()) for _ in range(n)]


def serve(make_server, admin, accounts, **overrides):
    """A live server started from tmp_path/settings.json (so accounts can change) and a plain user's key."""
    overrides.setdefault("timeouts", FAST)
    overrides.setdefault("health", HEALTH)
    server = make_server(accounts, from_file=True, **overrides)
    return server, server.create_user(admin, "alice")["api_key"]


def settings_path(server):
    return server.services.accounts.file.path


def on_file(server) -> dict:
    return json.loads(settings_path(server).read_text())


def names_on_file(server) -> list[str]:
    return [a["name"] for a in on_file(server)["accounts"]]


def listed(server, admin) -> dict[str, dict]:
    response = server.get("/api/accounts", admin)
    assert response.status_code == 200, response.text
    return {a["name"]: a for a in response.json()["accounts"]}


def patch(server, admin, name: str, fields: dict) -> requests.Response:
    return server.call("PATCH", f"/api/accounts/{name}", admin, json=fields)


def add(server, admin, fields: dict) -> requests.Response:
    return server.post("/api/accounts", admin, json=fields)


def used(server, key, n: int) -> Counter:
    """Send n new conversations; count the answering accounts (each must succeed)."""
    answers = [timed_chat(server, key, f"q{i}")[0] for i in range(n)]
    assert [a.status_code for a in answers] == [200] * n, [a.text for a in answers]
    return Counter(a.json()["account"] for a in answers)


def keys_seen(fake) -> Counter:
    return Counter(r["headers"]["authorization"].removeprefix("Bearer ") for r in chat_requests(fake))


def wait_for(predicate, timeout: float, every: float = 0.05):
    """Poll predicate until it returns something true; return (value, seconds taken) or fail."""
    started = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value, time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"not seen within {timeout}s")
        time.sleep(every)


# -- reading -----------------------------------------------------------------------------------


def test_list_and_get_show_each_account_without_its_secrets(make_server, admin, fakes, monkeypatch):
    """Accounts come in settings order with their settings and state; secrets only as set / not set /
    env:NAME, the proxy as scheme, host and port."""
    monkeypatch.setenv("CAS_TEST_ENV_KEY", ENV_KEY)
    (fake,) = fakes(1)
    accounts = [
        openai_account(
            fake,
            name="oa",
            api_key=KEY_A,
            proxy=f"socks5h://proxy-user:{PROXY_PASSWORD}@127.0.0.1:1080",
            max_concurrent=4,
            rpm=60,
        ),
        {
            "name": "web",
            "type": "chatgpt-web",
            "access_token": WEB_TOKEN,
            "session_token": WEB_SESSION,
            "plus": True,
            "model": "gpt-4o",
        },
        {"name": "envy", "type": "openai", "api_key": "env:CAS_TEST_ENV_KEY", "base_url": fake.url},
        {"name": "local", "type": "openai", "base_url": fake.url, "enabled": False},
    ]
    server, _ = serve(make_server, admin, accounts)
    response = server.get("/api/accounts", admin)
    assert response.status_code == 200, response.text
    shown = response.json()["accounts"]
    assert [a["name"] for a in shown] == ["oa", "web", "envy", "local"]
    assert all(set(a) == FIELDS for a in shown), [sorted(a) for a in shown]
    oa, web, envy, local = shown
    assert oa["proxy"] == {"scheme": "socks5h", "host": "127.0.0.1", "port": 1080}
    assert (oa["type"], oa["base_url"], oa["max_concurrent"], oa["rpm"]) == ("openai", fake.url, 4, 60)
    assert (oa["state"], oa["cooling_until"], oa["last_error"], oa["in_flight"]) == ("ok", None, None, 0)
    assert oa["secrets"] == {"api_key": "set"}
    assert (web["plus"], web["model"], web["base_url"]) == (True, "gpt-4o", "https://chatgpt.com/backend-api")
    assert web["secrets"] == {"access_token": "set", "session_token": "set"}
    assert envy["secrets"] == {"api_key": "env:CAS_TEST_ENV_KEY"}
    assert (local["enabled"], local["state"], local["secrets"]) == (False, "disabled", {"api_key": "not set"})
    for name, entry in zip(["oa", "web", "envy", "local"], shown, strict=True):
        one = server.get(f"/api/accounts/{name}", admin)
        assert one.status_code == 200 and one.json() == entry
    for secret in (KEY_A, WEB_TOKEN, WEB_SESSION, PROXY_PASSWORD, "proxy-user", ENV_KEY):
        assert secret not in response.text
    missing = server.get("/api/accounts/nobody", admin)
    assert missing.status_code == 404, missing.text
    assert missing.json()["code"] == "not_found"


def test_listing_shows_live_state_requests_errors_and_in_flight(make_server, admin, fakes):
    """in_flight while a request runs, then requests, errors, last_used, last_error and cooling_until."""
    (fake,) = fakes(1)
    fake.hang = 0.8
    server, key = serve(make_server, admin, [openai_account(fake, name="oa", api_key=KEY_A)])
    running = threading.Thread(target=timed_chat, args=(server, key, "slow"))
    running.start()
    wait_for(lambda: fake.in_flight, 3)
    assert listed(server, admin)["oa"]["in_flight"] == 1
    running.join(5)
    fake.hang = 0
    before = time.time()
    fake.fail_status, fake.fail_message = 500, f"upstream exploded, key {KEY_A}"
    failed = timed_chat(server, key, "fails")[0]
    assert failed.status_code == 502
    oa = listed(server, admin)["oa"]
    assert (oa["in_flight"], oa["requests"], oa["errors"], oa["state"]) == (0, 2, 1, "cooling")
    cooling_until = datetime.fromisoformat(oa["cooling_until"].replace("Z", "+00:00")).timestamp()
    assert before + 28 <= cooling_until <= time.time() + 31
    assert "500" in oa["last_error"]["message"] and "exploded" in oa["last_error"]["message"]
    assert KEY_A not in json.dumps(oa)  # the upstream's echo of the key is scrubbed
    last_used = datetime.fromisoformat(oa["last_used"].replace("Z", "+00:00")).timestamp()
    assert before - 2 <= last_used <= time.time() + 1


# -- who may ---------------------------------------------------------------------------------


def test_account_routes_are_for_admins_only(make_server, admin, fakes):
    """Clients and users get 403 on every account route, callers without a key 401; nothing changes and
    nothing goes upstream."""
    (fake,) = fakes(1)
    server, user_key = serve(make_server, admin, [openai_account(fake, name="oa", api_key=KEY_A)])
    client_key = server.create_user(admin, "bot", role="client")["api_key"]
    before = settings_path(server).read_bytes()
    routes = [
        ("GET", "/api/accounts", None),
        ("GET", "/api/accounts/oa", None),
        ("POST", "/api/accounts", {"name": "new", "type": "openai", "base_url": fake.url}),
        ("PATCH", "/api/accounts/oa", {"enabled": False}),
        ("DELETE", "/api/accounts/oa", None),
        ("POST", "/api/accounts/oa/test", None),
    ]
    for method, path, body in routes:
        for key, status in ((client_key, 403), (user_key, 403), (None, 401), ("cas-no-such-key-000000000000", 401)):
            response = server.call(method, path, key, json=body)
            assert response.status_code == status, (method, path, key, response.text)
            assert KEY_A not in response.text
        by_query = server.call(method, path + f"?user={user_key}", json=body)
        assert by_query.status_code == 403, (method, path, by_query.text)
    assert settings_path(server).read_bytes() == before
    assert fake.requests == []
    assert list(listed(server, admin)) == ["oa"]


def test_the_admin_key_comes_from_the_header_or_the_query_never_from_the_body(make_server, admin, fakes):
    """?user=KEY works like the header; the body's api_key is the new account's key, never the caller's."""
    (fake,) = fakes(1)
    server, key = serve(make_server, admin, [openai_account(fake, name="oa", api_key=KEY_A)])
    no_caller = server.post("/api/accounts", json={"name": "sneaky", "type": "openai", "api_key": admin})
    assert no_caller.status_code == 401, no_caller.text
    made = server.post(
        f"/api/accounts?user={admin}", json={"name": "b", "type": "openai", "api_key": KEY_B, "base_url": fake.url}
    )
    assert made.status_code == 201, made.text
    assert made.json()["status"] == "success" and made.json()["name"] == "b"
    assert server.get(f"/api/accounts/b?user={admin}").status_code == 200
    assert names_on_file(server) == ["oa", "b"]
    assert used(server, key, 4) == {"oa": 2, "b": 2}
    assert keys_seen(fake) == {KEY_A: 2, KEY_B: 2}


# -- adding ----------------------------------------------------------------------------------


def test_an_added_account_is_written_to_the_file_and_used_at_once(make_server, admin, fakes):
    """POST answers 201 with the account as GET shows it; settings.json gets it (mode 0600, every other key
    and every _comment kept), and new conversations use it at once."""
    a, b = fakes(2)
    first = {**openai_account(a, name="a", api_key=KEY_A), "_comment": "the first account"}
    server, key = serve(make_server, admin, [first], _comment="kept by every edit", _notes=["one", "two"])
    before = on_file(server)
    response = add(server, admin, openai_account(b, name="b", api_key=KEY_B, max_concurrent=2, plus=False))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "success"
    assert {k: body[k] for k in ("name", "state", "max_concurrent", "secrets")} == {
        "name": "b",
        "state": "ok",
        "max_concurrent": 2,
        "secrets": {"api_key": "set"},
    }
    assert KEY_B not in response.text
    assert {k: v for k, v in body.items() if k != "status"} == listed(server, admin)["b"]
    after = on_file(server)
    assert stat.S_IMODE(os.stat(settings_path(server)).st_mode) == 0o600
    assert {k: v for k, v in after.items() if k != "accounts"} == {k: v for k, v in before.items() if k != "accounts"}
    assert after["_comment"] == "kept by every edit" and after["_notes"] == ["one", "two"]
    assert after["accounts"][0] == first
    assert after["accounts"][1]["name"] == "b" and after["accounts"][1]["max_concurrent"] == 2
    assert used(server, key, 4) == {"a": 2, "b": 2}
    assert (a.chat_count, b.chat_count) == (2, 2)
    assert keys_seen(b) == {KEY_B: 2}
    leftovers = [p.name for p in settings_path(server).parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_an_env_reference_stays_in_the_file_and_is_shown_by_name(make_server, admin, fakes, monkeypatch):
    """api_key "env:NAME" is written as it is, shown as "env:NAME", and the environment's value is sent."""
    monkeypatch.setenv("CAS_ADDED_KEY", ENV_KEY)
    a, b = fakes(2)
    server, key = serve(make_server, admin, [openai_account(a, name="a", api_key=KEY_A, enabled=False)])
    response = add(server, admin, {"name": "b", "type": "openai", "api_key": "env:CAS_ADDED_KEY", "base_url": b.url})
    assert response.status_code == 201, response.text
    assert response.json()["secrets"] == {"api_key": "env:CAS_ADDED_KEY"}
    assert patch(server, admin, "b", {"model": "gpt-4o"}).status_code == 200
    text = settings_path(server).read_text()
    assert ENV_KEY not in text
    assert on_file(server)["accounts"][1]["api_key"] == "env:CAS_ADDED_KEY"
    assert used(server, key, 2) == {"b": 2}
    assert keys_seen(b) == {ENV_KEY: 2}
    assert chat_requests(b)[-1]["body"]["model"] == "gpt-4o"
    assert ENV_KEY not in server.get("/api/accounts", admin).text


BAD_CHANGES = [
    ("POST", None, {"name": "x", "type": "nope"}, "type"),
    ("POST", None, {"type": "openai"}, "name"),
    ("POST", None, {"name": "team/one", "type": "openai"}, "name"),
    ("POST", None, {"name": "x", "type": "openai", "colour": "red"}, "colour"),
    ("POST", None, {"name": "x", "type": "openai", "plus": "yes"}, "plus"),
    ("POST", None, {"name": "x", "type": "openai", "max_concurrent": 0}, "max_concurrent"),
    ("POST", None, {"name": "x", "type": "openai", "rpm": "ten"}, "rpm"),
    ("POST", None, {"name": "x", "type": "openai", "proxy": f"ftp://u:{PROXY_PASSWORD}@127.0.0.1:21"}, "proxy"),
    ("POST", None, {"name": "x", "type": "openai", "proxy": "socks5://127.0.0.1"}, "proxy"),
    ("POST", None, {"name": "x", "type": "openai", "api_key": "env:CAS_SURELY_NOT_SET_9"}, "api_key"),
    ("POST", None, {"name": "x", "type": "openai", "access_token": WEB_TOKEN}, "access_token"),
    ("POST", None, {"name": "x", "type": "chatgpt-web"}, "access_token"),
    ("POST", None, {"name": "x", "type": "chatgpt-web", "access_token": "t", "auth_base": "ftp://x"}, "auth_base"),
    ("PATCH", "oa", {"proxy": f"socks5://u:{PROXY_PASSWORD}@127.0.0.1"}, "proxy"),
    ("PATCH", "oa", {"max_concurrent": -1}, "max_concurrent"),
    ("PATCH", "oa", {"type": "bogus"}, "type"),
    ("PATCH", "oa", {"enabled": "no"}, "enabled"),
    ("PATCH", "oa", {"name": "renamed"}, "name"),
    ("PATCH", "oa", {"session_token": "s"}, "session_token"),
]


@pytest.mark.parametrize(
    "method, name, fields, param", BAD_CHANGES, ids=[f"{m}-{p}-{i}" for i, (m, _, _, p) in enumerate(BAD_CHANGES)]
)
def test_an_invalid_change_is_400_naming_the_field_and_the_file_is_untouched(
    make_server, admin, fakes, method, name, fields, param
):
    """Each invalid add or change: 400 with param naming the field, no secret echoed, settings.json
    byte-identical (and not even rewritten), and the accounts in use unchanged."""
    (fake,) = fakes(1)
    server, key = serve(make_server, admin, [openai_account(fake, name="oa", api_key=KEY_A)])
    path = settings_path(server)
    before, stamp = path.read_bytes(), os.stat(path)
    response = add(server, admin, fields) if method == "POST" else patch(server, admin, name, fields)
    assert response.status_code == 400, response.text
    body = response.json()
    assert (body["code"], body.get("param")) == ("bad_request", param), body
    assert param in body["message"]
    assert PROXY_PASSWORD not in response.text and WEB_TOKEN not in response.text and KEY_A not in response.text
    assert path.read_bytes() == before
    assert (os.stat(path).st_ino, os.stat(path).st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)
    assert list(listed(server, admin)) == ["oa"] and listed(server, admin)["oa"]["state"] == "ok"
    assert used(server, key, 1) == {"oa": 1}


def test_a_taken_name_is_409_and_an_unknown_one_404(make_server, admin, fakes):
    """Adding a name that exists is 409 (param name); changing, removing or testing a missing one is 404."""
    (fake,) = fakes(1)
    server, _ = serve(make_server, admin, [openai_account(fake, name="oa", api_key=KEY_A)])
    before = settings_path(server).read_bytes()
    taken = add(server, admin, {"name": "oa", "type": "openai", "base_url": fake.url})
    assert taken.status_code == 409, taken.text
    assert (taken.json()["code"], taken.json().get("param")) == ("conflict", "name")
    for method, path in (("PATCH", "/api/accounts/ghost"), ("DELETE", "/api/accounts/ghost")):
        response = server.call(method, path, admin, json={"enabled": False} if method == "PATCH" else None)
        assert response.status_code == 404, response.text
    assert server.post("/api/accounts/ghost/test", admin).status_code == 404
    assert settings_path(server).read_bytes() == before
    assert fake.requests == []


def test_not_json_is_400(make_server, admin, fakes):
    """A body that is not a JSON object is 400, and the file stays as it was."""
    (fake,) = fakes(1)
    server, _ = serve(make_server, admin, [openai_account(fake, name="oa")])
    before = settings_path(server).read_bytes()
    for body in ("not json", "[1, 2]", '"a string"'):
        response = server.post("/api/accounts", admin, data=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (body, response.text)
        response = server.call(
            "PATCH", "/api/accounts/oa", admin, data=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, (body, response.text)
    assert settings_path(server).read_bytes() == before


# -- changing and removing ---------------------------------------------------------------------


def test_disable_enable_and_edits_set_the_state(make_server, admin, fakes):
    """enabled false: disabled, takes nothing, health kept; enabled true clears needs_attention; any other
    edit clears a cooldown; null puts a field back to its default."""
    a, b = fakes(2)
    accounts = [openai_account(a, name="a", api_key=KEY_A), openai_account(b, name="b", api_key=KEY_B)]
    server, key = serve(make_server, admin, accounts)
    a.fail_status = 401
    tested = server.post("/api/accounts/a/test", admin)
    assert tested.json()["ok"] is False and tested.json()["account"]["state"] == "needs_attention"
    assert used(server, key, 3) == {"b": 3}

    off = patch(server, admin, "a", {"enabled": False})
    assert off.status_code == 200, off.text
    assert (off.json()["enabled"], off.json()["state"]) == (False, "disabled")
    assert on_file(server)["accounts"][0]["enabled"] is False
    a.heal()
    assert used(server, key, 2) == {"b": 2}
    assert server.get("/api/health").json()["states"]["disabled"] == 1

    on = patch(server, admin, "a", {"enabled": True})
    assert (on.json()["enabled"], on.json()["state"]) == (True, "ok")
    assert used(server, key, 4) == {"a": 2, "b": 2}

    b.fail_status = 500
    assert server.post("/api/accounts/b/test", admin).json()["account"]["state"] == "cooling"
    b.heal()
    edited = patch(server, admin, "b", {"model": "gpt-4o", "max_concurrent": 5})
    assert edited.status_code == 200, edited.text
    assert (edited.json()["state"], edited.json()["model"], edited.json()["max_concurrent"]) == ("ok", "gpt-4o", 5)
    assert on_file(server)["accounts"][1]["model"] == "gpt-4o"
    assert used(server, key, 4) == {"a": 2, "b": 2}
    assert chat_requests(b)[-1]["body"]["model"] == "gpt-4o"

    back = patch(server, admin, "b", {"model": None, "api_key": None})
    assert back.status_code == 200, back.text
    assert (back.json()["model"], back.json()["secrets"]) == ("gpt-4o-mini", {"api_key": "not set"})
    assert "model" not in on_file(server)["accounts"][1] and "api_key" not in on_file(server)["accounts"][1]


def test_a_new_secret_replaces_the_old_one_at_once(make_server, admin, fakes):
    """PATCH api_key: the next request carries the new key; the answer and the listing never show it."""
    (fake,) = fakes(1)
    server, key = serve(make_server, admin, [openai_account(fake, name="oa", api_key=KEY_A)])
    used(server, key, 1)
    response = patch(server, admin, "oa", {"api_key": KEY_B})
    assert response.status_code == 200, response.text
    assert KEY_B not in response.text and response.json()["secrets"] == {"api_key": "set"}
    used(server, key, 2)
    assert [r["headers"]["authorization"] for r in chat_requests(fake)] == [
        f"Bearer {k}" for k in (KEY_A, KEY_B, KEY_B)
    ]


def test_a_removed_account_is_gone_everywhere(make_server, admin, fakes):
    """DELETE: gone from the list, the file and the pool; added again under its name, it starts fresh."""
    a, b = fakes(2)
    accounts = [openai_account(a, name="a", api_key=KEY_A), openai_account(b, name="b", api_key=KEY_B)]
    server, key = serve(make_server, admin, accounts)
    b.fail_status = 500
    assert server.post("/api/accounts/b/test", admin).json()["account"]["state"] == "cooling"
    removed = server.call("DELETE", "/api/accounts/b", admin)
    assert removed.status_code == 200, removed.text
    assert removed.json() == {"status": "success", "deleted": "b"}
    assert server.get("/api/accounts/b", admin).status_code == 404
    assert list(listed(server, admin)) == ["a"] and names_on_file(server) == ["a"]
    assert used(server, key, 3) == {"a": 3}
    assert server.get("/api/health").json()["states"] == {"ok": 1, "cooling": 0, "needs_attention": 0, "disabled": 0}
    b.heal()
    path = settings_path(server)
    raw = json.loads(path.read_text())
    raw["accounts"].append(openai_account(b, name="b", api_key=KEY_B))
    path.write_text(json.dumps(raw, indent=2))  # back by hand: it starts fresh, its old cooldown forgotten
    wait_for(lambda: "b" in listed(server, admin), 3)
    again = listed(server, admin)["b"]
    assert (again["state"], again["requests"], again["errors"]) == ("ok", 0, 0)
    assert used(server, key, 4) == {"a": 2, "b": 2}
    assert server.call("DELETE", "/api/accounts/b", admin).status_code == 200
    b.fail_status = 500
    assert server.post("/api/accounts/a/test", admin).status_code == 200
    readded = add(server, admin, openai_account(b, name="b", api_key=KEY_B))  # and through the API
    assert readded.status_code == 201, readded.text
    assert (readded.json()["state"], readded.json()["requests"], readded.json()["errors"]) == ("ok", 0, 0)


def test_the_test_route_sends_one_tiny_request_and_updates_health(make_server, admin, fakes):
    """POST .../test: one request with the fixed prompt; ok with the reply, or the error; the state follows
    (a 500 cools, a success clears it, a 401 needs attention); it works on a disabled account too."""
    (fake,) = fakes(1)
    server, _ = serve(make_server, admin, [openai_account(fake, name="oa", api_key=KEY_A)])
    fake.reply_text = "OK"
    good = server.post("/api/accounts/oa/test", admin)
    assert good.status_code == 200, good.text
    body = good.json()
    assert (body["name"], body["ok"], body["reply"]) == ("oa", True, "OK")
    assert isinstance(body["latency_ms"], int | float) and body["latency_ms"] >= 0
    assert body["account"]["name"] == "oa" and body["account"]["state"] == "ok"
    [sent] = chat_requests(fake)
    assert sent["body"]["messages"][-1]["content"] == "Reply with the single word OK."
    assert sent["headers"]["authorization"] == f"Bearer {KEY_A}"

    fake.fail_status = 500
    bad = server.post("/api/accounts/oa/test", admin).json()
    assert bad["ok"] is False and bad["error"]["status"] == 502 and bad["error"]["code"] == "upstream_error"
    assert bad["account"]["state"] == "cooling"
    fake.heal()
    assert server.post("/api/accounts/oa/test", admin).json()["account"]["state"] == "ok"

    assert patch(server, admin, "oa", {"enabled": False}).status_code == 200
    fake.fail_status = 401
    refused = server.post("/api/accounts/oa/test", admin).json()
    assert refused["ok"] is False and "401" in refused["error"]["message"]
    assert KEY_A not in json.dumps(refused)
    assert len(chat_requests(fake)) == 4  # the disabled account was tested too


def test_secrets_never_reach_an_answer_or_the_log(make_server, admin, fakes, caplog):
    """Through adds, edits, tests, failures that echo the key and bad changes, no secret shows in any
    answer or any log line."""
    caplog.set_level(logging.DEBUG)
    a, b = fakes(2)
    a.fail_status, a.fail_message = 500, f"bad key {KEY_A} and {WEB_TOKEN}"
    server, key = serve(make_server, admin, [openai_account(a, name="a", api_key=KEY_A)])
    texts = []
    texts.append(server.post("/api/accounts/a/test", admin).text)
    texts.append(timed_chat(server, key, "hi")[0].text)
    made = add(
        server,
        admin,
        {
            "name": "web",
            "type": "chatgpt-web",
            "access_token": WEB_TOKEN,
            "session_token": WEB_SESSION,
            "base_url": b.url,
            "proxy": f"socks5://user:{PROXY_PASSWORD}@127.0.0.1:{closed_port()}",
        },
    )
    assert made.status_code == 201, made.text
    texts.append(made.text)
    texts.append(patch(server, admin, "web", {"access_token": WEB_TOKEN + "-2"}).text)
    texts.append(patch(server, admin, "web", {"proxy": f"socks5://user:{PROXY_PASSWORD}@127.0.0.1"}).text)
    texts.append(server.post("/api/accounts/web/test", admin).text)  # through a dead proxy
    texts.append(add(server, admin, openai_account(b, name="b", api_key=KEY_B)).text)
    texts.append(server.get("/api/accounts", admin).text)
    texts.append(server.get("/api/accounts/web", admin).text)
    texts.append(server.get("/api/health").text)
    texts.append(server.call("DELETE", "/api/accounts/b", admin).text)
    everything = "\n".join(texts) + "\n" + caplog.text
    assert "bad key" in everything  # the failure was reported, scrubbed
    for secret in (KEY_A, KEY_B, WEB_TOKEN, WEB_SESSION, PROXY_PASSWORD):
        assert secret not in everything, secret
        assert secret[4:20] not in everything, secret  # nor a long piece of one


# -- the file --------------------------------------------------------------------------------


def test_concurrent_edits_from_8_threads_keep_every_addition(make_server, admin, fakes):
    """8 threads adding and editing at once: every answer is a success and the file ends valid, 0600, with
    every addition and every edit, the _comment kept, and no temp file left behind."""
    (fake,) = fakes(1)
    server, key = serve(make_server, admin, [openai_account(fake, name="base")], _comment="keep me")

    def edits(t: int) -> list[int]:
        statuses = []
        with requests.Session() as session:
            session.trust_env = False
            headers = {"Authorization": f"Bearer {admin}"}
            for i in range(3):
                body = openai_account(fake, name=f"t{t}-{i}", api_key=f"sk-thread-{t}-{i}-0123456789")
                statuses.append(session.post(server.url + "/api/accounts", json=body, headers=headers, timeout=30))
            statuses.append(
                session.patch(server.url + f"/api/accounts/t{t}-0", json={"rpm": 100 + t}, headers=headers, timeout=30)
            )
            statuses.append(session.delete(server.url + f"/api/accounts/t{t}-2", headers=headers, timeout=30))
        return [(r.status_code, r.text) for r in statuses]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(edits, range(8)))
    path = settings_path(server)
    raw = json.loads(path.read_text())
    config.validate(raw, path.parent)  # the whole file is still valid settings
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert raw["_comment"] == "keep me"
    expected = {"base"} | {f"t{t}-{i}" for t in range(8) for i in (0, 1)}
    names = [a["name"] for a in raw["accounts"]]
    assert sorted(names) == sorted(expected)
    assert {a["name"]: a.get("rpm") for a in raw["accounts"] if a["name"].endswith("-0")} == {
        f"t{t}-0": 100 + t for t in range(8)
    }
    assert set(listed(server, admin)) == expected
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert sum(used(server, key, 17).values()) == 17
    for answers in results:
        assert [status for status, _ in answers] == [201, 201, 201, 200, 200], answers


def churn(server, admin, seconds: float, read) -> list[str]:
    """Two threads add and remove accounts while six call read(session) -> Response, for up to seconds or
    until the first 500; return the bodies of the 500s."""
    stop, errors = time.monotonic() + seconds, []

    def editor(t: int) -> None:
        with requests.Session() as session:
            session.trust_env = False
            headers, n = {"Authorization": f"Bearer {admin}"}, 0
            while time.monotonic() < stop and not errors:
                body = {"name": f"churn-{t}-{n}", "type": "openai", "base_url": server.fake_url}
                session.post(server.url + "/api/accounts", json=body, headers=headers, timeout=30)
                session.delete(server.url + f"/api/accounts/churn-{t}-{n}", headers=headers, timeout=30)
                n += 1

    def reader() -> None:
        with requests.Session() as session:
            session.trust_env = False
            while time.monotonic() < stop and not errors:
                response = read(session)
                if response.status_code == 500:
                    errors.append(response.text)

    threads = [threading.Thread(target=editor, args=(t,)) for t in range(2)]
    threads += [threading.Thread(target=reader) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return errors


def test_listing_while_accounts_change_never_fails(make_server, admin, fakes):
    """GET /api/accounts and /api/health while other requests add and remove accounts: never a 500."""
    (fake,) = fakes(1)
    server, _ = serve(make_server, admin, [openai_account(fake, name="oa")])
    server.fake_url = fake.url
    headers = {"Authorization": f"Bearer {admin}"}

    def read(session):
        response = session.get(server.url + "/api/accounts", headers=headers, timeout=30)
        return response if response.status_code == 500 else session.get(server.url + "/api/health", timeout=30)

    assert churn(server, admin, 5.0, read) == []


def test_chats_while_accounts_change_never_fail(make_server, admin, fakes):
    """New conversations while other requests add and remove accounts: each is answered, never a 500."""
    (fake,) = fakes(1)
    server, key = serve(make_server, admin, [openai_account(fake, name="oa")])
    server.fake_url = fake.url
    headers = {"Authorization": f"Bearer {key}"}

    def read(session):
        return session.post(server.url + "/api/chat", json={"prompt": "hi"}, headers=headers, timeout=30)

    assert churn(server, admin, 5.0, read) == []


def test_a_hand_edit_is_picked_up_within_a_second(make_server, admin, fakes):
    """Someone edits settings.json by hand: the running server uses the change within about a second,
    keeps running on what it had while the file is broken, and takes the fixed file."""
    a, b = fakes(2)
    server, key = serve(make_server, admin, [openai_account(a, name="a", api_key=KEY_A)])
    path = settings_path(server)
    raw = json.loads(path.read_text())
    raw["accounts"].append(openai_account(b, name="b", api_key=KEY_B))
    raw["accounts"][0]["enabled"] = False
    path.write_text(json.dumps(raw, indent=2))
    _, seconds = wait_for(lambda: "b" in listed(server, admin), 3)
    assert seconds <= 1.5, seconds
    assert listed(server, admin)["a"]["state"] == "disabled"
    assert used(server, key, 3) == {"b": 3}

    path.write_text('{"accounts": [')  # broken: the server keeps what it has
    time.sleep(1.2)
    assert used(server, key, 2) == {"b": 2}
    assert list(listed(server, admin)) == ["a", "b"]
    broken = add(server, admin, openai_account(a, name="c"))
    assert broken.status_code == 400, broken.text  # no edit on top of a broken file
    assert path.read_text() == '{"accounts": ['

    raw["accounts"] = [openai_account(a, name="a", api_key=KEY_A)]
    path.write_text(json.dumps(raw, indent=2))
    _, seconds = wait_for(lambda: list(listed(server, admin)) == ["a"], 3)
    assert seconds <= 1.5, seconds
    assert used(server, key, 2) == {"a": 2}


def test_changes_need_a_settings_file(make_server, admin, fakes):
    """A server built from a settings dict lists its accounts but refuses changes with 409."""
    (fake,) = fakes(1)
    server = make_server([openai_account(fake, name="oa", api_key=KEY_A)], timeouts=FAST)
    assert server.get("/api/accounts", admin).json()["accounts"][0]["secrets"] == {"api_key": "set"}
    for response in (
        add(server, admin, openai_account(fake, name="b")),
        patch(server, admin, "oa", {"enabled": False}),
        server.call("DELETE", "/api/accounts/oa", admin),
    ):
        assert response.status_code == 409, response.text
    assert used(server, server.create_user(admin, "alice")["api_key"], 1) == {"oa": 1}
