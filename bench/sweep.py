"""Two sweeps, each a table here and a plot in docs/: latency vs concurrency, and memory vs open streams.

    python3 bench/sweep.py                          # both (about 1 minute + about 3 minutes)
    python3 bench/sweep.py --only latency --requests 300
    python3 bench/sweep.py --only streams --max-streams 2000

What runs, all on 127.0.0.1: bench/fastfake.py (the fast fake upstream) and the real server
(`main.py`, gunicorn with the settings defaults: 2 gevent workers), one openai account at the fake,
via bench/run.py's start_fake and start_server. The open files limit of this process is raised to
its hard limit first; the server, the fake and bench/loadproc.py inherit it.

(a) latency vs concurrency -> docs/latency-vs-concurrency.svg (p50 solid, p99 dashed) and
    docs/throughput-vs-concurrency.svg. For concurrency 1, 2, 4, 8, 16, 32, 64: --requests
    non-streaming chats (default 1000) closed loop, each worker on its own keep-alive connection
    (bench/loadgen.py's run_cell, in this process), on three routes: POST /v1/chat/completions
    straight to the fake ("direct", what any client pays anyway), the same through the server, and
    POST /api/chat through the server (it also stores a conversation). The table shows req/s, p50 and
    p99 of the whole exchange in ms, and errors (any reply not a complete 200).

(b) RSS vs open streams -> docs/rss-vs-streams.svg. For 0, 1000, 2500, 5000, 7500, 10000 (up to
    --max-streams): a fresh bench/loadproc.py process in its streams mode (its own process, so this
    driver stays responsive to sample) opens that many streamed POST /v1/chat/completions, --open-rate
    new connections a second, each asking the fake for --knob slow:20:1000 (20 chunks, one a second:
    ~20 s, so all are open together once the ramp is done; a stream that ends is sent again on its
    connection). When loadproc reports that every one has begun (its per-second "opened"), the
    server's RSS (master + workers, summed, and each worker) and open fds are sampled 3 times 0.5 s
    apart and the highest kept; then loadproc is stopped and the server's fds are let fall back
    before the next level. The table shows how many had begun ("opened") and how many were open at
    the sample ("open": lower only if the ramp outlasted a stream), how long opening took, the RSS,
    KiB per stream above the 0 level, and loadproc's errors.
    gunicorn's gevent worker serves at most worker_connections connections (the settings default,
    1000 per worker, would cap this at ~2000 streams), so this part's server gets
    server.worker_connections = max(1000, --max-streams) unless --worker-connections says otherwise
    (0: the settings default). Each stream holds a socket in loadproc and two in the server (client
    and upstream), so 10,000 streams need an open files limit well above 10,000 per process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402
import run  # noqa: E402
import svgplot  # noqa: E402

CONCURRENCY = [1, 2, 4, 8, 16, 32, 64]
LEVELS = [0, 1000, 2500, 5000, 7500, 10000]
ROUTES = {"direct": "/v1 direct to the fake", "v1": "/v1 via the server", "api": "/api/chat via the server"}
MIB = 2**20
DOCS = run.ROOT / "docs"


def latency(args, routes: run.Routes) -> None:
    async def sweep() -> dict:
        for route in ROUTES:  # warm up: connections, both workers, caches
            port, request, done = routes.request(route, False)
            await loadgen.run_cell(run.HOST, port, request, 100, 8, done)
        results = {}
        print(f"{'route':<26}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
        for conc in CONCURRENCY:
            for route in ROUTES:
                port, request, done = routes.request(route, False)
                result = await loadgen.run_cell(run.HOST, port, request, args.requests, conc, done)
                results[route, conc] = result
                errors = sum(result.errors.values())
                shown = f"{errors}" + (f" {dict(result.errors)}" if errors else "")
                print(
                    f"{ROUTES[route]:<26}{conc:>5}{result.rps:>9.0f}{result.p50:>9.2f}{result.p99:>9.2f}{shown:>8}",
                    flush=True,
                )
        return results

    results = asyncio.run(sweep())
    lat, rps = [], []
    for (route, name), colour in zip(ROUTES.items(), svgplot.COLOURS, strict=False):
        lat.append(svgplot.Series(f"{name} p50", [(c, results[route, c].p50) for c in CONCURRENCY], colour=colour))
        points = [(c, results[route, c].p99) for c in CONCURRENCY]
        lat.append(svgplot.Series(f"{name} p99", points, dashed=True, colour=colour))
        rps.append(svgplot.Series(name, [(c, results[route, c].rps) for c in CONCURRENCY], colour=colour))
    title = f"Non-streaming chat latency vs concurrency ({args.requests} requests a point)"
    write(
        args.latency_svg,
        svgplot.line_chart(title, "concurrency (closed loop)", "latency (ms, log scale)", lat, xlog=True, ylog=True),
    )
    title = f"Non-streaming chat throughput vs concurrency ({args.requests} requests a point)"
    write(
        args.throughput_svg,
        svgplot.line_chart(title, "concurrency (closed loop)", "requests/s (log scale)", rps, xlog=True, ylog=True),
    )


def write(path: str, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    print(f"wrote {path}")


def last_line(path: Path) -> dict | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return json.loads(path.read_text().splitlines()[-1])
    return None


def measure_server(pid: int) -> dict:
    procs = run.family(pid)
    fds = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            fds += proc.num_fds()
    workers = [run.rss([w]) / MIB for w in procs[1:]]
    return {"total": run.rss(procs) / MIB, "master": run.rss(procs[:1]) / MIB, "workers": workers, "fds": fds}


def open_level(args, routes: run.Routes, folder: Path, level: int) -> tuple[subprocess.Popen, Path, int, float]:
    """Start a loadproc holding `level` streams; wait until every one of them has begun."""
    out = folder / f"streams-{level}.jsonl"
    command = [sys.executable, str(BENCH / "loadproc.py"), "--host", run.HOST, "--port", str(routes.server_port)]
    command += ["--request-file", str(folder / "stream.request"), "--streams", str(level)]
    command += ["--rate", str(args.open_rate), "--seconds", str(level / args.open_rate + args.open_timeout + 60)]
    command += ["--marker", "data: [DONE]", "--out", str(out)]
    started = time.perf_counter()
    proc = subprocess.Popen(command)
    deadline = started + level / args.open_rate + args.open_timeout
    opened = 0
    while time.perf_counter() < deadline and proc.poll() is None and opened < level:
        time.sleep(0.2)
        line = last_line(out)
        if line and not line.get("done"):
            opened = line["opened"]
    return proc, out, opened, time.perf_counter() - started


def streams(args, routes: run.Routes, server: subprocess.Popen, folder: Path) -> None:
    levels = sorted({n for n in LEVELS if n <= args.max_streams} | {args.max_streams})
    _, request, _ = routes.request("v1", True, content=args.knob)
    (folder / "stream.request").write_bytes(request)
    base_fds = measure_server(server.pid)["fds"]
    rows = []
    head = f"{'streams':>8}{'opened':>8}{'open':>7}{'open s':>8}{'total MiB':>11}{'workers MiB':>14}"
    print(head + f"{'fds':>7}{'KiB/str':>9}  errors")
    for level in levels:
        proc, out, opened, seconds = open_level(args, routes, folder, level) if level else (None, None, 0, 0.0)
        samples = []
        for _ in range(3):
            samples.append(measure_server(server.pid))
            time.sleep(0.5)
        best = max(samples, key=lambda s: s["total"])
        now_open, errors = 0, {}
        if proc:
            now_open = (last_line(out) or {}).get("open", 0)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            totals = last_line(out) or {}
            errors = totals.get("errors", {"loadproc died": 1}) if totals.get("done") else {"loadproc died": 1}
            for _ in range(150):  # the server closes its side of the streams it was serving
                if measure_server(server.pid)["fds"] <= base_fds + 20:
                    break
                time.sleep(0.2)
        base = rows[0]["total"] if rows and rows[0]["level"] == 0 else None
        per = (best["total"] - base) * 1024 / opened if base is not None and opened else None
        rows.append({"level": level, "opened": opened, **best, "per": per})
        workers = "/".join(f"{w:.0f}" for w in best["workers"])
        note = f"{sum(errors.values())}" + (f" {errors}" if errors else "")
        note += "" if opened >= level else "  NOT ALL OPENED"
        shown = f"{per:.1f}" if per is not None else ""
        print(
            f"{level:>8}{opened:>8}{now_open:>7}{seconds:>8.1f}{best['total']:>11.1f}{workers:>14}{best['fds']:>7}"
            f"{shown:>9}  {note}",
            flush=True,
        )
    print(
        "opened: streams whose reply had begun; open: of those, open at the sample; open s: from starting loadproc "
        "to all opened; KiB/str: RSS above the 0 level per stream; errors: loadproc's (cut streams are not errors)"
    )
    series = [svgplot.Series("total (master + workers)", [(r["opened"], r["total"]) for r in rows])]
    series.append(svgplot.Series("master", [(r["opened"], r["master"]) for r in rows], dashed=True))
    for i in range(max(len(r["workers"]) for r in rows)):
        points = [(r["opened"], r["workers"][i]) for r in rows if len(r["workers"]) > i]
        series.append(svgplot.Series(f"worker {i + 1}", points))
    title = f"Server RSS vs open streams (/v1 stream=true, {args.knob})"
    svg = svgplot.line_chart(title, "streams open at once", "RSS (MiB)", series, refs=[("1 GB", 1024)])
    write(args.streams_svg, svg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("latency", "streams"), help="run one sweep only")
    parser.add_argument("--requests", type=int, default=1000, help="(a) requests per point")
    parser.add_argument("--max-streams", type=int, default=10000, help="(b) the highest level")
    parser.add_argument("--open-rate", type=float, default=1000, help="(b) new streams a second")
    parser.add_argument("--knob", default="slow:20:1000", help="(b) the fake's knob: N chunks, MS apart")
    parser.add_argument("--open-timeout", type=float, default=60, help="(b) seconds past the ramp to wait")
    parser.add_argument("--worker-connections", type=int, help="(b) server.worker_connections (0: the default)")
    parser.add_argument("--latency-svg", default=str(DOCS / "latency-vs-concurrency.svg"))
    parser.add_argument("--throughput-svg", default=str(DOCS / "throughput-vs-concurrency.svg"))
    parser.add_argument("--streams-svg", default=str(DOCS / "rss-vs-streams.svg"))
    args = parser.parse_args()
    limit = run.raise_fd_limit()  # before the server and the fake start: they inherit it
    print(f"open files limit {limit}")
    if args.only != "latency" and args.max_streams * 2 + 100 > limit:
        print(f"warning: {args.max_streams} streams need about {args.max_streams * 2} files in the server")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fake, fake_port = run.start_fake(folder)
        try:
            for part in ("latency", "streams"):
                if args.only not in (None, part):
                    continue
                options = {}
                if part == "streams":
                    wanted = args.worker_connections
                    wanted = max(1000, args.max_streams) if wanted is None else wanted
                    options = {"worker_connections": wanted} if wanted else {}
                server, url = run.start_server(folder, f"http://{run.HOST}:{fake_port}/v1", options)
                try:
                    time.sleep(0.5)
                    routes = run.Routes(fake_port, int(url.rsplit(":", 1)[1]))
                    shown = ", ".join(f"{k}={v}" for k, v in options.items()) or "the settings defaults"
                    print(f"\n({'a' if part == 'latency' else 'b'}) {part}; server: {shown}")
                    if part == "latency":
                        latency(args, routes)
                    else:
                        streams(args, routes, server, folder)
                finally:
                    run.stop(server)
        finally:
            run.stop(fake)


if __name__ == "__main__":
    main()
