"""The usage ledger over real HTTP: one entry per turn from every front, the upstream's token counts (or an
estimate, marked), cut streams and errors, and GET /api/usage's groups, totals, dates and scoping."""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from itertools import combinations

import pytest
import requests
from fakes import FakeChatGPTWeb, FakeOpenAI
from test_web_pages import Browser, ask_on_page
from upstream_fixtures import FAST, NO_COOLDOWN, chat_requests, openai_account, web_account

COUNTS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "errors", "cut", "estimated")
GROUPS = ("user", "account", "model", "day")


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def fakes():
    """make(n): n running FakeOpenAI servers, stopped after the test."""
    with ExitStack() as stack:
        yield lambda n: [stack.enter_context(FakeOpenAI()) for _ in range(n)]


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def day(offset: int) -> str:
    return (datetime.now(UTC) + timedelta(days=offset)).strftime("%Y-%m-%d")


def report(server, key, **params) -> dict:
    response = server.get("/api/usage", key, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def totals(server, key, **params) -> dict:
    return report(server, key, **params)["totals"]


def by(server, key, group: str, **params) -> dict:
    """The report grouped by one key, as {group value: that group's counts}."""
    return {g[group]: g for g in report(server, key, group_by=group, **params)["groups"]}


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not seen within {timeout}s")
        time.sleep(0.05)


def fake_usage(fake) -> tuple[int, int]:
    """The prompt and completion tokens a FakeOpenAI reported over every chat request it answered."""
    counted = [FakeOpenAI.usage(r["body"], fake.reply_for(r["body"])) for r in chat_requests(fake)]
    return sum(c["prompt_tokens"] for c in counted), sum(c["completion_tokens"] for c in counted)


def stream_and_hang_up(server, key, path: str, body: dict) -> str:
    """Start a streamed answer, read until its first piece of text, and close the connection."""
    with requests.Session() as session:
        session.trust_env = False
        response = session.post(
            server.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, stream=True, timeout=20
        )
        assert response.status_code == 200, response.text
        seen = ""
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("data:") and ('"text"' in line or '"content":"x' in line):
                seen = line
                break
        response.close()
    assert seen, "no text arrived before the hang-up"
    return seen


def assert_counts(group: dict, **expected) -> None:
    got = {k: group[k] for k in expected}
    assert got == expected, group


# -- every front, one entry each, with the upstream's counts ---------------------------------------------


def test_every_front_records_one_entry_with_the_upstreams_token_counts(make_server, admin, fakes, database):
    (fake,) = fakes(1)
    server = make_server([openai_account(fake)], timeouts=FAST, **database)
    made = server.create_user(admin, "alice")
    key = made["api_key"]
    browser = Browser(server).log_in(key)
    fronts = {
        "api": lambda: server.post("/api/chat", key, json={"prompt": "one two"}),
        "api stream": lambda: server.post("/api/chat", key, json={"prompt": "three four five", "stream": True}),
        "page": lambda: ask_on_page(browser, "six").response,
        "page stream": lambda: (
            browser.request(
                "POST",
                "/chat",
                data={"prompt": "seven eight", "csrf_token": browser.page("/chat").token},
                headers={"Accept": "text/event-stream"},
            ).response
        ),
        "v1": lambda: server.post("/v1/chat/completions", key, json={"messages": [{"role": "user", "content": "a"}]}),
        "v1 stream": lambda: server.post(
            "/v1/chat/completions", key, json={"messages": [{"role": "user", "content": "b c"}], "stream": True}
        ),
    }
    for count, (front, send) in enumerate(fronts.items(), start=1):
        answer = send()
        assert answer.status_code == 200, (front, answer.text[:300])
        assert totals(server, key)["requests"] == count, f"{front} did not add exactly one entry"
    prompt, completion = fake_usage(fake)
    assert len(chat_requests(fake)) == len(fronts)
    expected = {
        "requests": len(fronts),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "errors": 0,
        "cut": 0,
        "estimated": 0,
    }
    assert totals(server, key) == expected
    assert totals(server, admin) == expected
    assert by(server, admin, "account") == {"oa": {"account": "oa", **expected}}
    assert by(server, admin, "model") == {"gpt-4o-mini": {"model": "gpt-4o-mini", **expected}}
    assert by(server, admin, "day") == {today(): {"day": today(), **expected}}
    assert by(server, admin, "user") == {made["user_id"]: {"user": made["user_id"], "username": "alice", **expected}}
    assert server.get("/api/me", key).json()["today"] == {
        "day": today(),
        "requests": len(fronts),
        "tokens": prompt + completion,
    }


def test_an_upstream_without_token_counts_is_estimated_and_marked(make_server, admin):
    """ChatGPT web gives no usage: four characters a token, of the prompt sent and the reply, marked estimated."""
    with FakeChatGPTWeb() as web:
        server = make_server([web_account(web)], timeouts=FAST)
        key = server.create_user(admin, "alice")["api_key"]
        prompt = "how many tokens is this prompt?"
        answer = server.chat(key, prompt)
    assert answer["reply"] == f"web echo: {prompt}"
    sent, got = math.ceil(len(prompt) / 4), math.ceil(len(answer["reply"]) / 4)
    assert_counts(
        totals(server, key), requests=1, prompt_tokens=sent, completion_tokens=got, total_tokens=sent + got, estimated=1
    )


def test_the_demo_account_gives_its_own_token_counts(make_server, admin):
    server = make_server()  # the demo account only
    key = server.create_user(admin, "alice")["api_key"]
    answer = server.chat(key, "count these four words")
    usage = answer["usage"]
    assert usage["prompt_tokens"] == 4 and usage["completion_tokens"] == len(answer["reply"].split()), usage
    assert_counts(
        totals(server, key),
        requests=1,
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
        estimated=0,
    )
    assert list(by(server, key, "account")) == ["demo"]
    assert list(by(server, key, "model")) == ["demo"]


# -- cut streams and errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/chat", {"prompt": "tell me a long story", "stream": True}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "long"}], "stream": True}),
    ],
    ids=["api", "v1"],
)
def test_a_stream_the_caller_hangs_up_on_is_recorded_as_cut(make_server, admin, fakes, path, body):
    (fake,) = fakes(1)
    fake.reply_text, fake.chunk_size, fake.stream_delay = "x" * 400, 4, 0.1  # 10 s of reply if nobody left
    server = make_server([openai_account(fake)], timeouts=FAST)
    key = server.create_user(admin, "alice")["api_key"]
    started = time.monotonic()
    stream_and_hang_up(server, key, path, body)
    cut = wait_for(lambda: (t := totals(server, key))["requests"] and t)
    assert time.monotonic() - started < 6, "the turn ran on after the caller left"
    assert_counts(cut, requests=1, cut=1, errors=0)
    assert by(server, admin, "account")["oa"]["cut"] == 1


def test_upstream_errors_and_turns_no_account_took_are_counted_as_errors_per_account(
    make_server, admin, fakes, database
):
    free, paid = fakes(2)
    server = make_server(
        [openai_account(free, name="free"), openai_account(paid, name="paid", plus=True)],
        timeouts=FAST,
        health=NO_COOLDOWN,
        **database,
    )
    plain = server.create_user(admin, "alice")["api_key"]
    plus = server.create_user(admin, "paula", plus=True)["api_key"]
    free.fail_status, free.fail_times = 500, 1
    failed = server.post("/api/chat", plain, json={"prompt": "hi"})
    assert failed.status_code == 502, failed.text
    assert server.post("/api/chat", plain, json={"prompt": "hi"}).status_code == 200
    assert server.post("/api/chat", plus, json={"prompt": "hi", "plus": "true"}).status_code == 200
    paid.fail_status, paid.fail_times = 500, 1
    v1 = server.post("/v1/chat/completions", plus, json={"model": "gpt-4o-mini", "messages": [{"role": "user"}]})
    assert v1.status_code == 400  # bad input: refused before the ledger hears of it
    assert paid.fail_times == 1 and len(chat_requests(paid)) == 1  # the bad request never reached it
    accounts = by(server, admin, "account")
    assert set(accounts) == {"free", "paid"}, accounts
    assert_counts(accounts["free"], requests=2, errors=1, cut=0)
    assert_counts(accounts["paid"], requests=1, errors=0)
    assert totals(server, admin)["errors"] == 1


def test_a_turn_no_account_could_take_is_an_error_without_an_account(make_server, admin, fakes):
    (fake,) = fakes(1)
    server = make_server([openai_account(fake)], timeouts=FAST)
    plus = server.create_user(admin, "paula", plus=True)["api_key"]
    refused = server.post("/api/chat", plus, json={"prompt": "hi", "plus": "true"})
    assert refused.status_code == 503, refused.text
    accounts = by(server, admin, "account")
    assert list(accounts) == [None], accounts
    assert_counts(accounts[None], requests=1, errors=1, prompt_tokens=0, completion_tokens=0)
    assert fake.requests == []


# -- who sees what ---------------------------------------------------------------------------------


@pytest.fixture
def cast(make_server, admin, database):
    """A demo server (on SQLite and on PostgreSQL) where alice, bob (the admin's), the bot and carol (the bot's,
    its id c-1), and dave (another bot's) each had turns: alice 1, bob 2, the bot 1 of its own, carol 2 (one
    spoken for by the bot), dave 1."""
    server = make_server(**database)
    alice = server.create_user(admin, "alice")
    bob = server.create_user(admin, "bob")
    bot = server.create_user(admin, "bot", role="client")
    other = server.create_user(admin, "other-bot", role="client")
    carol = server.create_user(bot["api_key"], "carol", user_id="c-1")
    dave = server.create_user(other["api_key"], "dave", user_id="d-1")
    server.chat(alice["api_key"], "hi")
    for _ in range(2):
        server.chat(bob["api_key"], "hi")
    server.chat(bot["api_key"], "hi")
    server.chat(carol["api_key"], "hi")
    assert server.chat(bot["api_key"], "hi", user_id="c-1")["api_user"] == carol["user_id"]
    server.chat(dave["api_key"], "hi")
    return {"server": server, **{u["username"]: u for u in (alice, bob, bot, other, carol, dave)}}


def requests_by_user(server, key, **params) -> dict[str, int]:
    return {g["username"]: g["requests"] for g in report(server, key, group_by="user", **params)["groups"]}


def test_a_user_sees_only_its_own_usage(cast):
    server, alice, bob = cast["server"], cast["alice"], cast["bob"]
    assert requests_by_user(server, alice["api_key"]) == {"alice": 1}
    assert totals(server, alice["api_key"])["requests"] == 1
    assert report(server, alice["api_key"], user_id=alice["user_id"])["totals"]["requests"] == 1
    for other in (bob["user_id"], cast["carol"]["user_id"], "admin", "nobody"):
        refused = server.get("/api/usage", alice["api_key"], params={"user_id": other})
        assert refused.status_code == 403, (other, refused.text)
        assert "groups" not in refused.json()


def test_a_client_sees_its_own_users_and_itself_and_nobody_else(cast):
    server, bot, carol = cast["server"], cast["bot"], cast["carol"]
    key = bot["api_key"]
    assert requests_by_user(server, key) == {"carol": 2, "bot": 1}
    assert totals(server, key)["requests"] == 3
    for who in ("c-1", carol["user_id"]):  # its own id for carol, or the server's
        assert requests_by_user(server, key, user_id=who) == {"carol": 2}, who
    for other in (cast["dave"]["user_id"], "d-1", cast["alice"]["user_id"], cast["other-bot"]["user_id"], "admin"):
        refused = server.get("/api/usage", key, params={"user_id": other})
        assert refused.status_code == 404, (other, refused.text)
    assert requests_by_user(server, cast["other-bot"]["api_key"]) == {"dave": 1}


def test_an_admin_sees_everyone(cast, admin):
    server = cast["server"]
    assert requests_by_user(server, admin) == {"alice": 1, "bob": 2, "bot": 1, "carol": 2, "dave": 1}
    assert totals(server, admin)["requests"] == 7
    assert requests_by_user(server, admin, user_id=cast["dave"]["user_id"]) == {"dave": 1}
    groups = report(server, admin, group_by="user")["groups"]
    assert [g["requests"] for g in groups] == sorted((g["requests"] for g in groups), reverse=True)  # biggest first
    missing = server.get("/api/usage", admin, params={"user_id": "nobody"})
    assert missing.status_code == 404, missing.text
    assert server.get("/api/usage").status_code == 401


# -- dates, groups and totals ------------------------------------------------------------------------


def test_from_and_to_choose_the_days(cast, admin):
    server = cast["server"]
    everything = report(server, admin)
    assert (everything["from"], everything["to"]) == (day(-29), today())  # the last 30 days by default
    assert totals(server, admin, **{"from": today(), "to": today()})["requests"] == 7
    assert totals(server, admin, **{"from": day(-3)})["requests"] == 7
    for params in ({"from": day(1), "to": day(5)}, {"to": day(-1)}, {"from": "2020-01-01", "to": "2020-12-31"}):
        empty = report(server, admin, group_by="day", **params)
        assert empty["groups"] == [], params
        assert empty["totals"] == dict.fromkeys(COUNTS, 0), params
    shown = report(server, admin, **{"from": "2020-02-29", "to": day(0)})
    assert (shown["from"], shown["to"], shown["totals"]["requests"]) == ("2020-02-29", today(), 7)


@pytest.mark.parametrize(
    "params, param",
    [
        ({"from": "2026-02-30"}, "from"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026/01/01"}, "to"),
        ({"to": "20260101"}, "to"),
        ({"from": "2026-01-02", "to": "2026-01-01"}, "from"),
        ({"group_by": "users"}, "group_by"),
        ({"group_by": "user,front"}, "group_by"),
        ({"group_by": "day,"}, "group_by"),
    ],
)
def test_bad_dates_and_groups_answer_400_naming_the_parameter(cast, admin, params, param):
    response = cast["server"].get("/api/usage", admin, params=params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status"] == "error" and body["param"] == param and param in body["message"], body


def test_groups_combine_and_their_counts_add_up_to_the_totals(cast, admin):
    server, carol = cast["server"], cast["carol"]
    server.post("/api/chat", carol["api_key"], json={"prompt": "hi", "plus": "true"})  # 403: not in the ledger
    whole = totals(server, admin)
    assert whole["requests"] == 7 and whole["total_tokens"] == whole["prompt_tokens"] + whole["completion_tokens"]
    for size in (1, 2, 4):
        for combo in combinations(GROUPS, size):
            shown = report(server, admin, group_by=",".join(combo))
            assert shown["group_by"] == list(combo)
            assert shown["totals"] == whole, combo
            for group in shown["groups"]:
                assert set(combo) <= set(group), (combo, group)
                assert group["total_tokens"] == group["prompt_tokens"] + group["completion_tokens"]
            for name in COUNTS:
                assert sum(g[name] for g in shown["groups"]) == whole[name], (combo, name)
    keys = {tuple(g[k] for k in GROUPS) for g in report(server, admin, group_by=",".join(GROUPS))["groups"]}
    assert len(keys) == 5  # one group per user: every turn was today, on the demo account and model
    posted = server.post("/api/usage", admin, json={"group_by": ["user", "day"]})
    assert posted.status_code == 200, posted.text
    assert posted.json()["group_by"] == ["user", "day"] and len(posted.json()["groups"]) == 5
