"""Per-user limits over real HTTP: role defaults and a user's own limits, the 429 each front answers when one
is reached (with Retry-After and OpenAI's x-ratelimit-* headers), the same headers on every success, what
is and is not counted, and a client's limits binding its users together."""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta

import openai
import pytest
import requests
from fakes import FakeOpenAI
from test_web_pages import Browser, Page, ask_on_page
from upstream_fixtures import FAST, NO_COOLDOWN, chat_requests, openai_account

RATE = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
TOKENS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
HI = [{"role": "user", "content": "hi"}]


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def fake():
    with FakeOpenAI() as running:
        yield running


def serve(make_server, fake, **limits):
    """A live server on one FakeOpenAI account whose settings "limits" are limits ({role: {...}})."""
    return make_server([openai_account(fake)], timeouts=FAST, health=NO_COOLDOWN, limits=limits)


def ratelimit(response: requests.Response) -> dict[str, str]:
    """The x-ratelimit-* headers of a response (lower-case names)."""
    return {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("x-ratelimit-")}


def seconds(reset: str) -> float:
    """Read OpenAI's reset format back: 20ms, 1.5s, 6m0s, 1h2m3s."""
    if reset.endswith("ms"):
        return int(reset[:-2]) / 1000
    found = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:([\d.]+)s)?", reset)
    assert found and reset, f"not a reset time: {reset!r}"
    hours, minutes, secs = found.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0)


def to_midnight() -> float:
    now = datetime.now(UTC)
    return (datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1) - now).total_seconds()


def chat(server, key, prompt="hello there", **params) -> requests.Response:
    return server.post("/api/chat", key, json={"prompt": prompt, **params})


def complete(server, key, **body) -> requests.Response:
    return server.post("/v1/chat/completions", key, json={"messages": HI, **body})


def patch_limits(server, key, user_id, limits) -> dict:
    response = server.call("PATCH", f"/api/users/{user_id}", key, json={"limits": limits})
    assert response.status_code == 200, response.text
    return response.json()


def assert_requests_left(response, limit: int, remaining: int) -> None:
    headers = ratelimit(response)
    assert headers.get("x-ratelimit-limit-requests") == str(limit), headers
    assert headers.get("x-ratelimit-remaining-requests") == str(remaining), headers


def assert_api_refusal(response, code: str) -> dict:
    assert response.status_code == 429, response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    assert body["status"] == "error" and body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    return body


# -- role defaults and a user's own limits ------------------------------------------------------------------


def test_role_defaults_apply_and_a_users_own_limits_override_them(make_server, admin, fake):
    """settings limits.user holds for every plain user; its own limits replace the keys they name (null: none)."""
    server = serve(
        make_server,
        fake,
        user={"requests_per_minute": 2, "tokens_per_day": 5000},
        client={"requests_per_minute": 7},
    )
    plain = server.create_user(admin, "plain")
    own = server.create_user(admin, "own")
    free = server.create_user(admin, "free")
    bot = server.create_user(admin, "bot", role="client")
    assert plain["effective_limits"] == {"requests_per_minute": 2, "requests_per_day": None, "tokens_per_day": 5000}
    assert bot["effective_limits"] == {"requests_per_minute": 7, "requests_per_day": None, "tokens_per_day": None}
    changed = patch_limits(server, admin, own["user_id"], {"requests_per_minute": 4, "requests_per_day": 9})
    assert changed["limits"] == {"requests_per_minute": 4, "requests_per_day": 9}
    assert changed["effective_limits"] == {"requests_per_minute": 4, "requests_per_day": 9, "tokens_per_day": 5000}
    patch_limits(server, admin, free["user_id"], {"requests_per_minute": None})
    me = server.get("/api/me", own["api_key"]).json()
    assert me["limits"] == {"requests_per_minute": 4, "requests_per_day": 9}
    assert me["effective_limits"]["requests_per_minute"] == 4

    assert [chat(server, plain["api_key"]).status_code for _ in range(3)] == [200, 200, 429]
    answers = [chat(server, own["api_key"]) for _ in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 429]
    # of its two request limits the tighter one is shown: 4 a minute, then 9 a day
    assert [ratelimit(a)["x-ratelimit-remaining-requests"] for a in answers[:4]] == ["3", "2", "1", "0"]
    assert [chat(server, free["api_key"]).status_code for _ in range(4)] == [200] * 4
    free_headers = ratelimit(chat(server, free["api_key"]))
    assert "x-ratelimit-limit-requests" not in free_headers  # no request limit applies to it any more
    assert free_headers["x-ratelimit-limit-tokens"] == "5000"
    assert len(chat_requests(fake)) == 2 + 4 + 5

    patch_limits(server, admin, own["user_id"], {})  # back to the role's defaults
    assert server.get(f"/api/users/{own['user_id']}", admin).json()["effective_limits"] == plain["effective_limits"]
    assert chat(server, own["api_key"]).status_code == 429  # 2 a minute again, and it used 4 already


# -- the per-minute, daily and token limits ------------------------------------------------------------------


def test_a_per_minute_limit_counts_down_then_answers_429_with_retry_after(make_server, admin, fake):
    server = serve(make_server, fake, user={"requests_per_minute": 3})
    key = server.create_user(admin, "alice")["api_key"]
    answers = [chat(server, key, f"q{i}") for i in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    for answer, remaining in zip(answers, (2, 1, 0), strict=True):
        assert_requests_left(answer, 3, remaining)
        assert 59 <= seconds(ratelimit(answer)["x-ratelimit-reset-requests"]) <= 60
    refused = chat(server, key, "one too many")
    body = assert_api_refusal(refused, "rate_limit_exceeded")
    assert "3 requests a minute" in body["message"], body
    assert_requests_left(refused, 3, 0)
    assert 55 <= int(refused.headers["Retry-After"]) <= 60
    assert 0 < seconds(ratelimit(refused)["x-ratelimit-reset-requests"]) <= 60
    assert not any(h.startswith("x-ratelimit-limit-tokens") for h in ratelimit(refused))  # no token limit applies
    assert [r["body"]["messages"][-1]["content"] for r in chat_requests(fake)] == ["q0", "q1", "q2"]


def test_requests_per_day_answers_429_insufficient_quota_until_midnight_utc(make_server, admin, fake):
    server = serve(make_server, fake, user={"requests_per_day": 2})
    key = server.create_user(admin, "alice")["api_key"]
    answers = [chat(server, key) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert_requests_left(answers[0], 2, 1)
    assert_requests_left(answers[1], 2, 0)
    refused = chat(server, key)
    body = assert_api_refusal(refused, "insufficient_quota")
    assert "2 requests a day" in body["message"], body
    assert_requests_left(refused, 2, 0)
    assert abs(int(refused.headers["Retry-After"]) - to_midnight()) <= 3
    assert abs(seconds(ratelimit(refused)["x-ratelimit-reset-requests"]) - to_midnight()) <= 3
    assert server.get("/api/me", key).json()["today"]["requests"] == 2
    assert len(chat_requests(fake)) == 2


def test_tokens_per_day_stops_a_user_once_the_upstreams_counted_tokens_reach_it(make_server, admin, fake):
    """FakeOpenAI counts words: "one two three" is 3 prompt tokens, "echo: one two three" 4 completion tokens.
    A request is admitted while today's tokens are under the quota, and the one that crosses it completes."""
    server = serve(make_server, fake, user={"tokens_per_day": 10})
    key = server.create_user(admin, "alice")["api_key"]
    first = chat(server, key, "one two three")
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] == 7, first.text
    assert (ratelimit(first)["x-ratelimit-limit-tokens"], ratelimit(first)["x-ratelimit-remaining-tokens"]) == (
        "10",
        "10",
    )
    second = chat(server, key, "one two three")
    assert second.status_code == 200, second.text
    assert ratelimit(second)["x-ratelimit-remaining-tokens"] == "3"
    assert not any(h.endswith("-requests") for h in ratelimit(second))  # no request limit applies
    assert server.get("/api/me", key).json()["today"] == {
        "day": datetime.now(UTC).strftime("%Y-%m-%d"),
        "requests": 2,
        "tokens": 14,
    }
    refused = chat(server, key, "one two three")
    body = assert_api_refusal(refused, "insufficient_quota")
    assert "10 tokens a day" in body["message"], body
    headers = ratelimit(refused)
    assert (headers["x-ratelimit-limit-tokens"], headers["x-ratelimit-remaining-tokens"]) == ("10", "0")
    assert abs(seconds(headers["x-ratelimit-reset-tokens"]) - to_midnight()) <= 3
    assert complete(server, key).status_code == 429
    assert len(chat_requests(fake)) == 2


def test_a_limit_of_zero_refuses_the_first_request(make_server, admin, fake):
    server = serve(make_server, fake)
    cases = {
        "requests_per_minute": ("rate_limit_exceeded", RATE),
        "requests_per_day": ("insufficient_quota", RATE),
        "tokens_per_day": ("insufficient_quota", TOKENS),
    }
    for limit, (code, names) in cases.items():
        made = server.create_user(admin, f"zero-{limit}")
        patch_limits(server, admin, made["user_id"], {limit: 0})
        refused = chat(server, made["api_key"])
        assert_api_refusal(refused, code)
        headers = ratelimit(refused)
        assert (headers[names[0]], headers[names[1]]) == ("0", "0"), (limit, headers)
        assert complete(server, made["api_key"]).json()["error"]["code"] == code
    assert fake.requests == []


# -- every front's own shape ------------------------------------------------------------------------


def ask(server, front: str, key: str, browser: Browser | None) -> requests.Response:
    """One chat through a front; the page's answer comes back as its requests.Response."""
    if front == "api":
        return chat(server, key)
    if front == "api-stream":
        return chat(server, key, stream=True)
    if front == "page":
        return ask_on_page(browser, "hello from the page").response
    if front == "v1":
        return complete(server, key)
    if front == "v1-stream":
        return complete(server, key, stream=True)
    raise AssertionError(front)


FRONTS = ["api", "api-stream", "page", "v1", "v1-stream"]


@pytest.mark.parametrize("limit", ["requests_per_minute", "requests_per_day"])
@pytest.mark.parametrize("front", FRONTS)
def test_each_front_answers_successes_with_the_headers_and_the_refusal_in_its_own_shape(
    make_server, admin, fake, front, limit
):
    server = serve(make_server, fake, user={limit: 1})
    key = server.create_user(admin, "alice")["api_key"]
    browser = Browser(server).log_in(key) if front == "page" else None
    ok = ask(server, front, key, browser)
    assert ok.status_code == 200, ok.text[:300]
    assert_requests_left(ok, 1, 0)
    if front.endswith("stream"):
        assert ok.headers["Content-Type"].startswith("text/event-stream")
        assert "hi" in ok.text or "hello" in ok.text
    refused = ask(server, front, key, browser)
    assert refused.status_code == 429, refused.text[:300]
    if front != "page":  # the page's headers: test_the_chat_pages_refusal_carries_retry_after_and_the_headers
        assert_requests_left(refused, 1, 0)
        assert int(refused.headers["Retry-After"]) >= 1
    daily = limit == "requests_per_day"
    code = "insufficient_quota" if daily else "rate_limit_exceeded"
    words = "daily quota reached" if daily else "rate limit reached"
    if front.startswith("api"):  # a refused stream is a plain JSON error: no stream was started
        body = assert_api_refusal(refused, code)
        assert words in body["message"]
    elif front == "page":
        assert refused.headers["Content-Type"].startswith("text/html")
        page = Page(refused)
        assert words in page.form_errors(), page.form_errors()
        assert page.value("prompt") == "hello from the page"  # the chat page again, with what was typed
    else:
        assert refused.headers["Content-Type"].startswith("application/json")
        error = refused.json()["error"]
        assert error["code"] == code and error["param"] is None, error
        assert error["type"] == ("insufficient_quota" if daily else "requests"), error
        assert words in error["message"]
    assert len(chat_requests(fake)) == 1


def test_the_chat_pages_refusal_carries_retry_after_and_the_headers(make_server, admin, fake):
    """The page is a front like the others: its 429 says when to come back, as /api and /v1 do."""
    server = serve(make_server, fake, user={"requests_per_minute": 1})
    key = server.create_user(admin, "alice")["api_key"]
    browser = Browser(server).log_in(key)
    assert ask(server, "page", key, browser).status_code == 200
    refused = ask(server, "page", key, browser)
    assert refused.status_code == 429
    assert_requests_left(refused, 1, 0)
    assert 1 <= int(refused.headers.get("Retry-After", "0")) <= 60, dict(refused.headers)


def test_no_rate_limit_headers_when_no_limit_applies(make_server, admin, fake):
    server = serve(make_server, fake, client={"requests_per_minute": 5})  # a client's limit is not a user's
    key = server.create_user(admin, "alice")["api_key"]
    browser = Browser(server).log_in(key)
    for front in FRONTS:
        answer = ask(server, front, key, browser)
        assert answer.status_code == 200, (front, answer.text[:200])
        assert ratelimit(answer) == {}, (front, ratelimit(answer))
    assert len(chat_requests(fake)) == len(FRONTS)


# -- what is not counted ----------------------------------------------------------------------------


def test_requests_refused_before_any_upstream_is_asked_are_not_counted(make_server, admin, fake):
    """Bad input (400), an unknown conversation (404), plus for a plain user (403) and no plus account (503):
    the next valid request still has the whole limit left, and only the valid ones reach the upstream."""
    server = serve(make_server, fake, user={"requests_per_minute": 2, "requests_per_day": 2})
    key = server.create_user(admin, "alice")["api_key"]
    plus_key = server.create_user(admin, "paula", plus=True)["api_key"]
    for who, response, status in [
        (key, chat(server, key, "   "), 400),
        (key, chat(server, key, conversation_id="no-such-conversation"), 404),
        (key, chat(server, key, plus="true"), 403),
        (key, complete(server, key, messages=[{"role": "robot", "content": "x"}]), 400),
        (key, complete(server, key, messages=[]), 400),
        (plus_key, chat(server, plus_key, plus="true"), 503),
        (plus_key, chat(server, plus_key, plus="true", stream=True), 503),
    ]:
        assert response.status_code == status, (who == plus_key, response.text)
    for name, who in (("alice", key), ("paula", plus_key)):
        counted = server.get("/api/me", who).json()["today"]["requests"]
        assert counted == 0, f"{name}: {counted} refused request(s) counted for today"
        answers = [chat(server, who), complete(server, who), chat(server, who)]
        assert [a.status_code for a in answers] == [200, 200, 429], [a.text for a in answers]
        assert_requests_left(answers[0], 2, 1)
        assert_requests_left(answers[1], 2, 0)
    assert len(chat_requests(fake)) == 4


def test_an_error_answer_does_not_report_a_request_that_was_taken_back(make_server, admin, fake):
    """A 404 or 503 that never reached an upstream is not counted, so its x-ratelimit-remaining (if it has one)
    must not count it either."""
    server = serve(make_server, fake, user={"requests_per_minute": 3})
    key = server.create_user(admin, "paula", plus=True)["api_key"]
    for response in (chat(server, key, conversation_id="no-such-conversation"), chat(server, key, plus="true")):
        assert response.status_code in (404, 503), response.text
        remaining = ratelimit(response).get("x-ratelimit-remaining-requests")
        assert remaining in (None, "3"), f"{response.status_code} says {remaining} left, but nothing was counted"
    assert_requests_left(chat(server, key), 3, 2)


def test_an_upstream_failure_counts_as_a_request(make_server, admin, fake):
    """A turn that reached the upstream counts, whatever the upstream answered."""
    server = serve(make_server, fake, user={"requests_per_minute": 2})
    key = server.create_user(admin, "alice")["api_key"]
    fake.fail_status, fake.fail_times = 500, 1
    assert chat(server, key).status_code == 502
    ok = chat(server, key)
    assert ok.status_code == 200, ok.text
    assert_requests_left(ok, 2, 0)
    assert chat(server, key).status_code == 429


# -- a client's limits bind its users together -------------------------------------------------------------


def test_a_clients_own_limits_bound_all_of_its_users_together(make_server, admin, fake):
    server = serve(make_server, fake, client={"requests_per_minute": 3})
    bot = server.create_user(admin, "bot", role="client")
    ann = server.create_user(bot["api_key"], "ann")
    ben = server.create_user(bot["api_key"], "ben", user_id="ben-ext")
    outsider = server.create_user(admin, "outsider")
    assert ann["effective_limits"]["requests_per_minute"] is None  # no limit of its own...
    assert_requests_left(chat(server, ann["api_key"]), 3, 2)  # ...but its client's shows
    assert_requests_left(chat(server, ben["api_key"]), 3, 1)
    spoken = chat(server, bot["api_key"], user_id="ben-ext")  # the client speaking for ben counts the same
    assert spoken.status_code == 200 and spoken.json()["api_user"] == ben["user_id"], spoken.text
    assert_requests_left(spoken, 3, 0)
    for key in (ann["api_key"], ben["api_key"]):
        body = assert_api_refusal(chat(server, key), "rate_limit_exceeded")
        assert "bot" in body["message"] and "together" in body["message"], body
    assert complete(server, ann["api_key"]).status_code == 429
    assert [chat(server, outsider["api_key"]).status_code for _ in range(4)] == [200] * 4  # not the bot's
    assert len(chat_requests(fake)) == 3 + 4


def test_a_clients_daily_quota_holds_across_its_users_and_its_users_own_limits_too(make_server, admin, fake):
    server = serve(make_server, fake)
    bot = server.create_user(admin, "bot", role="client")
    patch_limits(server, admin, bot["user_id"], {"requests_per_day": 3})
    ann = server.create_user(bot["api_key"], "ann")
    ben = server.create_user(bot["api_key"], "ben")
    patch_limits(server, bot["api_key"], ann["user_id"], {"requests_per_day": 1})
    assert chat(server, ann["api_key"]).status_code == 200
    own = assert_api_refusal(chat(server, ann["api_key"]), "insufficient_quota")  # ann's own limit: 1
    assert "this user" in own["message"], own
    assert [chat(server, ben["api_key"]).status_code for _ in range(2)] == [200, 200]
    body = assert_api_refusal(chat(server, ben["api_key"]), "insufficient_quota")  # the bot's 3 are used up
    assert "bot" in body["message"], body
    assert server.get("/api/me", bot["api_key"]).json()["today"]["requests"] == 3
    assert len(chat_requests(fake)) == 3


# -- exact under concurrency, and the SDK -----------------------------------------------------------------


def test_a_per_minute_limit_of_n_admits_exactly_n_of_3n_concurrent_requests(make_server, admin, fake):
    n = 5
    server = serve(make_server, fake, user={"requests_per_minute": n})
    key = server.create_user(admin, "alice")["api_key"]
    fake.delay = 0.2  # the admitted ones are still running while the rest arrive
    statuses: list[int] = []
    lock, start = threading.Lock(), threading.Barrier(3 * n)

    def one() -> None:
        start.wait()
        with requests.Session() as session:
            session.trust_env = False
            response = session.post(
                server.url + "/api/chat", json={"prompt": "hi"}, headers={"Authorization": f"Bearer {key}"}, timeout=20
            )
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=one) for _ in range(3 * n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses) == [200] * n + [429] * (2 * n), statuses
    assert len(chat_requests(fake)) == n


def test_the_openai_sdk_raises_rate_limit_error_on_a_refusal(make_server, admin, fake):
    server = serve(make_server, fake, user={"requests_per_minute": 1})
    made = server.create_user(admin, "alice")
    sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=made["api_key"], max_retries=0, timeout=10)
    raw = sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    assert raw.parse().choices[0].message.content == "echo: hi"
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert refused.value.status_code == 429
    assert refused.value.code == "rate_limit_exceeded" and refused.value.type == "requests"
    assert refused.value.response.headers["x-ratelimit-limit-requests"] == "1"
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)

    patch_limits(server, admin, made["user_id"], {"requests_per_minute": None, "requests_per_day": 0})
    with pytest.raises(openai.RateLimitError) as quota:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert quota.value.code == "insufficient_quota" and quota.value.type == "insufficient_quota"
    assert json.loads(quota.value.response.text)["error"]["param"] is None
    assert len(chat_requests(fake)) == 1
