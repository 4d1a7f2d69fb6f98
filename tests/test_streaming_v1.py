"""Streaming /api/chat (SSE: delta, done, error) and the OpenAI-compatible /v1 API, over real HTTP."""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
from urllib.parse import urlencode

import openai
import pytest
import requests
from fakes import FakeChatGPTWeb, FakeOpenAI
from fakes.raw_sse import RawSSE
from openai import OpenAI
from upstream_fixtures import (
    NO_COOLDOWN,
    chat_requests,
    conversation_total,
    openai_account,
    start_with_user,
    web_account,
)

REPLY = "Streaming works one piece at a time, ok."  # 40 characters: ten pieces of four
LONG_REPLY = "A long story, told slowly, piece by piece, so that a caller may leave in the middle."
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Content-Encoding": "identity"}
EVENT = re.compile(rb"(?:event: ([a-z]+)\n)?data: ([^\n]*)\n\n")
HISTORY = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
]
ERROR_KEYS = {"message", "type", "param", "code"}


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture(params=["openai", "chatgpt-web"])
def upstream(request):
    """A running fake of each account type and an account that uses it."""
    fake = FakeOpenAI() if request.param == "openai" else FakeChatGPTWeb()
    with fake:
        account = openai_account(fake) if request.param == "openai" else web_account(fake)
        yield fake, account


def open_stream(server, key: str | None, method: str = "POST", path: str = "/api/chat", **kwargs):
    """Send a request whose answer is read as it comes (requests, stream=True)."""
    kwargs.setdefault("timeout", 10)
    return server.call(method, path, key, stream=True, **kwargs)


def sse_events(response) -> list[tuple[float, str | None, str]]:
    """Read a whole event stream; return (arrival time, event name, data) for each event."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events, name, data = [], None, []
    for line in response.iter_lines(decode_unicode=False):
        line = line.decode()
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif not line and data:
            events.append((time.monotonic(), name, "\n".join(data)))
            name, data = None, []
    response.close()
    return events


def chat_stream(server, key: str, prompt: str, **params) -> list[tuple[str, dict]]:
    """POST /api/chat with stream=true; return (event name, JSON data) for each event."""
    response = open_stream(server, key, json={"prompt": prompt, "stream": True, **params})
    return [(name, json.loads(data)) for _, name, data in sse_events(response)]


def deltas_and_end(events: list[tuple[str, dict]]) -> tuple[str, str, dict]:
    """Check that a /api/chat stream is deltas then exactly one ending event; return (text, end name, end data)."""
    *deltas, (end_name, end_data) = events
    assert all(name == "delta" and set(data) == {"text"} for name, data in deltas), events
    return "".join(data["text"] for _, data in deltas), end_name, end_data


def raw_request(server, method: str, path: str, key: str, body: dict | None = None) -> socket.socket:
    """Send one request on a bare socket (Connection: close) and return the socket, unread."""
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    payload = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    sock.sendall(head.encode() + b"\r\n" + payload)
    return sock


def read_until(sock: socket.socket, enough) -> list[tuple[str | None, str]]:
    """Read raw SSE bytes until enough(events) holds; return the (event name, data) pairs so far."""
    buffer = b""
    while True:
        events = [(m[1].decode() if m[1] else None, m[2].decode()) for m in EVENT.finditer(buffer)]
        if enough(events):
            return events
        chunk = sock.recv(65536)
        assert chunk, f"the stream ended before the expected event: {buffer[-300:]!r}"
        buffer += chunk


def only_conversation(server, key: str, wait: float = 1.0) -> dict:
    """Return the user's one stored conversation (polling briefly), with its messages."""
    deadline = time.monotonic() + wait
    while True:
        listing = server.get("/api/conversations", key).json()
        if listing["total"] or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert listing["total"] == 1, listing
    cid = listing["conversations"][0]["conversation_id"]
    return server.get(f"/api/conversations/{cid}", key).json()


def v1_post(server, key: str | None, body, **kwargs) -> requests.Response:
    """POST /v1/chat/completions with a JSON body (or raw data)."""
    if isinstance(body, (dict, list)):
        return server.post("/v1/chat/completions", key, json=body, **kwargs)
    return server.post("/v1/chat/completions", key, data=body, **kwargs)


def openai_error_of(response, status: int) -> dict:
    """Check an error in OpenAI's shape with the given status; return its inside."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == ERROR_KEYS, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


class SlowUpstream:
    """An upstream on 127.0.0.1 that sends its reply four characters at a time, `gap` seconds apart.

    It notes when its client hangs up mid-reply: select() on the socket sees the close as it
    happens, not at the next write. `kind` is "openai" (chunks) or "chatgpt-web" (cumulative parts).
    """

    def __init__(self, kind: str, reply: str, gap: float = 0.1):
        self.kind, self.reply, self.gap = kind, reply, gap
        self.bodies: list[dict] = []
        self.hung_up = threading.Event()
        self.hung_up_at: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        path = "/v1" if self.kind == "openai" else "/backend-api"
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}{path}"

    def __enter__(self) -> SlowUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(2)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            path, body = _read_request(conn)
            if "gen_title" in path:
                title = b'{"title": "slow title"}'
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(title), title)
                )
                return
            with self._lock:
                self.bodies.append(json.loads(body))
                number = len(self.bodies)
            try:
                self._stream(conn, number)
            except OSError:
                self._note_hang_up()

    def _stream(self, conn: socket.socket, number: int) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        for index, end in enumerate(range(4, len(self.reply) + 4, 4)):
            if index and self._client_left(conn):
                return
            if self.kind == "openai":
                data = {"id": f"chatcmpl-slow{number}", "choices": [{"index": 0, "delta": {"content": ""}}]}
                data["choices"][0]["delta"]["content"] = self.reply[end - 4 : end]
            else:
                message = {
                    "id": f"m-slow-{number}",
                    "author": {"role": "assistant"},
                    "content": {"content_type": "text", "parts": [self.reply[:end]]},
                }
                data = {"conversation_id": "c-slow", "message": message}
            _send_event(conn, json.dumps(data))
        if self.kind == "openai":
            _send_event(conn, json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        _send_event(conn, "[DONE]")
        conn.sendall(b"0\r\n\r\n")

    def _client_left(self, conn: socket.socket) -> bool:
        readable, _, _ = select.select([conn], [], [], self.gap)
        if not readable:
            return False
        try:
            left = conn.recv(1) == b""
        except OSError:
            left = True
        if left:
            self._note_hang_up()
        return left

    def _note_hang_up(self) -> None:
        if not self.hung_up.is_set():
            self.hung_up_at = time.monotonic()
            self.hung_up.set()


def _read_request(conn: socket.socket) -> tuple[str, bytes]:
    """Read one HTTP request with a Content-Length body; return (path, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return "", b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(v.split(":", 1)[1]) for v in lines[1:] if v.lower().startswith("content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return lines[0].split(" ")[1], body


def _send_event(conn: socket.socket, data: str) -> None:
    frame = f"data: {data}\n\n".encode()
    conn.sendall(b"%x\r\n%s\r\n" % (len(frame), frame))


# -- /api/chat with stream=true ----------------------------------------------------------------


def test_stream_deltas_join_to_reply_and_done_is_the_plain_answer(make_server, admin, upstream):
    """Deltas arrive as the upstream sends them, join to the reply, and `done` has the plain answer's keys."""
    fake, account = upstream
    fake.reply_text, fake.stream_delay = REPLY, 0.1  # ten pieces: about one second in all
    server, key = start_with_user(make_server, admin, [account])
    started = time.monotonic()
    response = open_stream(server, key, json={"prompt": "stream please", "stream": True})
    for name, value in STREAM_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.headers)
    events = sse_events(response)

    first_at, end_at = events[0][0] - started, events[-1][0] - started
    text, end_name, done = deltas_and_end([(name, json.loads(data)) for _, name, data in events])
    assert end_name == "done"
    assert len(events) >= 5
    assert first_at < 0.5 and end_at > 0.8, (first_at, end_at)
    assert text == done["reply"] == REPLY
    plain = server.chat(key, "not streamed")
    assert set(done) == set(plain)
    assert done["status"] == "success" and done["api_prompt"] == "stream please"
    assert done["account"] == account["name"] and done["finish_reason"] == "stop"
    stored = server.get(f"/api/conversations/{done['conversation_id']}", key).json()["messages"]
    assert [(m["message_id"], m["reply"], m["complete"]) for m in stored] == [(done["message_id"], REPLY, True)]


def test_streamed_follow_up_names_the_last_turn(make_server, admin):
    """A streamed follow-up's `done` carries parent_id and the previous turn, like a plain follow-up."""
    server, key = start_with_user(make_server, admin, [{"name": "demo", "type": "demo"}])
    first = server.chat(key, "first question")
    text, end_name, done = deltas_and_end(
        chat_stream(server, key, "second question", conversation_id=first["conversation_id"])
    )
    plain = server.chat(key, "third question", conversation_id=first["conversation_id"])
    assert end_name == "done" and text == done["reply"] and "1 earlier turn" in text
    assert done["parent_id"] == first["message_id"]
    assert (done["last_message_prompt"], done["last_message_reply"]) == ("first question", first["reply"])
    assert set(done) == set(plain)


@pytest.mark.parametrize(
    ("method", "how", "value"),
    [("GET", "params", v) for v in ("true", "True", "1", "yes", "on")]
    + [("POST", "json", True), ("POST", "json", "YES"), ("POST", "data", "on"), ("POST", "data", "1")],
)
def test_any_true_spelling_streams(make_server, admin, method, how, value):
    """stream=true in any boolean spelling, by query, JSON or form, answers an event stream."""
    server, key = start_with_user(make_server, admin, [{"name": "demo", "type": "demo"}])
    response = open_stream(server, key, method, **{how: {"prompt": "hi", "stream": value}})
    events = sse_events(response)
    assert events[-1][1] == "done" and [name for _, name, _ in events[:-1]] == ["delta"] * (len(events) - 1)


@pytest.mark.parametrize("value", ["false", "0", "off", False])
def test_false_stream_answers_plain_json(make_server, admin, value):
    """stream=false (any spelling) answers the ordinary JSON."""
    server, key = start_with_user(make_server, admin, [{"name": "demo", "type": "demo"}])
    response = server.post("/api/chat", key, json={"prompt": "hi", "stream": value})
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
    assert response.json()["status"] == "success"


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("bad key", 401, "unauthorized"),
        ("empty prompt", 400, "bad_request"),
        ("bad stream flag", 400, "bad_request"),
        ("unknown conversation", 404, "not_found"),
        ("no account", 503, "no_account_available"),
    ],
)
def test_errors_before_the_stream_are_plain_json(make_server, admin, openai_fake, case, status, code):
    """What is wrong before the first byte is an ordinary JSON error with its status, not a stream."""
    server, key = start_with_user(make_server, admin, [openai_account(openai_fake)], plus=True)
    params = {"prompt": "hello", "stream": "true"}
    if case == "bad key":
        key = "cas-not-a-key"
    elif case == "empty prompt":
        params["prompt"] = "   "
    elif case == "bad stream flag":
        params["stream"] = "maybe"
    elif case == "unknown conversation":
        params["conversation_id"] = "no-such-conversation"
    else:
        params["plus"] = "true"  # a plus user, but no plus account is configured
    for response in (server.get("/api/chat", key, params=params), server.post("/api/chat", key, data=params)):
        assert response.status_code == status, response.text
        assert response.headers["Content-Type"].startswith("application/json")
        body = response.json()
        assert (body["status"], body["code"]) == ("error", code)
    assert chat_requests(openai_fake) == []


def test_mid_stream_upstream_failure_is_an_error_event(make_server, admin, upstream):
    """An upstream that fails after the first piece ends the stream with `error`, and nothing is stored."""
    fake, account = upstream
    fake.error_in_stream = "the model overloaded"
    server, key = start_with_user(make_server, admin, [account])
    text, end_name, error = deltas_and_end(chat_stream(server, key, "a long question"))
    assert text  # the first piece came through before the failure
    assert end_name == "error"
    assert set(error) == {"status", "code", "message"}
    assert (error["status"], error["code"]) == ("error", "upstream_error")
    assert f"'{account['name']}'" in error["message"] and "overloaded" in error["message"]
    assert conversation_total(server, key) == 0


def test_cut_upstream_stream_is_an_error_event(make_server, admin):
    """An upstream stream that ends without a finish or [DONE] gives `error`, and nothing is stored."""
    chunk = json.dumps({"id": "chatcmpl-raw", "choices": [{"index": 0, "delta": {"content": "half a"}}]})
    with RawSSE([chunk], done=False) as raw:
        server, key = start_with_user(make_server, admin, [openai_account(raw)])
        text, end_name, error = deltas_and_end(chat_stream(server, key, "hello"))
    assert (text, end_name, error["code"]) == ("half a", "error", "upstream_error")
    assert conversation_total(server, key) == 0


def test_upstream_refusal_before_any_text_keeps_its_status(make_server, admin, upstream):
    """An upstream that refuses before any text is a plain 502 JSON error even with stream=true."""
    fake, account = upstream
    fake.fail_status, fake.fail_message = 500, "upstream exploded"
    server, key = start_with_user(make_server, admin, [account])
    response = server.post("/api/chat", key, json={"prompt": "hello", "stream": True})
    assert response.status_code == 502 and response.headers["Content-Type"].startswith("application/json")
    assert response.json()["code"] == "upstream_error" and "500" in response.json()["message"]
    assert conversation_total(server, key) == 0


def test_non_ascii_reply_streams_whole(make_server, admin, upstream):
    """Accented letters, emoji and a line separator come through the deltas unchanged."""
    fake, account = upstream
    fake.reply_text = "Grüße 👋 — naïve café\u2028next\nline ✓"
    server, key = start_with_user(make_server, admin, [account])
    text, end_name, done = deltas_and_end(chat_stream(server, key, "unicode please"))
    assert end_name == "done" and text == done["reply"] == fake.reply_text


@pytest.mark.parametrize("kind", ["openai", "chatgpt-web"])
def test_caller_leaving_closes_upstream_and_keeps_the_partial_reply(make_server, admin, kind):
    """A caller gone mid-stream closes the upstream request at once; the partial reply stays, and the
    conversation goes on."""
    with SlowUpstream(kind, LONG_REPLY, gap=0.1) as slow:  # about two seconds for the whole reply
        account = openai_account(slow) if kind == "openai" else web_account(slow)
        server, key = start_with_user(make_server, admin, [account])
        query = urlencode({"prompt": "tell me a long story", "stream": "true"})
        sock = raw_request(server, "GET", f"/api/chat?{query}", key)
        events = read_until(sock, lambda evs: any(name == "delta" for name, _ in evs))
        first = json.loads(events[0][1])["text"]
        sock.close()
        left = time.monotonic()

        assert slow.hung_up.wait(1.5), "the upstream request was still open 1.5 s after the caller left"
        assert slow.hung_up_at - left < 1.5
        conversation = only_conversation(server, key)
        [partial] = conversation["messages"]
        assert partial["complete"] is False
        assert conversation["title"] == "tell me a long story"  # no upstream title for a cut reply
        assert partial["reply"].startswith(first) and LONG_REPLY.startswith(partial["reply"])
        assert len(partial["reply"]) < len(LONG_REPLY)

        slow.gap = 0
        follow = server.chat(key, "go on", conversation_id=conversation["conversation_id"])
        assert follow["reply"] == LONG_REPLY and follow["last_message_reply"] == partial["reply"]
        messages = server.get(f"/api/conversations/{conversation['conversation_id']}", key).json()["messages"]
        assert [m["complete"] for m in messages] == [False, True]
        sent = slow.bodies[-1]
        if kind == "openai":
            assert sent["messages"] == [
                {"role": "user", "content": "tell me a long story"},
                {"role": "assistant", "content": partial["reply"]},
                {"role": "user", "content": "go on"},
            ]
        else:  # the upstream ids of the cut reply were kept, so the follow-up continues upstream
            assert (sent["conversation_id"], sent["parent_message_id"]) == ("c-slow", "m-slow-1")


# -- /v1: completions --------------------------------------------------------------------------


def test_v1_completion_passes_messages_through(make_server, admin, openai_fake, sdk):
    """A chat.completion with the fake's reply; an openai account gets the caller's messages as they are."""
    openai_fake.reply_text = REPLY
    server, key = start_with_user(make_server, admin, [openai_account(openai_fake, model="gpt-free")])
    completion = sdk(server, key).chat.completions.create(model="gpt-free", messages=HISTORY)

    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == "gpt-free"
    [choice] = completion.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", REPLY, "stop")
    words = sum(len(m["content"].split()) for m in HISTORY)
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (words, len(REPLY.split()))
    assert completion.usage.total_tokens == words + len(REPLY.split())
    [sent] = chat_requests(openai_fake)
    assert sent["body"]["messages"] == HISTORY and sent["body"]["model"] == "gpt-free"
    assert conversation_total(server, key) == 0


def test_v1_stream_chunks_with_usage(make_server, admin, openai_fake, sdk):
    """Streamed chunks: role first, contents joining to the reply, `stop` last, then a usage-only chunk."""
    openai_fake.reply_text = REPLY
    server, key = start_with_user(make_server, admin, [openai_account(openai_fake, model="gpt-free")])
    stream = sdk(server, key).chat.completions.create(
        model="gpt-free", messages=HISTORY, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    *with_choices, usage_chunk = chunks
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == REPLY
    assert [c.choices[0].finish_reason for c in with_choices][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == len(REPLY.split())
    assert usage_chunk.usage.total_tokens == usage_chunk.usage.prompt_tokens + usage_chunk.usage.completion_tokens
    assert chat_requests(openai_fake)[0]["body"]["messages"] == HISTORY
    assert conversation_total(server, key) == 0


def test_v1_stream_without_usage_ends_on_the_finish_chunk(make_server, admin, openai_fake, sdk):
    """Without include_usage the last chunk is the one with finish_reason, and no chunk has empty choices."""
    server, key = start_with_user(make_server, admin, [openai_account(openai_fake)])
    chunks = list(
        sdk(server, key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(len(c.choices) == 1 for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: hi"


def test_v1_raw_stream_framing(make_server, admin, openai_fake):
    """The raw stream: SSE headers, `data:` lines only (no event names), ending with `data: [DONE]`."""
    openai_fake.reply_text, openai_fake.stream_delay = REPLY, 0.1
    server, key = start_with_user(make_server, admin, [openai_account(openai_fake)])
    started = time.monotonic()
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "stream_options": {"include_usage": True}}
    response = open_stream(server, key, path="/v1/chat/completions", json=body)
    for name, value in STREAM_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.headers)
    events = sse_events(response)

    assert all(name is None for _, name, _ in events)
    assert events[-1][2] == "[DONE]"
    chunks = [(at, json.loads(data)) for at, _, data in events[:-1]]
    content_times = [at for at, c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    chunks = [c for _, c in chunks]
    assert content_times[0] - started < 0.5 and content_times[-1] - started > 0.8, content_times
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == REPLY
    assert chunks[-1]["choices"] == []
    assert set(chunks[-1]["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}  # and its details
    assert chunks[0]["model"] == "gpt-4o-mini"  # no model asked: the account's


def test_v1_model_omitted_uses_an_account_and_its_model(make_server, admin, openai_fake):
    """Without `model`, any account the caller may use answers, named by its model."""
    server, key = start_with_user(make_server, admin, [openai_account(openai_fake, model="gpt-free")])
    response = v1_post(server, key, {"messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "gpt-free"
    assert response.json()["choices"][0]["message"]["content"] == "echo: hi"
    assert chat_requests(openai_fake)[0]["body"]["model"] == "gpt-free"


def test_v1_mid_stream_failure(make_server, admin, openai_fake, sdk):
    """An upstream failing mid-reply: an APIError while streaming, an error event last. A request that does not
    stream is sent upstream unstreamed too (as the caller sent it), so it is answered whole."""
    openai_fake.error_in_stream = "the model overloaded"
    # No cooldown after each failure (health.backoff_start 0): all three requests reach the upstream.
    server, key = start_with_user(make_server, admin, [openai_account(openai_fake)], health=NO_COOLDOWN)
    client = sdk(server, key)
    messages = [{"role": "user", "content": "hi"}]
    assert client.chat.completions.create(model="gpt-4o-mini", messages=messages).choices[0].message.content
    assert chat_requests(openai_fake)[0]["body"].get("stream") in (None, False)
    with pytest.raises(openai.APIError) as streamed:
        list(client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
    assert "overloaded" in streamed.value.message and streamed.value.code == "upstream_error"
    response = open_stream(server, key, path="/v1/chat/completions", json={"messages": messages, "stream": True})
    events = sse_events(response)
    assert events[-1][2] != "[DONE]"
    assert set(json.loads(events[-1][2])["error"]) == ERROR_KEYS
    assert conversation_total(server, key) == 0


@pytest.mark.parametrize("seen", ['"content":"A lo"'])
def test_v1_caller_leaving_closes_the_upstream(make_server, admin, seen):
    """A /v1 caller gone mid-stream (right after the first chunk) closes the upstream at once; nothing stored."""
    with SlowUpstream("openai", LONG_REPLY, gap=0.1) as slow:
        server, key = start_with_user(make_server, admin, [openai_account(slow)])
        body = {"messages": [{"role": "user", "content": "a long story"}], "stream": True}
        sock = raw_request(server, "POST", "/v1/chat/completions", key, body)
        read_until(sock, lambda evs: any(seen in data for _, data in evs))
        sock.close()
        left = time.monotonic()
        assert slow.hung_up.wait(1.5), "the upstream request was still open 1.5 s after the caller left"
        assert slow.hung_up_at - left < 1.5
        assert conversation_total(server, key) == 0


# -- /v1: other account types, models, errors ----------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_v1_web_account_gets_messages_folded(make_server, admin, web_fake, sdk, stream):
    """A chatgpt-web account answers /v1 with the messages folded into one prompt; nothing is stored."""
    web_fake.reply_text = REPLY
    server, key = start_with_user(make_server, admin, [web_account(web_fake, model="web-model")])
    client = sdk(server, key)
    if stream:
        chunks = list(client.chat.completions.create(model="web-model", messages=HISTORY, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        completion = client.chat.completions.create(model="web-model", messages=HISTORY)
        text = completion.choices[0].message.content
        assert completion.usage.prompt_tokens == 0 and completion.usage.completion_tokens == 10  # 40 chars / 4
    assert text == REPLY
    [sent] = chat_requests(web_fake)
    assert sent["body"]["messages"][-1]["content"]["parts"] == [
        "system: You are terse.\n\nuser: Name a colour.\n\nassistant: Blue.\n\nuser: Another one?"
    ]
    assert sent["body"]["model"] == "web-model"
    assert web_fake.requests_to("/backend-api/conversation") == [sent]  # no title asked for: nothing to name
    assert conversation_total(server, key) == 0


def test_v1_web_account_single_message_goes_as_it_is(make_server, admin, web_fake, sdk):
    """One user message reaches a chatgpt-web account unchanged (no role prefix)."""
    server, key = start_with_user(make_server, admin, [web_account(web_fake)])
    completion = sdk(server, key).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "just this"}]
    )
    assert completion.choices[0].message.content == "web echo: just this"
    assert chat_requests(web_fake)[0]["body"]["messages"][0]["content"]["parts"] == ["just this"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_v1_demo_account_answers(make_server, admin, sdk, stream):
    """The demo account answers /v1 too, marked as the demo."""
    server, key = start_with_user(make_server, admin, [{"name": "demo", "type": "demo"}])
    client = sdk(server, key)
    messages = [{"role": "user", "content": "is this real?"}]
    if stream:
        chunks = list(client.chat.completions.create(model="demo", messages=messages, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        model = chunks[0].model
    else:
        completion = client.chat.completions.create(model="demo", messages=messages)
        text, model = completion.choices[0].message.content, completion.model
        assert completion.usage.prompt_tokens == 3
    assert text.startswith("[demo account]") and "You said: is this real?" in text
    assert model == "demo"
    assert conversation_total(server, key) == 0


@pytest.fixture
def mixed(make_server, admin, openai_fake, web_fake):
    """A server with free, plus, disabled, web and demo accounts, and a plain and a plus user."""
    accounts = [
        openai_account(openai_fake, name="oa-free", model="gpt-free"),
        openai_account(openai_fake, name="oa-plus", model="gpt-plus", plus=True),
        openai_account(openai_fake, name="oa-off", model="gpt-off", enabled=False),
        web_account(web_fake, model="web-model"),
        {"name": "demo", "type": "demo"},
        openai_account(openai_fake, name="oa-free-2", model="gpt-free", api_key="sk-second-key-0123456789"),
    ]
    server = make_server(accounts, timeouts={"connect": 1, "read": 2})
    plain = server.create_user(admin, "plain")["api_key"]
    plus = server.create_user(admin, "plusser", plus=True)["api_key"]
    return server, plain, plus


def test_v1_models_list_what_each_user_may_use(mixed, sdk):
    """Models are listed once each, in settings order: plus ones only for plus users, disabled ones never."""
    server, plain, plus = mixed
    plain_models = sdk(server, plain).models.list()
    assert [m.id for m in plain_models.data] == ["gpt-free", "web-model", "demo"]
    assert [m.id for m in sdk(server, plus).models.list().data] == ["gpt-free", "gpt-plus", "web-model", "demo"]
    assert {(m.object, m.owned_by) for m in plain_models.data} == {("model", "chatgpt-api-server")}
    assert server.get("/v1/models", plain).json()["object"] == "list"


def test_v1_plus_model_only_for_plus_users(mixed, openai_fake, sdk):
    """A plus-only model is not found for a plain user and answers a plus user."""
    server, plain, plus = mixed
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as refused:
        sdk(server, plain).chat.completions.create(model="gpt-plus", messages=messages)
    assert refused.value.code == "model_not_found" and refused.value.param == "model"
    assert chat_requests(openai_fake) == []
    answer = sdk(server, plus).chat.completions.create(model="gpt-plus", messages=messages)
    assert answer.model == "gpt-plus" and answer.choices[0].message.content == "echo: hi"
    assert [r["body"]["model"] for r in chat_requests(openai_fake)] == ["gpt-plus"]


def test_v1_model_spreads_over_its_accounts(mixed, openai_fake, sdk):
    """Requests for one model take turns over the accounts serving it (both accounts' keys are used)."""
    server, plain, _ = mixed
    client = sdk(server, plain)
    for _ in range(2):
        client.chat.completions.create(model="gpt-free", messages=[{"role": "user", "content": "hi"}])
    sent = chat_requests(openai_fake)
    assert [r["body"]["model"] for r in sent] == ["gpt-free", "gpt-free"]
    assert {r["headers"]["authorization"] for r in sent} == {
        "Bearer sk-test-key-0123456789",
        "Bearer sk-second-key-0123456789",
    }
    assert conversation_total(server, plain) == 0


@pytest.mark.parametrize(
    ("case", "exception", "code", "param"),
    [
        ("unknown model", openai.NotFoundError, "model_not_found", "model"),
        ("disabled model", openai.NotFoundError, "model_not_found", "model"),
        ("unknown role", openai.BadRequestError, "bad_request", "messages"),
        ("empty messages", openai.BadRequestError, "bad_request", "messages"),
        ("bad key", openai.AuthenticationError, "invalid_api_key", None),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_v1_errors_raise_the_sdk_exceptions(mixed, openai_fake, sdk, case, exception, code, param, stream):
    """Each refusal raises the SDK's exception for its status, with OpenAI's code and param, and calls no upstream."""
    server, plain, _ = mixed
    model, messages = "gpt-free", [{"role": "user", "content": "hi"}]
    if case == "unknown model":
        model = "gpt-nonexistent"
    elif case == "disabled model":
        model = "gpt-off"
    elif case == "no user message":
        messages = [{"role": "system", "content": "only a system prompt"}]
    elif case == "unknown role":
        messages = [{"role": "wizard", "content": "hi"}]
    elif case == "image part":
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
    elif case == "empty messages":
        messages = []
    key = "cas-not-a-key" if case == "bad key" else plain
    with pytest.raises(exception) as raised:
        sdk(server, key).chat.completions.create(model=model, messages=messages, stream=stream)
    error = raised.value
    assert (error.code, error.param) == (code, param)
    assert error.type == "invalid_request_error"
    assert chat_requests(openai_fake) == []


@pytest.mark.parametrize(
    ("case", "status", "kind", "code", "param"),
    [
        ("no key", 401, "invalid_request_error", "invalid_api_key", None),
        ("not json", 400, "invalid_request_error", "bad_request", None),
        ("messages not a list", 400, "invalid_request_error", "bad_request", "messages"),
        ("model not a string", 400, "invalid_request_error", "bad_request", "model"),
        ("stream not a bool", 400, "invalid_request_error", "bad_request", "stream"),
        ("stream_options not an object", 400, "invalid_request_error", "bad_request", "stream_options"),
        ("unknown model", 404, "invalid_request_error", "model_not_found", "model"),
        ("wrong method", 405, "invalid_request_error", "method_not_allowed", None),
        ("unknown path", 404, "invalid_request_error", "not_found", None),
    ],
)
def test_v1_errors_have_openais_json_shape(mixed, case, status, kind, code, param):
    """Every /v1 error is {"error": {message, type, param, code}} with its status, never a stream."""
    server, plain, _ = mixed
    body = {"model": "gpt-free", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    key = plain
    if case == "no key":
        key = None
    elif case == "not json":
        body = "prompt=hi"
    elif case == "messages not a list":
        body["messages"] = {"role": "user", "content": "hi"}
    elif case == "model not a string":
        body["model"] = 4
    elif case == "stream not a bool":
        body["stream"] = "yes"
    elif case == "stream_options not an object":
        body["stream_options"] = ["include_usage"]
    elif case == "unknown model":
        body["model"] = "gpt-nonexistent"
    if case == "wrong method":
        response = server.get("/v1/chat/completions", key)
    elif case == "unknown path":
        response = server.post("/v1/no-such-route", key, json=body)
    else:
        response = v1_post(server, key, body)
    error = openai_error_of(response, status)
    assert (error["type"], error["code"], error["param"]) == (kind, code, param)


def test_v1_bad_key_on_models(mixed):
    """/v1/models with an unknown key is a 401 invalid_api_key in OpenAI's shape."""
    server, _, _ = mixed
    error = openai_error_of(server.get("/v1/models", "cas-not-a-key"), 401)
    assert error["code"] == "invalid_api_key"


def test_v1_no_usable_account_is_503(make_server, admin, openai_fake, sdk):
    """A plain user on a server with only plus accounts: no model listed and 503 for any request."""
    server, key = start_with_user(make_server, admin, [openai_account(openai_fake, plus=True)])
    assert sdk(server, key).models.list().data == []
    error = openai_error_of(v1_post(server, key, {"messages": [{"role": "user", "content": "hi"}]}), 503)
    assert (error["type"], error["code"]) == ("api_error", "no_account_available")


def test_v1_is_stateless(mixed, admin, sdk):
    """After completions on every account type, streamed and not, no conversation is stored."""
    server, plain, plus = mixed
    for key in (plain, plus):
        client = sdk(server, key)
        for model in ("gpt-free", "web-model", "demo"):
            client.chat.completions.create(model=model, messages=HISTORY)
            list(client.chat.completions.create(model=model, messages=HISTORY, stream=True))
        assert conversation_total(server, key) == 0
    assert server.get("/api/conversations", admin).json()["total"] == 0


# -- findings of the review of streaming and /v1 (each failed before its fix) ------------------


def test_line_separators_in_a_reply_stay_escaped_in_every_event(server, admin):
    """U+2028, U+2029 and U+0085 never appear raw in a stream, so line-based readers keep each event whole."""
    prompt = "a\u2028b\u2029c\x85d"
    raw = requests.get(
        server.url + "/api/chat",
        params={"prompt": prompt, "stream": "true"},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=30,
    ).content.decode()
    assert not {"\u2028", "\u2029", "\x85"} & set(raw)
    done = [line for line in raw.split("\n") if line.startswith("data: ") and '"status"' in line][-1]
    assert json.loads(done[6:])["api_prompt"] == prompt


def test_v1_deeply_nested_json_is_a_400(server, admin):
    """A body nested deeper than the parser goes is a 400 in OpenAI's shape, not a 500."""
    response = requests.post(
        server.url + "/v1/chat/completions",
        data="[" * 100_000 + "]" * 100_000,
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"stream": None}, 200),
        ({"stream_options": {"include_usage": "no"}}, 400),
        ({"messages": [{"role": "assistant", "content": None}, {"role": "user", "content": "hi"}]}, 200),
    ],
)
def test_v1_fields_as_openai_allows_them(server, admin, extra, status):
    """stream: null is false, include_usage must be a boolean, an assistant message may have null content."""
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    response = requests.post(
        server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {admin}"}, timeout=30
    )
    assert response.status_code == status, response.text


def test_v1_model_retrieve_and_bearer_only(server, admin):
    """client.models.retrieve works; /v1 asks for a Bearer key by name (a `user` field is not a key)."""
    client = OpenAI(base_url=server.url + "/v1", api_key=admin, max_retries=0)
    assert client.models.retrieve("demo").id == "demo"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    response = requests.get(server.url + "/v1/models", params={"user": admin}, timeout=30)
    assert response.status_code == 401 and "Authorization: Bearer" in response.json()["error"]["message"]
