"""`python main.py` under attack-shaped traffic, over raw sockets: slow bodies and heads, one address
taking every connection, malformed bodies and request lines, and keys in malformed requests."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
from test_startup import Proc

KEY = "cas-serving-admin-key-0123456789abcdef"
PLAIN_KEY = "plain-looking-secret-0123456789"  # a key of no recognisable shape: only its place gives it away
BODY_TIMEOUT = 2
KEEPALIVE = 2
PER_ADDRESS = 4
SETTINGS = {
    "accounts": [{"name": "demo", "type": "demo"}],
    "body_timeout": BODY_TIMEOUT,
    "max_connections_per_address": PER_ADDRESS,
    "server": {"workers": 1, "worker_connections": 10, "keepalive": KEEPALIVE},
}


def start(folder: Path, logs: Path, settings: dict) -> Proc:
    folder.mkdir()
    (folder / "settings.json").write_text(json.dumps(settings))
    proc = Proc(folder, logs, {"ADMIN_API_KEY": KEY})
    try:
        proc.wait_ready()
    except BaseException:
        proc.stop()
        raise
    return proc


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server: one worker of 10 connections, body_timeout 2 s, keepalive 2 s, 4 connections per address."""
    proc = start(tmp_path_factory.mktemp("serving") / "site", tmp_path_factory.mktemp("logs"), SETTINGS)
    yield proc
    proc.stop()


# -- raw HTTP ------------------------------------------------------------------------------------


def connect(proc: Proc, source: str = "127.0.0.1", timeout: float = 5) -> socket.socket:
    """A TCP connection to the server from source (any 127.0.0.x), every operation bounded by timeout."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", proc.port))
    return sock


def send(sock: socket.socket, data: bytes) -> bool:
    """Send data; False if the server has already closed the connection."""
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


def read_answer(sock: socket.socket, timeout: float = 5) -> tuple[int | None, dict, bytes]:
    """Read one answer (status, headers, body) or what came before the connection ended; (None, {}, b"") if none."""
    deadline = time.monotonic() + timeout
    raw = b""
    while time.monotonic() < deadline:
        head_end = raw.find(b"\r\n\r\n")
        if head_end >= 0:
            status, headers = parse_head(raw[:head_end])
            body = raw[head_end + 4 :]
            if len(body) >= int(headers.get("content-length", "-1")) >= 0:
                return status, headers, body
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:  # reset: what arrived before still counts
            data = b""
        if not data:
            break
        raw += data
    if b"\r\n\r\n" not in raw:
        return None, {}, raw
    status, headers = parse_head(raw[: raw.find(b"\r\n\r\n")])
    return status, headers, raw[raw.find(b"\r\n\r\n") + 4 :]


def parse_head(head: bytes) -> tuple[int, dict]:
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}


def closed(sock: socket.socket, timeout: float) -> bool:
    """True if the server ends the connection (EOF or reset) within timeout."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def fresh_get(proc: Proc, path: str, **kwargs) -> requests.Response:
    """GET on a new connection (a pooled one may be closing just now: keepalive is short here), no proxy."""
    with requests.Session() as session:
        session.trust_env = False
        return session.get(proc.url + path, timeout=5, headers={"Connection": "close"}, **kwargs)


def readable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


def ask(proc: Proc, raw: bytes) -> tuple[int | None, dict, bytes]:
    """Send one raw request on a fresh connection and read the answer."""
    with connect(proc) as sock:
        send(sock, raw)
        return read_answer(sock)


def error_message(path: str, body: bytes) -> str:
    """The message of one of our JSON errors (OpenAI's shape under /v1/)."""
    data = json.loads(body)
    return data["error"]["message"] if path.startswith("/v1/") else data["message"]


def post_head(path: str, framing: str) -> bytes:
    """The head of a JSON POST, its body framed by a Content-Length of 1000 or chunked."""
    framing_header = "Content-Length: 1000" if framing == "content-length" else "Transfer-Encoding: chunked"
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{framing_header}\r\n\r\n".encode()


def trickle(sock: socket.socket, framing: str, until: float) -> tuple[int | None, dict, bytes]:
    """Send a body a byte every 0.1 s until the server answers (its answer) or until passes (None)."""
    if framing == "chunked":
        send(sock, b"3e8\r\n")  # one chunk of 1000 bytes, never finished
    while time.monotonic() < until:
        if readable(sock, 0.1):
            return read_answer(sock, timeout=2)
        if not send(sock, b"a"):
            return read_answer(sock, timeout=2)
    return None, {}, b""


# -- 1. slow bodies, slow heads, one address taking every connection ----------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_trickled_body_is_cut_after_body_timeout(server, framing):
    """A body sent a byte at a time gets 408 "not received within 2s" after body_timeout, then the connection closes."""
    with connect(server) as sock:
        send(sock, post_head("/api/chat", framing))
        started = time.monotonic()
        status, headers, body = trickle(sock, framing, until=started + BODY_TIMEOUT + 4)
        elapsed = time.monotonic() - started
        assert status == 408, f"no answer after {elapsed:.1f}s"
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        assert json.loads(body) == {
            "status": "error",
            "code": "request_timeout",
            "message": f"request body not received within {BODY_TIMEOUT}s",
        }
        assert BODY_TIMEOUT - 0.2 < elapsed < BODY_TIMEOUT + 1.5
        assert closed(sock, 2)
    server.wait_for_output("request body not received within 2s")
    assert "Traceback" not in server.stderr


def test_trickled_body_is_cut_under_gthread_too(tmp_path):
    """With server.worker_class gthread (a socket timeout bounds one recv only) the deadline holds too."""
    settings = {**SETTINGS, "server": {**SETTINGS["server"], "worker_class": "gthread", "threads": 4}}
    proc = start(tmp_path / "site", tmp_path, settings)
    try:
        with connect(proc) as sock:
            send(sock, post_head("/api/chat", "content-length"))
            started = time.monotonic()
            status, _headers, body = trickle(sock, "content-length", until=started + BODY_TIMEOUT + 4)
            assert status == 408, f"no answer after {time.monotonic() - started:.1f}s"
            assert json.loads(body)["message"] == f"request body not received within {BODY_TIMEOUT}s"
            assert closed(sock, 2)
        assert fresh_get(proc, "/api/health").status_code == 200
    finally:
        proc.stop()


def test_trickled_head_is_cut_after_keepalive(server):
    """gunicorn reads a request head within keepalive seconds: a head sent a byte at a time is dropped."""
    with connect(server) as sock:
        send(sock, b"GET /api/health HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        started = time.monotonic()
        while time.monotonic() < started + KEEPALIVE + 4 and not readable(sock, 0.1):
            if not send(sock, b"a"):
                break
        assert closed(sock, 1)
        assert time.monotonic() - started < KEEPALIVE + 1.5


def test_trickled_head_is_cut_with_keepalive_off(tmp_path):
    """With keepalive 0 gunicorn itself puts no bound on reading a head: the worker bounds it by body_timeout."""
    settings = {**SETTINGS, "server": {**SETTINGS["server"], "keepalive": 0}}
    proc = start(tmp_path / "site", tmp_path, settings)
    try:
        with connect(proc) as sock:
            send(sock, b"GET /api/health HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            started = time.monotonic()
            while time.monotonic() < started + BODY_TIMEOUT + 4 and not readable(sock, 0.1):
                if not send(sock, b"a"):
                    break
            status, _headers, body = read_answer(sock, timeout=1)
            elapsed = time.monotonic() - started
            assert status == 408, f"no answer after {elapsed:.1f}s"
            assert json.loads(body)["code"] == "request_timeout"
            assert elapsed < BODY_TIMEOUT + 1.5
        assert fresh_get(proc, "/api/health").status_code == 200  # the worker lives on
        assert "Traceback" not in proc.stderr
    finally:
        proc.stop()


def test_one_address_cannot_hold_every_connection(server):
    """127.0.0.2 opens 12 slow uploads against a worker of 10 connections: 4 are held, 8 get 429 at once,
    /api/health from 127.0.0.1 answers in under 100 ms meanwhile, and the held ones are cut after body_timeout."""
    socks = [connect(server, source="127.0.0.2") for _ in range(12)]
    try:
        for sock in socks:
            send(sock, post_head("/api/chat", "content-length") + b'{"prompt": "')
        started = time.monotonic()
        time.sleep(0.3)

        timings = []
        for _ in range(3):
            before = time.monotonic()
            health = fresh_get(server, "/api/health")
            timings.append(time.monotonic() - before)
            assert health.status_code == 200
        assert min(timings) < 0.1, timings

        answered = {sock: read_answer(sock, timeout=0.5) for sock in socks if readable(sock, 0)}
        held = [sock for sock in socks if sock not in answered]
        assert len(held) == PER_ADDRESS
        for status, headers, body in answered.values():
            assert status == 429
            assert headers["retry-after"] == "1"
            assert json.loads(body)["code"] == "too_many_connections"
            assert f"at most {PER_ADDRESS}" in json.loads(body)["message"]

        for sock in held:  # nothing more arrives: each is cut when its body_timeout runs out
            status, _headers, _body = read_answer(sock, timeout=started + BODY_TIMEOUT + 2 - time.monotonic())
            assert status == 408
    finally:
        for sock in socks:
            sock.close()
    time.sleep(0.2)
    with connect(server, source="127.0.0.2") as sock:  # the address's count went back down
        send(sock, b"GET /api/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert read_answer(sock)[0] == 200
    server.wait_for_output("Refusing connections from ip=127.0.0.2")


# -- 2. no key reaches a log ---------------------------------------------------------------------

MALFORMED_REQUESTS = [
    (f"GET /api/chat?user={KEY}\x01 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (f"GET /api/chat?user={PLAIN_KEY}\x01&prompt=hi HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (f"GET /api/chat?api_key={KEY}&prompt={'a' * 9000} HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    (f"GET /api/chat?api_key={PLAIN_KEY}&prompt={'a' * 9000} HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    (f"GET /api/chat?user={KEY} HTTP/9.x\r\nHost: t\r\n\r\n", 400),
    (f"GET /api/chat?api_key={PLAIN_KEY} HTTP/1.1x\r\nHost: t\r\n\r\n", 400),
    (f"GET /api/chat?api_key={KEY} HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n", 400),
    (f"GET /api/chat?user={PLAIN_KEY} HTTP/1.1\r\nHost: t\r\nX-Bad: \x01\r\n\r\n", 400),
    (f"GET /api/me HTTP/1.1\r\nHost: t\r\nAuthorization Bearer {KEY}\r\n\r\n", 400),
    (f"GET /api/me?user={PLAIN_KEY} {PLAIN_KEY} HTTP/1.1\r\nHost: t\r\n\r\n", 400),
]


def test_keys_in_malformed_requests_reach_no_log(server):
    """Malformed request lines and headers carrying ?user=KEY or ?api_key=KEY: JSON answers, logs without the key."""
    answers = [ask(server, raw.encode("latin-1")) for raw, _status in MALFORMED_REQUESTS]
    deadline = time.monotonic() + 5
    while server.stderr.count("Invalid request from") < len(MALFORMED_REQUESTS) and time.monotonic() < deadline:
        time.sleep(0.05)
    output = server.stdout + server.stderr
    assert output.count("Invalid request from") >= len(MALFORMED_REQUESTS)
    assert KEY not in output
    assert PLAIN_KEY not in output
    assert "Traceback" not in output
    for (raw, expected), (status, headers, body) in zip(MALFORMED_REQUESTS, answers, strict=True):
        assert status == expected, raw[:80]
        assert headers["content-type"] == "application/json"
        assert KEY.encode() not in body and PLAIN_KEY.encode() not in body  # gunicorn's HTML page quoted the line


def test_redaction_covers_messages_and_exception_text():
    """The log filter strips query strings, key parameters, Bearer tokens and key-shaped words, tracebacks included."""
    import logging

    from app.serving import RedactFilter

    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "bad line %r", (f"GET /a?user={PLAIN_KEY} HTTP/1.1",), None
    )
    try:
        raise ValueError(f"Authorization: Bearer {PLAIN_KEY}; api_key={PLAIN_KEY}; key {KEY}; sk-abcdefghijklmnop")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    RedactFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "ValueError" in text and "/a?" in text
    assert PLAIN_KEY not in text and KEY not in text and "sk-abcdefghijklmnop" not in text


# -- 3. malformed and cut bodies -----------------------------------------------------------------

CHUNKED_HEAD = "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
LENGTH_HEAD = "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
BODY_CASES = {
    "bad chunk size": (CHUNKED_HEAD + "zz\r\nabc\r\n0\r\n\r\n", False, "request body is malformed: bad chunk size"),
    "no chunk terminator": (
        CHUNKED_HEAD + "3\r\nabcXY5\r\n0\r\n\r\n",
        False,
        "request body is malformed: chunk not followed by CRLF",
    ),
    "cut chunked": (CHUNKED_HEAD + '9\r\n{"prompt"', True, "request body ended early"),
    "cut after a chunk": (CHUNKED_HEAD + '5\r\n{"pro\r\n', True, "request body ended early"),
    "cut content-length": (LENGTH_HEAD + '{"prompt":', True, "request body ended early (received 10 of 100 bytes)"),
}


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
@pytest.mark.parametrize("case", list(BODY_CASES))
def test_malformed_or_cut_body_is_a_400_without_traceback(server, path, case):
    """A malformed chunked body, or a client hanging up mid-upload, is a 400 naming it, logged in one line."""
    raw, hang_up, message = BODY_CASES[case]
    if path.startswith("/v1/"):  # /v1 checks the key before it reads a body of declared length
        raw = raw.replace("Host: t\r\n", f"Host: t\r\nAuthorization: Bearer {KEY}\r\n")
    with connect(server) as sock:
        send(sock, raw.replace("{path}", path).encode())
        if hang_up:
            sock.shutdown(socket.SHUT_WR)  # the upload ends here; the client still reads the answer
        status, headers, body = read_answer(sock)
        assert status == 400, body
        assert headers["connection"] == "close"
        assert error_message(path, body) == message
        assert closed(sock, 2)
    server.wait_for_output(f"refused the body of POST {path} from 127.0.0.1: {message}")
    assert "Traceback" not in server.stderr


# -- 4. long GET prompts, and gunicorn's own errors in JSON --------------------------------------


def test_get_prompt_up_to_the_request_line_limit_is_answered(server):
    """A GET prompt of 8,000 characters fits gunicorn's request line (8190 bytes); over it is a JSON 414."""
    prompt = "p" * 8000
    answer = fresh_get(server, "/api/chat", params={"prompt": prompt, "user": KEY})
    assert answer.status_code == 200, answer.text[:300]
    assert prompt in answer.json()["reply"]

    status, headers, body = ask(server, f"GET /api/chat?prompt={'p' * 8200} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert status == 414
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "status": "error",
        "code": "uri_too_long",
        "message": "the request line is longer than 8190 bytes; send long prompts by POST (a JSON or form body)",
    }


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (
            "GET /api/health HTTP/1.1\r\n" + "".join(f"X-H{i}: v\r\n" for i in range(101)) + "\r\n",
            431,
            "request_header_fields_too_large",
        ),
        (f"GET /api/health HTTP/1.1\r\nX-Big: {'v' * 9000}\r\n\r\n", 431, "request_header_fields_too_large"),
        ("GET /api/health\x01 HTTP/1.1\r\n\r\n", 400, "bad_request"),
        ("GET /api/health HTTP/1.1\r\nNo colon here\r\n\r\n", 400, "bad_request"),
    ],
)
def test_gunicorn_errors_are_json(server, raw, status, code):
    """Errors gunicorn answers before the app runs have the JSON shape of every other error."""
    got, headers, body = ask(server, raw.encode("latin-1"))
    assert got == status
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    data = json.loads(body)
    assert (data["status"], data["code"]) == ("error", code)
    assert data["message"]


@pytest.mark.parametrize("path", ["/api/health", "/no/such/page"])
def test_a_body_nobody_reads_is_not_drained(server, path):
    """A huge body on a route that never reads it: the answer says Connection: close and the connection
    ends, instead of gunicorn reading it to its end with no limit (a fast sender held the whole worker)."""
    with connect(server, source="127.0.0.3") as sock:
        send(sock, f"GET {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000000\r\n\r\n".encode())
        send(sock, b"x" * 65536)
        status, headers, _ = read_answer(sock)
        assert status in (200, 404)
        assert headers.get("connection", "").lower() == "close"
        ended, deadline = False, time.monotonic() + 3
        while not ended and time.monotonic() < deadline:  # keep pushing, as the attack did
            ended = not send(sock, b"x" * 65536) or readable(sock, 0) and closed(sock, 0.1)
        assert ended, "the server kept reading an unread body"
    started = time.monotonic()
    assert fresh_get(server, "/api/health").status_code == 200
    assert time.monotonic() - started < 0.5


# -- 3. every worker listens on a socket of its own ----------------------------------------------


def listener(worker: psutil.Process, port: int) -> int | None:
    """The inode of the socket the worker listens on the port with (one inherited from the master is shared)."""
    for c in worker.net_connections("tcp"):
        if c.status == "LISTEN" and c.laddr.port == port and c.fd >= 0:
            return Path(f"/proc/{worker.pid}/fd/{c.fd}").stat().st_ino
    return None


def test_connections_of_a_burst_spread_over_both_workers(tmp_path):
    """32 keep-alive connections opened at once, all left open: both workers hold some of them. With one
    shared listening socket, the first worker to wake could accept the whole burst (issue 13)."""

    settings = {**SETTINGS, "max_connections_per_address": 0, "server": {"workers": 2, "keepalive": 30}}
    proc = start(tmp_path / "site", tmp_path, settings)
    try:
        workers = psutil.Process(proc.popen.pid).children()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # both workers listening, each on a socket of its own (not one inherited)
            listening = {listener(w, proc.port) for w in workers} - {None}
            if len(workers) == 2 and len(listening) == 2:
                break
            time.sleep(0.1)
            workers = psutil.Process(proc.popen.pid).children()
        assert len(listening) == 2, "each of the 2 workers listens on the port with a socket of its own"
        socks = [connect(proc) for _ in range(32)]
        for sock in socks:
            send(sock, b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n")
        for sock in socks:
            assert read_answer(sock)[0] == 200
        mine = {sock.getsockname() for sock in socks}
        held = {w.pid: sum(1 for c in w.net_connections("tcp") if c.raddr and tuple(c.raddr) in mine) for w in workers}
        assert sum(held.values()) == 32
        assert min(held.values()) >= 4, held  # all 32 on one worker: 1 chance in 2**31 with the kernel's spread
        for sock in socks:
            sock.close()
    finally:
        proc.stop()


def test_a_port_another_server_holds_is_refused_at_start(tmp_path):
    """A port already listened on: main.py says so and exits 2, instead of sharing it (SO_REUSEPORT) with
    whatever holds it."""
    holder = socket.create_server(("127.0.0.1", 0))
    try:
        folder = tmp_path / "site"
        folder.mkdir()
        (folder / "settings.json").write_text(json.dumps(SETTINGS))
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "main.py", "--settings", str(folder / "settings.json"), "--port", str(port)],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
        assert "Address already in use" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        holder.close()
