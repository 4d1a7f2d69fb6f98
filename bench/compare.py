"""The hot path of an older commit (or of any tree) against this working tree: both servers at once, rounds alternated.

    python3 bench/compare.py                          # against 0914cf4 (before issue 9), 5 rounds
    python3 bench/compare.py --base 0914cf4 --rounds 7 --requests 300 --c32-rounds 3
    python3 bench/compare.py --c32-rounds 0           # concurrency 1 only
    LIMITS='{"limits": {"admin": {"requests_per_minute": 1000000, "requests_per_day": 1000000000,
            "tokens_per_day": 1000000000000}}}'       # limits that never refuse, on the bench key's role
    python3 bench/compare.py --base 5c5338f --new-settings "$LIMITS"     # before issue 10 vs limits on
    python3 bench/compare.py --base . --new-settings "$LIMITS"           # this tree: limits off vs on

What runs, all on 127.0.0.1: one fast fake upstream (bench/fastfake.py), and two servers, each
`python3 main.py --settings <tmp>/settings.json --port <free>` (gunicorn, the settings defaults)
with one openai account pointing at that fake: "old" from `git archive BASE` unpacked into a
temporary folder (or, when BASE is a folder such as `.`, that folder's files as they are,
uncommitted changes included), "new" from this working tree. --old-settings / --new-settings
(a JSON object) are merged over that side's settings at the top level; an older tree refuses keys
it does not know, such as "limits" before issue 10. They run side by side on different ports and
their own databases, so a machine that speeds up or slows down touches both alike.

The requests all use the bench's admin key (ADMIN_API_KEY), so limits meant for them go on the
"admin" role. Before measuring, one /api/chat and one /v1 request per side show the key's role and
the x-ratelimit-* headers of the answers; a side given "limits" whose answers carry no such
header stops the run (the limits would not be on the measured path).

Each round measures the fake directly (JSON and streamed, concurrency 1), then every cell on old
and on new back to back (old first in odd rounds, new first in even ones):

- /api/chat JSON, a new conversation each time;
- /api/chat JSON follow-ups, spread over --conversations conversations made for the round (so a
  conversation's history stays short and never has two turns at once);
- /v1/chat/completions JSON;
- /api/chat and /v1 streamed: the first reply text.

"added" is the server's p50 (first text for streams) minus the direct p50 of the same round. The
tables give every round, the median over rounds and the spread (lowest–highest round), and
new/old per round. Then, with --c32-rounds, requests/s at concurrency 32 for the same cells.
Every reply must be a complete 200; anything else is counted and shown.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import requests

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402
from run import HOST, Routes, openai_body, raise_fd_limit, start_fake, start_server, stop  # noqa: E402

CELLS = {  # name: (label, route, stream)
    "api": ("/api/chat JSON, new conversation", "api", False),
    "follow": ("/api/chat JSON, follow-up", "api", False),
    "v1": ("/v1 JSON", "v1", False),
    "api-stream": ("/api/chat streamed, first text", "api", True),
    "v1-stream": ("/v1 streamed, first text", "v1", True),
}


class Side:
    """One server under test."""

    def __init__(self, label: str, tree: Path, folder: Path, fake_port: int, extra: dict):
        folder.mkdir()
        self.label, self.folder, self.extra = label, folder, extra
        self.proc, url = start_server(folder, f"http://{HOST}:{fake_port}/v1", root=tree, extra=extra)
        self.port = int(url.rsplit(":", 1)[1])
        self.routes = Routes(fake_port, self.port)

    async def cell(self, name: str, conc: int, total: int, conversation_ids: list[str]) -> loadgen.CellResult:
        _label, route, stream = CELLS[name]
        port, request, done = self.routes.request(route, stream)
        if name == "follow":
            request = follow_ups(self.routes, conversation_ids)
        return await loadgen.run_cell(HOST, port, request, total, conc, done)

    async def conversations(self, count: int) -> list[str]:
        return await conversations(self.routes, count)


async def conversations(routes: Routes, count: int) -> list[str]:
    """Start count conversations on routes' server (one after another); return their ids."""
    _port, request, _done = routes.request("api", False)
    reader, writer = await asyncio.open_connection(HOST, routes.server_port)
    ids = []
    try:
        for _ in range(count):
            reply = await loadgen.exchange(reader, writer, request)
            if reply.status != 200:
                raise SystemExit(f"a new conversation answered {reply.status}: {reply.body[:300]}")
            ids.append(json.loads(reply.body)["conversation_id"])
    finally:
        writer.close()
    return ids


def follow_ups(routes: Routes, conversation_ids: list[str]):
    """The follow-up requests, one per conversation; request n goes to conversation n mod count."""
    port = routes.server_port
    requests = [
        loadgen.build_request(
            HOST,
            port,
            "POST",
            "/api/chat",
            json.dumps({"prompt": "hello", "conversation_id": cid}).encode(),
            routes.auth,
        )
        for cid in conversation_ids
    ]
    return lambda number: requests[number % len(requests)]


def unpack(rev: str, folder: Path) -> str:
    """Unpack the tree of rev into folder (git archive: nothing is checked out or committed); return its short id."""
    short = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return short


def describe_tree(tree: Path = ROOT) -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True).stdout
    changed = subprocess.run(["git", "status", "--porcelain"], cwd=tree, capture_output=True, text=True).stdout
    count = len([line for line in changed.splitlines() if line.strip()])
    where = "this working tree" if tree == ROOT else f"the tree in {tree}"
    return f"{where} at {head.strip() or '?'}" + (f" + {count} changed/new files" if count else "")


def settings_arg(text: str) -> dict:
    """--old-settings / --new-settings: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, such as {"limits": {...}}')
    return value


def check_limits(side: Side) -> str:
    """One /api/chat and one /v1 answer: the key's role and their x-ratelimit-* headers, as a line to print.
    A side given "limits" whose answers carry none of those headers stops the run."""
    url = f"http://{HOST}:{side.port}"
    auth = side.routes.auth
    me = requests.get(url + "/api/me", headers=auth, timeout=10)
    about = me.json() if me.ok else {}
    role = f"key role {about.get('role', '?')}"
    if "effective_limits" in about:
        role += f", effective limits {json.dumps(about['effective_limits'], separators=(',', ':'))}"
    shown = []
    for path, body in (("/api/chat", {"prompt": "hello"}), ("/v1/chat/completions", json.loads(openai_body(False)))):
        answer = requests.post(url + path, json=body, headers=auth, timeout=30)
        if answer.status_code != 200:
            raise SystemExit(f"{side.label}: {path} answered {answer.status_code}: {answer.text[:300]}")
        found = {k.lower(): v for k, v in answer.headers.items() if k.lower().startswith("x-ratelimit-")}
        if "limits" in side.extra and not found:
            raise SystemExit(f"{side.label} was given limits, but its {path} answer has no x-ratelimit-* header")
        shown.append(f"{path} " + (", ".join(f"{k}: {v}" for k, v in sorted(found.items())) or "no x-ratelimit-*"))
    return f"{side.label}: {role}; " + "; ".join(shown)


def spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def table(title: str, unit: str, results: dict, sides: list[Side], digits: int = 2) -> None:
    """results[cell][label] = one value per round; with digits 0 (requests/s) the stream cells are not 'first text'."""
    print(f"\n{title}")
    rounds = len(next(iter(next(iter(results.values())).values())))
    head = "".join(f"{'r' + str(i + 1):>8}" for i in range(rounds))
    print(f"{'cell (' + unit + ')':<36}{'':>8}{head}   median (lowest–highest)")
    for name, by_side in results.items():
        old, new = (by_side[s.label] for s in sides)
        for i, (label, values) in enumerate(((sides[0].label, old), (sides[1].label, new))):
            first = (CELLS[name][0] if digits else CELLS[name][0].replace(", first text", "")) if i == 0 else ""
            each = "".join(f"{v:>8.{digits}f}" for v in values)
            print(f"{first:<36}{label:>8}{each}   {spread(values, digits)}")
        ratios = [n / o if o else float("nan") for o, n in zip(old, new, strict=True)]
        each = "".join(f"{r:>8.2f}" for r in ratios)
        medians = statistics.median(new) / statistics.median(old) if statistics.median(old) else float("nan")
        print(f"{'':<36}{'new/old':>8}{each}   {spread(ratios)}; of the medians {medians:.2f}")


async def compare(args, sides: list[Side], fake_port: int) -> None:
    direct = Routes(fake_port, 0)
    errors: list[str] = []

    def note(side: Side, name: str, conc: int, result: loadgen.CellResult) -> None:
        if result.errors:
            errors.append(f"{side.label} {CELLS[name][0]} c={conc}: {dict(result.errors)}")

    async def direct_cell(stream: bool, total: int) -> loadgen.CellResult:
        port, request, done = direct.request("direct", stream)
        result = await loadgen.run_cell(HOST, port, request, total, 1, done)
        if result.errors:
            errors.append(f"direct stream={stream}: {dict(result.errors)}")
        return result

    for side in sides:  # warm up: connections, both workers, caches
        warm = await side.conversations(8)
        for name in CELLS:
            await side.cell(name, 8, 40, warm)
    await direct_cell(False, 200)
    await direct_cell(True, 200)

    added = {name: {s.label: [] for s in sides} for name in CELLS}
    print(f"\nconcurrency 1: {args.rounds} rounds, {args.requests} requests per cell and side")
    print("round  direct p50 JSON/stream-text ms  |  per cell: p50 (or first text) ms old / new")
    for number in range(args.rounds):
        order = sides if number % 2 == 0 else sides[::-1]
        conversations = {side.label: await side.conversations(args.conversations) for side in sides}
        base_json = await direct_cell(False, args.direct_requests)
        base_stream = await direct_cell(True, args.direct_requests)
        shown = []
        for name, (_label, _route, stream) in CELLS.items():
            got = {}
            for side in order:
                result = await side.cell(name, 1, args.requests, conversations[side.label])
                note(side, name, 1, result)
                value = result.text - base_stream.text if stream else result.p50 - base_json.p50
                added[name][side.label].append(value)
                got[side.label] = result.text if stream else result.p50
            shown.append(f"{name} {got[sides[0].label]:.2f}/{got[sides[1].label]:.2f}")
        first = "old first" if order[0] is sides[0] else "new first"
        print(
            f"{number + 1:>5}  {base_json.p50:.3f} / {base_stream.text:.3f} ({first})  |  " + ", ".join(shown),
            flush=True,
        )
    table("added p50 at concurrency 1 (server minus direct, same round)", "ms", added, sides)

    if args.c32_rounds:
        rps = {name: {s.label: [] for s in sides} for name in CELLS}
        # Many conversations, made once: at concurrency 32 two turns of one conversation must never overlap.
        conversations = {side.label: await side.conversations(args.c32_conversations) for side in sides}
        print(f"\nconcurrency 32: {args.c32_rounds} rounds, {args.c32_requests} requests per cell and side")
        for number in range(args.c32_rounds):
            order = sides if number % 2 == 0 else sides[::-1]
            for name in CELLS:
                for side in order:
                    result = await side.cell(name, 32, args.c32_requests, conversations[side.label])
                    note(side, name, 32, result)
                    rps[name][side.label].append(result.rps)
            print(f"  round {number + 1} done", flush=True)
        table("requests/s at concurrency 32", "req/s", rps, sides, digits=0)

    print("\nerrors: " + ("none" if not errors else ""))
    for line in errors:
        print("  " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--base",
        default="0914cf4",
        help="the older commit (default 0914cf4, before issue 9), or a folder to run as it is (. = this tree)",
    )
    parser.add_argument("--old-settings", type=settings_arg, default={}, metavar="JSON", help="merged into old's")
    parser.add_argument("--new-settings", type=settings_arg, default={}, metavar="JSON", help="merged into new's")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300, help="requests per cell, side and round at c=1")
    parser.add_argument("--direct-requests", type=int, default=1000, help="requests straight to the fake per round")
    parser.add_argument("--conversations", type=int, default=30, help="conversations the c=1 follow-ups spread over")
    parser.add_argument("--c32-rounds", type=int, default=3, help="rounds at concurrency 32 (0: none)")
    parser.add_argument("--c32-requests", type=int, default=600)
    parser.add_argument("--c32-conversations", type=int, help="default: --c32-requests (each once a round)")
    args = parser.parse_args()
    args.c32_conversations = args.c32_conversations or args.c32_requests

    limit = raise_fd_limit()
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if Path(args.base).is_dir():
            base_tree = Path(args.base).resolve()
            old_tree = describe_tree(base_tree)
        else:
            base_tree = folder / "base-tree"
            base_tree.mkdir()
            old_tree = f"{unpack(args.base, base_tree)} (git archive)"
        fake, fake_port = start_fake(folder)
        sides = []
        try:
            sides.append(Side("old", base_tree, folder / "old", fake_port, args.old_settings))
            sides.append(Side("new", ROOT, folder / "new", fake_port, args.new_settings))
            load = "/".join(f"{x:.1f}" for x in os.getloadavg())

            def extra(side: Side) -> str:
                return f" + {json.dumps(side.extra, separators=(',', ':'))}" if side.extra else ""

            print(
                f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, open files "
                f"limit {limit}, load average {load}; old = {old_tree}, new = {describe_tree()}; "
                "both: main.py with the settings defaults, one openai account on one fast fake"
            )
            for side in sides:
                print(f"  {side.label} settings: the defaults{extra(side)}")
            for side in sides:
                print("  check: " + check_limits(side))
            asyncio.run(compare(args, sides, fake_port))
        finally:
            for side in sides:
                stop(side.proc)
            stop(fake)
        load = "/".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"\n{time.time() - started:.0f} s in all; load average at the end {load}")
        log = (folder / "fake.log").read_text().strip()
        if log:
            print("\nthe fake upstream logged:\n" + log[-2000:])


if __name__ == "__main__":
    main()
