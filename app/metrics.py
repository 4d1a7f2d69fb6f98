"""Prometheus metrics, served at /metrics (routes.metrics) in Prometheus' text format.

What is counted, where:
- requests by route (the Flask rule, "/api/conversations/<conversation_id>", never the path asked for)
  and status, and the time from the request reaching the app to its answer's headers
  (`request_started` / `request_done`, hooked in app/__init__.py);
- each upstream reply, per account: time to its first event and to its end, and how many are in
  flight (`upstream`, wrapped around every attempt in ChatService._attempts);
- tokens per model and kind, as the usage ledger records them (`tokens`, UsageService.record);
- refusals by per-user limit (`refused`, QuotaService._refusal);
- accounts by state, read from the pool's shared health at scrape time (`AccountsCollector`), so
  every worker reports the same numbers and none keeps a copy.

Under gunicorn (main.py) `use_multiprocess` runs in the master before the workers fork: each
worker writes its numbers to mmap files of its own in PROMETHEUS_MULTIPROC_DIR (made per server
run), a scrape sums every worker's files (MultiProcessCollector), and `process_dead` (gunicorn's
child_exit, app/serving.py) drops a dead worker's in-flight gauge. A single process (tests, the
threaded werkzeug server) keeps its numbers in memory. An update is a dict lookup and a float
added (plus an mmap write in multiprocess mode): microseconds, no lock shared across processes.

No label carries what a caller sent: routes are rules, statuses numbers, accounts and models come
from settings and the upstream's own (short, printable) model names, a caller's own access
token is "(own access token)".
"""

from __future__ import annotations

import atexit
import hmac
import os
import shutil
import tempfile
import time
from pathlib import Path

import prometheus_client
from flask import g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes
UNMATCHED = "(unmatched)"  # a request no rule matched (404, 405): one series, whatever the path
OWN_TOKEN = "(own access token)"  # noqa: S105 - a caller's own ChatGPT token: never a series per token
NO_MODEL = "(none)"

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)

prometheus_client.disable_created_metrics()  # no *_created series: they double the output and say little


class _Metrics:
    """Every metric this process updates (made anew when multiprocess mode is switched on)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "cas_http_requests",
            "Requests answered, by route (the rule, not the path) and status",
            ("route", "status"),
            registry=r,
        )
        self.request_seconds = Histogram(
            "cas_http_request_duration_seconds",
            "Time from a request reaching the app to its answer's headers, by route (a stream's body is not counted)",
            ("route",),
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.first_byte = Histogram(
            "cas_upstream_first_byte_seconds",
            "Time from asking an upstream to its reply's first event, by account",
            ("account",),
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "cas_upstream_duration_seconds",
            "Time from asking an upstream to the end of its reply, by account and outcome (ok, error, cut)",
            ("account", "outcome"),
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "cas_streams_in_flight",
            "Replies streaming from an upstream now (every turn streams, whether or not its caller asked for a stream)",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.tokens = Counter(
            "cas_tokens",
            "Tokens in the usage ledger, by model and kind (prompt, completion)",
            ("model", "kind"),
            registry=r,
        )
        self.refusals = Counter(
            "cas_limit_refusals", "Turns refused with a 429 by a per-user limit, by limit", ("limit",), registry=r
        )
        self.children: dict = {}  # (metric, labels) -> its child: labels() checks and locks, a dict lookup does not

    def child(self, metric, *labels):
        key = (id(metric), labels)
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = metric.labels(*labels)
        return found


_m = _Metrics()
_dir: str | None = None  # PROMETHEUS_MULTIPROC_DIR, once use_multiprocess ran


# -- hooks on the hot path ---------------------------------------------------------------------


def request_started() -> None:
    g.metrics_started = time.perf_counter()


def request_done(response):
    """after_request: count the answer under its rule and status, and time it."""
    m = _m
    rule = request.url_rule
    route = rule.rule if rule is not None else UNMATCHED
    m.child(m.requests, route, str(response.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None:
        m.child(m.request_seconds, route).observe(time.perf_counter() - started)
    return response


def upstream(account: str, events):
    """Pass an upstream reply's events on, timing its first event and its whole, counted in flight meanwhile."""
    m = _m
    started, first, outcome = time.perf_counter(), True, "error"
    m.in_flight.inc()
    try:
        for event in events:
            if first:
                first = False
                m.child(m.first_byte, account).observe(time.perf_counter() - started)
            yield event
        outcome = "ok"
    except GeneratorExit:
        outcome = "cut"
        raise
    finally:
        m.in_flight.dec()
        m.child(m.upstream_seconds, account, outcome).observe(time.perf_counter() - started)
        close = getattr(events, "close", None)
        if close is not None:
            close()


def tokens(model: str | None, prompt: int, completion: int) -> None:
    m = _m
    if prompt:
        m.child(m.tokens, model or NO_MODEL, "prompt").inc(prompt)
    if completion:
        m.child(m.tokens, model or NO_MODEL, "completion").inc(completion)


def refused(limit: str) -> None:
    m = _m
    m.child(m.refusals, limit).inc()


# -- the scrape ----------------------------------------------------------------------------------


class AccountsCollector:
    """cas_accounts{state}: the pool's accounts per state, read from its shared health when scraped."""

    def __init__(self, pool) -> None:
        self.pool = pool

    def describe(self):
        return []  # registering must not read the database

    def collect(self):
        family = GaugeMetricFamily(
            "cas_accounts", "Accounts by state (ok, cooling, needs_attention, disabled)", labels=("state",)
        )
        for state, count in self.pool.counts().items():
            family.add_metric((state,), count)
        yield family


class _ThisProcess:
    """This process's own metrics, as one collector (single-process mode)."""

    def __init__(self, metrics: _Metrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        return self.metrics.registry.collect()


def exposition(pool) -> bytes:
    """The text a scrape gets: every worker's metrics summed (or this process's), and the accounts."""
    registry = CollectorRegistry(auto_describe=False)
    if _dir is not None:
        multiprocess.MultiProcessCollector(registry, path=_dir)
    else:
        registry.register(_ThisProcess(_m))
    registry.register(AccountsCollector(pool))
    return generate_latest(registry)


def authorized(expected: str | None, authorization: str | None) -> bool:
    """Whether a scrape may read the metrics: always when no metrics_token is set, else only with
    "Authorization: Bearer <metrics_token>" (compared in constant time)."""
    if not expected:
        return True
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    return hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


# -- several processes ---------------------------------------------------------------------------


def warm() -> None:
    """In a new worker: make this process's metric files (the first value of each kind creates and maps
    one) before it takes requests, so its first answers do not wait for them."""
    if _dir is None:
        return
    m = _m
    m.child(m.requests, "/api/health", "200")
    m.child(m.request_seconds, "/api/health")
    m.in_flight.inc(0)


def use_multiprocess(directory: str | os.PathLike | None = None) -> str:
    """Switch this process (gunicorn's master, before it forks) to prometheus_client's multiprocess mode.

    The folder: directory, else $PROMETHEUS_MULTIPROC_DIR (emptied of an earlier run's files), else a
    fresh temporary folder, removed when the master exits. Workers inherit the choice when they fork.
    """
    global _m, _dir
    given = directory or os.environ.get(ENV)
    if given:
        path = Path(given)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # an earlier run's numbers are not this run's
            stale.unlink(missing_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="cas-metrics-"))
        atexit.register(_remove, path, os.getpid())
    os.environ[ENV] = str(path)  # the workers' MultiProcessValue and any other reader look here
    values.ValueClass = values.MultiProcessValue()
    _dir = str(path)
    _m = _Metrics()
    return _dir


def _remove(path: Path, owner: int) -> None:
    if os.getpid() == owner:  # a worker runs its inherited atexit hooks too: only the master removes it
        shutil.rmtree(path, ignore_errors=True)


def process_dead(pid: int) -> None:
    """gunicorn's child_exit: a worker is gone; its in-flight gauge goes with it (its counters stay)."""
    if _dir is not None:
        multiprocess.mark_process_dead(pid, _dir)
