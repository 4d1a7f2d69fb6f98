"""Issue 8, item 3's worst cases under the real server (gunicorn, gevent workers), /api/health probed meanwhile.

An upstream that sends one endless line, or floods a cumulative stream with lines just under the limit,
is stopped with a 502, and the worker keeps answering its other connections all the while.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import requests
from fakes.raw_sse import RawSSE
from test_startup import Proc

KEY = "cas-flood-test-admin-key-0123456789"
LINE = 1_048_576


def web_event(text: str) -> str:
    """One ChatGPT web event whose assistant message holds text (cumulative, as the backend sends it)."""
    message = {"id": "m1", "author": {"role": "assistant"}, "content": {"content_type": "text", "parts": [text]}}
    return json.dumps({"conversation_id": "c1", "message": message})


PROBE = """
import json, sys, time, requests
session = requests.Session()
session.trust_env = False
url, took = sys.argv[1] + "/api/health", []
while True:
    started = time.monotonic()
    # 503 too: once the flooding account rests after its failures, health says no account can take a chat.
    assert session.get(url, timeout=10).status_code in (200, 503)
    took.append(time.monotonic() - started)
    if len(took) == 1:
        print("ready", flush=True)
    if sys.stdin.readable() and select.select([sys.stdin], [], [], 0.02)[0]:
        break
print(json.dumps(took))
""".replace("import json", "import json, select")


class HealthProbe:
    """GET /api/health every 20 ms from a process of its own (so the test's own threads cannot slow it)."""

    def start(self, url: str) -> HealthProbe:
        self.popen = subprocess.Popen(
            [sys.executable, "-c", PROBE, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.popen.stdout.readline().strip() == "ready"
        return self

    def stop(self) -> list[float]:
        """Stop probing; return each answer's seconds."""
        out, _ = self.popen.communicate("stop\n", timeout=20)
        return json.loads(out)[1:]  # the first one opened the connection


@pytest.fixture
def server_on(tmp_path):
    """Return start(account): main.py on an account of the given settings; stopped after the test."""
    procs: list[Proc] = []

    def start(account: dict) -> Proc:
        folder = tmp_path / f"site{len(procs)}"
        folder.mkdir()
        (folder / "settings.json").write_text(
            json.dumps({"accounts": [account], "timeouts": {"connect": 2, "read": 10}})
        )
        proc = Proc(folder, tmp_path, {"ADMIN_API_KEY": KEY})
        procs.append(proc)
        proc.wait_ready()
        return proc

    yield start
    for proc in procs:
        proc.stop()


FLOODS = {
    # one line four times the limit
    "endless-line": ("openai", ['{"choices": [{"index": 0, "delta": {"content": "' + "x" * 4 * LINE + '"}}]}']),
    # a cumulative stream resending ~1 MB of text in every event, more than 64 lines' worth in all
    "cumulative-flood": ("chatgpt-web", [web_event("y" * (LINE - 200))] * 70),
}


@pytest.mark.parametrize("flood", FLOODS)
def test_an_upstream_flood_is_a_502_and_health_stays_fast(server_on, flood):
    kind, events = FLOODS[flood]
    fake = RawSSE(events).start()
    try:
        secret = {"api_key": "sk-flood"} if kind == "openai" else {"access_token": "tok-flood"}
        proc = server_on({"name": "flood", "type": kind, "base_url": fake.url, **secret})
        probe = HealthProbe().start(proc.url)
        answers: list[requests.Response] = []

        def chat() -> None:
            with requests.Session() as session:
                session.trust_env = False
                headers = {"Authorization": f"Bearer {KEY}"}
                answers.append(session.post(proc.url + "/api/chat", json={"prompt": "hi"}, headers=headers, timeout=30))

        chats = [threading.Thread(target=chat) for _ in range(4)]
        for thread in chats:
            thread.start()
        for thread in chats:
            thread.join(40)
        time.sleep(0.2)
        took = probe.stop()
    finally:
        fake.stop()
    # Each is the flood's 502; one that chose its account after the first 502 had made it rest is a 503
    # saying when to come back (which of the four come first is the kernel's and the workers' choice).
    flooded = [a for a in answers if a.status_code == 502]
    assert len(answers) == 4 and flooded, [a.text[:200] for a in answers]
    assert all(("longer than" in a.text) or ("more than" in a.text) for a in flooded), flooded[0].text
    resting = [a for a in answers if a.status_code != 502]
    assert all(a.status_code == 503 and a.headers.get("Retry-After") for a in resting), [a.text[:200] for a in resting]
    assert len(took) >= 5
    slowest = sorted(took)[-5:]
    assert max(took) < 0.1, f"slowest /api/health answers (ms): {[round(t * 1000) for t in slowest]}"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_reply_of_many_small_pieces_never_stalls_health(server_on, stream):
    """The demo quotes a 100,000-character prompt back word by word: ~50,000 pieces, four at once."""
    proc = server_on({"name": "demo", "type": "demo"})
    probe = HealthProbe().start(proc.url)
    answers: list[requests.Response] = []

    def chat() -> None:
        with requests.Session() as session:
            session.trust_env = False
            body = {"prompt": "a " * 49_000, "stream": stream}
            headers = {"Authorization": f"Bearer {KEY}"}
            answers.append(session.post(proc.url + "/api/chat", json=body, headers=headers, timeout=60))

    chats = [threading.Thread(target=chat) for _ in range(4)]
    for thread in chats:
        thread.start()
    for thread in chats:
        thread.join(60)
    took = probe.stop()
    assert [a.status_code for a in answers] == [200] * 4
    assert all(("event: done" in a.text) if stream else a.json()["reply"] for a in answers)
    slowest = sorted(took)[-5:]
    assert max(took) < 0.1, f"slowest /api/health answers (ms): {[round(t * 1000) for t in slowest]}"
