"""The conversation store's write transactions, this tree's against earlier versions', in one run.

    python3 bench/store.py                              # against the store before issue 8 (f448668)
    python3 bench/store.py --base f448668 --base HEAD   # several peers
    python3 bench/store.py --ops 2000 --rounds 7

Each version's `app/store/conversations.py` is loaded from git (`git show REV:...`) as a module of
its own, each on its own SQLite file in a temporary folder, in this one process. Rounds alternate
between the versions, so a machine that speeds up or slows down mid-run touches all of them alike;
each round times --ops calls of each operation, and the table gives every round's mean (µs per
call) and the median and spread over the rounds:

- cursor: one `next_cursor()` (every new conversation takes one);
- create: a new conversation and its first message;
- follow-up: a second message stored, with what the version does around it (from issue 8 on: the
  turn's claim on its conversation, and its release).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OPS = ("cursor", "create", "follow-up")


def load(rev: str | None, folder: Path):
    """The store module of rev (None: the working tree) and one store of it on its own database."""
    name = f"store_{rev or 'tree'}".replace("-", "_")
    path = folder / f"{name}.py"
    if rev is None:
        path.write_text((ROOT / "app/store/conversations.py").read_text())
    else:
        text = subprocess.run(
            ["git", "show", f"{rev}:app/store/conversations.py"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    store = module.SqlConversationStore(f"sqlite:///{folder / name}.db")
    return module, store


class Version:
    """One store version and the calls its API takes for each operation."""

    def __init__(self, label: str, module, store):
        self.label, self.module, self.store = label, module, store
        self.new_api = "since" in inspect.signature(store.create).parameters

    def message(self, cid: str, parent: str | None):
        return self.module.Message(str(uuid.uuid4()), cid, parent, "prompt", "reply", "m", "a", None)

    def cursor(self) -> None:
        if not hasattr(self.store, "next_cursor"):  # from issue 9 on the cursor is the pool's (SqlPoolState)
            from app.store.pool_state import SqlPoolState

            self.store.next_cursor = SqlPoolState(self.store, 150.0).next_cursor
        self.store.next_cursor("bench")

    def create(self) -> tuple[str, str]:
        cid = str(uuid.uuid4())
        conv = self.module.Conversation(cid, "owner", "title", "a", None, None, time.time(), time.time())
        first = self.message(cid, None)
        if self.new_api:
            self.store.create(conv, first, since=0.0)
        else:
            self.store.create(conv, first)
        return cid, first.message_id

    def follow_up(self, cid: str, parent: str) -> str:
        message = self.message(cid, parent)
        if not self.new_api:
            self.store.add_message(message)
            return message.message_id
        holder = uuid.uuid4().hex
        claim = self.store.claim_turn
        if "last_id" in inspect.signature(claim).parameters:
            claim(cid, holder, 60.0, parent)
        else:
            claim(cid, holder, 60.0)
        try:
            self.store.add_message(message, "owner", 0.0)
        finally:
            self.store.release_turn(cid, holder)
        return message.message_id


def time_round(version: Version, ops: int) -> dict[str, float]:
    """Mean µs per call of each operation over ops calls."""
    result = {}
    started = time.perf_counter()
    for _ in range(ops):
        version.cursor()
    result["cursor"] = (time.perf_counter() - started) / ops * 1e6
    started = time.perf_counter()
    made = [version.create() for _ in range(ops)]
    result["create"] = (time.perf_counter() - started) / ops * 1e6
    started = time.perf_counter()
    for cid, parent in made:
        version.follow_up(cid, parent)
    result["follow-up"] = (time.perf_counter() - started) / ops * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", action="append", help="git revision to compare with (repeatable)")
    parser.add_argument("--ops", type=int, default=1000, help="calls of each operation per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    bases = args.base or ["f448668"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        versions = [Version(rev, *load(rev, folder)) for rev in bases]
        versions.append(Version("this tree", *load(None, folder)))
        for version in versions:  # warm up: the first writes create files, pages and the WAL
            time_round(version, 50)
        rounds: dict[str, list[dict]] = {v.label: [] for v in versions}
        for _ in range(args.rounds):
            for version in versions:
                rounds[version.label].append(time_round(version, args.ops))
    print(
        f"CPython {sys.version.split()[0]}; {args.rounds} rounds of {args.ops} calls per operation, versions alternated"
    )
    print("µs per call: median over rounds (lowest–highest round); every round's mean after the bar")
    for op in OPS:
        print(f"\n{op}")
        for version in versions:
            values = [r[op] for r in rounds[version.label]]
            each = " ".join(f"{v:.0f}" for v in values)
            spread = f"({min(values):.0f}–{max(values):.0f})"
            print(f"  {version.label:>10}  {statistics.median(values):6.0f}  {spread}  | {each}")


if __name__ == "__main__":
    main()
