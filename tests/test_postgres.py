"""PostgreSQL (psycopg 3) as the shared database of two app instances driven at once.

Two servers built by make_server on the same PostgreSQL URL are two instances: each has its own engine
and connection pool, and only the database joins them. Round robin, per-minute limits, max_concurrent,
a 429's cooldown and conversations must hold across both exactly as they do across SQLite's workers.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from fakes import FakeOpenAI, FakeWebhook
from upstream_fixtures import FAST, openai_account

from app.store import conversations as conversation_store
from app.store.conversations import PG_WRITE_LOCK, SqlConversationStore
from app.store.pool_state import Candidate, SqlPoolState


@pytest.fixture
def fakes():
    started = [FakeOpenAI().start() for _ in range(3)]
    yield started
    for fake in started:
        fake.stop()


def two_instances(make_server, pg_url, accounts, **overrides):
    """Two servers on one PostgreSQL database (and one users.json); the second sees the first's users."""
    overrides.setdefault("timeouts", FAST)
    servers = [make_server(accounts, database_url=pg_url, **overrides) for _ in range(2)]
    for server in servers:
        engine = server.services.store.engine
        assert engine.dialect.name == "postgresql" and engine.url.database == pg_url.rsplit("/", 1)[1]
    assert servers[0].services.store.engine is not servers[1].services.store.engine
    return servers


def at_once(jobs: list) -> list:
    """Run the callables on threads of their own, released together; return their results in order."""
    barrier = threading.Barrier(len(jobs))

    def run(job):
        barrier.wait(timeout=30)
        return job()

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(run, jobs))


def test_round_robin_over_three_accounts_stays_even_across_two_instances(make_server, pg_url, admin, fakes):
    """20 conversations, 10 through each instance at once: the shared cursor spreads them 7, 7, 6. (Each
    instance stepping a cursor of its own would give 4, 3, 3 twice: 8, 6, 6.)"""
    accounts = [openai_account(fake, name=f"oa{i}") for i, fake in enumerate(fakes)]
    a, b = two_instances(make_server, pg_url, accounts)
    key = a.create_user(admin, "alice")["api_key"]
    jobs = [
        lambda s=server, i=i: s.post("/api/chat", key, json={"prompt": f"q{i}"}) for i in range(10) for server in (a, b)
    ]
    answers = at_once(jobs)
    assert [x.status_code for x in answers] == [200] * 20, [x.text for x in answers if x.status_code != 200]
    counts = Counter(x.json()["account"] for x in answers)
    assert set(counts) == {"oa0", "oa1", "oa2"}
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    assert sorted(len(fake.chats()) for fake in fakes) == sorted(counts.values())
    stored = [a.services.store.get(x.json()["conversation_id"]) for x in answers]
    assert all(c is not None and c.message_count == 1 for c in stored)  # each instance's turns reached the database


def test_per_minute_limit_admits_exactly_n_of_3n_concurrent_requests_over_two_instances(make_server, pg_url, admin):
    """requests_per_minute 5: of 15 conversations sent at once, 8 and 7 to the instances, exactly 5 pass; each
    remaining count 4..0 is given once; the other 10 are 429 and the upstream sees exactly 5."""
    n = 5
    with FakeOpenAI() as fake:
        fake.delay = 0.2  # the admitted requests are still upstream while the others are refused
        a, b = two_instances(make_server, pg_url, [openai_account(fake)], limits={"user": {"requests_per_minute": n}})
        key = a.create_user(admin, "alice")["api_key"]
        jobs = [lambda s=(a, b)[i % 2], i=i: s.post("/api/chat", key, json={"prompt": f"q{i}"}) for i in range(3 * n)]
        answers = at_once(jobs)
        assert Counter(x.status_code for x in answers) == {200: n, 429: 2 * n}, [x.text for x in answers]
        ok = [x for x in answers if x.status_code == 200]
        assert sorted(int(x.headers["x-ratelimit-remaining-requests"]) for x in ok) == list(range(n))
        assert all(x.json()["code"] == "rate_limit_exceeded" for x in answers if x.status_code == 429)
        assert len(fake.chats()) == n
        assert b.post("/api/chat", key, json={"prompt": "one more"}).status_code == 429


def test_max_concurrent_is_exact_across_two_instances(make_server, pg_url, admin):
    """16 follow-ups at once over two instances, each pinned to the one account (no round-robin cursor to
    queue on: only the write lock orders their choices): the account limited to 2 at once never sees more."""
    with FakeOpenAI() as fake:
        a, b = two_instances(make_server, pg_url, [openai_account(fake, max_concurrent=2)], queue_timeout=30)
        key = a.create_user(admin, "alice")["api_key"]
        started = [a.chat(key, f"topic {i}") for i in range(16)]
        fake.delay = 0.1
        fake.reset_peak()
        jobs = [
            lambda s=(a, b)[i % 2], c=c: s.post(
                "/api/chat", key, json={"prompt": "more", "conversation_id": c["conversation_id"]}
            )
            for i, c in enumerate(started)
        ]
        answers = at_once(jobs)
        assert [x.status_code for x in answers] == [200] * 16, [x.text for x in answers if x.status_code != 200]
        assert fake.max_in_flight == 2


def test_one_alert_per_event_across_two_instances(make_server, pg_url, admin, fakes):
    """Two refused accounts (401) seen by both instances at once: the webhook hears once of each account and
    once of the class that has none left (alerts_sent is claimed in a write: read, then insert)."""
    x, y, _ = fakes
    x.fail_status = y.fail_status = 401
    with FakeWebhook() as hook:
        accounts = [openai_account(x, name="x"), openai_account(y, name="y")]
        a, b = two_instances(make_server, pg_url, accounts, alerts={"webhook_url": hook.url})
        key = a.create_user(admin, "alice")["api_key"]
        jobs = [lambda s=(a, b)[i % 2], i=i: s.post("/api/chat", key, json={"prompt": f"q{i}"}) for i in range(16)]
        statuses = [answer.status_code for answer in at_once(jobs)]
        assert set(statuses) <= {502, 503}, statuses
        calls = hook.wait_for(3, timeout=10)
        time.sleep(0.5)
        assert Counter(c["body"]["event"] for c in calls) == {"needs_attention": 2, "class_down": 1}
        assert len(hook.received) == 3, [c["body"] for c in hook.received]


def test_an_account_cooling_after_a_429_on_one_instance_is_cooling_on_the_other(make_server, pg_url, admin, fakes):
    limited, other, _ = fakes
    limited.rate_limit("30")
    accounts = [openai_account(limited, name="limited"), openai_account(other, name="other")]
    a, b = two_instances(make_server, pg_url, accounts)
    key = a.create_user(admin, "alice")["api_key"]
    while not limited.chats():  # round robin reaches "limited" within two conversations
        assert len(other.chats()) < 2
        assert a.chat(key, "warm up")["account"] == "other"
    shown = b.get("/api/accounts/limited", admin).json()
    assert shown["state"] == "cooling" and "429" in shown["last_error"]["message"], shown
    answers = [b.chat(key, f"q{i}") for i in range(6)]
    assert {x["account"] for x in answers} == {"other"}
    assert len(limited.chats()) == 1, "the other instance sent a request to the resting account"


def test_follow_ups_on_two_instances_keep_one_history(make_server, pg_url, admin):
    """A conversation continued alternately through both instances: every turn is stored, in order, and
    a follow-up sent to both at once on the same parent is taken by one and refused (409) by the other."""
    with FakeOpenAI() as fake:
        a, b = two_instances(make_server, pg_url, [openai_account(fake)])
        key = a.create_user(admin, "alice")["api_key"]
        first = a.chat(key, "turn 0")
        cid, parent = first["conversation_id"], first["message_id"]
        for i in range(1, 5):
            answer = (a, b)[i % 2].chat(key, f"turn {i}", conversation_id=cid, parent_message_id=parent)
            parent = answer["message_id"]
        fake.delay = 0.3
        jobs = [
            lambda s=s: s.post(
                "/api/chat", key, json={"prompt": "race", "conversation_id": cid, "parent_message_id": parent}
            )
            for s in (a, b)
        ]
        statuses = sorted(x.status_code for x in at_once(jobs))
        assert statuses == [200, 409], statuses
        prompts = [m.prompt for m in b.services.store.messages(cid)]
        assert prompts == [f"turn {i}" for i in range(5)] + ["race"]


def test_a_write_held_up_past_write_wait_is_a_503_not_a_500(pg_url, monkeypatch):
    """Another session holding the write lock: a write waits WRITE_WAIT, then is Busy (503, Retry-After)."""
    monkeypatch.setattr(conversation_store, "WRITE_WAIT", 0.3)
    store = SqlConversationStore(pg_url)
    state = SqlPoolState(store, lease_seconds=30)
    try:
        assert state.choose("c", [Candidate("x")]).name == "x"
        port = store.engine.url.port
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname={store.engine.url.database}") as holder:
            holder.execute(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")
            with pytest.raises(conversation_store.Busy) as refused:
                state.choose("c", [Candidate("x")])
            assert refused.value.retry_after == 2
            holder.rollback()
        assert state.choose("c", [Candidate("x")]).name == "x"  # free again
    finally:
        store.close()


def test_long_cursor_names_step_apart(pg_url):
    """A model's cursor longer than pool_cursors.name holds (PostgreSQL enforces String(160)) is shortened
    with a digest of the whole: it steps on, and another long name with the same start has a cursor of its own."""
    store = SqlConversationStore(pg_url)
    state = SqlPoolState(store, lease_seconds=30)
    try:
        one, two = "model:" + "m" * 300 + ":0", "model:" + "m" * 300 + ":1"
        assert [state.next_cursor(one) for _ in range(3)] == [0, 1, 2]
        assert state.next_cursor(two) == 0
        assert state.next_cursor("model:short:0") == 0
    finally:
        store.close()
