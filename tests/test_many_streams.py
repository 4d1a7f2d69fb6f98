"""Many streams at once through `python main.py`: every request that arrives in time is answered.

gunicorn's gevent worker reads each request on a connection (the first one too) under a silent
timer of `server.keepalive` seconds. A burst of requests holds a worker's event loop for longer
than that (each request runs to its end without yielding, its SQLite writes included); a timer
that ran out meanwhile and a request that arrived meanwhile then come due together, and the timer
used to win: the connection was closed with its request unread, so the caller got a reset and no
`done` event, and the server logged nothing. Seen as 3 of 800 streams on one key at the default
keepalive (5 s); here keepalive is 1 s so that a burst of a few hundred streams shows it.
"""

from __future__ import annotations

import contextlib
import json
import resource
import selectors
import socket
import time
from collections import Counter

import pytest
from test_startup import Proc

ADMIN_KEY = "cas-many-streams-admin-key-0123456789"
HOST = "127.0.0.1"
EARLY, LATE = 400, 200  # streams whose requests go at once, then streams whose requests follow them
KEEPALIVE = 1


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < wanted:
        pytest.skip(f"needs {wanted} open files")


def outcome(data: bytes) -> str:
    """done / error CODE / status N / nothing, for one whole response (read until the server closed)."""
    if not data:
        return "nothing"
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/1.1 ") else "?"
    if status != "200":
        return f"status {status}"
    if b"event: done\n" in body:
        return "done"
    if b"event: error\n" in body:
        return "error " + body.split(b"event: error\n", 1)[1].split(b'"code":"', 1)[-1].split(b'"', 1)[0].decode()
    return "200 without done"


def burst(port: int, key: str, timeout: float = 60) -> tuple[Counter, float]:
    """Open every connection first; send the early requests at once, then the late ones; read all.

    Returns the outcomes and how long after the first connection the last request went: within
    `keepalive`, every request must be answered. The late ones arrive while the workers are busy
    with the early ones.
    """
    body = json.dumps({"prompt": "hello from one of many streams", "stream": True}).encode()
    request = (
        f"POST /api/chat HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    results: Counter = Counter()
    started = time.monotonic()  # before the first connection: the server's timers all start later
    socks = [socket.create_connection((HOST, port), timeout=10) for _ in range(EARLY + LATE)]
    time.sleep(KEEPALIVE / 4)  # let both workers accept them all (each now waits for its request)
    for index, sock in enumerate(socks):
        if index == EARLY:
            time.sleep(0.05)
        with contextlib.suppress(OSError):  # already closed by the server: the reading below tells
            sock.sendall(request)
    sent_within = time.monotonic() - started

    received = {sock: bytearray() for sock in socks}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while selector.get_map() and time.monotonic() < deadline:
            for ready, _ in selector.select(timeout=1):
                sock = ready.fileobj
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    results["reset"] += 1
                else:
                    if data:
                        received[sock] += data
                        continue
                    results[outcome(bytes(received[sock]))] += 1
                selector.unregister(sock)
                sock.close()
        for key_ in list(selector.get_map().values()):  # still open at the deadline
            results["timeout"] += 1
            key_.fileobj.close()
    return results, sent_within


def test_a_burst_of_streams_on_one_key_all_end_with_done(tmp_path):
    raise_fd_limit(4 * (EARLY + LATE) + 256)  # the server inherits it too
    settings = {
        "accounts": [{"name": "demo", "type": "demo"}],
        "server": {"workers": 2, "keepalive": KEEPALIVE},
        "max_connections_per_address": 0,  # every connection here comes from 127.0.0.1
    }
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "settings.json").write_text(json.dumps(settings))
    proc = Proc(folder, tmp_path, {"ADMIN_API_KEY": ADMIN_KEY})
    try:
        proc.wait_ready()
        made = proc.post("/api/users", ADMIN_KEY, json={"username": "many"})
        assert made.status_code == 201, made.text
        key = made.json()["api_key"]
        results, sent_within = burst(proc.port, key)
        if sent_within > 0.75 * KEEPALIVE and results != Counter(done=EARLY + LATE):
            pytest.skip(
                f"this machine took {sent_within:.2f}s to send the burst: no request may be late ({dict(results)})"
            )
        log = proc.stdout + proc.stderr
        assert results == Counter(done=EARLY + LATE), f"{dict(results)}, sent within {sent_within:.2f}s\n{log[-3000:]}"
        answered = log.count('"POST /api/chat" 200')
        assert answered == EARLY + LATE, f"{answered} streams in the access log"
    finally:
        proc.stop()
