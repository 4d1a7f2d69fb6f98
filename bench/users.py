"""The users file at scale: two processes (like gunicorn's two workers) on one users.json of 20,000 users.

    python3 bench/users.py                    # ~2 min, most of it the old store
    python3 bench/users.py --users 5000 --rounds 10

Measures, for the store as it was (loaded from git, --baseline) and as it is now, in the same run
on the same machine and the same starting file:
  create             one add(), the two processes taking turns, so each follows the other's change
  key check, steady  get_by_key_hash() when nothing changed
  key check, after   the first get_by_key_hash() in one process right after the other changed a key
and prints p50/p99 for each and old/new ratios. Every round also checks that the rotated-away
key no longer works in the other process.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import multiprocessing
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.store.users import User  # noqa: E402
from app.store.users_json import JsonUserStore  # noqa: E402

BASELINE = "20c7db5"  # the last commit with the store that rewrote and re-read the whole file on every change


def load_baseline(rev: str):
    """The JsonUserStore class of app/store/users_json.py at rev, as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{rev}:app/store/users_json.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    spec = importlib.util.spec_from_loader("users_json_baseline", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{rev}:app/store/users_json.py", "exec"), module.__dict__)  # noqa: S102 - our own history
    return module.JsonUserStore


def seed(path: Path, count: int) -> list[str]:
    """Write count users as the old store laid them out; return their key hashes."""
    users = {
        f"u-{i:06d}": {
            "username": f"person {i}",
            "role": "user",
            "plus": False,
            "key_hash": hashlib.sha256(f"key {i}".encode()).hexdigest(),
            "created_by": "c-bot" if i % 2 else "admin",
            "external_id": str(i) if i % 2 else None,
            "created_at": "2024-01-01T00:00:00Z",
        }
        for i in range(count)
    }
    path.write_text(json.dumps({"version": 1, "users": users}, indent=1))
    return [u["key_hash"] for u in users.values()]


def new_user(user_id: str, key_hash: str) -> User:
    return User(user_id, f"name {user_id}", "user", False, key_hash, "admin", None, "2024-01-01T00:00:00Z")


def ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def worker(cls, path: str, conn) -> None:
    """The other process: does what it is told and answers how long it took."""
    store = cls(path)
    store.count()
    while (order := conn.recv()) is not None:
        kind, *args = order
        started = time.perf_counter()
        if kind == "add":
            store.add(new_user(*args))
        elif kind == "rotate":
            store.set_key_hash(*args)
        conn.send(ms(started))


def measure(cls, count: int, rounds: int, checks: int) -> dict:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "users.json"
        hashes = seed(path, count)
        store = cls(path)
        started = time.perf_counter()
        store.count()
        first_read = ms(started)
        steady = []
        for key_hash in rng.sample(hashes, checks):
            started = time.perf_counter()
            assert store.get_by_key_hash(key_hash) is not None
            steady.append(ms(started))

        context = multiprocessing.get_context("fork")
        mine, theirs = context.Pipe()
        other = context.Process(target=worker, args=(cls, str(path), theirs), daemon=True)
        other.start()
        creates, after = [], []
        try:
            for i in range(rounds):
                mine.send(("add", f"theirs-{i}", f"theirs-{i}"))
                creates.append(mine.recv())
                started = time.perf_counter()
                store.add(new_user(f"mine-{i}", f"mine-{i}"))
                creates.append(ms(started))

                victim = f"u-{rng.randrange(count):06d}"
                old_hash = store.get(victim).key_hash
                mine.send(("rotate", victim, f"rotated-{i}"))
                mine.recv()
                started = time.perf_counter()
                gone = store.get_by_key_hash(old_hash)
                after.append(ms(started))
                assert gone is None, "a rotated-away key still worked in the other process"
                assert store.get_by_key_hash(f"rotated-{i}").user_id == victim
        finally:
            mine.send(None)
            other.join(timeout=60)
        assert store.count() == count + 2 * rounds
        return {
            "first read": [first_read],
            "create": creates,
            "key check, steady": steady,
            "key check, after": after,
            "reloads": getattr(store, "full_reloads", None),
        }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=20, help="creates per process, and key rotations")
    parser.add_argument("--checks", type=int, default=2000, help="steady-state key checks")
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the old store")
    args = parser.parse_args()

    print(f"{args.users} users, {args.rounds} rounds, Python {sys.version.split()[0]}, baseline {args.baseline}")
    results = {}
    for name, cls in (("old", load_baseline(args.baseline)), ("new", JsonUserStore)):
        started = time.perf_counter()
        results[name] = measure(cls, args.users, args.rounds, args.checks)
        print(f"  {name}: measured in {time.perf_counter() - started:.1f} s", flush=True)

    print(f"\n{'ms':<20}{'old p50':>10}{'old p99':>10}{'new p50':>10}{'new p99':>10}{'p50 old/new':>13}")
    for metric in ("first read", "create", "key check, steady", "key check, after"):
        old, new = results["old"][metric], results["new"][metric]
        row = [pct(old, 0.5), pct(old, 0.99), pct(new, 0.5), pct(new, 0.99)]
        ratio = row[0] / row[2] if row[2] else float("inf")
        print(f"{metric:<20}" + "".join(f"{v:>10.3f}" for v in row) + f"{ratio:>12.2f}x")
    mean = statistics.fmean(results["new"]["create"])
    print(
        f"\nnew: {1000 / mean:.0f} creates/s from one process; whole-file reads in the watching process: "
        f"{results['new']['reloads']} (its first read only)"
    )


if __name__ == "__main__":
    main()
