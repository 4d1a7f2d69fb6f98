"""Review of issue 9 (pool health): each test proves one defect over real HTTP, or guards what was checked."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from fakes import FakeChatGPTWeb, FakeOpenAI, FakeWebhook
from fakes.chatgpt_web_server import SESSION_PATH
from upstream_fixtures import FAST, openai_account, start_with_user, timed_chat

SESSION = "next-auth-session-token-0123456789abcdef"
HEALTH = {"rate_limit_cooldown": 30, "rate_limit_max": 3600, "backoff_start": 30, "backoff_max": 600}


def ask(server, key, prompt="hi", **params):
    return timed_chat(server, key, prompt, **params)[0]


def account_info(server, admin, name):
    response = server.get(f"/api/accounts/{name}", admin)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_success_does_not_clear_a_429_cooldown_set_while_it_ran(make_server, admin):
    """A request taken while the account still had a backoff succeeds after a concurrent request got a 429:
    its success must clear the old backoff, not the fresh rate-limit cooldown (Pool.succeeded ->
    SqlPoolState.release(healed=True) sets state ok and cooling_until NULL unconditionally)."""
    with FakeOpenAI() as fake:
        health = {**HEALTH, "backoff_start": 1}
        server, key = start_with_user(make_server, admin, [openai_account(fake, "oa")], health=health)
        fake.fail_status, fake.fail_times = 500, 1
        assert ask(server, key, "fails").status_code == 502
        assert account_info(server, admin, "oa")["state"] == "cooling"
        time.sleep(1.3)  # the 1 s backoff runs out; the row keeps its backoff until a success
        assert account_info(server, admin, "oa")["state"] == "ok"

        fake.reply_text, fake.chunk_size, fake.stream_delay = "a slow and steady reply", 2, 0.15
        slow = {}
        thread = threading.Thread(target=lambda: slow.setdefault("r", ask(server, key, "slow")))
        thread.start()
        deadline = time.monotonic() + 5
        while fake.chat_count < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        fake.rate_limit(retry_after="30", times=1)  # the next request is told to wait 30 s
        limited = ask(server, key, "limited")
        assert limited.status_code == 502, limited.text
        assert account_info(server, admin, "oa")["state"] == "cooling"
        thread.join(10)
        assert slow["r"].status_code == 200, slow["r"].text
        shown = account_info(server, admin, "oa")
        assert shown["state"] == "cooling", shown  # the upstream said 30 s; a success elsewhere does not undo it
        assert ask(server, key, "during the cooldown").status_code == 503


class SlowDeadSession(FakeChatGPTWeb):
    """A ChatGPT web backend whose session endpoint takes 1 s and then says the session is dead ({})."""

    def session_for(self, session_token):
        time.sleep(1.0)
        return {}


def test_a_failed_session_lookup_is_not_repeated_by_every_waiting_request(make_server, admin):
    """Four first requests at once on an account with only a session_token whose session is dead: the
    lookup is made once; the three that waited on the refresh lock must not each make it again in turn
    (ChatGPTWebUpstream._refresh holds the lock across the network call and re-checks only 'token changed')."""
    with SlowDeadSession() as web:
        account = {
            "name": "web",
            "type": "chatgpt-web",
            "session_token": SESSION,
            "auth_base": web.base_url,
            "base_url": web.url,
        }
        server, key = start_with_user(make_server, admin, [account], health=HEALTH, timeouts={"connect": 1, "read": 3})
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda n: timed_chat(server, key, f"q{n}"), range(4)))
        assert [r.status_code for r, _ in results] == [502] * 4, [r.text for r, _ in results]
        slowest = max(seconds for _, seconds in results)
        lookups = len(web.requests_to(SESSION_PATH))
        assert lookups == 1 and slowest < 2.5, (lookups, [round(s, 2) for _, s in results])


def test_an_rpm_too_large_for_the_database_is_refused_not_a_500(make_server, admin):
    """POST /api/accounts accepts rpm 10**20 (an int >= 1), and every choice of that account then fails
    with an OverflowError in SqlPoolState.choose (_NTH_HIT's OFFSET): a 500. Refuse it with 400, or work."""
    server = make_server(from_file=True, timeouts=FAST)
    key = server.create_user(admin, "alice")["api_key"]
    added = server.post("/api/accounts", admin, json={"name": "big", "type": "demo", "rpm": 10**20})
    if added.status_code == 201:
        assert server.call("PATCH", "/api/accounts/demo", admin, json={"enabled": False}).status_code == 200
        answer = ask(server, key, "hello")
        assert answer.status_code == 200, answer.text
    else:
        assert added.status_code == 400 and added.json()["param"] == "rpm", added.text


def test_an_account_removed_and_added_again_alerts_again(make_server, admin):
    """An account that needed attention is deleted and added again (same name, still refused): its new
    needs_attention is a new event, but forget() leaves alerts_sent's 'needs_attention:<name>' row (until
    NULL), so the webhook is never told again."""
    with FakeOpenAI() as fake, FakeWebhook() as hook:
        fake.fail_status = 401
        accounts = [openai_account(fake, "oa")]
        server, key = start_with_user(
            make_server, admin, accounts, health=HEALTH, alerts={"webhook_url": hook.url}, from_file=True
        )
        assert ask(server, key, "refused").status_code == 502
        hook.wait_for(1)
        time.sleep(0.3)
        first = [c["body"]["event"] for c in hook.received]
        assert "needs_attention" in first, first
        assert server.call("DELETE", "/api/accounts/oa", admin).status_code == 200
        added = server.post("/api/accounts", admin, json=openai_account(fake, "oa", api_key="sk-new-key-0123456789"))
        assert added.status_code == 201, added.text
        assert added.json()["state"] == "ok"
        assert ask(server, key, "refused again").status_code == 502
        assert account_info(server, admin, "oa")["state"] == "needs_attention"
        time.sleep(0.8)
        events = [c["body"]["event"] for c in hook.received]
        assert events.count("needs_attention") == first.count("needs_attention") + 1, events


def test_a_follow_up_that_no_account_can_carry_has_retry_after(make_server, admin):
    """§2.3: an openai conversation whose account is unusable and that no other account can carry is
    answered 503 *with* Retry-After. With its only account disabled, ChatService._follow_up_lease sets
    retry_after from back_in(None) -> None, so the header is missing."""
    with FakeOpenAI() as fake:
        server, key = start_with_user(make_server, admin, [openai_account(fake, "oa")], health=HEALTH, from_file=True)
        first = server.chat(key, "hello")
        assert server.call("PATCH", "/api/accounts/oa", admin, json={"enabled": False}).status_code == 200
        follow = ask(server, key, "again", conversation_id=first["conversation_id"])
        assert follow.status_code == 503, follow.text
        assert follow.json()["code"] == "no_account_available"
        assert "Retry-After" in follow.headers, dict(follow.headers)
        assert int(follow.headers["Retry-After"]) >= 1
