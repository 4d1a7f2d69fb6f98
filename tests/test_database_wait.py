"""Waiting for SQLite's write lock: cooperative under gevent (the worker goes on), a 503 when it lasts.
The same on PostgreSQL, whose writes wait for an advisory lock (app/store/conversations.py, PG_WRITE_LOCK).

SQLite's own wait (busy_timeout) is a C call: while one worker wrote, a write in the other froze that
whole worker, every connection on it included. Now a write takes the lock first (BEGIN IMMEDIATE)
and waits for it in short sleeps, which gevent turns into turns for the worker's other connections.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager

import psycopg
import pytest
import requests
from sqlalchemy.engine import make_url
from test_startup import Proc
from test_upstream_flood import HealthProbe

from app.store import conversations as conversation_store

KEY = "cas-database-wait-admin-key-0123456789"


@contextmanager
def write_lock_held(database, seconds: float):
    """Hold the database's write lock from another connection (as another worker's long write would).
    database: a SQLite file, or a PostgreSQL URL."""
    if str(database).startswith("postgresql"):
        url = make_url(database)
        holder = psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database)
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (conversation_store.PG_WRITE_LOCK,))
    else:
        holder = sqlite3.connect(database, timeout=5, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(seconds, holder.commit)
    release.start()
    try:
        yield
    finally:
        release.join()
        holder.close()


@pytest.fixture
def server(make_server, database):
    """A demo server, on SQLite and on PostgreSQL (tests/pg.py)."""
    return make_server(**database)


def test_a_write_waits_for_the_lock_without_freezing_the_worker(tmp_path, database):
    folder = tmp_path / "site"
    folder.mkdir()
    settings = {"accounts": [{"name": "demo", "type": "demo"}], "server": {"workers": 1}, **database}
    (folder / "settings.json").write_text(json.dumps(settings))
    proc = Proc(folder, tmp_path, {"ADMIN_API_KEY": KEY})
    try:
        proc.wait_ready()
        assert proc.post("/api/chat", KEY, json={"prompt": "warm up"}).status_code == 200
        probe = HealthProbe().start(proc.url)
        answers: list[requests.Response] = []
        with write_lock_held(database.get("database_url", folder / "conversations.db"), 1.5):
            started = time.monotonic()
            chat = threading.Thread(target=lambda: answers.append(proc.post("/api/chat", KEY, json={"prompt": "hi"})))
            chat.start()
            chat.join(20)
        waited = time.monotonic() - started
        took = probe.stop()
    finally:
        proc.stop()
    assert answers[0].status_code == 200, answers[0].text
    assert waited > 1.0  # it did wait for the lock ...
    slowest = sorted(took)[-3:]
    assert max(took) < 0.1, f"... and the worker answered meanwhile; slowest (ms): {[round(t * 1000) for t in slowest]}"


def test_a_write_that_waits_too_long_is_a_503(server, user, tmp_path, monkeypatch, database):
    monkeypatch.setattr(conversation_store, "WRITE_WAIT", 0.3)
    with write_lock_held(database.get("database_url", tmp_path / "conversations.db"), 1.0):
        response = server.post("/api/chat", user["api_key"], json={"prompt": "hi"})
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "busy"
    assert response.headers["Retry-After"] == "2"
    assert server.chat(user["api_key"], "and now")["reply"]  # the lock is free again


def test_health_answers_while_another_writer_holds_the_lock(server, user, tmp_path, database):
    """/api/health reads the accounts' states only: a load balancer's check never waits for the write lock,
    even just after a turn whose finished lease this worker has yet to write (issue 13: health under load)."""
    assert server.chat(user["api_key"], "leave a lease to write")["reply"]
    with write_lock_held(database.get("database_url", tmp_path / "conversations.db"), 1.5):
        started = time.monotonic()
        health = server.get("/api/health")
        took = time.monotonic() - started
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok"
    assert took < 0.5, f"/api/health waited {took:.2f} s for another writer"
