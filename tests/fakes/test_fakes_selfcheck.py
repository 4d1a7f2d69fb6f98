"""Check that each fake server speaks its protocol, with requests and the official openai package."""

from __future__ import annotations

import base64
import datetime
import enum
import json
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate, parsedate_to_datetime
from typing import Literal

import httpx
import pytest
import requests
from openai import BadRequestError, NotFoundError, OpenAI, UnprocessableEntityError, pydantic_function_tool
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, Field

from . import jwt_payload, make_jwt
from .chatgpt_web_server import SESSION_COOKIE, FakeChatGPTWeb
from .openai_server import FakeOpenAI, sample_from_schema
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


# -- the fake OpenAI against the official `openai` package -------------------------------------


class Unit(enum.StrEnum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class Place(BaseModel):
    city: str
    zip_code: int | None


class GetWeather(BaseModel):
    place: Place
    unit: Unit
    days: list[int]


class Lookup(BaseModel):
    word: str
    limit: int = Field(ge=3)


class Report(BaseModel):
    title: str
    score: float
    final: bool
    kind: Literal["short", "long"]
    places: list[Place]
    day: datetime.date
    parent: Report | None


LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up.",
        "parameters": {
            "type": "object",
            "properties": {"word": {"type": "string"}, "limit": {"type": "integer", "minimum": 3}},
            "required": ["word"],
        },
    },
}


def sdk(fake: FakeOpenAI) -> OpenAI:
    return OpenAI(base_url=fake.url, api_key="sk-fake", max_retries=0, http_client=httpx.Client(trust_env=False))


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_openai_tool_calls_with_the_sdk(openai):
    api = sdk(openai)
    tools = [pydantic_function_tool(GetWeather), LOOKUP]
    done = api.chat.completions.parse(model="m", messages=user("weather?"), tools=tools[:1])
    ChatCompletion.model_validate(done.model_dump())
    [choice] = done.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "GetWeather"
    assert call.function.parsed_arguments == GetWeather(place=Place(city="x", zip_code=1), unit="celsius", days=[1])
    raw = openai.completion({"messages": user("x"), "tools": [LOOKUP]})
    assert raw["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"word": "x", "limit": 3}'
    named = {"type": "function", "function": {"name": "lookup"}}
    picked = api.chat.completions.create(model="m", messages=user("x"), tools=tools, tool_choice=named)
    assert json.loads(picked.choices[0].message.tool_calls[0].function.arguments) == {"word": "x", "limit": 3}
    none = api.chat.completions.create(model="m", messages=user("plain"), tools=tools, tool_choice="none")
    assert none.choices[0].message.content == "echo: plain" and none.choices[0].finish_reason == "stop"
    with pytest.raises(BadRequestError) as wrong:
        api.chat.completions.create(
            model="m", messages=user("x"), tools=tools, tool_choice={"type": "function", "function": {"name": "no"}}
        )
    assert wrong.value.status_code == 400 and wrong.value.param == "tool_choice"

    openai.parallel_tools = True
    both = api.chat.completions.create(model="m", messages=user("x"), tools=tools)
    assert [c.function.name for c in both.choices[0].message.tool_calls] == ["GetWeather", "lookup"]
    one = api.chat.completions.create(model="m", messages=user("x"), tools=tools, parallel_tool_calls=False)
    assert len(one.choices[0].message.tool_calls) == 1
    openai.tool_arguments = {"word": "forced"}
    forced = api.chat.completions.create(model="m", messages=user("x"), tools=[LOOKUP])
    assert forced.choices[0].message.tool_calls[0].function.arguments == '{"word": "forced"}'
    openai.tool_arguments = None

    strict = [pydantic_function_tool(GetWeather), pydantic_function_tool(Lookup, name="lookup")]
    with api.chat.completions.stream(model="m", messages=user("x"), tools=strict) as stream:
        deltas = [e.arguments_delta for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert len(deltas) >= 6 and final.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in calls] == ["GetWeather", "lookup"] and len({c.id for c in calls}) == 2
    assert calls[0].function.parsed_arguments.unit == Unit.celsius
    assert calls[1].function.parsed_arguments == Lookup(word="x", limit=3)

    history = [
        *user("weather?"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": calls[1].id,
                    "type": "function",
                    "function": calls[1].function.model_dump(include={"name", "arguments"}),
                }
            ],
        },
        {"role": "tool", "tool_call_id": calls[1].id, "content": "sunny"},
    ]
    after = api.chat.completions.create(model="m", messages=history, tools=tools)
    assert after.choices[0].message.content == "tool result: sunny" and after.choices[0].message.tool_calls is None
    assert openai.chats()[-1]["body"]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": calls[1].id,
        "content": "sunny",
    }


def test_openai_tool_call_stream_on_the_wire(openai):
    openai.parallel_tools = True
    body = {"tools": [LOOKUP, pydantic_function_tool(GetWeather)], "stream_options": {"include_usage": True}}
    events = sse(chat(openai.url, "x", client(), stream=True, **body))
    chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    assert events[-1] == "[DONE]" and all(e["system_fingerprint"] == "fp_fake" for e in events[:-1])
    first = events[0]["choices"][0]["delta"]
    call_id = first["tool_calls"][0]["id"]
    assert first == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"index": 0, "id": call_id, "type": "function", "function": {"name": "lookup", "arguments": ""}}
        ],
        "refusal": None,
    }
    calls = [d for c in chunks[1:-2] for d in c.choices[0].delta.tool_calls]
    first_args = [d.function.arguments for d in calls if d.index == 0]
    assert len(first_args) >= 3 and "".join(first_args) == '{"word": "x", "limit": 3}'
    second = [d for d in calls if d.index == 1]
    assert second[0].id.startswith("call_") and second[0].function.name == "GetWeather"
    assert json.loads("".join(d.function.arguments for d in second)) == sample_from_schema(
        pydantic_function_tool(GetWeather)["function"]["parameters"]
    )
    assert events[-3]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] > 0


def test_openai_structured_output_with_the_sdk(openai):
    api = sdk(openai)
    done = api.chat.completions.parse(model="m", messages=user("report"), response_format=Report)
    report = done.choices[0].message.parsed
    assert isinstance(report, Report) and report.kind == "short" and report.day == datetime.date(2024, 1, 1)
    assert report.places == [Place(city="x", zip_code=1)] and isinstance(report.parent, Report)
    sent = openai.chats()[-1]["body"]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    assert "$defs" in sent["json_schema"]["schema"]
    with api.chat.completions.stream(model="m", messages=user("r"), response_format=Report) as stream:
        assert stream.get_final_completion().choices[0].message.parsed.title == "x"
    loose = api.chat.completions.create(model="m", messages=user("x"), response_format={"type": "json_object"})
    assert json.loads(loose.choices[0].message.content) == {"ok": True}
    openai.json_output = {"anything": [1, 2]}
    assert json.loads(
        api.chat.completions.create(model="m", messages=user("x"), response_format={"type": "json_object"})
        .choices[0]
        .message.content
    ) == {"anything": [1, 2]}


def test_sample_from_schema_covers_what_tools_use():
    schema = {
        "$defs": {"Leaf": {"type": "object", "properties": {"n": {"type": "number", "maximum": 1}}}},
        "type": "object",
        "properties": {
            "leaf": {"$ref": "#/$defs/Leaf"},
            "maybe": {"anyOf": [{"type": "string", "enum": ["b", "c"]}, {"type": "null"}]},
            "nothing": {"type": "null"},
            "either": {"oneOf": [{"type": "boolean"}, {"type": "string"}]},
            "typed": {"type": ["integer", "null"], "exclusiveMinimum": 4},
            "items": {"type": "array", "items": {"type": "string", "format": "email"}, "minItems": 2},
            "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
            "mapping": {"type": "object", "additionalProperties": {"type": "integer"}},
            "merged": {"allOf": [{"$ref": "#/$defs/Leaf"}, {"properties": {"m": {"const": 7}}}]},
            "anything": {},
        },
    }
    assert sample_from_schema(schema) == {
        "leaf": {"n": 1},
        "maybe": "b",
        "nothing": None,
        "either": True,
        "typed": 5,
        "items": ["user@example.com"] * 2,
        "pair": [1, "x"],
        "mapping": {"key": 1},
        "merged": {"n": 1, "m": 7},
        "anything": "x",
    }


def test_openai_choices_logprobs_and_limits(openai):
    api = sdk(openai)
    two = api.chat.completions.create(model="m", messages=user("hi"), n=2, logprobs=True, top_logprobs=2)
    assert [(c.index, c.message.content) for c in two.choices] == [(0, "echo: hi #0"), (1, "echo: hi #1")]
    assert two.usage.completion_tokens == 6 and two.system_fingerprint == "fp_fake" and two.service_tier == "default"
    tokens = two.choices[1].logprobs.content
    assert "".join(t.token for t in tokens) == "echo: hi #1" and two.choices[1].logprobs.refusal is None
    assert all(t.logprob < 0 and bytes(t.bytes).decode() == t.token for t in tokens)
    assert [len(t.top_logprobs) for t in tokens] == [2] * len(tokens) and tokens[0].top_logprobs[0].token == "echo"
    plain = api.chat.completions.create(model="m", messages=user("hi"))
    assert plain.choices[0].logprobs is None
    events = sse(chat(openai.url, "hi", client(), stream=True, n=2, logprobs=True))
    chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert mine[0].delta.role == "assistant" and mine[-1].finish_reason == "stop"
        assert "".join(c.delta.content or "" for c in mine) == f"echo: hi #{index}"
        assert "".join(t.token for c in mine if c.logprobs for t in c.logprobs.content) == f"echo: hi #{index}"
    with api.chat.completions.stream(model="m", messages=user("hi"), n=2) as stream:
        final = stream.get_final_completion()
    assert [c.message.content for c in final.choices] == ["echo: hi #0", "echo: hi #1"]
    openai.reply_text = "one two three four five"
    cut = api.chat.completions.create(model="m", messages=user("x"), max_tokens=2)
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("one two", "length")
    cut = api.chat.completions.create(model="m", messages=user("x"), max_completion_tokens=3, stream=True)
    cut = list(cut)
    assert "".join(c.choices[0].delta.content or "" for c in cut) == "one two three"
    assert cut[-1].choices[0].finish_reason == "length"
    whole = api.chat.completions.create(model="m", messages=user("x"), max_tokens=5, stop=[" four"])
    assert (whole.choices[0].message.content, whole.choices[0].finish_reason) == ("one two three", "stop")
    openai.refusal, openai.finish_reason = "I can't help with that.", "content_filter"
    refused = api.chat.completions.create(model="m", messages=user("x"))
    assert (
        refused.choices[0].message.refusal == "I can't help with that." and refused.choices[0].message.content is None
    )
    assert refused.choices[0].finish_reason == "content_filter"
    openai.finish_reason = None  # the stream helper raises on content_filter
    with api.chat.completions.stream(model="m", messages=user("x")) as stream:
        assert stream.get_final_completion().choices[0].message.refusal == "I can't help with that."


def test_openai_records_every_field_and_rejects_on_demand(openai):
    api = sdk(openai)
    api.chat.completions.create(
        model="m",
        messages=user("x"),
        temperature=0.2,
        seed=7,
        metadata={"k": "v"},
        extra_body={"unknown_field": {"deep": [1]}},
    )
    body = openai.chats()[-1]["body"]
    assert (body["temperature"], body["seed"], body["metadata"], body["unknown_field"]) == (
        0.2,
        7,
        {"k": "v"},
        {"deep": [1]},
    )
    openai.reject_next(
        400,
        "Invalid schema for function 'f'.",
        param="tools[0].function.parameters",
        code="invalid_function_parameters",
    )
    openai.reject_next(404, "The model `m` does not exist.", code="model_not_found")
    with pytest.raises(BadRequestError) as bad:
        api.chat.completions.create(model="m", messages=user("x"))
    assert bad.value.body == {
        "message": "Invalid schema for function 'f'.",
        "type": "invalid_request_error",
        "param": "tools[0].function.parameters",
        "code": "invalid_function_parameters",
    }
    with pytest.raises(NotFoundError) as missing:
        api.chat.completions.create(model="m", messages=user("x"))
    assert missing.value.code == "model_not_found"
    assert api.chat.completions.create(model="m", messages=user("ok")).choices[0].message.content == "echo: ok"
    openai.reject_next()
    openai.heal()
    assert api.chat.completions.create(model="m", messages=user("ok")).choices[0].message.content == "echo: ok"
    openai.fail_status, openai.fail_times, openai.fail_param = 422, 1, "messages"
    with pytest.raises(UnprocessableEntityError) as unprocessable:
        api.chat.completions.create(model="m", messages=user("x"))
    assert unprocessable.value.param == "messages"
    openai.heal()
    assert openai.fail_param is None and api.models.list().data[0].id == "fake-model"
    assert len(openai.chats()) == 6 and len(openai.chats(5)) == 1


def test_openai_embeddings_float_and_base64(openai):
    api = sdk(openai)
    default = api.embeddings.create(model="text-embedding-3-small", input=["hello world", "x"])
    assert openai.embeddings_requests()[-1]["body"]["encoding_format"] == "base64"
    floats = api.embeddings.create(model="text-embedding-3-small", input=["hello world", "x"], encoding_format="float")
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert floats.data[0].embedding == FakeOpenAI.embedding_for("hello world") and len(floats.data[0].embedding) == 8
    assert floats.data[0].embedding != floats.data[1].embedding and [d.index for d in floats.data] == [0, 1]
    assert floats.model == "text-embedding-3-small" and floats.usage.prompt_tokens == 3 == floats.usage.total_tokens
    single = api.embeddings.create(model="e", input="hello world", encoding_format="float", dimensions=40)
    assert len(single.data) == 1 and single.data[0].embedding[:8] == floats.data[0].embedding
    session = client()
    raw = session.post(
        f"{openai.url}/embeddings", json={"model": "e", "input": [1, 2, 3], "encoding_format": "base64"}, timeout=5
    ).json()
    [item] = raw["data"]
    assert item["object"] == "embedding" and raw["object"] == "list" and raw["usage"]["prompt_tokens"] == 3
    assert list(struct.unpack("<8f", base64.b64decode(item["embedding"]))) == FakeOpenAI.embedding_for([1, 2, 3])
    lists = session.post(f"{openai.url}/embeddings", json={"model": "e", "input": [[1], [2, 3]]}, timeout=5).json()
    assert len(lists["data"]) == 2 and lists["usage"]["total_tokens"] == 3
    bad = session.post(f"{openai.url}/embeddings", json={"model": "e", "input": [{"no": 1}]}, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
    assert len(openai.embeddings_requests()) == 6 and openai.chats() == [] and openai.chat_count == 0
