"""The account pool over real HTTP: round robin, pinning, plus classes, gone accounts and own access tokens."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest
from fakes import FakeOpenAI
from upstream_fixtures import (
    FAST,
    chat_requests,
    last_prompt,
    openai_account,
    start_with_user,
    timed_chat,
    web_account,
)

OWN_TOKEN = "eyJ-own-access-token-PLAINTEXT-7f3a9c"
OTHER_TOKEN = "eyJ-someone-elses-token-0b1d2e"


@pytest.fixture
def openai_fakes():
    """Four running FakeOpenAI servers."""
    with ExitStack() as stack:
        yield [stack.enter_context(FakeOpenAI()) for _ in range(4)]


def keys_seen(fake) -> Counter:
    """Count the chat requests a fake received per Authorization header."""
    return Counter(r["headers"]["authorization"].removeprefix("Bearer ") for r in chat_requests(fake))


# -- round robin and pinning -------------------------------------------------------------------


def test_round_robin_spreads_concurrent_new_conversations(make_server, admin, openai_fakes):
    """32 concurrent new conversations over 4 free accounts give each account 8 (N/k, within one)."""
    accounts = [openai_account(fake, name=f"free-{i}") for i, fake in enumerate(openai_fakes)]
    server, key = start_with_user(make_server, admin, accounts)
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda i: timed_chat(server, key, f"question {i}"), range(32)))
    assert [r.status_code for r, _ in results] == [200] * 32, [r.text for r, _ in results if r.status_code != 200]
    per_fake = [len(chat_requests(fake)) for fake in openai_fakes]
    assert sum(per_fake) == 32
    assert all(7 <= n <= 9 for n in per_fake), per_fake
    per_answer = Counter(r.json()["account"] for r, _ in results)
    assert per_answer == {f"free-{i}": n for i, n in enumerate(per_fake)}
    turns = [server.chat(key, f"later {i}")["account"] for i in range(8)]  # one at a time: a strict cycle
    assert turns[:4] == turns[4:] and len(set(turns[:4])) == 4, turns


def test_follow_ups_stay_on_the_account_that_started(make_server, admin, openai_fakes):
    """Interleaved concurrent follow-ups from several users each reach the fake that took the first turn."""
    fakes = openai_fakes[:3]
    accounts = [openai_account(fake, name=f"acct-{i}") for i, fake in enumerate(fakes)]
    server, _ = start_with_user(make_server, admin, accounts)
    users = [server.create_user(admin, f"user-{n}")["api_key"] for n in range(6)]
    started = [server.chat(key, f"u{n} turn 0") for n, key in enumerate(users)]
    assert len({a["account"] for a in started}) == 3  # the first turns were spread over every account

    def follow_ups(n: int) -> list[int]:
        conversation_id = started[n]["conversation_id"]
        return [
            timed_chat(server, users[n], f"u{n} turn {t}", conversation_id=conversation_id)[0].status_code
            for t in range(1, 5)
        ]

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert list(pool.map(follow_ups, range(6))) == [[200] * 4] * 6
    fake_of = {f"acct-{i}": fake for i, fake in enumerate(fakes)}
    for n, answer in enumerate(started):
        mine = {f"u{n} turn {t}" for t in range(5)}
        for name, fake in fake_of.items():
            seen = {last_prompt(r) for r in chat_requests(fake)} & mine
            assert seen == (mine if name == answer["account"] else set()), (n, name)


# -- plus classes ------------------------------------------------------------------------------

FREE_KEYS, PLUS_KEYS = ("sk-free-a", "sk-free-b"), ("sk-plus-a", "sk-plus-b")


def mixed_accounts(fake) -> list[dict]:
    """Two free and two plus accounts on one fake, told apart by their keys."""
    return [openai_account(fake, name=key, api_key=key, plus=key in PLUS_KEYS) for key in FREE_KEYS + PLUS_KEYS]


def test_plain_user_asking_plus_true_is_403(make_server, admin, openai_fake):
    """A user without plus may not ask for plus accounts, and nothing goes upstream."""
    server, key = start_with_user(make_server, admin, mixed_accounts(openai_fake))
    response, _ = timed_chat(server, key, "hi", plus="true")
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "forbidden"
    assert chat_requests(openai_fake) == []


@pytest.mark.parametrize(
    "user_plus, plus, expected",
    [
        (False, "any", FREE_KEYS),
        (False, "false", FREE_KEYS),
        (True, "true", PLUS_KEYS),
        (True, "false", FREE_KEYS),
        (True, "any", FREE_KEYS + PLUS_KEYS),
    ],
)
def test_plus_mode_chooses_the_account_class(make_server, admin, openai_fake, user_plus, plus, expected):
    """plus=any is free for a plain user; plus=true for a plus user uses only (all) plus accounts."""
    server, key = start_with_user(make_server, admin, mixed_accounts(openai_fake), plus=user_plus)
    for n in range(3 * len(expected)):
        assert timed_chat(server, key, f"q{n}", plus=plus)[0].status_code == 200
    assert keys_seen(openai_fake) == dict.fromkeys(expected, 3)


def test_plus_true_without_plus_account_is_503(make_server, admin, openai_fake):
    """A plus user asking plus=true when only free accounts exist gets 503 naming the plus class."""
    server, key = start_with_user(make_server, admin, [openai_account(openai_fake)], plus=True)
    response, _ = timed_chat(server, key, "hi", plus="true")
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == "no_account_available"
    assert "plus" in body["message"]
    assert chat_requests(openai_fake) == []


@pytest.mark.parametrize("state", ["none configured", "all disabled"])
def test_no_enabled_account_is_503(make_server, admin, openai_fake, state):
    """With no enabled account at all a new conversation gets 503."""
    accounts = [] if state == "none configured" else [openai_account(openai_fake, enabled=False)]
    server, key = start_with_user(make_server, admin, accounts)
    response, _ = timed_chat(server, key, "hi")
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "no_account_available"
    assert chat_requests(openai_fake) == []


# -- the pinned account goes away --------------------------------------------------------------


@pytest.mark.parametrize("change", ["disabled", "removed"])
def test_follow_up_on_gone_openai_account_moves_with_its_history(make_server, admin, openai_fake, change):
    """After a restart without the pinned openai account, a follow-up goes on elsewhere with the whole history."""
    first = openai_account(openai_fake, name="first", api_key="sk-first")
    server, key = start_with_user(make_server, admin, [first])
    conversation_id = server.chat(key, "hello")["conversation_id"]
    server.stop()
    other = openai_account(openai_fake, name="other", api_key="sk-other")
    accounts = [{**first, "enabled": False}, other] if change == "disabled" else [other]
    restarted = make_server(accounts, timeouts=FAST)  # same tmp_path: same users.json and database
    response, _ = timed_chat(restarted, key, "again", conversation_id=conversation_id)
    assert response.status_code == 200, response.text
    assert response.json()["account"] == "other" and response.json()["account_changed"] is True
    assert keys_seen(openai_fake) == {"sk-first": 1, "sk-other": 1}
    sent = chat_requests(openai_fake)[-1]["body"]["messages"]
    assert [m["content"] for m in sent] == ["hello", "echo: hello", "again"]
    then = restarted.chat(key, "and on", conversation_id=conversation_id)  # re-pinned: stays on "other"
    assert then["account"] == "other" and then["account_changed"] is False


@pytest.mark.parametrize("change, says", [("disabled", "disabled"), ("removed", "no longer configured")])
def test_follow_up_on_gone_chatgpt_web_account_is_409(make_server, admin, web_fake, change, says):
    """A conversation that lives upstream cannot move: without its account a follow-up gets 409."""
    first = web_account(web_fake, name="first")
    server, key = start_with_user(make_server, admin, [first])
    conversation_id = server.chat(key, "hello")["conversation_id"]
    server.stop()
    other = web_account(web_fake, name="other", access_token="web-token-other-000")
    accounts = [{**first, "enabled": False}, other] if change == "disabled" else [other]
    restarted = make_server(accounts, timeouts=FAST)
    response, _ = timed_chat(restarted, key, "again", conversation_id=conversation_id)
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["code"] == "conflict"
    assert "'first'" in body["message"] and says in body["message"]
    assert len(chat_requests(web_fake)) == 1


# -- bring your own access token ---------------------------------------------------------------


@pytest.fixture
def own_token_chat(make_server, admin, web_fake):
    """A server with no accounts whose byo_account points at the fake, after one turn on OWN_TOKEN."""
    server, key = start_with_user(make_server, admin, [], byo_account={"base_url": web_fake.url})
    answer = server.chat(key, "my own account", access_token=OWN_TOKEN)
    return server, key, answer


def test_own_token_reaches_upstream_with_that_token(own_token_chat, web_fake):
    """The first turn goes to byo_account.base_url with the caller's token as Bearer."""
    _, _, answer = own_token_chat
    assert answer["reply"] == "web echo: my own account"
    assert answer["account"] == "own access token"
    [sent] = web_fake.requests_to("/backend-api/conversation")
    assert sent["headers"]["authorization"] == f"Bearer {OWN_TOKEN}"


@pytest.mark.parametrize("token, status", [(None, 409), (OTHER_TOKEN, 403)], ids=["no-token", "other-token"])
def test_own_token_follow_up_needs_the_same_token(own_token_chat, web_fake, token, status):
    """A follow-up without the token is 409, with another token 403; neither reaches the upstream."""
    server, key, answer = own_token_chat
    extra = {"access_token": token} if token else {}
    response, _ = timed_chat(server, key, "follow", conversation_id=answer["conversation_id"], **extra)
    assert response.status_code == status, response.text
    assert OWN_TOKEN not in response.text
    assert len(web_fake.requests_to("/backend-api/conversation")) == 1


def test_own_token_follow_up_with_same_token_continues_upstream(own_token_chat, web_fake):
    """With the same token the follow-up reaches the same upstream conversation."""
    server, key, answer = own_token_chat
    [upstream_id] = web_fake.conversations
    follow = server.chat(key, "and then?", conversation_id=answer["conversation_id"], access_token=OWN_TOKEN)
    assert follow["reply"] == "web echo: and then?"
    sent = web_fake.requests_to("/backend-api/conversation")[-1]
    assert sent["headers"]["authorization"] == f"Bearer {OWN_TOKEN}"
    assert sent["body"]["conversation_id"] == upstream_id
    assert [p for p, _ in web_fake.conversations[upstream_id]] == ["my own account", "and then?"]


def test_own_token_plaintext_is_never_stored(own_token_chat, tmp_path):
    """No file the server writes (users.json, the SQLite database and its WAL) holds the token."""
    server, key, answer = own_token_chat
    server.chat(key, "more", conversation_id=answer["conversation_id"], access_token=OWN_TOKEN)
    server.stop()  # let SQLite checkpoint so the database file holds every row
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"users.json", "conversations.db"}
    assert b"my own account" in b"".join(p.read_bytes() for p in files)  # the conversation is stored
    for path in files:
        assert OWN_TOKEN.encode() not in path.read_bytes(), path.name


def test_rejected_own_token_is_502_and_stores_nothing(make_server, admin, web_fake):
    """An access token the upstream refuses gives 502 without echoing it, and no conversation is kept."""
    web_fake.tokens = {OWN_TOKEN}
    server, key = start_with_user(make_server, admin, [], byo_account={"base_url": web_fake.url})
    response, _ = timed_chat(server, key, "hi", access_token=OTHER_TOKEN)
    assert response.status_code == 502, response.text
    assert response.json()["code"] == "upstream_error"
    assert OTHER_TOKEN not in response.text
    assert server.get("/api/conversations", key).json()["total"] == 0
