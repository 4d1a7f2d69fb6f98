"""Throughput of 1, 2 and 3 instances on one PostgreSQL, against one instance on SQLite, in one run.

    python3 bench/instances.py                      # 3 rounds, 1,200 requests per cell, concurrency 32
    python3 bench/instances.py --rounds 1 --requests 600

What runs, all on 127.0.0.1: one fast fake upstream (bench/fastfake.py); a throwaway PostgreSQL 15
cluster (tests/pg.py's, fsync off); and N `python3 main.py` instances with one gevent worker each, on
one settings file (users in SQL, `users_store: "sql"`) and one PostgreSQL database, as several machines
behind a load balancer would be. The load generator (bench/loadgen.py, keep-alive connections) spreads
its 32 connections evenly over the instances, as a round-robin balancer would. The baseline, measured
in the same rounds, is the same one-worker instance on its own SQLite file.

Cells: /v1/chat/completions JSON (stateless: the pool's choice and the ledger line are its database
work) and /api/chat JSON, a new conversation each (the conversation and its message are stored too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

import loadgen  # noqa: E402
from pg import Cluster  # noqa: E402
from run import ADMIN_KEY, HOST, openai_body, raise_fd_limit, start_fake, start_server, stop  # noqa: E402

CELLS = ("v1", "api")


def request_of(cell: str, port: int) -> tuple[bytes, bytes]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    if cell == "v1":
        body, path = openai_body(False), "/v1/chat/completions"
    else:
        body, path = json.dumps({"prompt": "hello"}).encode(), "/api/chat"
    return loadgen.build_request(HOST, port, "POST", path, body, headers), loadgen.TEXT_MARKER


async def spread(ports: list[int], cell: str, total: int, concurrency: int) -> tuple[float, int]:
    """Requests/s and errors with `concurrency` connections spread evenly over the instances."""
    share, extra = divmod(concurrency, len(ports))
    runs = []
    for index, port in enumerate(ports):
        conns = share + (1 if index < extra else 0)
        request, done = request_of(cell, port)
        runs.append(loadgen.run_cell(HOST, port, request, total * conns // concurrency, conns, done))
    results = await asyncio.gather(*runs)  # at once: the instances' rates add up
    return sum(r.rps for r in results), sum(sum(r.errors.values()) for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    raise_fd_limit()
    folder = Path(tempfile.mkdtemp(prefix="bench-instances-"))
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="pg-bench-"))).start()
    fake, fake_port = start_fake(folder)
    procs = []
    try:
        url = cluster.create_database()
        one_worker = {"workers": 1}
        sqlite_dir = folder / "sqlite"
        sqlite_dir.mkdir()
        proc, sqlite_url = start_server(sqlite_dir, f"http://{HOST}:{fake_port}/v1", server=one_worker)
        procs.append(proc)
        pg_ports = []
        for n in range(3):
            site = folder / f"pg{n}"
            site.mkdir()
            extra = {"database_url": url, "users_store": "sql"}
            proc, pg_url = start_server(site, f"http://{HOST}:{fake_port}/v1", server=one_worker, extra=extra)
            procs.append(proc)
            pg_ports.append(int(pg_url.rsplit(":", 1)[1]))
        sqlite_port = int(sqlite_url.rsplit(":", 1)[1])
        print(
            f"CPython {platform.python_version()}, {os.cpu_count()} CPUs, load average "
            f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}; one gevent worker per instance; "
            f"{args.requests} requests per cell, concurrency {args.concurrency}, {args.rounds} rounds"
        )
        sides = {"1 on SQLite": [sqlite_port], **{f"{n} on PostgreSQL": pg_ports[:n] for n in (1, 2, 3)}}
        results: dict[tuple[str, str], list[float]] = {}
        errors = 0
        for number in range(1, args.rounds + 1):
            for cell in CELLS:
                for label, ports in sides.items():
                    rps, failed = asyncio.run(spread(ports, cell, args.requests, args.concurrency))
                    results.setdefault((cell, label), []).append(rps)
                    errors += failed
            print(f"  round {number} done")
        print(f"\nrequests/s, median of {args.rounds} rounds (lowest–highest)")
        print(f"{'cell':<22}" + "".join(f"{label:>22}" for label in sides))
        for cell in CELLS:
            name = {"v1": "/v1 JSON", "api": "/api/chat JSON, new"}[cell]
            cells = []
            for label in sides:
                values = results[(cell, label)]
                cells.append(f"{statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f})")
            print(f"{name:<22}" + "".join(f"{c:>22}" for c in cells))
        print(f"\nerrors: {errors}; load average at the end {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        for proc in procs:
            stop(proc)
        stop(fake)
        cluster.stop()


if __name__ == "__main__":
    main()
