"""The pool under `python main.py` (gunicorn, 2 gevent workers): health, limits and runtime account
changes are shared by both workers. Which worker made each upstream request is read off the open
TCP connection at the fake (psutil), so every test proves that both workers took part."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from fakes import FakeOpenAI, FakeWebhook
from fakes.openai_server import _OpenAIHandler
from upstream_fixtures import openai_account

from app import config

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "cas-workers-admin-key-0123456789"
HEALTH = {"rate_limit_cooldown": 30, "rate_limit_max": 3600, "backoff_start": 30, "backoff_max": 600}
KEY_A, KEY_B, KEY_B2 = "sk-worker-a-0123456789", "sk-worker-b-0123456789", "sk-worker-b2-0123456789"


# -- a fake that knows which worker is asking --------------------------------------------------


class _WorkerHandler(_OpenAIHandler):
    def read_and_record(self):
        entry, body = super().read_and_record()
        entry["worker"] = self.owner.worker_of(self.client_address[1])  # the caller's socket is open now
        return entry, body


class WorkerFake(FakeOpenAI):
    """A FakeOpenAI that records, for each request, the pid of the gunicorn worker whose socket sent it."""

    handler_class = _WorkerHandler

    def __init__(self) -> None:
        super().__init__()
        self.workers: list[int] = []

    def worker_of(self, port: int) -> int | None:
        for pid in self.workers:
            try:
                connections = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            for conn in connections:
                if conn.laddr and conn.laddr.port == port and conn.raddr and conn.raddr.port == self.port:
                    return pid
        return None

    def chats(self, since: int = 0) -> list[dict]:
        return [r for r in self.requests if r["path"] == self.chat_path][since:]


def workers_of(records: list[dict]) -> set:
    return {r["worker"] for r in records}


def keys_of(records: list[dict]) -> Counter:
    return Counter(r["headers"]["authorization"].removeprefix("Bearer ") for r in records)


# -- main.py under gunicorn --------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """`python main.py` on folder/settings.json with two workers; requests go on fresh connections."""

    def __init__(self, folder: Path, accounts: list[dict], **settings):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings_path = folder / "settings.json"
        body = {
            "_comment": "written by test_pool_workers",
            "app_secret": "workers-test-secret-0123456789",
            "accounts": accounts,
            "timeouts": {"connect": 1, "read": 3},
            "health": HEALTH,
            "server": {"workers": 2},
            **settings,
        }
        self.settings_path.write_text(json.dumps(body, indent=2))
        env = {k: v for k, v in os.environ.items() if k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
        env.update(PYTHONUNBUFFERED="1", ADMIN_API_KEY=ADMIN)
        self.out, self.err = folder / "out.log", folder / "err.log"
        args = [sys.executable, "main.py", "--settings", str(self.settings_path), "--port", str(self.port)]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=err)

    @property
    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait_ready(self, timeout: float = 30) -> list[int]:
        """Wait until both workers run and the server answers; return the workers' pids."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                pytest.fail(f"main.py exited with {self.popen.returncode}:\n{self.output}")
            workers = [p.pid for p in psutil.Process(self.popen.pid).children()]
            if len(workers) == 2 and self.output.count("Booting worker") >= 2:
                try:
                    if self.call("GET", "/api/health").status_code in (200, 503):
                        return workers
                except requests.ConnectionError:
                    pass
            time.sleep(0.1)
        pytest.fail(f"main.py was not ready in {timeout}s:\n{self.output}")

    def call(self, method: str, path: str, key: str | None = ADMIN, **kwargs) -> requests.Response:
        """One request on a connection of its own (so that either worker may take it)."""
        headers = {"Connection": "close"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        with requests.Session() as session:
            session.trust_env = False
            return session.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def chat(self, key: str, prompt: str) -> requests.Response:
        return self.call("POST", "/api/chat", key, json={"prompt": prompt})

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


@pytest.fixture
def launch(tmp_path):
    """Return start(accounts, *fakes, **settings) -> (server, user key); stopped after the test."""
    started: list[Served] = []

    def start(accounts: list[dict], *fakes: WorkerFake, **settings) -> tuple[Served, str]:
        server = Served(tmp_path / f"site{len(started)}", accounts, **settings)
        started.append(server)
        workers = server.wait_ready()
        for fake in fakes:
            fake.workers = workers
        made = server.call("POST", "/api/users", json={"username": "alice"})
        assert made.status_code == 201, made.text
        return server, made.json()["api_key"]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def worker_fakes():
    fakes = [WorkerFake().start() for _ in range(2)]
    yield fakes
    for fake in fakes:
        fake.stop()


def ask_many(server: Served, key: str, n: int) -> list[requests.Response]:
    """n new conversations, one after another, each on a fresh connection; every one must succeed."""
    answers = [server.chat(key, f"q{i}") for i in range(n)]
    assert [a.status_code for a in answers] == [200] * n, [a.text for a in answers if a.status_code != 200]
    return answers


# -- tests -------------------------------------------------------------------------------------


def test_a_429_seen_by_one_worker_keeps_both_off_the_account(launch, worker_fakes, database):
    """After the first 429 the rate-limited upstream gets nothing more, from either worker, until its
    Retry-After has passed; then it takes turns again."""
    limited, other = worker_fakes
    limited.rate_limit("6")  # 3 s of asking, then a look at the state, well inside the 6 s (a slow machine too)
    accounts = [openai_account(limited, name="limited"), openai_account(other, name="other")]
    server, key = launch(accounts, limited, other, **database)
    while not limited.chats():  # round robin reaches "limited" within two conversations
        assert len(other.chats()) < 2
        assert server.chat(key, "warm up").json()["account"] == "other"
    hit = time.monotonic()
    [first] = limited.chats()
    assert first["worker"] in limited.workers
    since = len(other.chats())
    answers = []
    while time.monotonic() - hit < 3.0:  # well inside the 6 s
        answers += ask_many(server, key, 1)
    assert len(limited.chats()) == 1, "a worker sent a request to the resting account"
    assert {a.json()["account"] for a in answers} == {"other"}
    during = other.chats(since)
    assert len(during) == len(answers) >= 10
    assert workers_of(during) == set(limited.workers), Counter(r["worker"] for r in during)
    shown = server.call("GET", "/api/accounts/limited").json()
    assert shown["state"] == "cooling" and "429" in shown["last_error"]["message"]

    limited.heal()
    while time.monotonic() - hit < 6.3:
        time.sleep(0.05)
    after = ask_many(server, key, 6)
    assert Counter(a.json()["account"] for a in after) == {"limited": 3, "other": 3}


def test_max_concurrent_is_counted_across_both_workers(launch, worker_fakes, database):
    """24 concurrent callers over two workers: the account limited to 2 at once never sees more."""
    fake, _ = worker_fakes
    fake.reply_text, fake.stream_delay = "one two three four", 0.05
    server, key = launch([openai_account(fake, name="oa", max_concurrent=2)], fake, queue_timeout=30, **database)
    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(lambda n: server.chat(key, f"q{n}"), range(24)))
    assert [a.status_code for a in answers] == [200] * 24, [a.text for a in answers if a.status_code != 200][:3]
    assert fake.max_in_flight == 2
    assert workers_of(fake.chats()) == set(fake.workers)


def test_rpm_is_counted_across_both_workers(launch, worker_fakes, database):
    """An account allowed 6 requests a minute takes 6 of 12 conversations sent over both workers; the others
    get 503 with Retry-After."""
    fake, _ = worker_fakes
    # Which worker accepts a connection is the kernel's choice, so six requests may all land on one: the
    # count must hold every time, and within three servers both workers must have shared the six.
    for attempt in range(3):
        accounts = [openai_account(fake, name=f"oa{attempt}", rpm=6)]
        server, key = launch(accounts, fake, queue_timeout=0.2, **database)
        since = len(fake.chats())
        with ThreadPoolExecutor(max_workers=12) as pool:
            answers = list(pool.map(lambda n, s=server, k=key: s.chat(k, f"q{n}"), range(12)))
        assert sorted(a.status_code for a in answers) == [200] * 6 + [503] * 6, [a.text for a in answers]
        assert all(50 <= int(a.headers["Retry-After"]) <= 60 for a in answers if a.status_code == 503)
        assert len(fake.chats(since)) == 6
        if workers_of(fake.chats(since)) == set(fake.workers):
            return
    pytest.fail("in three servers the six requests never reached the upstream from both workers")


def test_one_alert_per_event_across_both_workers(launch, worker_fakes, database):
    """Both workers see two refused accounts: the webhook hears once of each and once of the free class."""
    a, b = worker_fakes
    a.fail_status = b.fail_status = 401
    with FakeWebhook() as hook:
        accounts = [openai_account(a, name="a"), openai_account(b, name="b")]
        server, key = launch(accounts, a, b, alerts={"webhook_url": hook.url}, **database)
        with ThreadPoolExecutor(max_workers=10) as pool:
            statuses = list(pool.map(lambda n: server.chat(key, f"q{n}").status_code, range(20)))
        assert set(statuses) <= {502, 503}, statuses
        calls = hook.wait_for(3, timeout=10)
        time.sleep(1.0)
        assert len(hook.received) == 3, [c["body"] for c in hook.received]
        assert Counter(c["body"]["event"] for c in calls) == {"needs_attention": 2, "class_down": 1}
        seen = (len(a.chats()), len(b.chats()))  # requests already on their way when the first 401 came
        assert [server.chat(key, f"later {n}").status_code for n in range(6)] == [503] * 6
        assert (len(a.chats()), len(b.chats())) == seen  # from now on neither worker asks them
        assert len(hook.received) == 3
        assert hook.url not in server.output


def test_runtime_account_changes_reach_both_workers(launch, worker_fakes):
    """An account added, edited (disabled, new key) and removed through the API on one worker is used that
    way by both within a second; secrets never reach the output."""
    fake, _ = worker_fakes
    server, key = launch([openai_account(fake, name="a", api_key=KEY_A)], fake)

    def settle_then_ask(n: int = 20) -> list[dict]:
        time.sleep(1.2)  # each worker looks at settings.json at most once a second
        since = len(fake.chats())
        answers = ask_many(server, key, n)
        records = fake.chats(since)
        assert len(records) == n
        assert workers_of(records) == set(fake.workers), Counter(r["worker"] for r in records)
        return [{"account": a.json()["account"], "key": k} for a, k in zip(answers, _keys(records), strict=True)]

    added = server.call("POST", "/api/accounts", json=openai_account(fake, name="b", api_key=KEY_B))
    assert added.status_code == 201, added.text
    assert server.call("PATCH", "/api/accounts/a", json={"enabled": False}).status_code == 200
    assert {(x["account"], x["key"]) for x in settle_then_ask()} == {("b", KEY_B)}

    assert server.call("PATCH", "/api/accounts/b", json={"api_key": KEY_B2}).status_code == 200
    assert {(x["account"], x["key"]) for x in settle_then_ask()} == {("b", KEY_B2)}

    assert server.call("PATCH", "/api/accounts/a", json={"enabled": True}).status_code == 200
    assert server.call("DELETE", "/api/accounts/b").status_code == 200
    assert {(x["account"], x["key"]) for x in settle_then_ask()} == {("a", KEY_A)}
    for _ in range(10):
        names = [x["name"] for x in server.call("GET", "/api/accounts").json()["accounts"]]
        assert names == ["a"]
    output = server.output
    for secret in (KEY_A, KEY_B, KEY_B2):
        assert secret not in output


def _keys(records: list[dict]) -> list[str]:
    return [r["headers"]["authorization"].removeprefix("Bearer ") for r in records]


def test_concurrent_edits_through_both_workers_leave_a_valid_file(launch, worker_fakes):
    """8 threads add accounts at once on fresh connections (both workers write): every addition is in the
    file, which is valid, 0600 and keeps its _comment, and every worker lists them all."""
    fake, _ = worker_fakes
    server, key = launch([openai_account(fake, name="base", api_key=KEY_A)], fake)

    def add(t: int) -> list[tuple[int, str]]:
        out = []
        for i in range(2):
            body = openai_account(fake, name=f"t{t}-{i}", api_key=f"sk-added-{t}-{i}-0123456789")
            response = server.call("POST", "/api/accounts", json=body)
            out.append((response.status_code, response.text))
        return out

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [r for batch in pool.map(add, range(8)) for r in batch]
    raw = json.loads(server.settings_path.read_text())
    config.validate(raw, server.folder)
    assert raw["_comment"] == "written by test_pool_workers"
    assert stat.S_IMODE(os.stat(server.settings_path).st_mode) == 0o600
    expected = ["base"] + [f"t{t}-{i}" for t in range(8) for i in range(2)]
    assert sorted(a["name"] for a in raw["accounts"]) == sorted(expected)
    assert [p.name for p in server.folder.iterdir() if p.name.endswith(".tmp")] == []
    time.sleep(1.2)
    for _ in range(10):
        names = [x["name"] for x in server.call("GET", "/api/accounts").json()["accounts"]]
        assert sorted(names) == sorted(expected)
    since = len(fake.chats())
    ask_many(server, key, 17)
    assert len(set(_keys(fake.chats(since)))) == 17  # round robin over all 17, from both workers together
    seen = workers_of(fake.chats(since))
    for _ in range(10):  # which worker accepts a connection is the kernel's choice: ask until both answered
        if seen == set(fake.workers):
            break
        more = len(fake.chats())
        ask_many(server, key, 17)
        seen |= workers_of(fake.chats(more))
    assert seen == set(fake.workers)
    assert [status for status, _ in results] == [201] * 16, [text for status, text in results if status != 201]
