"""Measure what the server adds: the same chat straight to a fake upstream vs through the server.

    python3 bench/run.py                        # the full run (about 20 s with gevent, a minute with gthread)
    python3 bench/run.py --quick                # a smoke run (fewer requests, 200 streams)
    python3 bench/run.py --worker-class gthread --workers 2 --threads 32 --worker-connections 1000

What runs, all on 127.0.0.1:
- bench/fastfake.py, a fast fake OpenAI-compatible upstream (asyncio) in its own process, so it
  never competes with the load generator for a GIL. Its capacity is measured first (concurrency 32)
  to show it is far from being the bottleneck.
- the real server, `python3 main.py --settings <tmp>/settings.json --port <free>` (gunicorn), with
  one "openai" account pointing at the fake. --worker-class/--workers/--threads/--worker-connections
  go into the settings' "server" section only when given; otherwise the settings defaults apply.
- bench/loadgen.py, the load generator: one asyncio event loop in this process, raw HTTP/1.1 over
  keep-alive connections.

What is measured, in one run so the numbers compare fairly:
1. A table, for non-streaming and streaming requests at concurrency 1 and 32: requests/s and p50/p99
   latency straight to the fake ("direct") and through the server on /api/chat and on
   /v1/chat/completions; "added" is the server's p50 minus the direct p50. For streams, TTFB is the
   time to the response's first byte and "text" the time to the first byte of reply text (for /v1
   the server sends its role chunk before it even calls the upstream, so the first text is the
   honest figure); "text+" is how much later the first text comes through the server than direct.
   The CPU columns (100% = one core) show where the machine's time went: server (master and
   workers), fake upstream, and this load generator.
2. 1,000 streams through the server at once: each asks the fake to stream slowly (one chunk every
   100 ms for 2 s, via the `slow:N:MS` knob in the prompt) so they are all open together. Counted:
   streams that completed correctly, errors (refused, reset, bad status, incomplete, timeout), the
   most open at once, and the server's peak memory (RSS of the master and its workers, summed,
   sampled every 100 ms). Meanwhile a few GET /api/health are timed, to show the server still
   answers other requests.
3. The targets, each marked PASS or MISS.

bench/pages.py reuses ADMIN_KEY, FakeOpenAI, load and start_server from here; bench/compare.py and
bench/failover.py reuse the server, the fake and the routes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

import loadgen  # noqa: E402

from tests.fakes import FakeOpenAI  # noqa: E402, F401 - bench/pages.py imports it from here

ADMIN_KEY = "cas-bench-admin-key"
HOST = "127.0.0.1"


# -- the server (shared with bench/pages.py) ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def openai_account(name: str, upstream_url: str) -> dict:
    return {"name": name, "type": "openai", "base_url": upstream_url, "api_key": "sk-bench", "model": "fake-model"}


def start_server(
    folder: Path,
    upstream_url: str,
    server: dict | None = None,
    root: Path = ROOT,
    accounts: list[dict] | None = None,
    extra: dict | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start `main.py` on a free port with one openai account at upstream_url; wait until it answers.

    server: what goes into the settings' "server" section (empty: the settings defaults).
    root: the source tree whose main.py runs (bench/compare.py passes an older commit's).
    accounts: the settings' accounts instead of the one at upstream_url (bench/failover.py).
    extra: more settings, merged over the others at the top level (bench/compare.py's --old/--new-settings)."""
    port = free_port()
    settings = {
        "app_secret": "bench",
        "accounts": accounts or [openai_account("fake", upstream_url)],
        "server": dict(server or {}),
        "max_connections_per_address": 0,  # every load-generator connection comes from 127.0.0.1
        **(extra or {}),
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    with (folder / "server.log").open("w") as log:  # the access log too: read it when something fails
        proc = subprocess.Popen(
            [sys.executable, str(root / "main.py"), "--settings", str(folder / "settings.json"), "--port", str(port)],
            env={**os.environ, "ADMIN_API_KEY": ADMIN_KEY},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
    url = f"http://{HOST}:{port}"
    for _ in range(300):
        if proc.poll() is not None:
            break
        try:
            requests.get(url + "/api/health", timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start:\n" + (folder / "server.log").read_text()[-3000:])


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load(send, total: int, concurrency: int) -> dict:
    """For bench/pages.py: send(session) `total` times from `concurrency` threads (requests, so
    slower than bench/loadgen.py, but fine for page rendering costs); return req/s, p50, p99 in ms."""

    def worker(count: int) -> list[float]:
        session = requests.Session()
        times = []
        for _ in range(count):
            start = time.perf_counter()
            response = send(session)
            response.raise_for_status()
            times.append(time.perf_counter() - start)
        return times

    shares = [total // concurrency + (i < total % concurrency) for i in range(concurrency)]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = sorted(t for chunk in pool.map(worker, shares) for t in chunk)
    elapsed = time.perf_counter() - started
    return {
        "rps": total / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


# -- the fake upstream and the measuring helpers -----------------------------------------------


def start_fake(folder: Path, options: tuple[str, ...] = (), name: str = "fake") -> tuple[subprocess.Popen, int]:
    """Run bench/fastfake.py (with options) in its own process; return it and its port. Its stderr
    goes to <folder>/<name>.log."""
    with (folder / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(BENCH / "fastfake.py"), "--port", "0", *options],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    line = proc.stdout.readline()  # "port N" once it listens
    if not line.startswith("port "):
        proc.kill()
        raise SystemExit("the fake upstream did not start:\n" + (folder / f"{name}.log").read_text())
    return proc, int(line.split()[1])


def raise_fd_limit() -> int:
    """10,000 streams need 10,000 sockets here: main.py's own lift of the open-files limit, for this process."""
    from main import raise_open_files_limit  # main.py patches nothing and serves nothing when imported

    return raise_open_files_limit()


def family(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (the gunicorn master and its workers)."""
    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


def rss(procs: list[psutil.Process]) -> int:
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker that just exited
            total += proc.memory_info().rss
    return total


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


class CpuMeter:
    """CPU use (100% = one core) of the server, the fake and this process over one measurement."""

    def __init__(self, groups: dict[str, list[psutil.Process]]):
        self.groups = groups

    def __enter__(self):
        self.started = time.perf_counter()
        self.before = {name: cpu_seconds(procs) for name, procs in self.groups.items()}
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.started
        used = {name: cpu_seconds(procs) - self.before[name] for name, procs in self.groups.items()}
        self.percent = {name: seconds / self.wall * 100 for name, seconds in used.items()}


# -- the measurement ----------------------------------------------------------------------------


def openai_body(stream: bool, content: str = "hello") -> bytes:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": content}], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


class Routes:
    """The raw requests of each route, and what marks a complete answer."""

    def __init__(self, fake_port: int, server_port: int):
        self.fake_port, self.server_port = fake_port, server_port
        self.auth = {"Authorization": f"Bearer {ADMIN_KEY}"}

    def request(self, route: str, stream: bool, content: str = "hello", close: bool = False):
        """(port, raw request, done marker) for route "direct", "api" or "v1"."""
        headers = {**({} if route == "direct" else self.auth), **({"Connection": "close"} if close else {})}
        if route == "api":
            port, path = self.server_port, "/api/chat"
            body = json.dumps({"prompt": content, "stream": stream}).encode()
            done = b"event: done" if stream else loadgen.TEXT_MARKER
        else:
            port = self.fake_port if route == "direct" else self.server_port
            path, body = "/v1/chat/completions", openai_body(stream, content)
            done = b"data: [DONE]" if stream else loadgen.TEXT_MARKER
        return port, loadgen.build_request(HOST, port, "POST", path, body, headers), done


ROUTE_NAMES = {"direct": "fake upstream direct", "api": "/api/chat via server", "v1": "/v1/chat via server"}
HEADER = (
    f"{'route':<22}{'stream':>7}{'conc':>5}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'added':>7}"
    f"{'TTFB':>7}{'text':>7}{'text+':>7}{'err':>5}{'cpu srv/fake/gen %':>21}"
)


def row(route: str, stream: bool, conc: int, r: loadgen.CellResult, base: loadgen.CellResult, cpu: dict) -> str:
    direct = route == "direct"
    added = "" if direct else f"{r.p50 - base.p50:.2f}"
    ttfb = f"{r.ttfb:.2f}" if stream else ""
    text = f"{r.text:.2f}" if stream else ""
    text_added = f"{r.text - base.text:.2f}" if stream and not direct else ""
    # CPU times tick every 10 ms: over a cell shorter than 0.3 s the percentages would be noise
    cpus = f"{cpu['server']:.0f}/{cpu['fake']:.0f}/{cpu['gen']:.0f}" if cpu["wall"] >= 0.3 else "(too short)"
    return (
        f"{ROUTE_NAMES[route]:<22}{'yes' if stream else 'no':>7}{conc:>5}{r.rps:>8.0f}{r.p50:>8.2f}{r.p99:>8.2f}"
        f"{added:>7}{ttfb:>7}{text:>7}{text_added:>7}{sum(r.errors.values()):>5}{cpus:>21}"
    )


class Generator:
    """bench/loadgen.py in a process of its own, for one cell (or one burst of streams)."""

    def __init__(self, folder: Path):
        self.folder, self.made = folder, 0

    def run(self, groups: dict, port: int, request: bytes, total: int, conc: int, marker: bytes, streams=None):
        """Run it; return (its JSON answer, CPU % of each group over the measured part, that part's seconds).
        streams: None for a cell; else a burst of `total` streams, opened that many a second (0: all at once)."""
        self.made += 1
        path = self.folder / f"request-{self.made}.http"
        path.write_bytes(request)
        command = [sys.executable, str(BENCH / "loadgen.py"), "--port", str(port), "--request-file", str(path)]
        command += ["--total", str(total), "--concurrency", str(conc), "--marker", marker.decode()]
        command += ["--streams", "--timeout", "180", "--open-rate", str(streams)] if streams is not None else []
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("the load generator did not start")
        with CpuMeter(groups) as meter:
            child.stdin.write("go\n")
            child.stdin.flush()
            out = child.stdout.read()
            child.wait()
        answer = json.loads(out)
        cpu = {**meter.percent, "gen": answer["cpu"] / meter.wall * 100, "wall": meter.wall}
        return answer, cpu


def cell_result(answer: dict) -> loadgen.CellResult:
    return loadgen.CellResult(**{**answer, "errors": collections.Counter(answer["errors"])})


async def measure(args, routes: Routes, groups: dict, gen: Generator) -> dict:
    """Every cell of the table, args.rounds times over: {(route, stream, conc): [CellResult per round]}."""
    results: dict = collections.defaultdict(list)
    shares: dict = collections.defaultdict(list)  # (route, stream, conc) -> each round's worker CPU shares
    errors = []

    def cell(route: str, stream: bool, conc: int, total: int):
        port, request, done = routes.request(route, stream)
        workers = groups["server"][1:]
        before = [cpu_seconds([w]) for w in workers]
        answer, cpu = gen.run(groups, port, request, total, conc, done)
        used = [cpu_seconds([w]) - b for w, b in zip(workers, before, strict=True)]
        result = cell_result(answer)
        if result.errors:
            errors.append(f"{ROUTE_NAMES[route]}, stream={stream}, c={conc}: {dict(result.errors)}")
        return result, cpu, [u / max(sum(used), 1e-9) * 100 for u in used]

    # The fake alone first: its capacity must dwarf what the server does. The load generator may be
    # the limit here, so the fake's own CPU use is shown too: req/s divided by the share of a core it
    # was busy is what one core of the fake can serve.
    print(f"fake upstream alone at concurrency 32 ({args.capacity_requests} requests each):")
    for stream in (False, True):
        result, cpu, _ = cell("direct", stream, 32, args.capacity_requests)
        per_core = result.rps / max(cpu["fake"], 1) * 100
        print(
            f"  {'streamed' if stream else 'JSON':<9}{result.rps:>7.0f} req/s, p50 {result.p50:.2f} ms;  CPU: fake "
            f"{cpu['fake']:.0f}%, load generator {cpu['gen']:.0f}%  ->  the fake serves ~{per_core:.0f} req/s per core"
        )

    for route in ("direct", "api", "v1"):  # warm up: connections, both workers, caches
        for stream in (False, True):
            cell(route, stream, 8, 200)
    errors.clear()

    for number in range(1, args.rounds + 1):
        print()
        print(f"round {number} of {args.rounds}:")
        print(HEADER)
        for stream in (False, True):
            for conc in args.concurrency:
                base = None
                for route in ("direct", "api", "v1"):
                    result, cpu, split = cell(route, stream, conc, args.requests)
                    base = base or result
                    results[route, stream, conc].append(result)
                    shares[route, stream, conc].append(split)
                    line = row(route, stream, conc, result, base, cpu)
                    if route != "direct" and conc > 1:
                        line += "   workers " + "/".join(f"{x:.0f}" for x in split) + "%"
                    print(line, flush=True)
    print(
        "ms: p50/p99 whole exchange; added = p50 minus direct p50; TTFB = first byte; text = first reply text;"
        " text+ = text minus direct text; workers = each worker's share of the server's CPU in that cell"
    )
    for line in errors:
        print("  errors:", line)
    summary(args, results, shares)
    return results


def spread(values: list[float], digits: int = 2) -> str:
    """The median of the rounds, and their range."""
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:.{digits}f}"
    return f"{middle:.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def added(results: dict, route: str, stream: bool, conc: int, what: str = "p50") -> list[float]:
    """Each round's figure through the server minus the same round's direct one."""
    through, direct = results[route, stream, conc], results["direct", stream, conc]
    return [getattr(a, what) - getattr(b, what) for a, b in zip(through, direct, strict=True)]


def summary(args, results: dict, shares: dict) -> None:
    print()
    print(f"over {args.rounds} rounds of {args.requests} requests per cell: median [lowest-highest] of the rounds")
    print(f"{'route':<22}{'stream':>7}{'conc':>5}{'req/s':>22}{'p50 ms':>22}{'added ms':>22}{'text+ ms':>22}")
    for stream in (False, True):
        for conc in args.concurrency:
            for route in ("direct", "api", "v1"):
                rounds = results[route, stream, conc]
                rps = spread([r.rps for r in rounds], 0)
                p50 = spread([r.p50 for r in rounds])
                more = "" if route == "direct" else spread(added(results, route, stream, conc))
                text = spread(added(results, route, stream, conc, "text")) if stream and route != "direct" else ""
                where = f"{ROUTE_NAMES[route]:<22}{'yes' if stream else 'no':>7}{conc:>5}"
                print(f"{where}{rps:>22}{p50:>22}{more:>22}{text:>22}")


def wrk_check(args, routes: Routes, folder: Path) -> dict:
    """The same /v1 cells measured by wrk (a C load generator, if installed): does a second, independent
    client see what bench/loadgen.py sees? {(route, conc): (req/s, p50 ms)}."""
    wrk = shutil.which("wrk")
    if not wrk:
        print("\nwrk is not installed (apt-get install wrk): the cross-check is left out")
        return {}
    seen = {}
    print(f"\nthe same non-streaming cells measured by wrk ({args.wrk_seconds} s each, keep-alive):")
    for conc in args.concurrency:
        for route in ("direct", "v1"):
            port = routes.fake_port if route == "direct" else routes.server_port
            script = folder / f"wrk-{route}.lua"
            headers = {"Content-Type": "application/json", **({} if route == "direct" else routes.auth)}
            lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(openai_body(False).decode())}"]
            lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
            script.write_text("\n".join(lines) + "\n")
            threads = min(conc, 2)
            out = subprocess.run(
                [
                    wrk,
                    "-t",
                    str(threads),
                    "-c",
                    str(conc),
                    "-d",
                    f"{args.wrk_seconds}s",
                    "--latency",
                    "-s",
                    str(script),
                    f"http://{HOST}:{port}/v1/chat/completions",
                ],  # fmt: skip
                capture_output=True,
                text=True,
                timeout=args.wrk_seconds + 30,  # fmt: skip
            ).stdout
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
            p50 = _wrk_ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1))
            bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            seen[route, conc] = (rps, p50)
            more = "" if route == "direct" else f"   added {p50 - seen['direct', conc][1]:.2f} ms"
            errors = f"   non-2xx {bad.group(1)}" if bad else ""
            print(f"  {ROUTE_NAMES[route]:<22} c={conc:<3} {rps:>8.0f} req/s  p50 {p50:6.2f} ms{more}{errors}")
    return seen


def _wrk_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


async def streams(args, routes: Routes, groups: dict, gen: Generator) -> dict:
    """args.streams slow streams at once (from a load generator of their own), with memory sampling and
    /api/health timed every half second meanwhile from here."""
    knob = f"slow:{args.stream_chunks}:{args.stream_interval_ms}"
    server_procs = groups["server"]
    port, request, done = routes.request(args.streams_route, True, content=knob, close=True)
    base_rss = rss(server_procs)
    peak, finished = base_rss, asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not finished.is_set():
            peak = max(peak, rss(family(server_procs[0].pid)))  # re-listed: a worker may be replaced
            await asyncio.sleep(0.1)

    async def health() -> list[float | None]:
        probes = []
        while not finished.is_set():
            probes.append(asyncio.create_task(loadgen.timed_get(HOST, routes.server_port, "/api/health", 60)))
            await asyncio.sleep(0.5)
        return list(await asyncio.gather(*probes))

    sampler, prober = asyncio.create_task(sample()), asyncio.create_task(health())
    rate = args.streams / args.stream_open_seconds if args.stream_open_seconds else 0.0
    answer, cpu = await asyncio.to_thread(gen.run, groups, port, request, args.streams, 1, done, rate)
    finished.set()
    await sampler
    probes = await prober
    answer["errors"] = collections.Counter(answer["errors"])

    route = "/api/chat" if args.streams_route == "api" else "/v1/chat/completions"
    seconds = args.stream_chunks * args.stream_interval_ms / 1000
    print()
    print(
        f"{args.streams} streams at once through {route} (each {args.stream_chunks} chunks, one every "
        f"{args.stream_interval_ms} ms: {seconds:g} s alone), opened "
        + (f"over {args.stream_open_seconds:g} s" if args.stream_open_seconds else "all at once")
        + ", from a load generator of their own:"
    )
    print(f"  completed correctly  {answer['ok']} of {args.streams}")
    kinds = ", ".join(f"{name} {count}" for name, count in answer["errors"].most_common())
    print(f"  errors               {sum(answer['errors'].values())}" + (f" ({kinds})" if kinds else ""))
    print(f"  most open at once    {answer['peak_open']}")
    if answer["first_bytes"]:
        firsts = sorted(answer["first_bytes"])
        print(
            f"  first byte after     p50 {statistics.median(firsts):.2f} s, "
            f"max {firsts[-1]:.2f} s (from the start of the burst)"
        )
    print(f"  all ended after      {answer['seconds']:.2f} s")
    print(f"  CPU meanwhile        server {cpu['server']:.0f}%, fake {cpu['fake']:.0f}%, generator {cpu['gen']:.0f}%")
    per = (peak - base_rss) / max(1, answer["peak_open"]) / 1024
    print(
        f"  server memory (RSS)  {base_rss / 2**20:.0f} MiB before, peak {peak / 2**20:.0f} MiB "
        f"(master + {len(server_procs) - 1} workers; ~{per:.0f} KiB per open stream)"
    )
    answered = [ms for ms in probes if ms is not None]
    failed = len(probes) - len(answered)
    if answered:
        print(
            f"  GET /api/health meanwhile, every 0.5 s: {len(probes)} asked, p50 {statistics.median(answered):.0f} ms, "
            f"max {max(answered):.0f} ms, {failed} failed or timed out"
        )
    answer["peak_rss"], answer["health"] = peak, probes
    return answer


def targets(args, results: dict, streamed: dict, wrk: dict) -> None:
    """Issue 13's targets, each from the median of the rounds."""

    def mark(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    med = statistics.median
    print()
    print("targets (issue 13; medians of the rounds):")
    lines = []
    c1, c32 = min(args.concurrency), max(args.concurrency)
    v1 = med(added(results, "v1", False, c1))
    lines.append((f"added p50, non-streaming /v1 at c={c1}", "<= 1.0 ms", f"{v1:.2f} ms", v1 <= 1.0))
    api = med(added(results, "api", False, c1))
    lines.append((f"added p50, non-streaming /api/chat at c={c1}", "<= 1.5 ms", f"{api:.2f} ms", api <= 1.5))
    for route in ("v1", "api"):
        extra = med(added(results, route, True, c1, "text"))
        name = f"first streamed text added, {'/api/chat' if route == 'api' else '/v1'} at c={c1}"
        lines.append((name, "<= 1.0 ms", f"{extra:.2f} ms", extra <= 1.0))
    for route, floor in (("v1", 800), ("api", 500)):
        rps = med([r.rps for r in results[route, False, c32]])
        name = f"requests/s at c={c32}, {'/api/chat' if route == 'api' else '/v1'} non-streaming"
        lines.append((name, f">= {floor}", f"{rps:.0f}", rps >= floor))
    if wrk:
        rps = wrk["v1", c32][0]
        lines.append(("  ...the same /v1 cell by wrk", ">= 800", f"{rps:.0f}", rps >= 800))
        more = wrk["v1", c1][1] - wrk["direct", c1][1]
        lines.append((f"  ...added p50 at c={c1} by wrk", "<= 1.0 ms", f"{more:.2f} ms", more <= 1.0))
    errors = sum(streamed["errors"].values())
    ok = errors == 0 and streamed["ok"] == args.streams
    lines.append((f"{args.streams} streams at once", "0 errors", f"{errors} errors, {streamed['ok']} ok", ok))
    together = streamed["peak_open"] == args.streams
    lines.append(("  ...all of them open together", f"{args.streams} open", str(streamed["peak_open"]), together))
    answered = [ms for ms in streamed["health"] if ms is not None]
    slowest = max(answered) if answered and len(answered) == len(streamed["health"]) else float("inf")
    lines.append(("  ...other requests answered meanwhile", "< 1000 ms", f"{slowest:.0f} ms", slowest < 1000))
    gib = streamed["peak_rss"] / 2**30
    lines.append(("  ...total server RSS at the peak", "<= 1 GiB", f"{gib * 1024:.0f} MiB", gib <= 1))
    for name, target, got, passed in lines:
        print(f"  {mark(passed)}  {name:<52}{target:>12}   got {got}")


def server_options(args) -> dict:
    """The settings' "server" section: only the options given on the command line."""
    names = ("worker_class", "workers", "threads", "worker_connections")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def wait_for_workers(server: subprocess.Popen, count: int, timeout: float = 30) -> list[psutil.Process]:
    """The master and its workers, once every worker listens (each on a socket of its own)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = family(server.pid)
        listening = [p for p in procs[1:] if any(c.status == "LISTEN" for c in p.net_connections("tcp"))]
        if len(listening) >= count:
            return procs
        time.sleep(0.1)
    raise SystemExit(f"only {len(listening)} of {count} workers listen after {timeout:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, help="requests per table cell (default 1000; --quick 200)")
    parser.add_argument("--rounds", type=int, help="times the whole table is measured (default 3; --quick 1)")
    parser.add_argument("--concurrency", type=int, nargs=2, default=[1, 32], metavar=("LOW", "HIGH"))
    parser.add_argument("--streams", type=int, help="streams held open at once (default 10000; --quick 500)")
    parser.add_argument("--streams-route", choices=("api", "v1"), default="v1", help="the route the streams use")
    parser.add_argument("--stream-chunks", type=int, help="chunks in each slow stream (default 25; --quick 20)")
    parser.add_argument("--stream-interval-ms", type=int, help="between a slow stream's chunks (default 1000)")
    parser.add_argument(
        "--stream-open-seconds", type=float, help="streams are opened evenly over this long (default 20; 0: at once)"
    )
    parser.add_argument("--wrk-seconds", type=int, default=5, help="each wrk cell's length (0: no wrk)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--worker-class", choices=("gthread", "gevent"), help="server.worker_class")
    parser.add_argument("--workers", type=int, help="server.workers")
    parser.add_argument("--threads", type=int, help="server.threads")
    parser.add_argument("--worker-connections", type=int, help="server.worker_connections")
    args = parser.parse_args()
    args.requests = args.requests or (200 if args.quick else 1000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.streams = args.streams or (500 if args.quick else 10_000)
    args.stream_interval_ms = args.stream_interval_ms or (100 if args.quick else 1000)
    if args.stream_open_seconds is None:
        args.stream_open_seconds = 0 if args.quick else 20
    args.stream_chunks = args.stream_chunks or (20 if args.quick else 25)
    args.capacity_requests = 4000 if args.quick else 10_000  # the fake is fast: enough for ~1 s

    limit = raise_fd_limit()  # before the server starts, so it inherits the raised limit too
    options = server_options(args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fake, fake_port = start_fake(folder)
        try:
            server, url = start_server(folder, f"http://{HOST}:{fake_port}/v1", options)
            try:
                workers = options.get("workers") or 2
                server_procs = wait_for_workers(server, workers)
                shown = ", ".join(f"{k}={v}" for k, v in options.items()) or "the settings defaults"
                used = [line for line in (folder / "server.log").read_text().splitlines() if "Using worker:" in line]
                shown += f"; gunicorn: {used[0].split('Using worker:')[1].strip()}" if used else ""
                print(
                    f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
                    f"open files limit {limit}; server: {shown} ({len(server_procs) - 1} workers); "
                    "load from bench/loadgen.py, a process of its own per cell"
                )
                groups = {"server": server_procs, "fake": [psutil.Process(fake.pid)]}
                routes = Routes(fake_port, int(url.rsplit(":", 1)[1]))
                gen = Generator(folder)

                async def everything():
                    results = await measure(args, routes, groups, gen)
                    wrk = wrk_check(args, routes, folder) if args.wrk_seconds else {}
                    streamed = await streams(args, routes, groups, gen)
                    return results, wrk, streamed

                results, wrk, streamed = asyncio.run(everything())
                targets(args, results, streamed, wrk)
            finally:
                stop(server)
        finally:
            stop(fake)
            log = (folder / "fake.log").read_text().strip()
            if log:
                print("\nthe fake upstream logged:\n" + log[-2000:])


if __name__ == "__main__":
    main()
