"""Check that each fake server speaks its protocol, using only requests."""

from __future__ import annotations

import base64
import json
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate, parsedate_to_datetime

import pytest
import requests

from . import jwt_payload, make_jwt
from .chatgpt_web_server import SESSION_COOKIE, FakeChatGPTWeb
from .openai_server import FakeOpenAI
from .socks5 import BlackholeServer, Socks5Server
from .webhook import FakeWebhook


@pytest.fixture
def openai():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def web():
    with FakeChatGPTWeb() as fake:
        yield fake


def sse(response: requests.Response) -> list:
    """Return the decoded data of every event, "[DONE]" kept as a string."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    out = []
    for line in response.iter_lines():
        if line.startswith(b"data: "):
            data = line[6:].decode()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def chat(url: str, text: str, session=None, proxies=None, **extra) -> requests.Response:
    """POST a chat completion; extra goes into the JSON body."""
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": text}]
    body = {"model": "m1", "messages": messages, **extra}
    stream = bool(extra.get("stream"))
    client = session or requests
    return client.post(f"{url}/chat/completions", json=body, timeout=5, stream=stream, proxies=proxies)


def client() -> requests.Session:
    """Return a session that ignores proxy settings of the environment."""
    session = requests.Session()
    session.trust_env = False
    return session


def web_ask(fake, prompt, cid=None, parent=None, bearer="tok-a", session=None) -> requests.Response:
    body = {
        "action": "next",
        "model": "auto",
        "parent_message_id": parent or "p0",
        "conversation_id": cid,
        "messages": [
            {"id": "u1", "author": {"role": "user"}, "content": {"content_type": "text", "parts": [prompt]}},
        ],
    }
    return (session or requests).post(
        f"{fake.url}/conversation",
        json=body,
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=5,
        stream=True,
    )


def test_openai_plain_and_stream_on_one_session(openai):
    session = requests.Session()
    data = chat(openai.url, "hello there", session).json()
    assert data["object"] == "chat.completion" and data["model"] == "m1"
    message = data["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "echo: hello there", "refusal": None}
    counts = {k: data["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert counts == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    assert data["system_fingerprint"] == "fp_fake" and data["service_tier"] == "default"
    events = sse(chat(openai.url, "hi", session, stream=True, stream_options={"include_usage": True}))
    assert events[-1] == "[DONE]" and events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-3]) == "echo: hi"
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["total_tokens"] == 4
    assert chat(openai.url, "again", session).json()["choices"][0]["message"]["content"] == "echo: again"
    assert [r["path"] for r in openai.requests] == ["/v1/chat/completions"] * 3
    assert openai.requests[1]["body"]["stream"] is True and "user-agent" in openai.requests[1]["headers"]
    assert requests.get(f"{openai.url}/models", timeout=5).json()["data"][0]["id"] == "fake-model"


def test_openai_knobs(openai):
    openai.reply_text = lambda body: body.get("model", "m") * 3
    openai.chunk_size = 1
    events = sse(chat(openai.url, "x", stream=True))
    assert [e["choices"][0]["delta"].get("content") for e in events[1:-2]] == ["m", "1"] * 3
    openai.require_key = "sk-good"
    bad = chat(openai.url, "x")
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    ok = requests.post(
        f"{openai.url}/chat/completions",
        json={"messages": []},
        timeout=5,
        headers={"Authorization": "Bearer sk-good"},
    )
    assert ok.status_code == 200
    openai.require_key, openai.fail_status, openai.fail_message, openai.fail_times = None, 429, "slow down", 1
    failed = chat(openai.url, "x")
    assert failed.status_code == 429 and failed.json()["error"]["message"] == "slow down"
    assert chat(openai.url, "x").status_code == 200
    openai.error_in_stream, openai.reply_text = "boom", "abcdefgh"
    events = sse(chat(openai.url, "x", stream=True))
    assert events[-1] == {"error": {"message": "boom"}} and events[1]["choices"][0]["delta"]["content"] == "a"
    openai.error_in_stream, openai.delay = None, 1.0
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{openai.url}/models", timeout=0.2)


def test_chatgpt_web_conversation_flow(web):
    events = sse(web_ask(web, "hello world"))
    assert events[-1] == "[DONE]"
    messages = [e["message"] for e in events[:-1] if e.get("message")]
    assert any("message" not in e for e in events[:-1])
    texts = [m["content"]["parts"][0] for m in messages]
    assert texts[-1] == "web echo: hello world" and len(texts) > 2
    assert all(texts[-1].startswith(t) for t in texts)
    assert messages[-1]["status"] == "finished_successfully" and messages[-1]["end_turn"] is True
    assert messages[-1]["metadata"]["finish_details"] == {"type": "stop"}
    assert messages[0]["status"] == "in_progress"
    cid, mid = events[0]["conversation_id"], messages[-1]["id"]
    follow = sse(web_ask(web, "more", cid, mid))
    mid2 = follow[-2]["message"]["id"]
    assert web.conversations[cid] == [("hello world", "web echo: hello world"), ("more", "web echo: more")]
    stale = web_ask(web, "stale", cid, mid)
    assert stale.status_code == 409 and "detail" in stale.json()
    assert web_ask(web, "x", "no-such-id", mid2).status_code == 404
    assert web_ask(web, "x", cid, mid2, bearer="tok-b").status_code == 404
    title = requests.post(
        f"{web.url}/conversation/gen_title/{cid}",
        json={"message_id": mid2, "model": "auto"},
        headers={"Authorization": "Bearer tok-a"},
        timeout=5,
    )
    assert title.json() == {"title": "Title: hello world"}
    web.title_fail = True
    failed = requests.post(
        f"{web.url}/conversation/gen_title/{cid}",
        json={"message_id": mid2},
        headers={"Authorization": "Bearer tok-a"},
        timeout=5,
    )
    assert failed.status_code == 500
    assert len(web.requests_to(f"/backend-api/conversation/gen_title/{cid}")) == 2


def test_chatgpt_web_failures(web):
    web.tokens = {"good"}
    denied = web_ask(web, "x", bearer="bad")
    assert denied.status_code == 401 and denied.json() == {"detail": "invalid token"}
    web.fail_status, web.fail_message = 503, "overloaded"
    assert web_ask(web, "x", bearer="good").json() == {"detail": "overloaded"}
    web.fail_status, web.error_in_stream = None, "went wrong"
    events = sse(web_ask(web, "x", bearer="good"))
    cid = events[0]["conversation_id"]
    assert events[-2] == {"message": None, "conversation_id": cid, "error": "went wrong"}
    assert events[-1] == "[DONE]" and web.conversations == {}


def test_socks5_relays_with_and_without_auth(openai):
    with Socks5Server() as plain, Socks5Server("alice", "s3cret") as authed:
        for proxy in (plain.url, plain.url_h, authed.url, authed.url_h):
            proxies = {"http": proxy, "https": proxy}
            session = requests.Session()
            session.proxies = proxies
            data = chat(openai.url, "via proxy", session).json()
            assert data["choices"][0]["message"]["content"] == "echo: via proxy"
        assert plain.connections == [("127.0.0.1", openai.port)] * 2
        hostname = requests.get(
            openai.url.replace("127.0.0.1", "localhost") + "/models",
            timeout=5,
            proxies={"http": authed.url_h},
        )
        assert hostname.status_code == 200 and authed.connections[-1] == ("localhost", openai.port)
        wrong = f"socks5://alice:wrong@127.0.0.1:{authed.port}"
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"{openai.url}/models", proxies={"http": wrong}, timeout=5)
        assert authed.auth_failures == 1
        with ThreadPoolExecutor(16) as pool:
            via = {"http": plain.url}
            results = list(pool.map(lambda i: chat(openai.url, f"n{i}", proxies=via).json(), range(40)))
        assert {r["choices"][0]["message"]["content"] for r in results} == {f"echo: n{i}" for i in range(40)}
        assert len(plain.connections) == 42


def raw_connect(proxy: Socks5Server, command: int, address: bytes) -> int:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        sock.sendall(bytes([5, command, 0]) + address)
        return sock.recv(10)[1]


def test_socks5_raw_protocol(openai):
    with Socks5Server() as proxy:
        assert raw_connect(proxy, 0x02, b"\x01\x7f\x00\x00\x01" + struct.pack("!H", openai.port)) == 0x07
        assert raw_connect(proxy, 0x01, b"\x01\x7f\x00\x00\x01" + struct.pack("!H", openai.port)) == 0x00
        try:
            listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
        except OSError:
            pytest.skip("no IPv6 loopback")
        with listener:
            port = listener.getsockname()[1]
            address = b"\x04" + socket.inet_pton(socket.AF_INET6, "::1") + struct.pack("!H", port)
            assert raw_connect(proxy, 0x01, address) == 0x00
        assert proxy.connections[-1] == ("::1", port)


def test_blackhole_times_out(openai):
    with BlackholeServer() as hole:
        started = time.monotonic()
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(f"{openai.url}/models", proxies={"http": hole.url}, timeout=(0.5, 0.5))
        assert time.monotonic() - started < 3 and hole.accepted == 1
        started = time.monotonic()
    assert time.monotonic() - started < 2


def test_stop_is_prompt_with_busy_connections(openai):
    with Socks5Server() as proxy:
        session = requests.Session()
        assert chat(openai.url, "idle keep-alive", session).status_code == 200
        openai.delay, openai.stream_delay = 30, 30
        with ThreadPoolExecutor(4) as pool:
            hung = [
                pool.submit(chat, openai.url, "hang", stream=True),
                pool.submit(chat, openai.url, "hang", proxies={"http": proxy.url}),
            ]
            deadline = time.monotonic() + 10
            while len(openai.requests) < 3:
                assert time.monotonic() < deadline, "the hung requests never arrived"
                time.sleep(0.01)
            started = time.monotonic()
            proxy.stop()
            openai.stop()
            assert time.monotonic() - started < 2
            for future in hung:
                with pytest.raises(requests.exceptions.RequestException):
                    future.result(timeout=5)


def test_rate_limit_sends_retry_after_in_both_forms(openai, web):
    session = client()
    openai.rate_limit("30", times=1)
    limited = chat(openai.url, "x", session)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "30"
    error = limited.json()["error"]
    assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded" and error["param"] is None
    assert error["message"].startswith("Rate limit reached") and "try again in 30s" in error["message"]
    assert chat(openai.url, "x", session).status_code == 200
    when = formatdate(time.time() + 30, usegmt=True)
    openai.rate_limit(when)
    for _ in range(2):
        limited = chat(openai.url, "x", session)
        assert limited.status_code == 429 and limited.headers["Retry-After"] == when
    assert 25 < parsedate_to_datetime(when).timestamp() - time.time() <= 31
    openai.heal()
    assert chat(openai.url, "x", session).status_code == 200
    openai.fail_status = 500
    plain = chat(openai.url, "x", session)
    assert "Retry-After" not in plain.headers and plain.json()["error"]["message"] == "fake failure"
    assert plain.json()["error"]["code"] is None and plain.json()["error"]["type"] == "invalid_request_error"
    web.rate_limit(when, times=1)
    limited = web_ask(web, "x", session=session)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == when
    assert limited.json() == {"detail": "Too many requests in 1 hour. Try again later."}
    assert sse(web_ask(web, "x", session=session))[-1] == "[DONE]"
    web.fail_status, web.fail_times, web.fail_headers = 503, None, {"Retry-After": "5", "X-Fake": "yes"}
    overloaded = web_ask(web, "x", session=session)
    assert overloaded.status_code == 503 and overloaded.headers["Retry-After"] == "5"
    assert overloaded.headers["X-Fake"] == "yes"
    web.rate_limit()
    assert "Retry-After" not in web_ask(web, "x", session=session).headers
    web.heal()
    assert web.fail_headers == {} and web.fail_message == "fake failure"
    assert sse(web_ask(web, "x", session=session))[-1] == "[DONE]"


def raw_stream(fake: FakeOpenAI) -> bytes:
    """POST a streamed chat on a raw socket and return every byte until the server closes."""
    body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    data = b""
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as sock:
        sock.sendall(head.encode() + body)
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_cut_after_drops_the_connection_before_done(openai, web):
    openai.reply_text, openai.chunk_size, openai.cut_after = "abcdef", 1, 2
    wire = raw_stream(openai)
    assert wire.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in wire
    assert b"[DONE]" not in wire and not wire.endswith(b"0\r\n\r\n") and b'"finish_reason": "stop"' not in wire
    assert wire.count(b"data: ") == 3 and b'"content": "b"' in wire and b'"content": "c"' not in wire
    openai.cut_after = 0
    assert raw_stream(openai).count(b"data: ") == 1
    session, seen = client(), []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for line in chat(openai.url, "x", session, stream=True).iter_lines():
            seen.append(line)
    assert seen and b"data: [DONE]" not in seen
    assert chat(openai.url, "plain replies are whole", session).json()["choices"][0]["message"]["content"] == "abcdef"
    openai.heal()
    assert sse(chat(openai.url, "x", session, stream=True))[-1] == "[DONE]"
    web.cut_after = 1
    seen = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for line in web_ask(web, "hello world", session=session).iter_lines():
            seen.append(line)
    assert seen and b"data: [DONE]" not in seen and web.conversations == {}
    web.heal()
    assert sse(web_ask(web, "hello world", session=session))[-1] == "[DONE]" and len(web.conversations) == 1
    assert openai.in_flight == 0 and web.in_flight == 0


def test_hang_outlasts_a_read_timeout(openai, web):
    openai.hang = 2
    assert openai.delay == 2
    web.hang = 2
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    for fake, url in ((openai, f"{openai.url}/chat/completions"), (web, f"{web.url}/conversation")):
        started = time.monotonic()
        with pytest.raises(requests.exceptions.ReadTimeout):
            client().post(url, json=body, headers={"Authorization": "Bearer t"}, timeout=(5, 0.3))
        assert time.monotonic() - started < 1.5
        fake.heal()
        assert fake.hang == 0 and fake.delay == 0
    assert chat(openai.url, "x", client()).status_code == 200
    assert sse(web_ask(web, "x", session=client()))[-1] == "[DONE]"


def test_in_flight_counts_concurrent_chats(openai, web):
    assert (openai.in_flight, openai.max_in_flight, openai.chat_count) == (0, 0, 0)
    openai.delay = 0.5
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda i: chat(openai.url, f"n{i}", client()), range(5)))
    assert all(a.status_code == 200 for a in answers)
    assert (openai.in_flight, openai.max_in_flight, openai.chat_count) == (0, 5, 5)
    openai.reset_peak()
    openai.delay = 0
    session = client()
    for _ in range(3):
        assert chat(openai.url, "one at a time", client()).status_code == 200
        assert openai.in_flight == 0
    assert sse(chat(openai.url, "x", session, stream=True))[-1] == "[DONE]" and openai.in_flight == 0
    assert session.get(f"{openai.url}/models", timeout=5).status_code == 200
    assert (openai.max_in_flight, openai.chat_count) == (1, 9)
    web.stream_delay = 0.2
    with ThreadPoolExecutor(5) as pool:
        streams = list(pool.map(lambda i: sse(web_ask(web, f"hello {i}", session=client())), range(5)))
    assert all(s[-1] == "[DONE]" for s in streams)
    assert (web.in_flight, web.max_in_flight, web.chat_count) == (0, 5, 5)


def test_chatgpt_web_session_endpoint(web):
    token = make_jwt(time.time() + 3600, sub="user-fake")
    web.sessions, web.tokens = {"st-1": token}, {"other"}
    session = client()
    url = f"{web.base_url}/api/auth/session"
    assert web.url == web.base_url + "/backend-api"
    known = session.get(url, cookies={SESSION_COOKIE: "st-1"}, timeout=5)
    assert known.status_code == 200 and known.json() == {
        "user": {"id": "user-fake", "name": "Fake", "email": "fake@example.com"},
        "expires": web.session_expires,
        "accessToken": token,
        "authProvider": "auth0",
    }
    assert web.session_expires.endswith("Z") and len(web.session_expires) == len("2026-12-31T00:00:00.000Z")
    assert web.tokens == {"other", token} and sse(web_ask(web, "x", bearer=token, session=session))[-1] == "[DONE]"
    split = {f"{SESSION_COOKIE}.0": "st", f"{SESSION_COOKIE}.1": "-1"}
    assert session.get(url, cookies=split, timeout=5).json()["accessToken"] == token
    assert session.get(url, cookies={SESSION_COOKIE: "unknown"}, timeout=5).json() == {}
    assert client().get(url, timeout=5).json() == {}
    recorded = web.requests_to("/api/auth/session")
    assert len(recorded) == 4 and recorded[0]["method"] == "GET"
    assert recorded[0]["headers"]["cookie"] == f"{SESSION_COOKIE}=st-1" and "cookie" not in recorded[-1]["headers"]
    web.session_fail_status = 403
    assert session.get(url, cookies={SESSION_COOKIE: "st-1"}, timeout=5).status_code == 403
    web.heal()
    assert session.get(url, cookies={SESSION_COOKIE: "st-1"}, timeout=5).status_code == 200
    assert web.chat_count == 1


def test_make_jwt_payload_decodes():
    token = make_jwt(1234567890.9, sub="u1", scope="a b")
    header, payload, signature = token.split(".")
    assert "=" not in token and signature
    padded = payload + "=" * (-len(payload) % 4)
    assert json.loads(base64.urlsafe_b64decode(padded)) == {"exp": 1234567890, "sub": "u1", "scope": "a b"}
    assert json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))) == {"alg": "RS256", "typ": "JWT"}
    assert jwt_payload(token)["exp"] == 1234567890


def test_webhook_records_and_waits():
    with FakeWebhook() as hook:
        assert hook.url == f"http://127.0.0.1:{hook.port}/hook"
        session = client()

        def post_later(i: int) -> int:
            time.sleep(0.1 * i)
            return session.post(hook.url, json={"event": "account_down", "n": i}, timeout=5).status_code

        with ThreadPoolExecutor(3) as pool:
            codes = pool.map(post_later, range(3))
            calls = hook.wait_for(3)
        assert list(codes) == [204] * 3
        assert sorted(c["body"]["n"] for c in calls) == [0, 1, 2] and calls[0]["path"] == "/hook"
        assert calls[0]["headers"]["content-type"] == "application/json"
        hook.status = 500
        answer = session.post(hook.base_url + "/elsewhere", json={"n": 3}, timeout=5)
        assert answer.status_code == 500 and hook.received[-1]["path"] == "/elsewhere"
        with pytest.raises(AssertionError, match="4 of 5"):
            hook.wait_for(5, timeout=0.2)
