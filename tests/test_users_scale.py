"""The users file at scale and under contention: crash leftovers, the lock, 20,000 users, users per client."""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from filelock import FileLock
from test_users_store import make_user
from test_web_pages import Browser

from app.services.users import hash_key
from app.store import JsonUserStore

USERS = 20_000


def plant_leftovers(folder) -> tuple[list, list]:
    """Temporary files as a writer killed mid-write leaves them, and look-alikes that must stay."""
    stale = [folder / ".users.json.4242.139871234567.tmp", folder / ".users.json.1.2.tmp"]
    keep = [folder / ".users.json.x.2.tmp", folder / ".other.json.1.2.tmp", folder / "users.json.1.2.tmp"]
    for path in stale + keep:
        path.write_text('{"version": 1, "users": {"ghost": "every key hash"}}')
    return stale, keep


def test_crash_leftovers_are_removed_at_start_up(tmp_path, make_server, admin):
    """Start-up removes .users.json.<pid>.<tid>.tmp beside users.json, and nothing else; users.json is intact."""
    seed = JsonUserStore(tmp_path / "users.json")
    seed.add(make_user("admin", role="admin", key_hash=hash_key(admin), created_by=None))
    seed.add(make_user("alice"))
    before = (tmp_path / "users.json").read_bytes()
    stale, keep = plant_leftovers(tmp_path)
    server = make_server()
    assert not [p.name for p in stale if p.exists()]
    assert all(p.exists() for p in keep)
    assert (tmp_path / "users.json").read_bytes() == before
    assert server.get("/api/users/alice", admin).json()["user_id"] == "alice"


def test_store_removes_leftovers_of_its_own_file_only(tmp_path):
    """The store alone does it too, and a store on a fresh folder creates nothing by looking."""
    stale, keep = plant_leftovers(tmp_path)
    JsonUserStore(tmp_path / "users.json")
    assert not [p.name for p in stale if p.exists()]
    assert all(p.exists() for p in keep)
    JsonUserStore(tmp_path / "empty" / "users.json")
    assert not (tmp_path / "empty").exists()


def test_lock_file_is_private(tmp_path):
    """The lock file is made 0600, and an existing 0644 one is made 0600 at start-up."""
    store = JsonUserStore(tmp_path / "users.json")
    store.add(make_user("a"))
    assert os.stat(tmp_path / "users.json.lock").st_mode & 0o777 == 0o600
    old = tmp_path / "old" / "users.json.lock"
    old.parent.mkdir()
    old.touch()
    old.chmod(0o644)
    JsonUserStore(old.parent / "users.json")
    assert old.stat().st_mode & 0o777 == 0o600


def test_a_held_lock_is_503_busy_with_retry_after(make_server, admin):
    """A change that cannot get the lock in time answers 503 with Retry-After, not 500; then it works again."""
    server = make_server()
    store = server.services.users.store
    store.lock_timeout = 0.3
    holder = FileLock(str(store.path) + ".lock")
    with holder:
        started = time.monotonic()
        response = server.post("/api/users", admin, json={"username": "waits"})
        assert time.monotonic() - started < 5
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "busy"
    assert "locked" in response.json()["message"]
    assert int(response.headers["Retry-After"]) >= 1
    server.create_user(admin, "after")


def write_users(path, count: int) -> dict[str, str]:
    """Write users.json with count users straight to disk (as the old store laid it out); return id -> key hash."""
    users = {
        f"u-{i:05d}": {
            "username": f"person {i}",
            "role": "user",
            "plus": False,
            "key_hash": f"{i:064x}",
            "created_by": "admin",
            "external_id": None,
            "created_at": "2024-01-01T00:00:00Z",
        }
        for i in range(count)
    }
    path.write_text(json.dumps({"version": 1, "users": users}, indent=1))
    return {uid: fields["key_hash"] for uid, fields in users.items()}


def other_worker(path: str, orders, done) -> None:
    """A second process on the same file, like gunicorn's other worker: makes each change it is told to."""
    store = JsonUserStore(path)
    store.count()
    while (order := orders.recv()) is not None:
        kind, user_id, value = order
        if kind == "add":
            store.add(make_user(user_id, key_hash=value))
        elif kind == "rotate":
            store.set_key_hash(user_id, value)
        else:
            store.delete(user_id)
        done.send(user_id)


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1000, result


def test_20000_users_create_fast_and_key_checks_stay_fast_after_another_process_changes(tmp_path):
    """At 20,000 users: a create under 100 ms, key checks under 2 ms, also right after another process's change.

    The change is seen at once: a rotated key stops working and a deleted user is gone on the next check.
    """
    path = tmp_path / "users.json"
    hashes = write_users(path, USERS)
    store = JsonUserStore(path)
    assert store.count() == USERS
    steady = [timed(lambda uid=uid: store.get_by_key_hash(hashes[uid]))[0] for uid in list(hashes)[::100]]

    creates = [timed(lambda i=i: store.add(make_user(f"new-{i}")))[0] for i in range(8)]

    context = multiprocessing.get_context("fork")
    orders, their_orders = context.Pipe()
    their_done, done = context.Pipe()
    worker = context.Process(target=other_worker, args=(str(path), their_orders, done), daemon=True)
    worker.start()
    after_change = []
    reloads = getattr(store, "full_reloads", None)
    try:
        for i in range(10):
            uid = f"u-{i * 997:05d}"
            # (change, then the first key check after it and what it must find)
            steps = [
                (("rotate", uid, f"rotated-{i}"), hashes[uid], None),
                (("add", f"theirs-{i}", f"theirs-hash-{i}"), f"theirs-hash-{i}", f"theirs-{i}"),
                (("delete", uid, None), f"rotated-{i}", None),
            ]
            for order, key_hash, expected in steps:
                orders.send(order)
                assert their_done.recv() == order[1]
                took, found = timed(lambda key_hash=key_hash: store.get_by_key_hash(key_hash))
                after_change.append(took)
                assert (found and found.user_id) == expected, order
            assert store.get(uid) is None
    finally:
        orders.send(None)
        worker.join(timeout=30)
    assert worker.exitcode == 0
    assert store.count() == JsonUserStore(path).count() == USERS + 8

    assert statistics.median(steady) < 2, steady
    assert statistics.median(creates) < 100, creates
    assert statistics.median(after_change) < 2, after_change
    assert store.full_reloads == reloads, "the other process's changes were read whole, not from the journal"


# -- users per client -----------------------------------------------------------------------


def test_a_client_may_create_at_most_max_users_per_client(make_server, admin):
    """Past the limit every way a client creates users is 403 naming it; admins are not limited; deleting frees one."""
    server = make_server(max_users_per_client=2)
    bot = server.create_user(admin, "bot", role="client")
    key = bot["api_key"]
    first = server.create_user(key, "one")
    server.create_user(key, "two", user_id="ext-2")

    refused = [
        server.post("/api/users", key, json={"username": "three"}),
        server.post("/api/client/add-user", key, json={"userid": "ext-3", "username": "three"}),
        server.post("/api/chat", key, json={"prompt": "hi", "user_id": "ext-4"}),  # speaking for a new person
    ]
    for response in refused:
        assert response.status_code == 403, response.text
        assert "2 users" in response.json()["message"] and "max_users_per_client" in response.json()["message"]
    page = Browser(server).log_in(key).submit("/admin/users", {"username": "three"})
    assert page.status == 403
    assert "max_users_per_client" in page.text

    assert server.post("/api/chat", key, json={"prompt": "hi", "user_id": "ext-2"}).status_code == 200
    server.create_user(admin, "admins are not limited")
    assert server.call("DELETE", f"/api/users/{first['user_id']}", key).status_code == 200
    server.create_user(key, "three")
    assert len(server.get("/api/users", key).json()["users"]) == 2


def test_parallel_creations_cannot_overshoot_the_limit(make_server, admin):
    """Twelve creations at once under a limit of 5: exactly 5 succeed, the rest are 403."""
    server = make_server(max_users_per_client=5)
    key = server.create_user(admin, "bot", role="client")["api_key"]
    barrier = threading.Barrier(12)

    def create(i: int) -> int:
        barrier.wait()
        return server.post("/api/users", key, json={"username": f"p{i}"}, timeout=60).status_code

    with ThreadPoolExecutor(12) as pool:
        statuses = sorted(pool.map(create, range(12)))
    assert statuses == [201] * 5 + [403] * 7
    assert len(server.get("/api/users", key).json()["users"]) == 5


def test_no_limit_when_zero(make_server, admin):
    """max_users_per_client 0 means no limit."""
    server = make_server(max_users_per_client=0)
    key = server.create_user(admin, "bot", role="client")["api_key"]
    for i in range(3):
        server.create_user(key, f"p{i}")


def test_limit_counts_a_clients_users_not_others(make_server, admin):
    """One client's users do not count against another's limit."""
    server = make_server(max_users_per_client=1)
    first = server.create_user(admin, "bot1", role="client")["api_key"]
    second = server.create_user(admin, "bot2", role="client")["api_key"]
    server.create_user(first, "a")
    server.create_user(second, "b")
    assert server.post("/api/users", first, json={"username": "c"}).status_code == 403
