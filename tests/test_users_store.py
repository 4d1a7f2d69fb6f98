"""JsonUserStore on real files: the operations, file mode, many processes at once, SIGKILL mid-write, the cache."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.errors import Conflict, NotFound
from app.store import JsonUserStore, User, users_json

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {f.name: f.type for f in dataclasses.fields(User)}
WORKERS, PER_WORKER = 8, 50

# Adds users forever, printing each id once add() has returned; killed by the test.
WRITER = """
import sys
from app.store import JsonUserStore, User
store = JsonUserStore(sys.argv[1])
prefix, i = sys.argv[2], 0
while True:
    uid = f"{prefix}-{i}"
    store.add(User(uid, "name " + uid, "user", False, "h" * 64, "admin", None, "2024-01-01T00:00:00Z"))
    print(uid, flush=True)
    i += 1
"""


def make_user(user_id: str, **changes) -> User:
    """A plain user whose key hash is derived from its id."""
    fields = {
        "user_id": user_id,
        "username": f"name of {user_id}",
        "role": "user",
        "plus": False,
        "key_hash": f"hash-{user_id}",
        "created_by": "admin",
        "external_id": None,
        "created_at": "2024-01-01T00:00:00Z",
    }
    return User(**{**fields, **changes})


def add_many(path: str, worker: int, barrier) -> None:
    """Child process: wait for every sibling, then add PER_WORKER users."""
    store = JsonUserStore(path)
    barrier.wait()
    for i in range(PER_WORKER):
        store.add(make_user(f"w{worker}-{i}"))


def assert_complete(path: Path) -> dict:
    """Assert the file parses and every user in it has every field with the right type; return the users."""
    users = json.loads(path.read_text())["users"]
    for uid, fields in users.items():
        # A user's own limits are written only when it has some.
        assert set(fields) - {"limits", "shape"} == set(FIELDS) - {"user_id", "limits", "shape"}, uid
        assert isinstance(fields.get("limits", {}), dict) and fields.get("limits", 1), uid
        assert isinstance(fields["username"], str) and fields["username"], uid
        assert fields["role"] in ("admin", "client", "user"), uid
        assert isinstance(fields["plus"], bool), uid
        assert isinstance(fields["key_hash"], str) and fields["key_hash"], uid
    return users


@pytest.fixture
def path(tmp_path) -> Path:
    """Where the store keeps its file (not created yet)."""
    return tmp_path / "users.json"


@pytest.fixture
def store(path) -> JsonUserStore:
    """A store on a fresh users.json."""
    return JsonUserStore(path)


def test_empty_store(store, path):
    """A store on a missing file has no users and creates no file by reading."""
    assert (store.count(), store.list(), store.get("x"), store.get_by_key_hash("h")) == (0, [], None, None)
    assert not path.exists()


def test_add_get_and_find_by_key_hash(store):
    """An added user is found by id and by key hash, field for field."""
    alice = make_user("alice", role="client", plus=True, external_id=None, created_by=None)
    assert store.add(alice) == alice
    assert store.get("alice") == alice
    assert store.get_by_key_hash("hash-alice") == alice
    assert store.get_by_key_hash("hash-nobody") is None
    assert JsonUserStore(store.path).get("alice") == alice


def test_list_is_oldest_first_and_filters_by_creator(store):
    """list() orders by creation time, and created_by keeps one creator's users."""
    store.add(make_user("c", created_at="2024-03-01T00:00:00Z", created_by="bot"))
    store.add(make_user("a", created_at="2024-02-01T00:00:00Z"))
    store.add(make_user("b", created_at="2024-01-01T00:00:00Z", created_by="bot"))
    assert [u.user_id for u in store.list()] == ["b", "a", "c"]
    assert [u.user_id for u in store.list(created_by="bot")] == ["b", "c"]
    assert store.list(created_by="nobody") == []
    assert store.count() == 3


def test_delete(store):
    """delete() removes and returns the user; a missing one is NotFound."""
    store.add(make_user("a"))
    store.add(make_user("b"))
    assert store.delete("a").user_id == "a"
    assert [u.user_id for u in JsonUserStore(store.path).list()] == ["b"]
    assert store.get_by_key_hash("hash-a") is None
    with pytest.raises(NotFound):
        store.delete("a")


def test_delete_guard_can_refuse(store):
    """A guard that raises keeps the user, and it is given the user and everyone."""
    store.add(make_user("a"))
    store.add(make_user("b"))
    seen = {}

    def guard(user, everyone):
        seen["args"] = (user.user_id, sorted(u.user_id for u in everyone))
        raise Conflict("no")

    with pytest.raises(Conflict):
        store.delete("a", guard=guard)
    assert seen["args"] == ("a", ["a", "b"])
    assert store.get("a") is not None


def test_set_key_hash(store):
    """set_key_hash replaces the hash: the old one finds nobody, the new one finds the user."""
    store.add(make_user("a"))
    updated = store.set_key_hash("a", "new-hash")
    assert updated == make_user("a", key_hash="new-hash")
    assert store.get_by_key_hash("hash-a") is None
    assert store.get_by_key_hash("new-hash").user_id == "a"
    with pytest.raises(NotFound):
        store.set_key_hash("nobody", "x")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (make_user("same"), make_user("same", username="other", key_hash="other")),
        (make_user("x1", created_by="bot", external_id="7"), make_user("x2", created_by="bot", external_id="7")),
    ],
)
def test_duplicates_are_conflicts(store, first, second):
    """A taken id, or a taken (creator, external id), is a Conflict and changes nothing."""
    store.add(first)
    before = store.path.read_bytes()
    with pytest.raises(Conflict):
        store.add(second)
    assert store.path.read_bytes() == before
    assert store.count() == 1


def test_same_external_id_for_different_creators_is_fine(store):
    """Two clients may each know a person by the same id."""
    store.add(make_user("x1", created_by="bot1", external_id="7"))
    store.add(make_user("x2", created_by="bot2", external_id="7"))
    assert store.find_external("bot2", "7").user_id == "x2"


def test_file_is_private_and_valid_json(store, path):
    """users.json is mode 0600 and JSON holding every user."""
    store.add(make_user("a"))
    store.set_key_hash("a", "h2")
    assert path.stat().st_mode & 0o777 == 0o600
    assert set(assert_complete(path)) == {"a"}


def test_processes_adding_at_once_lose_nothing(path):
    """Eight processes each adding 50 users at once leave exactly 400 more users and a parseable file."""
    seed = JsonUserStore(path)
    for uid in ("admin", "bot", "alice"):
        seed.add(make_user(uid))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    procs = [context.Process(target=add_many, args=(str(path), w, barrier)) for w in range(WORKERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * WORKERS
    users = assert_complete(path)
    assert len(users) == WORKERS * PER_WORKER + 3
    assert seed.count() == WORKERS * PER_WORKER + 3
    assert {f"w{w}-{i}" for w in range(WORKERS) for i in range(PER_WORKER)} <= set(users)
    assert path.stat().st_mode & 0o777 == 0o600
    assert not list(path.parent.glob(".users.json.*")), "temporary files were left behind"


def add_with(store: JsonUserStore, prefix: str, count: int) -> None:
    """Add count users through an existing store instance (used by forked children and threads)."""
    for i in range(count):
        store.add(make_user(f"{prefix}-{i}"))


def test_forked_children_sharing_one_store_lose_nothing(path):
    """Children forked after the store took its lock (as gunicorn workers are) still exclude each other."""
    store = JsonUserStore(path)
    store.add(make_user("admin"))  # the parent has used the lock before forking
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=add_with, args=(store, f"f{n}", 40)) for n in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 4
    assert len(assert_complete(path)) == 4 * 40 + 1
    assert store.count() == 4 * 40 + 1


def test_threads_sharing_one_store_lose_nothing(path):
    """Eight threads adding through one store instance lose no user."""
    store = JsonUserStore(path)
    threads = [threading.Thread(target=add_with, args=(store, f"t{n}", 25)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(assert_complete(path)) == 8 * 25
    assert store.count() == 8 * 25


def test_sigkill_mid_write_leaves_a_whole_file(path):
    """A writer killed with SIGKILL at random moments leaves a parseable file with every acknowledged user."""
    seed = {
        f"seed-{i}": {k: v for k, v in dataclasses.asdict(make_user(f"seed-{i}")).items() if k != "user_id"}
        for i in range(3000)
    }
    path.write_text(json.dumps({"version": 1, "users": seed}))
    rng = random.Random(1234)
    for round_ in range(5):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), f"r{round_}"], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        try:
            assert writer.stdout.readline().strip() == f"r{round_}-0"  # the loop is running
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            writer.send_signal(signal.SIGKILL)
            acknowledged = [f"r{round_}-0", *writer.communicate(timeout=10)[0].split()]
        users = assert_complete(path)
        assert set(acknowledged) <= set(users), f"round {round_}: acknowledged users were lost"
        assert {f"seed-{i}" for i in range(3000)} <= set(users)
        assert JsonUserStore(path).count() == len(users)


def test_cache_sees_changes_made_by_another_instance(path):
    """A store that has read the file sees adds, key rotations and deletes made through another instance."""
    first, other = JsonUserStore(path), JsonUserStore(path)
    first.add(make_user("a"))
    assert first.get("a") is not None
    for i in range(100):
        other.set_key_hash("a", f"rotated-{i:04d}")  # same length every time: only the content changes
        assert first.get("a").key_hash == f"rotated-{i:04d}"
        assert first.get_by_key_hash(f"rotated-{i:04d}").user_id == "a"
    other.add(make_user("b"))
    assert [u.user_id for u in first.list()] == ["a", "b"]
    other.delete("a")
    assert first.get("a") is None
    assert first.get_by_key_hash("rotated-0099") is None
    assert first.count() == 1


def test_cache_sees_a_change_from_another_process(path):
    """A change made by a separate process is seen by a store that had cached the file."""
    store = JsonUserStore(path)
    store.add(make_user("a"))
    assert store.count() == 1
    code = "import sys; from app.store import JsonUserStore; JsonUserStore(sys.argv[1]).set_key_hash('a', 'from-child')"
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, check=True)
    assert store.get_by_key_hash("from-child").user_id == "a"
    assert store.get("a").key_hash == "from-child"


# -- the change journal (users.json.journal) ------------------------------------------------


def same_users(store: JsonUserStore) -> None:
    """Assert store's cache holds exactly what users.json holds, looked up every way."""
    fresh = JsonUserStore(store.path)
    assert store.list() == fresh.list()
    for user in fresh.list():
        assert store.get_by_key_hash(user.key_hash) == user
        if user.external_id is not None:
            assert store.find_external(user.created_by, user.external_id) == user


def change_mix(path: str, worker: int, barrier, rounds: int) -> None:
    """Child process: add, rotate and delete its own users while others do; check its cache after each change."""
    store = JsonUserStore(path)
    store.count()
    barrier.wait()
    for i in range(rounds):
        uid = f"m{worker}-{i}"
        store.add(make_user(uid, created_by=f"bot{worker}", external_id=str(i)))
        store.set_key_hash(uid, f"rotated-{uid}")
        assert store.get_by_key_hash(f"hash-{uid}") is None
        assert store.find_external(f"bot{worker}", str(i)).key_hash == f"rotated-{uid}"
        if i % 3 == 0:
            store.delete(uid)
            assert store.get(uid) is None
    same_users(store)


def test_processes_changing_at_once_keep_every_cache_exact(path):
    """Four processes adding, rotating and deleting at once lose no change, and every cache, followed through
    the journal, ends equal to the file (a watcher that read the file before them too)."""
    watcher = JsonUserStore(path)
    watcher.add(make_user("admin"))
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    procs = [context.Process(target=change_mix, args=(str(path), w, barrier, 30)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 4
    expected = {"admin"} | {f"m{w}-{i}" for w in range(4) for i in range(30) if i % 3}
    assert set(assert_complete(path)) == expected
    reloads = watcher.full_reloads
    same_users(watcher)
    assert watcher.full_reloads == reloads, "the watcher could not follow the journal"


def test_users_json_is_one_compact_user_per_line(store, path):
    """users.json is still plain JSON, laid out one user per line; the journal is private too."""
    store.add(make_user("a"))
    store.add(make_user("b", username='quote " and \\ and \u00e9'))
    lines = path.read_text().splitlines()
    assert lines[0].startswith('{"version":1,"gen":2,"users":{') and lines[-1] == "}}"
    assert [json.loads("{" + line.rstrip(",") + "}") for line in lines[1:-1]] == [
        {u: {k: v for k, v in dataclasses.asdict(make_user(u)).items() if k not in ("user_id", "limits", "shape")}}  # noqa: E501
        for u in ("a",)
    ] + [
        {"b": {k: v for k, v in dataclasses.asdict(store.get("b")).items() if k not in ("user_id", "limits", "shape")}}
    ]
    assert store.get("b").username == 'quote " and \\ and \u00e9'
    assert (path.parent / "users.json.journal").stat().st_mode & 0o777 == 0o600


def plant_phantom(path: Path) -> None:
    """A journal entry a writer appended before dying ahead of its replace: it never became true."""
    st = path.stat()
    gen = json.loads(path.read_text())["gen"]
    ghost = {k: v for k, v in dataclasses.asdict(make_user("ghost")).items() if k != "user_id"}
    entry = {"gen": gen + 1, "base": [st.st_ino, st.st_size, st.st_mtime_ns], "stamp": [1, 2, 3], "del": ["a"]}
    with open(str(path) + ".journal", "a") as journal:
        journal.write(json.dumps({**entry, "put": {"ghost": ghost}}) + "\n")


def hand_edit(path: Path) -> None:
    raw = json.loads(path.read_text())
    raw["users"]["a"]["key_hash"] = "edited-by-hand"
    path.write_text(json.dumps(raw, indent=2))


@pytest.mark.parametrize(
    "mishap",
    [
        pytest.param(lambda path: Path(str(path) + ".journal").unlink(), id="journal-removed"),
        pytest.param(lambda path: Path(str(path) + ".journal").write_text("not json\n{half a li"), id="garbage"),
        pytest.param(plant_phantom, id="phantom-entry"),
        pytest.param(hand_edit, id="hand-edit"),
    ],
)
def test_cache_stays_exact_when_the_journal_cannot_be_trusted(path, mishap):
    """A removed or garbled journal, an entry whose replace never happened, or a hand edit: the cache still
    equals the file, before and after further changes from another instance."""
    first, other = JsonUserStore(path), JsonUserStore(path)
    first.add(make_user("a"))
    first.add(make_user("b"))
    assert first.count() == 2 and other.count() == 2
    mishap(path)
    same_users(first)
    assert first.get("ghost") is None and first.get("a") is not None
    other.set_key_hash("b", "rotated")
    assert "ghost" not in Path(str(path) + ".journal").read_text()  # a dead writer's entry is cut off
    other.add(make_user("c"))
    same_users(first)
    first.delete("c")
    same_users(other)
    assert first.get_by_key_hash("hash-b") is None and first.get_by_key_hash("rotated").user_id == "b"


def test_journal_is_trimmed_and_a_far_behind_cache_reloads(path, monkeypatch):
    """Past its size limit the journal keeps its last entries; a cache behind by more reads the whole file."""

    monkeypatch.setattr(users_json, "JOURNAL_MAX_BYTES", 4096)
    monkeypatch.setattr(users_json, "JOURNAL_KEEP", 5)
    writer, close, far = JsonUserStore(path), JsonUserStore(path), JsonUserStore(path)
    writer.add(make_user("a"))
    assert close.count() == far.count() == 1
    for i in range(60):
        writer.set_key_hash("a", f"k{i}")
        assert close.get_by_key_hash(f"k{i}").user_id == "a"
    assert (path.parent / "users.json.journal").stat().st_size <= 4096 + 1024
    assert close.full_reloads == 1  # its first read only
    assert far.get_by_key_hash("k59").user_id == "a" and far.full_reloads == 2
    same_users(far)


def test_a_file_back_at_an_old_stamp_still_gets_its_changes(tmp_path, monkeypatch):
    """Found in review: two changes within one clock tick can leave users.json with the very (inode,
    size, mtime) another process last read (ext4 reuses a freed inode at once). That process must
    still apply both changes, or a rotated key would keep working there."""
    path = tmp_path / "users.json"
    writer, reader = JsonUserStore(path), JsonUserStore(path)
    writer.add(make_user("a"))
    assert reader.get_by_key_hash("hash-a") is not None  # the reader has read the file at stamp S0
    s0 = users_json._stamp(path)
    writer.set_key_hash("a", "hash-two")
    writer.set_key_hash("a", "hash-three")
    s2 = users_json._stamp(path)
    compact = lambda stamp: json.dumps(list(stamp), separators=(",", ":"))  # noqa: E731
    journal = reader.journal_path
    journal.write_text(journal.read_text().replace(compact(s2), compact(s0)))  # the last change ended at S0
    real = users_json._stamp
    monkeypatch.setattr(users_json, "_stamp", lambda p: s0 if Path(p) == path else real(p))
    assert reader.get_by_key_hash("hash-a") is None
    assert reader.get_by_key_hash("hash-three").user_id == "a"


def test_own_limits_are_kept_and_files_without_them_still_load(path):
    """A user's own limits survive a write and a fresh read; a users.json from before limits loads as no limits."""
    store = JsonUserStore(path)
    store.add(make_user("a"))
    store.update("a", lambda user, _all: user.replace(limits={"requests_per_minute": 3, "tokens_per_day": None}))
    again = JsonUserStore(path)
    assert again.get("a").limits == {"requests_per_minute": 3, "tokens_per_day": None}
    assert assert_complete(path)["a"]["limits"] == {"requests_per_minute": 3, "tokens_per_day": None}
    store.update("a", lambda user, _all: user.replace(limits=None))
    assert "limits" not in assert_complete(path)["a"]  # the file of a user without limits is as it was
    assert JsonUserStore(path).get("a").limits is None
