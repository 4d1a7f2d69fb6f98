"""Three instances behind a load balancer behave as one server: three `python3 main.py` processes on three
ports, the same settings file, users and everything else in one PostgreSQL, driven round robin as a load
balancer would. Users, browser sessions, conversations on their pinned account, round robin, a cooling
account, per-minute limits and an account added at run time are all shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle
from pathlib import Path

import pytest
import requests
from fakes import FakeOpenAI
from test_pool_workers import free_port

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "cas-instances-admin-key-0123456789"


class Instance:
    """`python3 main.py --settings <shared file> --port <its own>`, one worker."""

    def __init__(self, settings_path: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
        env.update(PYTHONUNBUFFERED="1", ADMIN_API_KEY=ADMIN)
        args = [sys.executable, "main.py", "--settings", str(settings_path), "--port", str(self.port)]
        with open(log, "w") as out:
            self.popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                pytest.fail(f"main.py exited with {self.popen.returncode}:\n{self.log.read_text()}")
            try:
                if self.call("GET", "/api/health").status_code in (200, 503):
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        pytest.fail(f"main.py was not ready in {timeout}s:\n{self.log.read_text()}")

    def call(self, method: str, path: str, key: str | None = ADMIN, session=None, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        http = session or requests
        return http.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()


@pytest.fixture
def fakes():
    started = [FakeOpenAI().start() for _ in range(4)]
    yield started
    for fake in started:
        fake.stop()


@pytest.fixture
def three(tmp_path, pg_url, fakes):
    """Three instances on one settings file and one PostgreSQL; accounts a, b, c on three fakes."""
    accounts = [
        {"name": name, "type": "openai", "api_key": f"sk-{name}-key-0123456789", "base_url": fake.url}
        for name, fake in zip("abc", fakes, strict=False)
    ]
    settings = tmp_path / "settings.json"
    settings.write_text(
        json.dumps(
            {
                "app_secret": "instances-shared-secret-0123456789",
                "database_url": pg_url,
                "users_store": "sql",
                "accounts": accounts,
                "timeouts": {"connect": 1, "read": 3},
                "health": {"rate_limit_cooldown": 60},
                "server": {"workers": 1},
            }
        )
    )
    os.chmod(settings, 0o600)
    first = Instance(settings, tmp_path / "one.log")
    first.wait_ready()  # the first makes the schema and the admin; the others find them
    rest = [Instance(settings, tmp_path / f"{n}.log") for n in ("two", "three")]
    for instance in rest:
        instance.wait_ready()
    instances = [first, *rest]
    yield instances
    for instance in instances:
        instance.stop()


def account_of(fakes, key: str) -> str:
    """Which account's fake got the last request sent with this user's prompt marker."""
    for name, fake in zip("abcd", fakes, strict=False):
        if any(key in json.dumps(c["body"]) for c in fake.chats()):
            return name
    return "?"


def test_three_instances_behave_as_one_server(three, fakes):
    one, two, three_ = three
    balancer = cycle(three)

    # a user made on one logs in on the others; a browser session made on one is valid on the others
    made = one.call("POST", "/api/users", json={"username": "roamer"})
    assert made.status_code == 201, made.text
    key = made.json()["api_key"]
    assert [i.call("GET", "/api/me", key).json()["username"] for i in three] == ["roamer"] * 3
    browser = requests.Session()
    browser.trust_env = False
    token = two.call("GET", "/login", None, browser).text.split('name="csrf_token" value="')[1].split('"')[0]
    landed = two.call(
        "POST", "/login", None, browser, data={"api_key": key, "csrf_token": token}, allow_redirects=False
    )
    assert landed.status_code == 303, landed.text
    assert three_.call("GET", "/conversations", None, browser, allow_redirects=False).status_code == 200
    assert one.call("GET", "/conversations", None, browser, allow_redirects=False).status_code == 200

    # round robin stays even across all instances: 30 new conversations through the balancer, 10 per account
    started = []
    for n in range(30):
        answer = next(balancer).call("POST", "/api/chat", key, json={"prompt": f"round-{n}"})
        assert answer.status_code == 200, answer.text
        started.append(answer.json()["conversation_id"])
    counts = Counter(len(f.chats()) for f in fakes[:3])
    assert counts == Counter({10: 3}), [len(f.chats()) for f in fakes]

    # a conversation started on one continues on the others, on its pinned account
    pinned = account_of(fakes, "round-0")
    for n, instance in enumerate((two, three_, one)):
        answer = instance.call("POST", "/api/chat", key, json={"prompt": f"follow-{n}", "conversation_id": started[0]})
        assert answer.status_code == 200 and answer.json()["conversation_id"] == started[0], answer.text
        assert account_of(fakes, f"follow-{n}") == pinned
    stored = one.call("GET", f"/api/conversations/{started[0]}", key).json()
    assert [m["prompt"] for m in stored["messages"]] == ["round-0", "follow-0", "follow-1", "follow-2"]

    # an account cooling on one (a 429 with Retry-After) is cooling on all
    fakes[0].rate_limit(retry_after="60", times=1)
    before = [len(f.chats()) for f in fakes[:3]]
    for n in range(6):
        assert next(balancer).call("POST", "/api/chat", key, json={"prompt": f"cool-{n}"}).status_code == 200
    assert len(fakes[0].chats()) - before[0] == 1  # the one 429, then never again from any instance
    states = [{a["name"]: a["state"] for a in i.call("GET", "/api/accounts").json()["accounts"]} for i in three]
    assert all(s["a"] == "cooling" and s["b"] == s["c"] == "ok" for s in states), states

    # limits are exact across all: a fresh user limited to 6 a minute, 18 sent at once over the three
    limited = two.call("POST", "/api/users", json={"username": "limited"})
    assert limited.status_code == 201, limited.text
    lkey, lid = limited.json()["api_key"], limited.json()["user_id"]
    patched = three_.call("PATCH", f"/api/users/{lid}", json={"limits": {"requests_per_minute": 6}})
    assert patched.status_code == 200, patched.text
    targets = [next(balancer) for _ in range(18)]
    with ThreadPoolExecutor(max_workers=18) as pool:
        statuses = list(pool.map(lambda i: i.call("POST", "/v1/chat/completions", lkey, json=HI).status_code, targets))
    assert Counter(statuses) == Counter({200: 6, 429: 12}), statuses

    # an account added at run time on one is used by all within a second
    added = one.call(
        "POST",
        "/api/accounts",
        json={"name": "d", "type": "openai", "api_key": "sk-d-0123456789", "base_url": fakes[3].url},
    )
    assert added.status_code == 201, added.text
    time.sleep(1.2)
    for instance in (two, three_):
        seen = [a["name"] for a in instance.call("GET", "/api/accounts").json()["accounts"]]
        assert "d" in seen, seen
    for n in range(9):
        assert two.call("POST", "/api/chat", key, json={"prompt": f"new-{n}"}).status_code == 200
        assert three_.call("POST", "/api/chat", key, json={"prompt": f"newer-{n}"}).status_code == 200
    assert fakes[3].chats(), "no instance used the account added at run time"


HI = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "limited"}]}
