"""Check that each fake server speaks its protocol, using only requests."""

from __future__ import annotations

import json
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .chatgpt_web_server import FakeChatGPTWeb
from .openai_server import FakeOpenAI
from .socks5 import BlackholeServer, Socks5Server


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


def web_ask(fake, prompt, cid=None, parent=None, bearer="tok-a") -> requests.Response:
    body = {
        "action": "next",
        "model": "auto",
        "parent_message_id": parent or "p0",
        "conversation_id": cid,
        "messages": [
            {"id": "u1", "author": {"role": "user"}, "content": {"content_type": "text", "parts": [prompt]}},
        ],
    }
    return requests.post(
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
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
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
