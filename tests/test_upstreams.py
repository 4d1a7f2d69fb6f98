"""Each account type against a real fake upstream: what goes up, what comes back, and how failures look."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fakes import FakeChatGPTWeb, FakeOpenAI
from upstream_fixtures import (
    NO_COOLDOWN,
    chat_requests,
    closed_port,
    conversation_total,
    openai_account,
    start_with_user,
    timed_chat,
    web_account,
)

API_KEY = "sk-upstream-secret-0123456789abcdef"
ACCESS_TOKEN = "eyJ-web-access-token-0123456789abcdef"


@pytest.fixture(params=["openai", "chatgpt-web"])
def upstream(request):
    """A running fake of each account type, the account that uses it and that account's secret."""
    if request.param == "openai":
        with FakeOpenAI() as fake:
            account = openai_account(fake, name="acct-oa", api_key=API_KEY)
            yield SimpleNamespace(fake=fake, account=account, secret=API_KEY, kind="openai")
    else:
        with FakeChatGPTWeb() as fake:
            account = web_account(fake, name="acct-web", access_token=ACCESS_TOKEN)
            yield SimpleNamespace(fake=fake, account=account, secret=ACCESS_TOKEN, kind="chatgpt-web")


def assert_upstream_error(response, status: int, code: str, account_name: str, secret: str) -> str:
    """Check the error JSON, that it names the account and hides the secret; return the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error"
    assert body["code"] == code
    assert f"'{account_name}'" in body["message"]
    assert secret not in response.text
    return body["message"]


# -- openai ----------------------------------------------------------------------------------


def test_openai_sends_key_and_model_and_returns_reply(make_server, admin, openai_fake):
    """The request carries the account's key and model; the fake's reply comes back as `reply`."""
    openai_fake.reply_text = "Hello from the fake model."
    account = openai_account(openai_fake, api_key=API_KEY, model="gpt-test-model")
    server, key = start_with_user(make_server, admin, [account])
    answer = server.chat(key, "Say hello")
    assert answer["reply"] == "Hello from the fake model."
    assert answer["account"] == "oa"
    [sent] = chat_requests(openai_fake)
    assert sent["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert sent["body"]["model"] == "gpt-test-model"
    assert sent["body"]["messages"] == [{"role": "user", "content": "Say hello"}]


def test_openai_follow_up_sends_whole_history(make_server, admin, openai_fake):
    """Each follow-up carries every stored user/assistant pair, oldest first, then the new prompt."""
    server, key = start_with_user(make_server, admin, [openai_account(openai_fake)])
    first = server.chat(key, "one")
    second = server.chat(key, "two", conversation_id=first["conversation_id"])
    third = server.chat(key, "three", conversation_id=first["conversation_id"])
    assert (first["reply"], second["reply"], third["reply"]) == ("echo: one", "echo: two", "echo: three")
    assert chat_requests(openai_fake)[-1]["body"]["messages"] == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "echo: one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "echo: two"},
        {"role": "user", "content": "three"},
    ]


def test_failed_follow_up_is_not_stored_or_resent(make_server, admin, openai_fake):
    """A follow-up the upstream refuses is not stored, so the next turn's history leaves it out."""
    # No cooldown after a failure (health.backoff_start 0), so the third turn reaches the upstream at once.
    server, key = start_with_user(make_server, admin, [openai_account(openai_fake)], health=NO_COOLDOWN)
    conversation_id = server.chat(key, "one")["conversation_id"]
    openai_fake.fail_status, openai_fake.fail_times = 500, 1
    response, _ = timed_chat(server, key, "lost", conversation_id=conversation_id)
    assert response.status_code == 502, response.text
    server.chat(key, "three", conversation_id=conversation_id)
    assert [m["content"] for m in chat_requests(openai_fake)[-1]["body"]["messages"]] == ["one", "echo: one", "three"]
    stored = server.get(f"/api/conversations/{conversation_id}", key).json()
    assert [m["prompt"] for m in stored["messages"]] == ["one", "three"]


# -- chatgpt web -----------------------------------------------------------------------------


def test_web_first_request_shape(make_server, admin, web_fake):
    """A new conversation posts action next, one user text message, and no conversation_id."""
    account = web_account(web_fake, access_token=ACCESS_TOKEN, model="gpt-web-model")
    server, key = start_with_user(make_server, admin, [account])
    answer = server.chat(key, "What is SOCKS5?")
    assert answer["reply"] == "web echo: What is SOCKS5?"
    [sent] = web_fake.requests_to("/backend-api/conversation")
    body = sent["body"]
    assert sent["headers"]["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert body["action"] == "next"
    assert body["model"] == "gpt-web-model"
    assert body["messages"][0]["author"]["role"] == "user"
    assert body["messages"][0]["content"] == {"content_type": "text", "parts": ["What is SOCKS5?"]}
    assert body.get("conversation_id") is None


def test_web_follow_up_names_upstream_conversation_and_parent(make_server, admin, web_fake):
    """A follow-up sends the upstream conversation_id and the last assistant message id as parent."""
    server, key = start_with_user(make_server, admin, [web_account(web_fake)])
    first = server.chat(key, "first question")
    [upstream_id] = web_fake.conversations
    parent = web_fake.last_message_ids[upstream_id]
    second = server.chat(key, "second question", conversation_id=first["conversation_id"])
    assert second["reply"] == "web echo: second question"
    body = web_fake.requests_to("/backend-api/conversation")[-1]["body"]
    assert body["conversation_id"] == upstream_id
    assert body["parent_message_id"] == parent
    assert [p for p, _ in web_fake.conversations[upstream_id]] == ["first question", "second question"]


@pytest.mark.parametrize("title_fails", [False, True], ids=["gen_title", "fallback"])
def test_web_title_from_gen_title_or_prompt(make_server, admin, web_fake, title_fails):
    """The title is the backend's gen_title answer, or the prompt when gen_title fails."""
    web_fake.title_fail = title_fails
    server, key = start_with_user(make_server, admin, [web_account(web_fake)])
    answer = server.chat(key, "Plan a trip to Lisbon")
    [upstream_id] = web_fake.conversations
    # the fake's title ("Title: Plan a trip to Lisb") differs from the prompt, so the two cases are told apart
    expected = "Plan a trip to Lisbon" if title_fails else web_fake.titles[upstream_id]
    assert answer["conversation_title"] == expected
    listed = server.get("/api/conversations", key).json()["conversations"]
    assert [c["title"] for c in listed] == [expected]


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
def test_web_cumulative_parts_become_one_reply(make_server, admin, web_fake, chunk_size):
    """Cumulative parts[0] events turn into the final text once, without repeats."""
    text = "The quick brown fox jumps over the lazy dog, twice: fox, fox."
    web_fake.reply_text, web_fake.chunk_size = text, chunk_size
    server, key = start_with_user(make_server, admin, [web_account(web_fake)])
    answer = server.chat(key, "tell me about foxes")
    assert answer["reply"] == text
    stored = server.get(f"/api/conversations/{answer['conversation_id']}", key).json()
    assert [m["reply"] for m in stored["messages"]] == [text]


# -- failures (both account types) -------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 429, 500])
def test_upstream_error_status_is_502_without_secret(make_server, admin, upstream, status):
    """An upstream 401/429/500 becomes our 502 naming the account, even when the upstream echoes the key."""
    upstream.fake.fail_status = status
    upstream.fake.fail_message = f"rejected credential {upstream.secret} (code {status})"
    server, key = start_with_user(make_server, admin, [upstream.account])
    response, _ = timed_chat(server, key, "hello")
    message = assert_upstream_error(response, 502, "upstream_error", upstream.account["name"], upstream.secret)
    assert str(status) in message
    if status == 401:  # the upstream's words about a refused credential may echo it: none are passed on
        assert "rejected credential" not in message and "credentials" in message
    else:
        assert "rejected credential" in message
    assert conversation_total(server, key) == 0


def test_long_upstream_error_leaks_no_part_of_the_secret(make_server, admin, upstream):
    """A secret that straddles the 500-character cut of a long upstream message is not passed on in part."""
    upstream.fake.fail_status = 500
    upstream.fake.fail_message = "z" * 480 + upstream.secret + " was rejected"
    server, key = start_with_user(make_server, admin, [upstream.account])
    response, _ = timed_chat(server, key, "hello")
    message = assert_upstream_error(response, 502, "upstream_error", upstream.account["name"], upstream.secret)
    fragments = [upstream.secret[i : i + 12] for i in range(len(upstream.secret) - 11)]
    assert not [f for f in fragments if f in message], message[-80:]


def test_error_inside_event_stream_is_502(make_server, admin, upstream):
    """An `error` event in the middle of the stream fails the turn with 502 and stores nothing."""
    upstream.fake.error_in_stream = f"overloaded while using {upstream.secret}"
    server, key = start_with_user(make_server, admin, [upstream.account])
    response, _ = timed_chat(server, key, "a long question")
    assert_upstream_error(response, 502, "upstream_error", upstream.account["name"], upstream.secret)
    assert conversation_total(server, key) == 0


@pytest.mark.parametrize("stall", ["delay", "stream_delay"], ids=["before-headers", "mid-stream"])
def test_slow_upstream_is_504_within_read_timeout(make_server, admin, upstream, stall):
    """An upstream silent for longer than the read timeout gives 504 after about that timeout."""
    setattr(upstream.fake, stall, 4.0)
    server, key = start_with_user(make_server, admin, [upstream.account], timeouts={"connect": 1, "read": 1})
    response, elapsed = timed_chat(server, key, "hello there, slow one")
    assert_upstream_error(response, 504, "upstream_timeout", upstream.account["name"], upstream.secret)
    assert 0.9 <= elapsed < 3.0
    assert conversation_total(server, key) == 0


def test_closed_port_is_502(make_server, admin, upstream):
    """A base_url where nothing listens gives 502 at once, naming the account."""
    path = "/v1" if upstream.kind == "openai" else "/backend-api"
    account = {**upstream.account, "base_url": f"http://127.0.0.1:{closed_port()}{path}"}
    server, key = start_with_user(make_server, admin, [account])
    response, elapsed = timed_chat(server, key, "anyone there?")
    message = assert_upstream_error(response, 502, "upstream_error", account["name"], upstream.secret)
    assert "connect" in message
    assert elapsed < 2.0
    assert conversation_total(server, key) == 0


# -- demo --------------------------------------------------------------------------------------


def test_demo_account_answers_plainly_marked(make_server, admin):
    """The demo account answers in-process and says it is the demo."""
    server, key = start_with_user(make_server, admin, [{"name": "demo", "type": "demo"}])
    answer = server.chat(key, "is this real?")
    assert answer["reply"].startswith("[demo account]")
    assert "You said: is this real?" in answer["reply"]
    assert (answer["account"], answer["model"]) == ("demo", "demo")
    follow = server.chat(key, "again", conversation_id=answer["conversation_id"])
    assert "1 earlier turn" in follow["reply"]
