"""Limits, quotas, key throttling and the usage ledger under `python main.py` (gunicorn, 2 gevent workers).

Every request goes over a keep-alive connection whose worker is known: the connection is opened, and
the worker process holding its other end is read off the open socket (psutil) before anything is sent.
So each test sends its requests to both workers on purpose, and the fake upstream (WorkerFake, which
records the worker behind each upstream request) confirms which worker asked it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from http.client import HTTPConnection

import psutil
import pytest
from test_pool_workers import ADMIN, Served, WorkerFake, workers_of
from upstream_fixtures import openai_account

RESET = re.compile(r"\d+ms|\d+(\.\d)?s|(\d+h)?\d+m\d+s")  # OpenAI's x-ratelimit-reset-* format
SERVER = {"workers": 2, "keepalive": 60}  # idle keep-alive connections stay open for the whole test


# -- connections held by a known worker --------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    text: str

    def json(self):
        return json.loads(self.text)


class Lines:
    """Keep-alive connections from one source address to a server, sorted by the worker holding each."""

    def __init__(self, server: Served, workers: list[int], source: str = "127.0.0.1"):
        self.server, self.workers, self.source = server, workers, source
        self.idle: dict[int, list[HTTPConnection]] = {pid: [] for pid in workers}

    def _open(self) -> tuple[int, HTTPConnection]:
        conn = HTTPConnection("127.0.0.1", self.server.port, timeout=30, source_address=(self.source, 0))
        conn.connect()
        mine = conn.sock.getsockname()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for pid in self.workers:
                try:
                    held = psutil.Process(pid).net_connections(kind="tcp")
                except psutil.Error:
                    continue
                for c in held:
                    if c.laddr and c.laddr.port == self.server.port and c.raddr and tuple(c.raddr) == mine:
                        return pid, conn
            time.sleep(0.005)
        conn.close()
        pytest.fail(f"no worker accepted a connection within 10 s:\n{self.server.output}")

    def take(self, pid: int) -> HTTPConnection:
        """A connection that worker pid holds (new ones are opened until one lands there; the rest are kept)."""
        for _ in range(200):
            if self.idle[pid]:
                return self.idle[pid].pop()
            got, conn = self._open()
            self.idle[got].append(conn)
        pytest.fail(f"200 connections in a row went to other workers than {pid}")

    def send(self, pid: int, method: str, path: str, key: str | None = None, body=None) -> Answer:
        conn = self.take(pid)
        answer = ask(conn, method, path, key, body)
        if conn.sock is not None:  # a connection the server closed would reconnect to any worker
            self.idle[pid].append(conn)
        return answer

    def give_back(self, taken: list[tuple[int, HTTPConnection]]) -> None:
        for pid, conn in taken:
            if conn.sock is not None:
                self.idle[pid].append(conn)

    def close(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.close()


def ask(conn: HTTPConnection, method: str, path: str, key: str | None = None, body=None) -> Answer:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = conn.getresponse()
    text = response.read().decode()
    return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, text)


def at_once(jobs: list) -> list:
    """Run the callables on threads of their own, released together; return their results in order."""
    barrier = threading.Barrier(len(jobs))

    def run(job):
        barrier.wait(timeout=30)
        return job()

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(run, jobs))


# -- servers, users and what the fake sent -----------------------------------------------------


@pytest.fixture
def fake():
    fake = WorkerFake().start()
    yield fake
    fake.stop()


@pytest.fixture
def start(tmp_path):
    """start(fake, source="127.0.0.1", **settings) -> (server, its Lines from source); stopped after the test.
    The fake's only account is "oa"; the server runs two workers."""
    started: list[tuple[Served, Lines]] = []

    def start(fake: WorkerFake, source: str = "127.0.0.1", **settings) -> tuple[Served, Lines]:
        server = Served(tmp_path / f"site{len(started)}", [openai_account(fake)], server=SERVER, **settings)
        fake.workers = server.wait_ready()
        started.append((server, Lines(server, fake.workers, source)))
        return started[-1]

    yield start
    for server, lines in started:
        lines.close()
        server.stop()


def new_user(server: Served, username: str, key: str = ADMIN, **body) -> tuple[str, str]:
    """Create a user (as key's owner); return its user id and key."""
    made = server.call("POST", "/api/users", key, json={"username": username, **body})
    assert made.status_code == 201, made.text
    return made.json()["user_id"], made.json()["api_key"]


def set_limits(server: Served, user_id: str, limits: dict, key: str = ADMIN):
    return server.call("PATCH", f"/api/users/{user_id}", key, json={"limits": limits})


def sent_usage(fake: WorkerFake, records: list[dict]) -> tuple[int, int]:
    """The prompt and completion tokens the fake reported for these requests (its own count of words)."""
    usages = [fake.usage(r["body"], fake.reply_for(r["body"])) for r in records]
    return sum(u["prompt_tokens"] for u in usages), sum(u["completion_tokens"] for u in usages)


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def assert_refused(answer: Answer, code: str, limit: str, kind: str = "requests") -> None:
    """A 429 of /api's shape with Retry-After and the x-ratelimit-* headers of the limit that said no."""
    assert answer.status == 429, answer.text
    body = answer.json()
    assert body["status"] == "error" and body["code"] == code, body
    assert 1 <= int(answer.headers["retry-after"]) <= 86400
    assert answer.headers[f"x-ratelimit-limit-{kind}"] == limit
    assert answer.headers[f"x-ratelimit-remaining-{kind}"] == "0"
    assert RESET.fullmatch(answer.headers[f"x-ratelimit-reset-{kind}"]), answer.headers


# -- tests -------------------------------------------------------------------------------------


def test_per_minute_limit_admits_exactly_n_of_3n_concurrent_requests_over_both_workers(start, fake, database):
    """requests_per_minute 6 for users: of 18 conversations sent at once, 9 to each worker, exactly 6 are
    answered (remaining 5, 4, ... 0, each once) and the fake sees exactly 6; the other 12 are 429
    rate_limit_exceeded with Retry-After and x-ratelimit-*. The 6 must come from both workers: a round
    where one worker admitted all 6 is repeated with a fresh user."""
    n = 6
    fake.delay = 0.2  # the admitted requests are still upstream while the others are being refused
    server, lines = start(fake, limits={"user": {"requests_per_minute": n}}, **database)
    a, b = fake.workers
    for attempt in range(5):
        _, key = new_user(server, f"rpm{attempt}")
        since = len(fake.chats())
        conns = [(pid, lines.take(pid)) for pid in (a, b) for _ in range(3 * n // 2)]
        jobs = [
            lambda c=c, i=i, k=key: ask(c, "POST", "/api/chat", k, {"prompt": f"q{i}"})
            for i, (_, c) in enumerate(conns)
        ]
        answers = at_once(jobs)
        lines.give_back(conns)
        assert Counter(x.status for x in answers) == {200: n, 429: 2 * n}, [x.text for x in answers]
        records = fake.chats(since)
        assert len(records) == n
        ok = [x for x in answers if x.status == 200]
        assert sorted(int(x.headers["x-ratelimit-remaining-requests"]) for x in ok) == list(range(n))
        for x in ok:
            assert x.headers["x-ratelimit-limit-requests"] == str(n)
            assert RESET.fullmatch(x.headers["x-ratelimit-reset-requests"])
        for x in answers:
            if x.status == 429:
                assert_refused(x, "rate_limit_exceeded", str(n))
                assert int(x.headers["retry-after"]) <= 60
        answered_by = Counter(pid for (pid, _), x in zip(conns, answers, strict=True) if x.status == 200)
        assert Counter(r["worker"] for r in records) == answered_by  # each worker asked the fake for its own
        if set(answered_by) == {a, b}:
            return
    pytest.fail(f"in five rounds one worker admitted all {n} every time: {answered_by}")


def test_daily_token_quota_stops_a_user_on_both_workers_and_both_fronts(start, fake):
    """tokens_per_day 100 set on the user by PATCH (at once, no restart), 30 tokens a reply: 4 turns sent
    to the workers in turn are answered (used 0, 30, 60, 90 < 100), then every worker refuses /api/chat
    (JSON and stream) and /v1/chat/completions (JSON and stream) with 429 insufficient_quota."""
    fake.reply_text = words(20, "r")
    prompt = words(10, "p")
    assert fake.usage({"messages": [{"role": "user", "content": prompt}]}, fake.reply_text)["total_tokens"] == 30
    server, lines = start(fake)
    a, b = fake.workers
    user_id, key = new_user(server, "quota")
    patched = set_limits(server, user_id, {"tokens_per_day": 100})
    assert patched.status_code == 200, patched.text
    assert patched.json()["limits"] == {"tokens_per_day": 100}
    assert patched.json()["effective_limits"]["tokens_per_day"] == 100

    answers = [lines.send(pid, "POST", "/api/chat", key, {"prompt": prompt}) for pid in (a, b, a, b)]
    assert [x.status for x in answers] == [200] * 4, [x.text for x in answers]
    assert [x.headers["x-ratelimit-remaining-tokens"] for x in answers] == ["100", "70", "40", "10"]
    assert {x.headers["x-ratelimit-limit-tokens"] for x in answers} == {"100"}
    assert "x-ratelimit-limit-requests" not in answers[0].headers  # no request limit applies to this user
    records = fake.chats()
    assert len(records) == 4 and [r["worker"] for r in records] == [a, b, a, b]
    me = lines.send(a, "GET", "/api/me", key).json()
    assert (me["today"]["requests"], me["today"]["tokens"]) == (4, 120)

    chat = {"prompt": prompt}
    v1 = {"messages": [{"role": "user", "content": prompt}]}
    for pid in (a, b):
        assert_refused(lines.send(pid, "POST", "/api/chat", key, chat), "insufficient_quota", "100", "tokens")
        assert_refused(
            lines.send(pid, "POST", "/api/chat", key, {**chat, "stream": True}), "insufficient_quota", "100", "tokens"
        )
        for body in (v1, {**v1, "stream": True}):
            refused = lines.send(pid, "POST", "/v1/chat/completions", key, body)
            assert refused.status == 429, refused.text
            error = refused.json()["error"]
            assert (error["code"], error["type"]) == ("insufficient_quota", "insufficient_quota"), error
            assert 1 <= int(refused.headers["retry-after"]) <= 86400
            assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert len(fake.chats()) == 4  # nothing refused reached the upstream
    me = lines.send(b, "GET", "/api/me", key).json()
    assert (me["today"]["requests"], me["today"]["tokens"]) == (4, 120)  # refusals are not counted


def test_client_wide_quota_holds_across_its_users_and_cannot_be_raised_by_the_client(start, fake, database):
    """An admin gives a client requests_per_day 5; the client speaks for 3 users, 4 requests each, sent at
    once to both workers: exactly 5 are answered in all. The client cannot give a user more than 5 or
    no limit (403) but can give 5 or less; even an admin's higher limit on a user leaves the client's
    quota spent."""
    k = 5
    server, lines = start(fake, **database)
    a, b = fake.workers
    people = ["ext-1", "ext-2", "ext-3"]
    for attempt in range(5):  # until both workers have answered some of the five (a fresh client each round)
        client_id, client = new_user(server, f"bot{attempt}", role="client")
        granted = set_limits(server, client_id, {"requests_per_day": k})
        assert granted.status_code == 200, granted.text
        assert granted.json()["effective_limits"]["requests_per_day"] == k
        for person in people[:2]:
            new_user(server, person, client, user_id=person)  # ext-3 is made by its first chats, on both workers
        since = len(fake.chats())
        conns = [(pid, lines.take(pid)) for pid in (a, b) for _ in range(6)]
        jobs = [
            lambda c=c, i=i, key=client: ask(c, "POST", "/api/chat", key, {"prompt": f"q{i}", "user_id": people[i % 3]})
            for i, (_, c) in enumerate(conns)
        ]
        answers = at_once(jobs)
        lines.give_back(conns)
        assert Counter(x.status for x in answers) == {200: k, 429: 12 - k}, [x.text for x in answers]
        records = fake.chats(since)
        assert len(records) == k
        for x in answers:
            if x.status == 429:
                assert_refused(x, "insufficient_quota", str(k))
                assert "together" in x.json()["message"]
        answered_by = Counter(pid for (pid, _), x in zip(conns, answers, strict=True) if x.status == 200)
        assert Counter(r["worker"] for r in records) == answered_by
        listed = lines.send(b, "GET", "/api/users", client).json()
        assert sorted(u["external_id"] for u in listed["users"]) == people  # ext-3 made once, not twice
        usage = lines.send(a, "GET", "/api/usage?group_by=user", client).json()
        asked_for = Counter(people[i % 3] for i, x in enumerate(answers) if x.status == 200)
        assert {g["username"]: g["requests"] for g in usage["groups"]} == dict(asked_for)
        assert usage["totals"]["requests"] == k
        if set(answered_by) == {a, b}:
            break
    else:
        pytest.fail(f"in five rounds one worker answered all {k} every time: {answered_by}")

    for limits in ({"requests_per_day": k + 1}, {"requests_per_day": None}):
        for pid in (a, b):
            refused = lines.send(pid, "PATCH", "/api/users/ext-1", client, {"limits": limits})
            assert refused.status == 403 and refused.json()["param"] == "limits", refused.text
    shown = lines.send(a, "GET", "/api/users/ext-1", client).json()
    assert shown["limits"] == {} and shown["effective_limits"]["requests_per_day"] is None
    allowed = lines.send(b, "PATCH", "/api/users/ext-1", client, {"limits": {"requests_per_day": k}})
    assert allowed.status == 200 and allowed.json()["limits"] == {"requests_per_day": k}, allowed.text
    allowed = lines.send(a, "PATCH", "/api/users/ext-2", client, {"limits": {"requests_per_day": 2}})
    assert allowed.status == 200 and allowed.json()["effective_limits"]["requests_per_day"] == 2, allowed.text

    ext3 = lines.send(a, "GET", "/api/users/ext-3", client).json()["user_id"]
    raised = set_limits(server, ext3, {"requests_per_day": 1000})  # an admin may; the client's quota still holds
    assert raised.status_code == 200, raised.text
    for pid in (a, b):
        again = lines.send(pid, "POST", "/api/chat", client, {"prompt": "more", "user_id": "ext-3"})
        assert_refused(again, "insufficient_quota", str(k))
    assert len(fake.chats(since)) == k


def test_wrong_keys_are_throttled_per_address_on_both_workers(start, fake, database):
    """key_failures_per_minute 20 (the default): 20 wrong keys from 127.0.0.1, 10 to each worker, are 401;
    the 21st is 429 with Retry-After, and so is a right key from 127.0.0.1 on either worker (/api and /v1);
    a right key from 127.0.0.2 is answered by both workers, and a wrong one there is a plain 401."""
    server, lines = start(fake, **database)
    a, b = fake.workers
    _, key = new_user(server, "alice")
    for i in range(20):
        wrong = lines.send((a, b)[i % 2], "GET", "/api/me", f"cas-wrong-guess-{i:02d}-0123456789")
        assert wrong.status == 401, (i, wrong.status, wrong.text)
    for pid in (b, a):
        refused = lines.send(pid, "GET", "/api/me", "cas-wrong-guess-20-0123456789")
        assert refused.status == 429, refused.text
        assert refused.json()["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    for pid in (a, b):
        for right in (key, ADMIN):
            refused = lines.send(pid, "GET", "/api/me", right)
            assert refused.status == 429 and 1 <= int(refused.headers["retry-after"]) <= 60, refused.text
        refused = lines.send(
            pid, "POST", "/v1/chat/completions", key, {"messages": [{"role": "user", "content": "hi"}]}
        )
        assert refused.status == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded", refused.text
    assert fake.chats() == []

    elsewhere = Lines(server, fake.workers, "127.0.0.2")
    try:
        for pid in (a, b):
            me = elsewhere.send(pid, "GET", "/api/me", key)
            assert me.status == 200 and me.json()["username"] == "alice", me.text
            answered = elsewhere.send(pid, "POST", "/api/chat", key, {"prompt": f"from {pid}"})
            assert answered.status == 200, answered.text
        assert [r["worker"] for r in fake.chats()] == [a, b]
        assert elsewhere.send(b, "GET", "/api/me", "cas-wrong-guess-xx-0123456789").status == 401
    finally:
        elsewhere.close()
    assert lines.send(a, "GET", "/api/me", key).status == 429  # 127.0.0.1 still waits out its minute


def test_usage_totals_equal_what_the_fake_upstream_counted(start, fake, database):
    """A mix of /api/chat (JSON, stream, a follow-up), a client's user, and /v1/chat/completions (JSON,
    stream with and without usage), sent to both workers, half of it at once: the admin's report by
    account counts exactly the requests the fake received and the tokens it reported; by user and day
    it counts each user's own; a client and a user see only theirs."""
    server, lines = start(fake, **database)
    a, b = fake.workers
    alice_id, alice = new_user(server, "alice")
    bob_id, bob = new_user(server, "bob")
    _, client = new_user(server, "bot", role="client")

    def api(key, prompt, **extra):
        return "POST", "/api/chat", key, {"prompt": prompt, **extra}

    def v1(key, text, **extra):
        messages = [{"role": "system", "content": "be brief please"}, {"role": "user", "content": text}]
        return "POST", "/v1/chat/completions", key, {"messages": messages, **extra}

    mix = [
        (alice, api(alice, "hello there from alice")),
        (alice, api(alice, "a streamed question", stream=True)),
        (bob, api(bob, "one two three")),
        (bob, v1(bob, "what is the time")),
        (alice, v1(alice, "stream it with usage", stream=True, stream_options={"include_usage": True})),
        (bob, v1(bob, "stream it without usage", stream=True)),
        (client, api(client, "for my person", user_id="person-1")),
        (client, api(client, "and for another", user_id="person-2", stream=True)),
    ]
    sequential = [lines.send(pid, *request) for pid in (a, b) for _, request in mix]
    assert [x.status for x in sequential] == [200] * len(sequential), [x.text for x in sequential]
    first = sequential[0].json()
    follow = lines.send(b, *api(alice, "and a follow-up", conversation_id=first["conversation_id"]))
    assert follow.status == 200, follow.text
    assert '"usage"' in sequential[4].text  # the stream with include_usage ends with the usage chunk

    conns = [(pid, lines.take(pid)) for pid in (a, b) for _ in range(len(mix))]
    jobs = [lambda c=c, r=r: ask(c, *r) for (_, c), (_, r) in zip(conns, mix + mix, strict=True)]
    together = at_once(jobs)
    lines.give_back(conns)
    assert [x.status for x in together] == [200] * len(together), [x.text for x in together]

    records = fake.chats()
    sent = 4 * len(mix) + 1
    assert len(records) == sent
    assert workers_of(records) == {a, b}
    prompt_tokens, completion_tokens = sent_usage(fake, records)
    assert completion_tokens > 0 and prompt_tokens > 0
    # A worker writes its last turns' ledger lines with its next write, or 50 ms later: the report of the
    # other worker may lag by that much, never more.
    time.sleep(0.2)
    report = lines.send(a, "GET", "/api/usage?group_by=account", ADMIN).json()
    totals = report["totals"]
    assert totals["requests"] == sent, report
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (prompt_tokens, completion_tokens)
    assert totals["total_tokens"] == prompt_tokens + completion_tokens
    assert (totals["errors"], totals["cut"], totals["estimated"]) == (0, 0, 0)
    assert [(g["account"], g["requests"]) for g in report["groups"]] == [("oa", sent)]

    by_user = lines.send(b, "GET", "/api/usage?group_by=user,day", ADMIN).json()
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert {g["day"] for g in by_user["groups"]} == {today}
    counts = {g["username"]: g["requests"] for g in by_user["groups"]}
    per_user = Counter()
    for caller, (_, _, _, body) in mix:
        per_user[{alice: "alice", bob: "bob"}.get(caller) or body["user_id"]] += 4
    per_user["alice"] += 1  # the follow-up
    assert counts == dict(per_user), by_user["groups"]
    assert sum(g["prompt_tokens"] for g in by_user["groups"]) == prompt_tokens

    own = lines.send(b, "GET", "/api/usage", alice).json()["totals"]
    assert own["requests"] == per_user["alice"]
    theirs = lines.send(a, "GET", "/api/usage?group_by=user", client).json()
    assert {g["username"]: g["requests"] for g in theirs["groups"]} == {"person-1": 4, "person-2": 4}
    assert lines.send(a, "GET", f"/api/usage?user_id={bob_id}", alice).status == 403
    assert lines.send(a, "GET", f"/api/usage?user_id={alice_id}", client).status == 404
