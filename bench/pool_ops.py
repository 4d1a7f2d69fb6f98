"""What choosing an account costs in the database, before issue 9 and now, in one process.

    python3 bench/pool_ops.py                        # against 0914cf4's cursor step
    python3 bench/pool_ops.py --ops 2000 --rounds 7

Before issue 9 a new conversation's only pool write was one round-robin cursor step
(`next_cursor`, from `git show BASE:app/store/conversations.py`, loaded as bench/store.py does) and
a follow-up had none. Now (app/store/pool_state.py on this tree's store) every request takes a
lease in one write transaction (`choose`: the cursor step, the candidates' health read, the lease
inserted, the account's request count bumped) and gives it back in another (`release`). Each on
its own SQLite file in a temporary folder; rounds alternate between the operations and each
gives the mean µs per call over --ops calls; the table is the median and spread over the rounds.

Then the cost of an `rpm` limit by how many requests the account had in the last minute: every
choice reads all of them (`_room`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import store as store_bench  # noqa: E402 - bench/store.py: loading an older store from git

from app.store.conversations import SqlConversationStore  # noqa: E402
from app.store.pool_state import Candidate, SqlPoolState, account_hits  # noqa: E402

ONE = [Candidate("a")]
THREE = [Candidate("a"), Candidate("b"), Candidate("c")]


def operations(old_store, state: SqlPoolState) -> dict:
    def taken(cursor, candidates):
        def op() -> None:
            choice = state.choose(cursor, candidates)
            state.release(choice.name, choice.lease)

        return op

    return {
        "old: cursor step (a new conversation; a follow-up had nothing)": lambda: old_store.next_cursor("free"),
        "new: choose + release, 1 account (a new conversation)": taken("free", ONE),
        "new: choose + release, 3 accounts": taken("three", THREE),
        "new: choose + release, pinned (a follow-up)": taken(None, ONE),
        "new: choose + release, max_concurrent 8": taken("limited", [Candidate("m", max_concurrent=8)]),
        "new: choose only, 1 account": lambda: state.choose("free", ONE),
    }


def per_call(op, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        op()
    return (time.perf_counter() - started) / count * 1e6


def rpm_cost(state: SqlPoolState, store, backlog: int, count: int) -> float:
    """µs per choose + release for an rpm account that already had `backlog` requests this minute."""
    name = f"rpm{backlog}"
    now = time.time()
    with store.write() as db:
        for i in range(backlog):
            db.execute(account_hits.insert().values(name=name, at=now - 30 + i * 1e-6))
    candidates = [Candidate(name, rpm=10**9)]

    def op() -> None:
        choice = state.choose(None, candidates)
        state.release(choice.name, choice.lease)

    return per_call(op, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="0914cf4", help="the commit whose cursor step is the 'old' cost")
    parser.add_argument("--ops", type=int, default=2000, help="calls of each operation per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _module, old_store = store_bench.load(args.base, folder)
        new_store = SqlConversationStore(f"sqlite:///{folder / 'new.db'}")
        state = SqlPoolState(new_store, 60.0)
        ops = operations(old_store, state)
        for op in ops.values():  # warm up: files, pages, the WAL, the first rows
            per_call(op, 100)
        rounds: dict[str, list[float]] = {name: [] for name in ops}
        for _ in range(args.rounds):
            for name, op in ops.items():
                rounds[name].append(per_call(op, args.ops))
        print(f"CPython {sys.version.split()[0]}; {args.rounds} rounds of {args.ops} calls, operations alternated")
        print("µs per call: median over rounds (lowest–highest round)")
        for name, values in rounds.items():
            print(f"  {name:<66}{statistics.median(values):6.0f}  ({min(values):.0f}–{max(values):.0f})")
        print("\nan rpm account: choose + release by its requests in the last minute (200 calls each)")
        for backlog in (0, 100, 1000, 3000):
            print(f"  {backlog:>5} in the last minute: {rpm_cost(state, new_store, backlog, 200):6.0f} µs")


if __name__ == "__main__":
    main()
