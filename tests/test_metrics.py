"""GET /metrics (app/metrics.py): Prometheus' text format, over real HTTP, in the threaded test server
and under `python main.py` with 2 gunicorn workers (prometheus_client's multiprocess mode).

A test process keeps one set of metrics for every app it builds, so each test reads what changed
between two scrapes."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from fakes import FakeOpenAI
from prometheus_client.parser import text_string_to_metric_families
from test_pool_workers import Served
from upstream_fixtures import FAST, openai_account

from app import config
from app.errors import ConfigError

ACCOUNT_KEY = "sk-metrics-account-secret-0123456789"
OTHER_KEY = "sk-metrics-other-secret-0123456789"
TOKEN = "metrics-token-0123456789abcdef"


def scrape(server, token: str | None = None) -> str:
    response = server.get("/metrics", token)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return response.text


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of an exposition, parsed by prometheus_client's own parser."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(parsed: dict, name: str, **labels) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# -- the threaded test server -------------------------------------------------------------------


def test_requests_are_counted_by_route_rule_and_status_with_no_id_or_key_in_any_label(make_server, admin, openai_fake):
    server = make_server([openai_account(openai_fake, name="oa", api_key=ACCOUNT_KEY)])
    user = server.create_user(admin, "alice")
    before = samples(scrape(server))
    for _ in range(5):
        assert server.get("/api/health").status_code == 200
    for _ in range(3):  # an id of the caller's choosing: counted under the rule, never as itself
        assert server.get("/api/conversations/conv-made-up-4242", user["api_key"]).status_code == 404
    assert server.get("/api/me", user["api_key"] + "-wrong").status_code == 401
    assert server.get("/no-such-path-7777", user["api_key"]).status_code == 404
    assert server.get(f"/api/chat?prompt=hi&user={user['api_key']}").status_code == 200
    text = scrape(server)
    after = samples(text)

    assert delta(before, after, "cas_http_requests_total", route="/api/health", status="200") == 5
    rule = "/api/conversations/<conversation_id>"
    assert delta(before, after, "cas_http_requests_total", route=rule, status="404") == 3
    assert delta(before, after, "cas_http_requests_total", route="/api/me", status="401") == 1
    assert delta(before, after, "cas_http_requests_total", route="(unmatched)", status="404") == 1
    assert delta(before, after, "cas_http_requests_total", route="/api/chat", status="200") == 1
    assert delta(before, after, "cas_http_request_duration_seconds_count", route="/api/health") == 5
    assert delta(before, after, "cas_http_request_duration_seconds_bucket", route="/api/health", le="+Inf") == 5
    assert delta(before, after, "cas_upstream_first_byte_seconds_count", account="oa") == 1
    assert delta(before, after, "cas_upstream_duration_seconds_count", account="oa", outcome="ok") == 1
    # (one test process keeps every app's metrics: only the series these requests changed are this app's)
    changed = {dict(labels).get("route") for key, labels in after if after[key, labels] != before.get((key, labels))}
    assert changed - {None} <= {r.rule for r in server.app.url_map.iter_rules()} | {"(unmatched)"}, changed
    for secret in ("conv-made-up-4242", "no-such-path-7777", user["api_key"], admin, ACCOUNT_KEY, "prompt=hi"):
        assert secret not in text
    assert not re.search(r"(?<![A-Za-z0-9])(cas|sk)-[A-Za-z0-9_-]{6,}", text)  # nothing shaped like a key


def test_accounts_by_state_are_read_from_the_pool_when_scraped(make_server, admin):
    with FakeOpenAI() as limited, FakeOpenAI() as idle:
        limited.rate_limit("600")
        accounts = [
            openai_account(limited, name="cool", api_key=ACCOUNT_KEY),
            openai_account(idle, name="off", api_key=OTHER_KEY, enabled=False),
            {"name": "demo", "type": "demo"},
        ]
        server = make_server(accounts, timeouts=FAST)
        first = samples(scrape(server))
        assert [value(first, "cas_accounts", state=s) for s in ("ok", "cooling", "needs_attention", "disabled")] == [
            2,
            0,
            0,
            1,
        ]
        key = server.create_user(admin, "alice")["api_key"]
        while not limited.chats():  # round robin reaches "cool" within two turns; its 429 fails over to demo
            assert server.chat(key, "hello")["account"] == "demo"
        text = scrape(server)
        after = samples(text)
        assert [value(after, "cas_accounts", state=s) for s in ("ok", "cooling", "needs_attention", "disabled")] == [
            1,
            1,
            0,
            1,
        ]
        assert delta(first, after, "cas_upstream_duration_seconds_count", account="cool", outcome="error") == 1
        assert ACCOUNT_KEY not in text and OTHER_KEY not in text


def test_a_per_minute_refusal_is_counted_by_its_limit(make_server, admin):
    server = make_server(limits={"user": {"requests_per_minute": 2}})
    key = server.create_user(admin, "alice")["api_key"]
    before = samples(scrape(server))
    assert [server.post("/api/chat", key, json={"prompt": "hi"}).status_code for _ in range(3)] == [200, 200, 429]
    after = samples(scrape(server))
    assert delta(before, after, "cas_limit_refusals_total", limit="requests_per_minute") == 1
    assert delta(before, after, "cas_limit_refusals_total", limit="requests_per_day") == 0
    assert delta(before, after, "cas_http_requests_total", route="/api/chat", status="429") == 1
    assert delta(before, after, "cas_http_requests_total", route="/api/chat", status="200") == 2


def test_tokens_are_the_upstreams_usage_per_model(make_server, admin, openai_fake):
    server = make_server([openai_account(openai_fake, api_key=ACCOUNT_KEY)])
    key = server.create_user(admin, "alice")["api_key"]
    before = samples(scrape(server))
    prompts = ["one two three", "four five six seven eight", "nine"]
    answers = [server.chat(key, p) for p in prompts]
    after = samples(scrape(server))
    records = openai_fake.chats()
    assert len(records) == 3
    usages = [openai_fake.usage(r["body"], a["reply"]) for r, a in zip(records, answers, strict=True)]
    prompt, completion = sum(u["prompt_tokens"] for u in usages), sum(u["completion_tokens"] for u in usages)
    assert prompt > 0 and completion > 0
    model = answers[0]["model"]
    assert delta(before, after, "cas_tokens_total", model=model, kind="prompt") == prompt
    assert delta(before, after, "cas_tokens_total", model=model, kind="completion") == completion


def test_streams_in_flight_rise_during_a_slow_stream_and_fall_back_to_zero(make_server, admin, openai_fake):
    server = make_server([openai_account(openai_fake, name="slow", api_key=ACCOUNT_KEY)])
    key = server.create_user(admin, "alice")["api_key"]
    base = value(samples(scrape(server)), "cas_streams_in_flight")  # 0, unless an earlier test left one
    openai_fake.reply_text = "a slow reply in many small pieces"
    openai_fake.stream_delay = 0.15
    answer = {}
    asking = threading.Thread(target=lambda: answer.update(server.chat(key, "go slowly")))
    asking.start()
    seen, deadline = [], time.monotonic() + 10
    while asking.is_alive() and time.monotonic() < deadline:
        seen.append(value(samples(scrape(server)), "cas_streams_in_flight"))
        if seen[-1] == base + 1:
            break
        time.sleep(0.02)
    asking.join(20)
    assert base + 1 in seen, seen
    assert answer["reply"] == "a slow reply in many small pieces"
    after = samples(scrape(server))
    assert value(after, "cas_streams_in_flight") == base
    assert value(after, "cas_upstream_duration_seconds_sum", account="slow", outcome="ok") >= 0.15


def test_metrics_token_is_asked_for_when_set(make_server, monkeypatch):
    monkeypatch.setenv("CAS_TEST_METRICS_TOKEN", TOKEN)
    server = make_server(metrics_token="env:CAS_TEST_METRICS_TOKEN")
    assert server.services.pool is not None
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN[:-1]}"}):  # fmt: skip
        refused = server.get("/metrics", headers=headers)
        assert refused.status_code == 401, headers
        assert refused.json()["code"] == "unauthorized"
        assert "cas_http_requests_total" not in refused.text and TOKEN not in refused.text
    text = scrape(server, TOKEN)
    assert "cas_http_requests_total" in text and "cas_accounts" in text
    assert TOKEN not in text


def test_metrics_are_open_without_a_token_and_the_setting_is_checked(server, tmp_path, monkeypatch):
    assert "cas_accounts" in scrape(server)  # no metrics_token: open (docs: firewall it or set one)
    with pytest.raises(ConfigError, match="metrics_token"):
        config.validate({"metrics_token": 123}, tmp_path)
    monkeypatch.delenv("CAS_NO_SUCH_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="metrics_token: environment variable CAS_NO_SUCH_TOKEN is not set"):
        config.validate({"metrics_token": "env:CAS_NO_SUCH_TOKEN"}, tmp_path)
    assert config.validate({}, tmp_path)["metrics_token"] is None
    assert config.validate({"routes": {"metrics": "/ops/metrics"}}, tmp_path)["routes"]["metrics"] == "/ops/metrics"


# -- two gunicorn workers -----------------------------------------------------------------------


class Workers:
    """`python main.py` with 2 workers; each request on a connection of its own, and which worker answered."""

    def __init__(self, served: Served, pids: list[int]):
        self.served, self.pids = served, pids

    def get(self, path: str, key: str | None = None) -> tuple[int, str, int | None]:
        """(status, body, pid of the worker that answered), the connection held open until the worker is known."""
        conn = http.client.HTTPConnection("127.0.0.1", self.served.port, timeout=30)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
            response = conn.getresponse()
            body = response.read().decode()
            return response.status, body, self.worker_of(conn.sock.getsockname()[1])
        finally:
            conn.close()

    def worker_of(self, port: int) -> int | None:
        for pid in self.pids:
            try:
                connections = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            if any(c.raddr and c.raddr.port == port and c.laddr.port == self.served.port for c in connections):
                return pid
        return None

    def scrape(self, token: str) -> tuple[dict, int | None]:
        status, body, pid = self.get("/metrics", token)
        assert status == 200, body
        return samples(body), pid


@pytest.fixture
def workers(tmp_path):
    started = []

    def start(accounts, **settings) -> Workers:
        served = Served(tmp_path / f"site{len(started)}", accounts, metrics_token=TOKEN, **settings)
        started.append(served)
        return Workers(served, served.wait_ready())

    yield start
    for served in started:
        served.stop()


def test_with_two_workers_a_scrape_sums_both_and_a_dead_workers_streams_leave_the_gauge(workers, openai_fake):
    earlier = set(Path(tempfile.gettempdir()).glob("cas-metrics-*"))
    site = workers([openai_account(openai_fake, name="oa", api_key=ACCOUNT_KEY)])
    before, _pid = site.scrape(TOKEN)
    served_by, sent = set(), 0
    while len(served_by) < 2 or sent < 10:  # the kernel picks the worker: ask until both answered some
        status, _body, pid = site.get("/api/health")
        assert status == 200
        served_by |= {pid} - {None}  # None: not seen (the connection went before psutil looked)
        sent += 1
        assert sent < 400, served_by
    assert served_by == set(site.pids)
    scraped_by = set()
    for _ in range(200):  # every scrape, whichever worker answers it, counts both workers' requests
        after, pid = site.scrape(TOKEN)
        scraped_by |= {pid} - {None}
        assert delta(before, after, "cas_http_requests_total", route="/api/health", status="200") == sent
        assert delta(before, after, "cas_http_request_duration_seconds_count", route="/api/health") == sent
        assert value(after, "cas_accounts", state="ok") == 1
        if scraped_by == set(site.pids):
            break
    assert scraped_by == set(site.pids)
    # PROMETHEUS_MULTIPROC_DIR: a fresh folder for this run, with a file of each worker's
    made = set(Path(tempfile.gettempdir()).glob("cas-metrics-*")) - earlier
    ours = [d for d in made if all((d / f"counter_{pid}.db").exists() for pid in site.pids)]
    assert len(ours) == 1, made
    (folder,) = ours
    assert site.get("/metrics")[0] == 401  # the token holds under gunicorn too

    # A worker killed mid-stream: its in-flight stream leaves the gauge (child_exit), its counts stay.
    openai_fake.reply_text = " ".join(["slowly"] * 200)
    openai_fake.stream_delay = 0.1
    user = site.served.call("POST", "/api/users", json={"username": "alice"}).json()["api_key"]
    asking = threading.Thread(target=lambda: _quietly(site.served.chat, user, "go"), daemon=True)
    asking.start()
    deadline = time.monotonic() + 10
    while value(site.scrape(TOKEN)[0], "cas_streams_in_flight") != 1:
        assert time.monotonic() < deadline, "the stream never showed in flight"
        time.sleep(0.05)
    streaming = _worker_talking_to(site.pids, openai_fake.port)
    assert streaming is not None
    counted = value(site.scrape(TOKEN)[0], "cas_http_requests_total", route="/api/health", status="200")
    os.kill(streaming, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while True:  # the master reaps it (child_exit) and boots another
        try:
            after, _pid = site.scrape(TOKEN)
        except (ConnectionError, http.client.RemoteDisconnected):  # queued to the dying worker's own socket
            time.sleep(0.1)
            continue
        if value(after, "cas_streams_in_flight") == 0:
            break
        assert time.monotonic() < deadline, "a dead worker's stream stayed in flight"
        time.sleep(0.1)
    assert value(after, "cas_http_requests_total", route="/api/health", status="200") == counted
    asking.join(20)
    site.served.stop()
    assert site.served.popen.returncode == 0, site.served.output
    assert not folder.exists()  # the master removed its folder when it stopped


def _quietly(call, *args) -> None:
    with contextlib.suppress(Exception):  # the worker serving it is killed on purpose
        call(*args)


def _worker_talking_to(pids: list[int], port: int) -> int | None:
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(c.raddr and c.raddr.port == port for c in connections):
            return pid
    return None
