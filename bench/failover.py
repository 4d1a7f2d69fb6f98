"""Failover under load: three upstream accounts, one of which answers every chat with 429.

    python3 bench/failover.py             # 1,000 at concurrency 16; paced to Retry-After; 1,000 more across it
    python3 bench/failover.py --requests 2000 --concurrency 32 --retry-after 30 --tail-rate 5 --second 0

What runs, all on 127.0.0.1: three bench/fastfake.py processes, each behind one openai account of
the server (`python3 main.py`, gunicorn with the settings defaults: 2 gevent workers). ok-a and
ok-c answer normally; rl-b (`--fail-429 --retry-after N`) answers every chat with OpenAI's 429
`rate_limit_exceeded` and `Retry-After: N` for the whole run. Every fake logs when each chat
request arrives and ends its replies with ` @<name>`, so the account is known for /v1 answers too
(which do not name it; /api/chat answers do, in `account`, and the two must agree).

1. Burst 1: --requests requests at --concurrency, alternately /api/chat (a new conversation) and
   /v1/chat/completions, each worker on its own keep-alive connection, on a server just started.
2. Paced: --tail-rate requests per second, alternating the same way, until --lead seconds before
   rl-b's Retry-After has passed (counted from its first 429), to show it gets nothing meanwhile.
3. Burst 2: --second requests as in burst 1, on the warm server, running across the moment
   Retry-After passes: rl-b is tried again, answers 429 again, and rests again.

Reported: every answer that was not a complete 200 (the target is none); how the answers spread
over the accounts, by the answers and by the fakes' own logs; and every request that reached rl-b,
in episodes (an episode begins with a 429 when no earlier one is younger than Retry-After): how
many came after the episode's first 429 while its Retry-After had not passed, split into those
within --in-flight-ms of it (already chosen by another worker or greenlet before the cooldown was
written) and later ones, which the target says must be none. Then GET /api/accounts after each
phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import requests

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402
from run import ADMIN_KEY, HOST, Routes, openai_account, raise_fd_limit, start_fake, start_server, stop  # noqa: E402

NAMES = ("ok-a", "rl-b", "ok-c")
BROKEN = "rl-b"
TAG = re.compile(rb"@([a-z]+-[a-z])")


@dataclass
class Sent:
    route: str
    phase: str
    start: float  # unix time, as the fakes log
    end: float
    status: int | None  # None: no answer at all
    account: str | None = None
    problem: str | None = None


async def send(port: int, plan: list[tuple[str, str, bytes, float | None]], concurrency: int) -> list[Sent]:
    """Send plan's (route, phase, request, not before this unix time or None) from concurrency workers."""
    out: list[Sent] = []
    queue = list(reversed(plan))

    async def worker() -> None:
        conn = None
        while queue:
            route, phase, request, when = queue.pop()
            if when is not None and when > time.time():
                await asyncio.sleep(when - time.time())
            started = time.time()
            try:
                if conn is None:
                    conn = await asyncio.open_connection(HOST, port)
                reply = await asyncio.wait_for(loadgen.exchange(*conn, request), 60)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                out.append(Sent(route, phase, started, time.time(), None, problem=type(exc).__name__))
                conn = loadgen.close(conn)
                continue
            sent = Sent(route, phase, started, time.time(), reply.status)
            out.append(sent)
            found = TAG.search(reply.body)
            sent.account = found[1].decode() if found else None
            if reply.status != 200 or loadgen.TEXT_MARKER not in reply.body:
                sent.problem = f"status {reply.status}: {reply.body[:200].decode('utf-8', 'replace')}"
            elif route == "api":
                named = json.loads(reply.body).get("account")
                if named != sent.account:
                    sent.problem = f"answer names {named!r}, the text came from {sent.account!r}"
            if not reply.keep_alive:
                conn = loadgen.close(conn)
        loadgen.close(conn)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def arrivals(path: Path) -> list[tuple[float, str]]:
    lines = path.read_text().split()
    return [(float(lines[i]), lines[i + 1]) for i in range(0, len(lines) - 1, 2)]


def accounts(url: str) -> list[dict]:
    response = requests.get(url + "/api/accounts", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    response.raise_for_status()
    return response.json()["accounts"]


def show_accounts(title: str, listing: list[dict]) -> None:
    print(f"\nGET /api/accounts {title}:")
    print(f"  {'name':<6}{'state':>9}{'cooling_until':>22}{'in_flight':>10}{'requests':>9}{'errors':>7}  last_error")
    for a in listing:
        error = (a.get("last_error") or {}).get("message") or ""
        print(
            f"  {a['name']:<6}{a['state']:>9}{a.get('cooling_until') or '-':>22}{a.get('in_flight', 0):>10}"
            f"{a['requests']:>9}{a['errors']:>7}  {error[:90]}"
        )


def clock(t: float, zero: float) -> str:
    return f"{t - zero:+.3f} s"


def report(args, sent: list[Sent], logs: dict[str, list[tuple[float, str]]], zero: float) -> None:
    for phase in ("burst 1", "paced", "burst 2"):
        mine = [s for s in sent if s.phase == phase]
        if not mine:
            continue
        bad = [s for s in mine if s.problem]
        ms = sorted((s.end - s.start) * 1000 for s in mine)
        spread = Counter(s.account for s in mine if not s.problem)
        routes = Counter(s.route for s in mine)
        print(
            f"\n{phase}: {len(mine)} requests ({routes['api']} /api/chat, {routes['v1']} /v1), "
            f"{clock(min(s.start for s in mine), zero)} to {clock(max(s.end for s in mine), zero)}; "
            f"latency p50 {statistics.median(ms):.1f} ms, p99 {loadgen.percentile(ms, 0.99):.1f} ms, "
            f"max {ms[-1]:.1f} ms"
        )
        print(f"  failures seen by callers: {len(bad)}")
        for problem, count in Counter(s.problem for s in bad).most_common(5):
            print(f"    {count} x {problem}")
        print("  answered by (the answers):  " + ", ".join(f"{n} {spread.get(n, 0)}" for n in NAMES))
        low, high = min(s.start for s in mine), max(s.end for s in mine)
        for name in NAMES:
            got = Counter(status for t, status in logs[name] if low <= t <= high)
            print(f"  reached {name} (its own log): " + (", ".join(f"{k}: {v}" for k, v in sorted(got.items())) or "0"))

    broken = [t for t, _status in logs[BROKEN]]
    ms = args.in_flight_ms / 1000
    print(
        f"\n{BROKEN} (every answer a 429, Retry-After {args.retry_after} s): {len(broken)} requests reached it in all"
    )
    # An episode begins with a request that reaches rl-b when no earlier 429 of it is younger than Retry-After.
    episodes: list[list[float]] = []
    for t in broken:
        if episodes and t < episodes[-1][0] + args.retry_after:
            episodes[-1].append(t)
        else:
            episodes.append([t])
    for number, episode in enumerate(episodes, 1):
        begin = episode[0]
        if number > 1:
            since = begin - episodes[number - 2][0]
            gap = f", {since:.3f} s after the previous episode's first 429 ({since - args.retry_after:.3f} s past it)"
        else:
            gap = ""
        flying = [t for t in episode[1:] if t - begin <= ms]
        later = [t for t in episode[1:] if t - begin > ms]
        shown = ", ".join(f"{(t - begin) * 1000:.1f}" for t in flying[:20])
        print(f"  episode {number}: first 429 at {clock(begin, zero)}{gap}")
        print(
            f"    then, before its Retry-After passed: {len(episode) - 1}; within {args.in_flight_ms:g} ms "
            f"(in flight): {len(flying)}" + (f" (ms after it: {shown})" if flying else "")
        )
        shown = ", ".join(f"+{t - begin:.3f} s" for t in later[:20])
        print(f"    later than {args.in_flight_ms:g} ms (target 0): {len(later)}" + (f": {shown}" if later else ""))
    end = max(x.end for x in sent)
    if episodes and end < episodes[-1][0] + args.retry_after:
        print(f"  (the run ended {clock(end, zero)}, inside the last episode's Retry-After)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests in the burst")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--retry-after", type=int, default=30, help="the 429's Retry-After, in seconds")
    parser.add_argument("--tail-rate", type=float, default=5, help="requests per second between the bursts (0: none)")
    parser.add_argument("--lead", type=float, default=1.0, help="burst 2 starts this long before Retry-After passes")
    parser.add_argument("--second", type=int, default=1000, help="requests in burst 2 (0: none)")
    parser.add_argument("--in-flight-ms", type=float, default=50, help="arrivals this soon after a 429 were in flight")
    args = parser.parse_args()

    raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fakes = {}
        try:
            for name in NAMES:
                options = ["--name", name, "--log", str(folder / f"arrivals-{name}.txt")]
                if name == BROKEN:
                    options += ["--fail-429", "--retry-after", str(args.retry_after)]
                fakes[name] = start_fake(folder, tuple(options), name=f"fake-{name}")
            listed = [openai_account(n, f"http://{HOST}:{port}/v1") for n, (_proc, port) in fakes.items()]
            server, url = start_server(folder, "", accounts=listed)
            try:
                run(args, folder, url)
            finally:
                stop(server)
        finally:
            for proc, _port in fakes.values():
                stop(proc)


def run(args, folder: Path, url: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    routes = Routes(0, port)
    made = {route: routes.request(route, False)[1] for route in ("api", "v1")}

    def mixed(count: int, phase: str, first_at: float | None = None, rate: float = 0) -> list:
        """count requests alternating /api/chat and /v1, paced at rate per second from first_at if given."""
        return [
            (route, phase, made[route], None if first_at is None else first_at + i / rate)
            for i, route in enumerate(("api", "v1")[i % 2] for i in range(count))
        ]

    used = [line for line in (folder / "server.log").read_text().splitlines() if "Using worker:" in line]
    print(
        f"server: main.py, settings defaults ({used[0].split('Using worker:')[1].strip() if used else '?'}); "
        f"accounts {', '.join(NAMES)}; {BROKEN} answers 429 with Retry-After {args.retry_after}"
    )
    time.sleep(0.5)  # both workers up
    zero = time.time()
    sent = asyncio.run(send(port, mixed(args.requests, "burst 1"), args.concurrency))
    snapshots = [("after burst 1", accounts(url))]
    broken = arrivals(folder / f"arrivals-{BROKEN}.txt")
    first = broken[0][0] if broken else zero
    if args.tail_rate > 0:
        now, until = time.time(), first + args.retry_after - args.lead
        count = max(0, int((until - now) * args.tail_rate))
        print(
            f"burst 1 done at {clock(time.time(), zero)}; {count} requests at {args.tail_rate:g}/s "
            f"until {clock(until, zero)}"
        )
        sent += asyncio.run(send(port, mixed(count, "paced", now, args.tail_rate), args.concurrency))
        snapshots.append(("after the paced requests", accounts(url)))
    if args.second:
        print(f"burst 2 ({args.second} requests) from {clock(time.time(), zero)}: across rl-b's Retry-After")
        sent += asyncio.run(send(port, mixed(args.second, "burst 2"), args.concurrency))
    snapshots.append(("at the end", accounts(url)))
    logs = {name: arrivals(folder / f"arrivals-{name}.txt") for name in NAMES}
    report(args, sent, logs, zero)
    for title, listing in snapshots:
        show_accounts(title, listing)
    moved = sum("failed before its first byte" in line for line in (folder / "server.log").read_text().splitlines())
    print(f"\nserver log: {moved} lines 'failed before its first byte; the turn goes to ...'")
    print(f"(time 0 = the first request sent, {datetime.fromtimestamp(zero).isoformat(timespec='milliseconds')})")


if __name__ == "__main__":
    main()
