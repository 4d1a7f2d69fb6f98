"""Profile the server under load: which functions a worker spends its time in.

    python3 bench/profile.py [--route api|v1|follow] [--stream] [--seconds 8] [--concurrency 32] [--base REV]

Starts the fast fake upstream and the server (settings defaults, one worker so the profile sees
every request), drives it with the benchmark's load generator, samples that worker with py-spy
(`pip install py-spy`) and prints the share of samples spent in each of our functions and in the
libraries underneath, inclusive of what they call, and that as µs of busy worker per request.
--route follow sends follow-ups spread over 200 conversations; --settings '{"limits": ...}' adds
settings; --base REV profiles the tree of an
older commit (unpacked with `git archive`, as bench/compare.py does) instead of this one.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402
from compare import conversations, follow_ups, unpack  # noqa: E402
from run import HOST, ROOT, Routes, start_fake, start_server, stop  # noqa: E402

BUCKETS = [  # (label, substring of a frame) — checked in order; a sample counts once per label
    ("app/upstream (talking to the upstream)", "app/upstream/"),
    ("app/services/chat.py", "app/services/chat.py"),
    ("app/store (SQLite writes and reads)", "app/store/"),
    ("  app/store/pool_state.py (choose, release: issue 9)", "app/store/pool_state.py"),
    ("  app/store/conversations.py", "app/store/conversations.py"),
    ("app/pool.py (choosing an account)", "app/pool.py"),
    ("app/auth.py + users.py (key check)", "app/services/users.py"),
    ("app/openai_api + app/api (shaping)", "app/openai_api/"),
    ("  sqlalchemy", "sqlalchemy/"),
    ("  requests/urllib3", "urllib3/"),
    ("  flask/werkzeug", "werkzeug/"),
    ("  gunicorn/gevent (accepting, writing)", "gunicorn/"),
    ("  json", "json/"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--route", choices=["api", "v1", "follow"], default="v1")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--base", help="profile this commit's tree instead of the working tree")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's collapsed stacks in this file")
    parser.add_argument("--settings", type=json.loads, help="a JSON object merged into the server's settings.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        tree = ROOT
        if args.base:
            tree = Path(folder) / "tree"
            tree.mkdir()
            print(f"the tree of {unpack(args.base, tree)}")
        fake, fake_port = start_fake(Path(folder))
        upstream = f"http://{HOST}:{fake_port}/v1"
        proc, url = start_server(Path(folder), upstream, {"workers": 1}, root=tree, extra=args.settings)
        try:
            port = int(url.rsplit(":", 1)[1])
            worker = psutil.Process(proc.pid).children()[0].pid
            routes = Routes(0, port)
            _port, request, marker = routes.request("api" if args.route == "follow" else args.route, args.stream)
            if args.route == "follow":
                request = follow_ups(routes, asyncio.run(conversations(routes, 200)))
            out = Path(folder) / "profile.txt"
            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "-p",
                    str(worker),
                    "-d",
                    str(args.seconds),
                    "-r",
                    "200",
                    "-f",
                    "raw",
                    "-o",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            cells = []
            while spy.poll() is None:
                cells.append(asyncio.run(loadgen.run_cell(HOST, port, request, 400, args.concurrency, marker)))
            errors = sum(sum(c.errors.values()) for c in cells)
            print(
                f"{len(cells) * 400} requests at concurrency {args.concurrency}, {errors} errors, "
                f"{sum(c.rps for c in cells) / len(cells):.0f} req/s"
            )
            if args.raw:
                args.raw.write_text(out.read_text())
            report(out, len(cells) * 400)
        finally:
            stop(proc)
            stop(fake)


def report(path: Path, requests: int) -> None:
    """Print the inclusive share of samples per bucket from py-spy's raw (collapsed stacks) output,
    and the busy time it stands for per request (py-spy leaves idle samples out; 200 per second)."""
    counts: collections.Counter = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        n = int(n)
        if "(gevent/hub.py)" in stack.split(";")[-1] or "wait" in stack.split(";")[-1]:
            counts["(idle: waiting in the gevent hub)"] += n
        samples += n
        for label, needle in BUCKETS:
            if needle in stack:
                counts[label] += n
    print(f"{samples} samples of one gevent worker under load ({samples * 5e3 / requests:.0f} µs busy per request)")
    for label, n in counts.most_common():
        print(f"  {100 * n / samples:5.1f}%  {n * 5e3 / requests:6.0f} µs  {label}")


if __name__ == "__main__":
    main()
