"""Account health over real HTTP: states, cooldowns, backoff, failover, follow-ups that move, limits,
session-token refresh and alerts, each proved at the fake upstreams and in the answers."""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from email.utils import formatdate, parsedate_to_datetime

import openai
import pytest
import requests
from fakes import FakeChatGPTWeb, FakeOpenAI, FakeWebhook, make_jwt
from fakes.chatgpt_web_server import SESSION_PATH, session_token_of
from openai import OpenAI
from upstream_fixtures import (
    FAST,
    chat_requests,
    closed_port,
    openai_account,
    start_with_user,
    timed_chat,
    web_account,
)

# Long enough that an account that failed stays out for the whole test, unless a test says otherwise.
HEALTH = {"rate_limit_cooldown": 30, "rate_limit_max": 3600, "backoff_start": 30, "backoff_max": 600}
SESSION = "next-auth-session-token-0123456789abcdef"
MODEL = "fake-model"


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def fakes():
    """Return make(n): n running FakeOpenAI servers, all stopped after the test."""
    with ExitStack() as stack:
        yield lambda n: [stack.enter_context(FakeOpenAI()) for _ in range(n)]


@pytest.fixture
def webhook():
    with FakeWebhook() as hook:
        yield hook


def start(make_server, admin, accounts, plus=False, health=None, **overrides):
    """A live server (short timeouts, HEALTH updated by health) and a new user's key."""
    return start_with_user(make_server, admin, accounts, plus=plus, health={**HEALTH, **(health or {})}, **overrides)


def ask(server, key, prompt="hi", **params) -> requests.Response:
    """POST /api/chat on a fresh connection."""
    return timed_chat(server, key, prompt, **params)[0]


def info(server, admin, name: str) -> dict:
    """GET /api/accounts/<name> as the admin."""
    response = server.get(f"/api/accounts/{name}", admin)
    assert response.status_code == 200, response.text
    return response.json()


def state(server, admin, name: str) -> str:
    return info(server, admin, name)["state"]


def retry_after(response) -> int:
    """The Retry-After header as whole seconds (it must be there)."""
    assert "Retry-After" in response.headers, (response.status_code, dict(response.headers), response.text)
    value = int(response.headers["Retry-After"])
    assert value >= 1
    return value


def sse(response) -> list[tuple[str | None, dict | str]]:
    """Parse a whole /api/chat event stream into (event name, data) pairs."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        text = "\n".join(data)
        try:
            events.append((name, json.loads(text)))
        except ValueError:
            events.append((name, text))
    return events


def stream_chat(server, key, prompt: str, **params) -> list[tuple[str | None, dict | str]]:
    with requests.Session() as session:
        session.trust_env = False
        response = session.post(
            server.url + "/api/chat",
            json={"prompt": prompt, "stream": True, **params},
            headers={"Authorization": f"Bearer {key}"},
            timeout=20,
        )
        return sse(response)


@contextlib.contextmanager
def sdk(server, key):
    """The official openai client on the server's /v1, no retries of its own."""
    client = OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=15)
    try:
        yield client
    finally:
        client.close()


def wait_until_reached(server, key, fake, limit: float = 6.0) -> tuple[float, requests.Response, list[int]]:
    """Send new conversations every 30 ms until one reaches fake.

    Return when it did (time.monotonic()), its answer, and the Retry-After of every 503 before it
    (each of which must not have reached the fake).
    """
    before, waits = fake.chat_count, []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        response = ask(server, key, "probe")
        if fake.chat_count > before:
            return time.monotonic(), response, waits
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "no_account_available"
        waits.append(retry_after(response))
        time.sleep(0.03)
    pytest.fail(f"no request reached the upstream within {limit}s")


def web_session_account(fake, **extra) -> dict:
    """A chatgpt-web account that renews its access token from the fake's session endpoint."""
    return {
        "name": "web",
        "type": "chatgpt-web",
        "session_token": SESSION,
        "auth_base": fake.base_url,
        "base_url": fake.url,
        **extra,
    }


def conversation_posts(fake) -> list[dict]:
    return fake.requests_to("/backend-api/conversation")


def bearer(record: dict) -> str:
    return record["headers"].get("authorization", "").removeprefix("Bearer ")


# -- cooldowns ---------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["seconds", "http-date", "absent", "capped"])
def test_429_cools_the_account_until_retry_after(make_server, admin, openai_fake, form):
    """A 429 keeps the account out until its Retry-After (seconds or HTTP date), the default without one,
    never longer than rate_limit_max; meanwhile callers get 503 with Retry-After and the upstream nothing."""
    health = {"rate_limit_cooldown": 1.5, "rate_limit_max": 1.2 if form == "capped" else 3600}
    server, key = start(make_server, admin, [openai_account(openai_fake)], health=health)
    started = time.time()
    header = {
        "seconds": "2",
        "http-date": formatdate(started + 3, usegmt=True),
        "absent": None,
        "capped": "3600",
    }[form]
    openai_fake.rate_limit(header, times=1)
    first = ask(server, key, "first")
    finished = time.time()
    assert first.status_code == 502, first.text
    assert first.json()["code"] == "upstream_error"
    retry_after(first)
    assert state(server, admin, "oa") == "cooling"
    if form == "http-date":
        low = high = parsedate_to_datetime(header).timestamp()
    else:
        seconds = {"seconds": 2.0, "absent": 1.5, "capped": 1.2}[form]
        low, high = started + seconds, finished + seconds
    reached, answer, waits = wait_until_reached(server, key, openai_fake)
    reached_at = time.time() - (time.monotonic() - reached)
    assert answer.status_code == 200, answer.text
    assert low - 0.1 <= reached_at <= high + 0.6, (reached_at - started, low - started, high - started)
    assert waits and all(w <= math.ceil(high - started) + 1 for w in waits), waits
    assert openai_fake.chat_count == 2
    assert state(server, admin, "oa") == "ok"


def test_transient_failures_back_off_doubling_to_the_cap_and_a_success_resets(
    make_server, admin, openai_fake, database
):
    """Each 5xx in a row doubles the rest (0.3, 0.6, 1.2, capped at 1.2); a success starts again at 0.3."""
    health = {"backoff_start": 0.3, "backoff_max": 1.2}
    server, key = start(make_server, admin, [openai_account(openai_fake)], health=health, **database)
    openai_fake.fail_status = 500

    def rest_after(response) -> float:
        """The seconds from a failed answer until the account took a request again."""
        assert response.status_code == 502, response.text
        failed = time.monotonic()
        reached, answer, _ = wait_until_reached(server, key, openai_fake)
        return reached - failed, answer

    gaps, answer = [], ask(server, key, "first")
    for _ in range(4):
        gap, answer = rest_after(answer)
        gaps.append(gap)
    for gap, expected in zip(gaps, (0.3, 0.6, 1.2, 1.2), strict=True):
        assert expected - 0.15 <= gap <= expected + 0.35, gaps
    assert info(server, admin, "oa")["errors"] == 5
    openai_fake.heal()
    _, healed, _ = wait_until_reached(server, key, openai_fake)  # after the last 1.2 s rest
    assert healed.status_code == 200, healed.text
    openai_fake.fail_status = 500
    gap, _ = rest_after(ask(server, key, "after the success"))
    assert 0.15 <= gap <= 0.65, gap  # back to backoff_start, not 2.4 capped to 1.2


@pytest.mark.parametrize(
    "status, counted",
    [(400, False), (404, False), (409, False), (413, False), (422, False), (500, True), (502, True), (503, True)],
)
def test_which_upstream_failures_count_against_the_account(make_server, admin, openai_fake, status, counted):
    """A 5xx rests the account (the caller gets a 502); 400/404/409/413/422 are the request's own fault, reach the
    caller with the upstream's own status and words, and leave the account ok."""
    server, key = start(make_server, admin, [openai_account(openai_fake)])
    openai_fake.fail_status, openai_fake.fail_times = status, 2
    first = ask(server, key, "one")
    assert first.status_code == (502 if counted else status), first.text
    if not counted:
        assert first.json()["message"] == openai_fake.fail_message, first.text
    second = ask(server, key, "two")
    if counted:
        assert second.status_code == 503, second.text
        retry_after(second)
        assert openai_fake.chat_count == 1
        assert state(server, admin, "oa") == "cooling"
    else:
        assert second.status_code == status, second.text
        assert openai_fake.chat_count == 2
        assert state(server, admin, "oa") == "ok"
        assert ask(server, key, "three").status_code == 200
        assert openai_fake.chat_count == 3


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_need_attention_until_re_enabled(make_server, admin, fakes, status):
    """401/403: the turn goes to the other account, and the refused one takes nothing, however long,
    until an admin re-enables it."""
    bad, good = fakes(2)
    bad.fail_status = status
    accounts = [openai_account(bad, name="bad"), openai_account(good, name="good")]
    server, key = start(
        make_server, admin, accounts, health={"backoff_start": 0.2, "rate_limit_cooldown": 0.2}, from_file=True
    )
    answers = [ask(server, key, f"q{n}") for n in range(4)]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert {a.json()["account"] for a in answers} == {"good"}
    assert bad.chat_count == 1 and good.chat_count == 4
    shown = info(server, admin, "bad")
    assert shown["state"] == "needs_attention" and shown["cooling_until"] is None
    assert f"({status})" in shown["last_error"]["message"]
    time.sleep(0.5)  # longer than any cooldown: needs_attention does not wear off
    assert {ask(server, key, f"later {n}").json()["account"] for n in range(3)} == {"good"}
    assert bad.chat_count == 1
    assert server.get("/api/health").json()["states"] == {"ok": 1, "cooling": 0, "needs_attention": 1, "disabled": 0}
    bad.heal()
    patched = server.call("PATCH", "/api/accounts/bad", admin, json={"enabled": True})
    assert patched.status_code == 200, patched.text
    assert patched.json()["state"] == "ok"
    names = Counter(ask(server, key, f"again {n}").json()["account"] for n in range(4))
    assert names == {"bad": 2, "good": 2}


def test_health_counts_states_and_is_503_while_no_account_can_take_a_conversation(make_server, admin, fakes, database):
    """/api/health counts accounts per state; 503 while none is ok, 200 again once one comes back."""
    cooling, attention, off = fakes(3)
    accounts = [
        openai_account(cooling, name="a"),
        openai_account(attention, name="b"),
        openai_account(off, name="c", enabled=False),
    ]
    server, key = start(make_server, admin, accounts, health={"backoff_start": 1.0}, **database)
    up = server.get("/api/health")
    assert up.status_code == 200, up.text
    assert up.json()["states"] == {"ok": 2, "cooling": 0, "needs_attention": 0, "disabled": 1}
    cooling.fail_status, attention.fail_status = 500, 401
    assert ask(server, key).status_code == 502  # both tried in this one request
    down = server.get("/api/health")
    assert down.status_code == 503, down.text
    assert down.json()["status"] == "unavailable"
    assert down.json()["states"] == {"ok": 0, "cooling": 1, "needs_attention": 1, "disabled": 1}
    time.sleep(1.2)
    back = server.get("/api/health")
    assert back.status_code == 200, back.text
    assert back.json()["states"] == {"ok": 1, "cooling": 0, "needs_attention": 1, "disabled": 1}


# -- failover before the first byte ------------------------------------------------------------


@pytest.mark.parametrize("front", ["json", "stream", "v1", "v1-stream"])
def test_failover_before_the_first_byte_is_transparent(make_server, admin, fakes, front):
    """The failing account's turn goes to the next one; the caller sees a normal answer on every front."""
    failing, working = fakes(2)
    failing.fail_status = 503
    accounts = [openai_account(failing, name="a", model=MODEL), openai_account(working, name="b", model=MODEL)]
    server, key = start(make_server, admin, accounts)
    for n in range(3):
        prompt = f"question {n}"
        if front == "json":
            answer = ask(server, key, prompt)
            assert answer.status_code == 200, answer.text
            assert (answer.json()["reply"], answer.json()["account"]) == (f"echo: {prompt}", "b")
        elif front == "stream":
            events = stream_chat(server, key, prompt)
            names = [name for name, _ in events]
            assert "error" not in names and names[-1] == "done", events
            assert "".join(d["text"] for name, d in events if name == "delta") == f"echo: {prompt}"
            assert events[-1][1]["account"] == "b"
        else:
            with sdk(server, key) as client:
                messages = [{"role": "user", "content": prompt}]
                if front == "v1":
                    reply = client.chat.completions.create(model=MODEL, messages=messages)
                    text = reply.choices[0].message.content
                else:
                    chunks = client.chat.completions.create(model=MODEL, messages=messages, stream=True)
                    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == f"echo: {prompt}"
    assert failing.chat_count == 1  # tried once, then left to cool
    assert working.chat_count == 3
    assert state(server, admin, "a") == "cooling"


@pytest.mark.parametrize("kind", ["500", "429", "refused", "dead-proxy", "hang", "cut-before-any-text"])
def test_every_kind_of_failure_fails_over_and_rests_the_account(make_server, admin, fakes, kind):
    """5xx, 429, a refused connection, a dead proxy, silence past the read timeout and a stream cut
    before any text each send the turn on to the next account and rest the one that failed."""
    failing, working = fakes(2)
    first = openai_account(failing, name="a")
    timeouts = FAST
    if kind == "500":
        failing.fail_status = 500
    elif kind == "429":
        failing.rate_limit("30")
    elif kind == "refused":
        first["base_url"] = f"http://127.0.0.1:{closed_port()}/v1"
    elif kind == "dead-proxy":
        first["proxy"] = f"socks5://127.0.0.1:{closed_port()}"
    elif kind == "hang":
        failing.hang, timeouts = 3.0, {"connect": 1, "read": 1}
    else:
        failing.cut_after = 0
    server, key = start(make_server, admin, [first, openai_account(working, name="b")], timeouts=timeouts)
    results = [timed_chat(server, key, f"q{n}") for n in range(3)]
    for response, _ in results:
        assert response.status_code == 200, response.text
        assert response.json()["account"] == "b"
    assert working.chat_count == 3
    assert failing.chat_count == (0 if kind in ("refused", "dead-proxy") else 1)
    assert state(server, admin, "a") == "cooling"
    assert [x["in_flight"] for x in server.get("/api/accounts", admin).json()["accounts"]] == [0, 0]
    if kind == "hang":
        slowest = max(seconds for _, seconds in results)
        assert 0.9 <= slowest < 2.5, [s for _, s in results]  # one read timeout, then the other account
        assert sorted(s for _, s in results)[1] < 0.9  # the others never waited for the silent one


def test_no_failover_once_text_reached_the_caller(make_server, admin, fakes):
    """A stream cut after its first piece ends with an error event, stays on its account, and counts
    against it: the next turns go elsewhere."""
    cutting, working = fakes(2)
    cutting.reply_text, cutting.cut_after = "one two three four five six", 1
    server, key = start(make_server, admin, [openai_account(cutting, name="a"), openai_account(working, name="b")])
    events = []
    for n in range(2):  # round robin: within two new conversations one goes to "a"
        before = working.chat_count
        events = stream_chat(server, key, f"stream {n}")
        if cutting.chat_count:
            assert working.chat_count == before  # the cut turn did not move
            break
    assert cutting.chat_count == 1
    names = [name for name, _ in events]
    assert names[0] == "delta" and names[-1] == "error" and "done" not in names, events
    assert events[0][1]["text"] == "one "
    assert events[-1][1]["code"] == "upstream_error"
    assert state(server, admin, "a") == "cooling"
    later = [ask(server, key, f"later {n}").json()["account"] for n in range(3)]
    assert later == ["b"] * 3
    assert cutting.chat_count == 1


def test_no_failover_once_text_reached_a_v1_stream(make_server, admin, fakes):
    """On /v1 a stream cut after its first piece raises in the SDK after that piece; nothing moves."""
    cutting, working = fakes(2)
    cutting.reply_text, cutting.cut_after = "one two three four five six", 1
    working.reply_text = "from b"
    accounts = [openai_account(cutting, name="a", model=MODEL), openai_account(working, name="b", model=MODEL)]
    server, key = start(make_server, admin, accounts)
    with sdk(server, key) as client:
        messages = [{"role": "user", "content": "hi"}]
        got = []
        with pytest.raises(openai.APIError):
            for chunk in client.chat.completions.create(model=MODEL, messages=messages, stream=True):
                got.extend(c.delta.content or "" for c in chunk.choices)
        assert "".join(got) == "one "
        assert (cutting.chat_count, working.chat_count) == (1, 0)
        assert client.chat.completions.create(model=MODEL, messages=messages).choices[0].message.content == "from b"
    assert state(server, admin, "a") == "cooling"


@pytest.mark.parametrize("kind, status", [("500", 502), ("429", 502), ("hang", 504), ("refused", 502)])
def test_the_only_account_failing_answers_its_own_status_with_retry_after(
    make_server, admin, openai_fake, kind, status
):
    """When the one eligible account fails in this very request, the caller gets that failure (502/504)
    with Retry-After; the next request gets 503 with Retry-After, without reaching the upstream."""
    account, timeouts = openai_account(openai_fake), {"connect": 1, "read": 1}
    if kind == "500":
        openai_fake.fail_status = 500
    elif kind == "429":
        openai_fake.rate_limit("30")
    elif kind == "hang":
        openai_fake.hang = 3.0
    else:
        account["base_url"] = f"http://127.0.0.1:{closed_port()}/v1"
    server, key = start(make_server, admin, [account], timeouts=timeouts)
    failed = ask(server, key)
    assert failed.status_code == status, failed.text
    assert failed.json()["code"] == ("upstream_timeout" if status == 504 else "upstream_error")
    retry_after(failed)
    count = openai_fake.chat_count
    later = ask(server, key)
    assert later.status_code == 503, later.text
    assert 25 <= retry_after(later) <= 30
    assert openai_fake.chat_count == count


@pytest.mark.parametrize("kind, rest", [("429", 7), ("500", 4)])
def test_retry_after_of_a_failure_says_when_the_account_comes_back(make_server, admin, openai_fake, kind, rest):
    """docs/API.md §2.7: the failure answer's Retry-After is the seconds until the first account comes back."""
    server, key = start(make_server, admin, [openai_account(openai_fake)], health={"backoff_start": 4})
    if kind == "429":
        openai_fake.rate_limit(str(rest))
    else:
        openai_fake.fail_status = 500
    failed = ask(server, key)
    assert failed.status_code == 502, failed.text
    assert rest - 1 <= retry_after(failed) <= rest


def test_all_accounts_down_is_503_with_retry_after(make_server, admin, fakes):
    """Once every eligible account rests, a new conversation is 503 with Retry-After (on /v1 in OpenAI's
    shape), and nothing reaches an upstream."""
    a, b = fakes(2)
    a.fail_status = b.fail_status = 500
    accounts = [openai_account(a, name="a", model=MODEL), openai_account(b, name="b", model=MODEL)]
    server, key = start(make_server, admin, accounts)
    first = ask(server, key)
    assert first.status_code == 502, first.text
    assert (a.chat_count, b.chat_count) == (1, 1)  # both tried in that one request
    down = ask(server, key)
    assert down.status_code == 503, down.text
    assert down.json()["code"] == "no_account_available"
    assert 25 <= retry_after(down) <= 30
    v1 = requests.post(
        server.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert v1.status_code == 503, v1.text
    assert set(v1.json()["error"]) == {"message", "type", "param", "code"}
    assert v1.json()["error"]["code"] == "no_account_available"
    assert 25 <= retry_after(v1) <= 30
    streamed = server.post("/api/chat", key, json={"prompt": "hi", "stream": True})
    assert streamed.status_code == 503, streamed.text  # a plain error, not a 200 stream with an error in it
    assert streamed.headers["Content-Type"].startswith("application/json")
    retry_after(streamed)
    with sdk(server, key) as client, pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
    assert refused.value.status_code == 503
    assert (a.chat_count, b.chat_count) == (1, 1)


def test_a_stream_whose_only_account_fails_first_is_a_plain_error(make_server, admin, openai_fake):
    """stream=true: an account failing before any text is the failure's own status and JSON, not a 200 stream."""
    openai_fake.fail_status = 500
    server, key = start(make_server, admin, [openai_account(openai_fake)])
    response = server.post("/api/chat", key, json={"prompt": "hi", "stream": True})
    assert response.status_code == 502, response.text
    assert response.json()["code"] == "upstream_error"
    retry_after(response)


def test_each_account_is_tried_at_most_once_per_turn(make_server, admin, fakes):
    """Three failing accounts: one turn tries each exactly once, then answers the failure."""
    three = fakes(3)
    for fake in three:
        fake.fail_status = 502
    server, key = start(make_server, admin, [openai_account(f, name=f"a{n}") for n, f in enumerate(three)])
    assert ask(server, key).status_code == 502
    assert [f.chat_count for f in three] == [1, 1, 1]
    assert server.get("/api/health").json()["states"]["cooling"] == 3


def test_failover_stops_after_one_connect_and_one_read_timeout(make_server, admin, fakes):
    """Three silent accounts: the turn tries others only within connect + read timeout of its start, so a
    caller waits about two read timeouts, not three, and the third account is never asked."""
    three = fakes(3)
    for fake in three:
        fake.hang = 4.0
    accounts = [openai_account(f, name=f"a{n}") for n, f in enumerate(three)]
    server, key = start(make_server, admin, accounts, timeouts={"connect": 1, "read": 1})
    response, seconds = timed_chat(server, key, "hello?")
    assert response.status_code == 504, response.text
    assert response.json()["code"] == "upstream_timeout"
    assert 1.9 <= seconds < 2.8, seconds
    assert sorted(f.chat_count for f in three) == [0, 1, 1]


@pytest.mark.parametrize("scenario", ["chatgpt-web-follow-up", "openai-follow-up", "failover-time-spent"])
def test_every_failure_answer_has_retry_after(make_server, admin, fakes, scenario):
    """A follow-up whose (only) account answers 429 now, or a turn whose failover time ran out: the failure
    (502/504) still says when to come back."""
    if scenario == "failover-time-spent":
        three = fakes(3)
        for fake in three:
            fake.hang = 4.0
        accounts = [openai_account(f, name=f"a{n}") for n, f in enumerate(three)]
        server, key = start(make_server, admin, accounts, timeouts={"connect": 1, "read": 1})
        response = ask(server, key, "hello?")
        assert response.status_code == 504, response.text
        retry_after(response)
        return
    with FakeChatGPTWeb() if scenario == "chatgpt-web-follow-up" else FakeOpenAI() as fake:
        account = web_account(fake) if scenario == "chatgpt-web-follow-up" else openai_account(fake)
        server, key = start(make_server, admin, [account])
        conversation_id = server.chat(key, "hello")["conversation_id"]
        fake.rate_limit("20")
        response = ask(server, key, "again", conversation_id=conversation_id)
        assert response.status_code == 502, response.text
        assert 15 <= retry_after(response) <= 20


def test_v1_is_429_when_every_account_is_rate_limited(make_server, admin, fakes):
    """Every account resting after a 429: /v1 answers 429 rate_limit_exceeded with Retry-After (the SDK's
    RateLimitError); /api/chat 503; one account resting after a 5xx instead makes /v1 a 503."""
    a, b = fakes(2)
    a.rate_limit("30")
    b.rate_limit("20")
    accounts = [openai_account(a, name="a", model=MODEL), openai_account(b, name="b", model=MODEL)]
    server, key = start(make_server, admin, accounts)
    messages = [{"role": "user", "content": "hi"}]
    with sdk(server, key) as client:
        with pytest.raises(openai.APIStatusError) as first:
            client.chat.completions.create(model=MODEL, messages=messages)
        assert first.value.status_code == 502
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model=MODEL, messages=messages)
        response = limited.value.response
        assert response.status_code == 429
        assert 15 <= int(response.headers["Retry-After"]) <= 20  # the first one back
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        chat = ask(server, key)
        assert chat.status_code == 503, chat.text
        retry_after(chat)
        assert (a.chat_count, b.chat_count) == (1, 1)


def test_v1_is_503_when_an_account_rests_after_a_5xx(make_server, admin, fakes):
    """One account resting after a 429 and one after a 5xx: not every one is rate limited, so /v1 says 503."""
    a, b = fakes(2)
    a.rate_limit("30")
    b.fail_status = 500
    accounts = [openai_account(a, name="a", model=MODEL), openai_account(b, name="b", model=MODEL)]
    server, key = start(make_server, admin, accounts)
    messages = [{"role": "user", "content": "hi"}]
    with sdk(server, key) as client:
        with pytest.raises(openai.APIStatusError) as first:
            client.chat.completions.create(model=MODEL, messages=messages)
        assert first.value.status_code == 502
        with pytest.raises(openai.APIStatusError) as unavailable:
            client.chat.completions.create(model=MODEL, messages=messages)
    assert unavailable.value.status_code == 503
    assert unavailable.value.response.json()["error"]["code"] == "no_account_available"
    assert 25 <= retry_after(unavailable.value.response) <= 30
    assert (a.chat_count, b.chat_count) == (1, 1)


# -- follow-ups --------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["cooling", "needs_attention", "disabled", "removed", "fails-now"])
def test_openai_follow_up_moves_with_its_whole_history(make_server, admin, fakes, change):
    """A follow-up whose openai account is unusable (or fails before its first byte) goes on another free
    account with the whole stored history, says account_changed, and stays there."""
    a, b = fakes(2)
    server, key = start(make_server, admin, [openai_account(a, name="a"), openai_account(b, name="b")], from_file=True)
    started = server.chat(key, "hello")
    assert started["account"] == "a"
    conversation_id = started["conversation_id"]
    if change in ("cooling", "needs_attention"):
        a.fail_status = 500 if change == "cooling" else 401
        tested = server.post("/api/accounts/a/test", admin)
        assert tested.status_code == 200 and tested.json()["ok"] is False, tested.text
        assert state(server, admin, "a") == change
    elif change == "disabled":
        assert server.call("PATCH", "/api/accounts/a", admin, json={"enabled": False}).status_code == 200
    elif change == "removed":
        assert server.call("DELETE", "/api/accounts/a", admin).status_code == 200
    else:
        a.fail_status = 500
    on_a = a.chat_count
    moved = ask(server, key, "again", conversation_id=conversation_id)
    assert moved.status_code == 200, moved.text
    assert (moved.json()["account"], moved.json()["account_changed"]) == ("b", True)
    assert a.chat_count == on_a + (1 if change == "fails-now" else 0)
    sent = chat_requests(b)[-1]["body"]["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "hello"),
        ("assistant", "echo: hello"),
        ("user", "again"),
    ]
    a.heal()
    if change in ("cooling", "needs_attention"):
        server.call("PATCH", "/api/accounts/a", admin, json={"enabled": True})  # "a" is usable again
    then = server.chat(key, "and on", conversation_id=conversation_id)
    assert (then["account"], then["account_changed"]) == ("b", False)  # re-pinned
    assert [m["content"] for m in chat_requests(b)[-1]["body"]["messages"]] == [
        "hello",
        "echo: hello",
        "again",
        "echo: again",
        "and on",
    ]
    assert a.chat_count == on_a + (1 if change == "fails-now" else 0)


def test_a_streamed_follow_up_moves_too(make_server, admin, fakes):
    """stream=true: a follow-up whose account fails before its first byte streams from the other account,
    with the history, and its done event says account_changed."""
    a, b = fakes(2)
    server, key = start(make_server, admin, [openai_account(a, name="a"), openai_account(b, name="b")])
    conversation_id = server.chat(key, "hello")["conversation_id"]
    a.fail_status = 502
    events = stream_chat(server, key, "again", conversation_id=conversation_id)
    assert [name for name, _ in events][-1] == "done" and "error" not in [name for name, _ in events]
    done = events[-1][1]
    assert (done["account"], done["account_changed"], done["reply"]) == ("b", True, "echo: again")
    assert [m["content"] for m in chat_requests(b)[-1]["body"]["messages"]] == ["hello", "echo: hello", "again"]


def test_plus_follow_up_never_moves_to_a_free_account(make_server, admin, fakes):
    """A plus conversation whose account is down has no other plus account: 503, and the free one gets nothing."""
    plus, free = fakes(2)
    accounts = [openai_account(plus, name="p", plus=True), openai_account(free, name="f")]
    server, key = start(make_server, admin, accounts, plus=True)
    conversation_id = server.chat(key, "hello", plus="true")["conversation_id"]
    plus.fail_status = 500
    response = ask(server, key, "again", conversation_id=conversation_id)
    assert response.status_code == 502, response.text
    assert free.chat_count == 0
    later = ask(server, key, "later", conversation_id=conversation_id)
    assert later.status_code == 503, later.text
    assert free.chat_count == 0 and plus.chat_count == 2


@pytest.mark.parametrize("alone", [True, False], ids=["only-account", "every-account-down"])
def test_openai_follow_up_with_nowhere_to_go_is_503_with_retry_after(make_server, admin, fakes, alone):
    """An openai follow-up whose account rests and that no other account can carry: 503 with Retry-After."""
    a, b = fakes(2)
    accounts = [openai_account(a, name="a")] + ([] if alone else [openai_account(b, name="b")])
    server, key = start(make_server, admin, accounts)
    conversation_id = server.chat(key, "hello")["conversation_id"]
    a.fail_status = b.fail_status = 500
    assert server.post("/api/accounts/a/test", admin).json()["ok"] is False
    if not alone:
        assert server.post("/api/accounts/b/test", admin).json()["ok"] is False
    counts = (a.chat_count, b.chat_count)
    response = ask(server, key, "again", conversation_id=conversation_id)
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "no_account_available"
    assert 25 <= retry_after(response) <= 30
    assert (a.chat_count, b.chat_count) == counts


@pytest.mark.parametrize("change", ["cooling", "needs_attention", "disabled", "removed"])
def test_chatgpt_web_follow_up_waits_for_its_own_account(make_server, admin, fakes, change):
    """A chatgpt-web conversation cannot move: 503 with Retry-After while its account cools, 503 while it
    needs attention, 409 once it is disabled or removed; another account never gets the follow-up."""
    with FakeChatGPTWeb() as web, FakeChatGPTWeb() as other:
        accounts = [web_account(web, name="w"), web_account(other, name="w2", access_token="other-token-0123")]
        server, key = start(make_server, admin, accounts, from_file=True)
        conversation_id = server.chat(key, "hello")["conversation_id"]
        assert len(conversation_posts(web)) == 1, "the first turn went to 'w'"
        if change == "cooling":
            web.rate_limit("20")
        elif change == "needs_attention":
            web.fail_status = 401
        if change in ("cooling", "needs_attention"):
            assert server.post("/api/accounts/w/test", admin).json()["ok"] is False
            assert state(server, admin, "w") == change
        elif change == "disabled":
            assert server.call("PATCH", "/api/accounts/w", admin, json={"enabled": False}).status_code == 200
        else:
            assert server.call("DELETE", "/api/accounts/w", admin).status_code == 200
        posts = len(conversation_posts(web))
        response = ask(server, key, "again", conversation_id=conversation_id)
        if change in ("cooling", "needs_attention"):
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "no_account_available"
            assert "'w'" in response.json()["message"]
            if change == "cooling":
                assert 15 <= retry_after(response) <= 20
        else:
            assert response.status_code == 409, response.text
            assert response.json()["code"] == "conflict"
        assert len(conversation_posts(web)) == posts
        assert conversation_posts(other) == []


# -- per-account limits ------------------------------------------------------------------------


def test_max_concurrent_is_never_exceeded_under_64_callers(make_server, admin, fakes, database):
    """64 concurrent new conversations over accounts limited to 3 and 2 at once: every one is answered,
    and neither upstream ever sees more than its limit in flight (but does reach it)."""
    a, b = fakes(2)
    for fake in (a, b):
        fake.reply_text, fake.stream_delay = "one two three four", 0.04
    accounts = [openai_account(a, name="a", max_concurrent=3), openai_account(b, name="b", max_concurrent=2)]
    server, key = start(make_server, admin, accounts, queue_timeout=30, **database)
    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(lambda n: timed_chat(server, key, f"q{n}")[0], range(64)))
    assert [r.status_code for r in results] == [200] * 64, [r.text for r in results if r.status_code != 200][:3]
    assert a.chat_count + b.chat_count == 64
    assert (a.max_in_flight, b.max_in_flight) == (3, 2)
    listed = {x["name"]: x for x in server.get("/api/accounts", admin).json()["accounts"]}
    assert (listed["a"]["in_flight"], listed["b"]["in_flight"]) == (0, 0)  # every lease was let go


@pytest.mark.parametrize("front", ["api", "v1"])
def test_a_caller_leaving_mid_stream_lets_go_of_its_slot(make_server, admin, openai_fake, front):
    """max_concurrent 1: a caller that leaves mid-stream frees the slot at once (not when a lease expires)."""
    openai_fake.reply_text, openai_fake.stream_delay = "a slow reply " * 20, 0.2
    account = openai_account(openai_fake, max_concurrent=1, model=MODEL)
    server, key = start(make_server, admin, [account], queue_timeout=3, timeouts=FAST)
    path, body, marker = "/api/chat", {"prompt": "long", "stream": True}, b"event: delta"
    if front == "v1":
        path, marker = "/v1/chat/completions", b"chat.completion.chunk"
        body = {"model": MODEL, "messages": [{"role": "user", "content": "long"}], "stream": True}
    with requests.post(
        server.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, stream=True, timeout=10
    ) as response:
        assert response.status_code == 200
        assert marker in next(response.iter_content(None))
        assert info(server, admin, "oa")["in_flight"] == 1
    deadline = time.monotonic() + 3
    while info(server, admin, "oa")["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert info(server, admin, "oa")["in_flight"] == 0
    openai_fake.stream_delay = 0
    answer, seconds = timed_chat(server, key, "next")
    assert answer.status_code == 200, answer.text
    assert seconds < 2


def test_rpm_limits_requests_per_minute_per_account(make_server, admin, fakes, database):
    """Accounts allowed 2 and 1 requests a minute take 3 new conversations; the 4th waits queue_timeout
    and gets 503 with a Retry-After of about a minute, without reaching an upstream."""
    a, b = fakes(2)
    accounts = [openai_account(a, name="a", rpm=2), openai_account(b, name="b", rpm=1)]
    server, key = start(make_server, admin, accounts, queue_timeout=0.4, **database)
    assert [ask(server, key, f"q{n}").status_code for n in range(3)] == [200] * 3
    assert (a.chat_count, b.chat_count) == (2, 1)
    refused, seconds = timed_chat(server, key, "one too many")
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "no_account_available"
    assert 50 <= retry_after(refused) <= 60
    assert 0.1 <= seconds < 3  # it waited (the pool gives up when its next pause would pass the deadline)
    assert (a.chat_count, b.chat_count) == (2, 1)


@pytest.mark.parametrize("queue_timeout, waits", [(0.4, False), (4.0, True)])
def test_a_full_account_makes_callers_wait_up_to_queue_timeout(make_server, admin, openai_fake, queue_timeout, waits):
    """With its one slot taken, a second caller waits: for room (then it is answered) or, past
    queue_timeout, gets 503 with Retry-After."""
    openai_fake.hang = 1.5
    server, key = start(
        make_server,
        admin,
        [openai_account(openai_fake, max_concurrent=1)],
        queue_timeout=queue_timeout,
        timeouts={"connect": 1, "read": 4},
    )
    first: list = []
    holder = threading.Thread(target=lambda: first.append(timed_chat(server, key, "first")))
    holder.start()
    deadline = time.monotonic() + 5
    while openai_fake.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert openai_fake.in_flight == 1
    second, seconds = timed_chat(server, key, "second")
    holder.join(10)
    assert first[0][0].status_code == 200, first[0][0].text
    if waits:
        assert second.status_code == 200, second.text
        assert openai_fake.chat_count == 2 and openai_fake.max_in_flight == 1
        assert seconds >= 1.0  # it waited for the first one to end
    else:
        assert second.status_code == 503, second.text
        assert second.json()["code"] == "no_account_available"
        retry_after(second)
        assert queue_timeout - 0.26 <= seconds < 1.4  # its last pause (0.25 s at most) is not taken
        assert openai_fake.chat_count == 1


def test_round_robin_stays_even_within_each_class(make_server, admin, openai_fake, database):
    """Concurrent free and plus conversations spread evenly (within one) over each class's accounts."""
    free, plus = ["f1", "f2", "f3"], ["p1", "p2"]
    accounts = [openai_account(openai_fake, name=k, api_key=k, max_concurrent=50) for k in free]
    accounts += [openai_account(openai_fake, name=k, api_key=k, plus=True, rpm=1000) for k in plus]
    server, key = start(make_server, admin, accounts, plus=True, **database)
    asks = [("false", n) for n in range(30)] + [("true", n) for n in range(20)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda a: ask(server, key, f"q{a[1]}", plus=a[0]), asks))
    assert all(r.status_code == 200 for r in results)
    seen = Counter(r["headers"]["authorization"].removeprefix("Bearer ") for r in chat_requests(openai_fake))
    assert sum(seen[k] for k in free) == 30 and sum(seen[k] for k in plus) == 20
    assert all(9 <= seen[k] <= 11 for k in free), seen
    assert all(9 <= seen[k] <= 11 for k in plus), seen


# -- session tokens ----------------------------------------------------------------------------


def test_session_token_fetches_the_access_token_it_starts_without(make_server, admin, web_fake):
    """An account with only a session_token asks the session endpoint (with the next-auth cookie) for an
    access token before its first turn, uses it, and keeps it for the next turns."""
    web_fake.tokens = set()  # only tokens handed out by the session endpoint are accepted
    web_fake.sessions = {SESSION: "access-from-the-session-1"}
    server, key = start(make_server, admin, [web_session_account(web_fake)])
    first = server.chat(key, "hello")
    assert first["reply"] == "web echo: hello"
    [lookup] = web_fake.requests_to(SESSION_PATH)
    assert lookup["method"] == "GET"
    assert session_token_of(lookup["headers"]["cookie"]) == SESSION
    assert [bearer(r) for r in conversation_posts(web_fake)] == ["access-from-the-session-1"]
    server.chat(key, "and again", conversation_id=first["conversation_id"])
    assert [bearer(r) for r in conversation_posts(web_fake)] == ["access-from-the-session-1"] * 2
    assert len(web_fake.requests_to(SESSION_PATH)) == 1
    shown = info(server, admin, "web")
    assert shown["state"] == "ok"
    assert SESSION not in json.dumps(shown) and "access-from-the-session-1" not in json.dumps(shown)


class SlowSessionWeb(FakeChatGPTWeb):
    """A FakeChatGPTWeb whose session endpoint takes 0.3 s to answer."""

    def session_for(self, session_token):
        time.sleep(0.3)
        return super().session_for(session_token)


def test_many_first_requests_share_one_session_lookup(make_server, admin):
    """Eight conversations at once on an account that starts without an access token: the seven that come
    while the first one's session lookup is running wait for it instead of looking up again."""
    with SlowSessionWeb() as web:
        web.tokens = set()
        web.sessions = {SESSION: "access-shared-by-all"}
        server, key = start(make_server, admin, [web_session_account(web)], timeouts={"connect": 1, "read": 3})
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda n: ask(server, key, f"q{n}"), range(8)))
        assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
        assert len(web.requests_to(SESSION_PATH)) == 1
        assert [bearer(r) for r in conversation_posts(web)] == ["access-shared-by-all"] * 8


@pytest.mark.parametrize("left, refreshed", [(-60, True), (60, True), (4 * 60, True), (3600, False)])
def test_a_jwt_about_to_expire_is_refreshed_before_use(make_server, admin, web_fake, left, refreshed):
    """An access token whose JWT exp is less than 5 minutes away (or past) is renewed before it is sent."""
    old, new = make_jwt(time.time() + left, sub="old"), make_jwt(time.time() + 7200, sub="new")
    web_fake.tokens = {old}  # the old one would still be accepted: only a refresh changes the token sent
    web_fake.sessions = {SESSION: new}
    server, key = start(make_server, admin, [web_session_account(web_fake, access_token=old)])
    assert server.chat(key, "hello")["reply"] == "web echo: hello"
    lookups = web_fake.requests_to(SESSION_PATH)
    posts = conversation_posts(web_fake)
    if refreshed:
        assert len(lookups) == 1
        assert web_fake.requests.index(lookups[0]) < web_fake.requests.index(posts[0])
        assert [bearer(r) for r in posts] == [new]
    else:
        assert lookups == []
        assert [bearer(r) for r in posts] == [old]


def test_a_refused_token_is_refreshed_and_the_turn_tried_once_more(make_server, admin, web_fake):
    """A 401 makes the account fetch a new access token and try again once; the caller sees a normal answer."""
    web_fake.tokens = set()
    web_fake.sessions = {SESSION: "renewed-access-token-42"}
    server, key = start(make_server, admin, [web_session_account(web_fake, access_token="stale-access-token")])
    assert server.chat(key, "hello")["reply"] == "web echo: hello"
    assert [bearer(r) for r in conversation_posts(web_fake)] == ["stale-access-token", "renewed-access-token-42"]
    assert len(web_fake.requests_to(SESSION_PATH)) == 1
    assert state(server, admin, "web") == "ok"
    server.chat(key, "again")
    assert bearer(conversation_posts(web_fake)[-1]) == "renewed-access-token-42"
    assert len(web_fake.requests_to(SESSION_PATH)) == 1


def test_a_token_refused_again_after_refresh_needs_attention(make_server, admin, web_fake):
    """Refused, refreshed, refused again: exactly one retry, then the account needs attention."""
    web_fake.sessions = {SESSION: "renewed-but-refused-too"}
    web_fake.fail_status = 401
    server, key = start(make_server, admin, [web_session_account(web_fake, access_token="stale-access-token")])
    failed = ask(server, key)
    assert failed.status_code == 502, failed.text
    assert "renewed-but-refused-too" not in failed.text and SESSION not in failed.text
    assert [bearer(r) for r in conversation_posts(web_fake)] == ["stale-access-token", "renewed-but-refused-too"]
    assert len(web_fake.requests_to(SESSION_PATH)) == 1
    assert state(server, admin, "web") == "needs_attention"
    assert ask(server, key).status_code == 503
    assert len(conversation_posts(web_fake)) == 2


@pytest.mark.parametrize("session, expected", [("empty", "needs_attention"), ("500", "cooling")])
def test_a_session_endpoint_without_a_token(make_server, admin, web_fake, session, expected):
    """A session answer without accessToken ({}) means the session_token is dead: needs_attention; a
    session endpoint that fails (500) is a passing failure: cooling."""
    if session == "500":
        web_fake.session_fail_status = 500
    web_fake.sessions = {}  # the session token is unknown: the endpoint answers {}
    server, key = start(make_server, admin, [web_session_account(web_fake)])
    failed = ask(server, key)
    assert failed.status_code == 502, failed.text
    assert SESSION not in failed.text
    assert len(web_fake.requests_to(SESSION_PATH)) == 1
    assert conversation_posts(web_fake) == []
    assert state(server, admin, "web") == expected
    assert ask(server, key).status_code == 503
    assert len(web_fake.requests_to(SESSION_PATH)) == 1


# -- alerts ------------------------------------------------------------------------------------


def test_alerts_are_sent_once_per_event(make_server, admin, fakes, webhook, database):
    """Two free accounts refused: one alert for each needing attention and one for the free class having
    none left, however many requests see it; the plus class stays quiet; a new event is a new alert."""
    a, b, p = fakes(3)
    a.fail_status = b.fail_status = 401
    accounts = [openai_account(a, name="a"), openai_account(b, name="b"), openai_account(p, name="p", plus=True)]
    server, key = start(make_server, admin, accounts, alerts={"webhook_url": webhook.url}, from_file=True, **database)
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda n: ask(server, key, f"q{n}").status_code, range(6)))
    assert set(statuses) <= {502, 503} and 502 in statuses, statuses
    for name in ("a", "b"):
        assert server.post(f"/api/accounts/{name}/test", admin).json()["ok"] is False  # seen again: no new alert
    calls = webhook.wait_for(3)
    time.sleep(0.5)  # anything more would arrive by now
    assert len(webhook.received) == 3, [c["body"] for c in webhook.received]
    bodies = [c["body"] for c in calls]
    assert all(set(body) == {"content", "text", "event"} and body["content"] == body["text"] for body in bodies)
    assert Counter(body["event"] for body in bodies) == {"needs_attention": 2, "class_down": 1}
    attention = sorted(body["text"] for body in bodies if body["event"] == "needs_attention")
    assert "'a'" in attention[0] and "'b'" in attention[1]
    [down] = [body["text"] for body in bodies if body["event"] == "class_down"]
    assert "free" in down and "plus" not in down
    assert server.get("/api/health").status_code == 200  # the plus account is still ok
    assert p.chat_count == 0
    # Re-enabling "a" clears its state and its alerts: failing again is a new event, told again.
    assert server.call("PATCH", "/api/accounts/a", admin, json={"enabled": True}).json()["state"] == "ok"
    assert ask(server, key, "a fails again").status_code == 502
    webhook.wait_for(5)
    time.sleep(0.3)
    events = [c["body"]["event"] for c in webhook.received]
    assert Counter(events) == {"needs_attention": 3, "class_down": 2}, events


def test_a_slow_webhook_does_not_hold_requests(make_server, admin, fakes):
    """Alerts go beside the request: a webhook that takes 3 s to answer leaves failover as quick as ever."""
    a, b = fakes(2)
    a.fail_status = 401
    with FakeWebhook() as hook:
        hook.delay = 3.0
        accounts = [openai_account(a, name="a"), openai_account(b, name="b")]
        server, key = start(make_server, admin, accounts, alerts={"webhook_url": hook.url})
        results = [timed_chat(server, key, f"q{n}") for n in range(3)]
        assert [r.status_code for r, _ in results] == [200] * 3
        assert max(seconds for _, seconds in results) < 1.5, [s for _, s in results]
        assert state(server, admin, "a") == "needs_attention"
        assert [c["body"]["event"] for c in hook.wait_for(1, timeout=6)] == ["needs_attention"]
