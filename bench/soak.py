"""Memory does not grow: steady load at half the measured capacity, the server's RSS sampled every minute.

    python3 bench/soak.py                                   # the full soak: 60 minutes (about 61 with setup)
    python3 bench/soak.py --minutes 3 --sample-seconds 10 --warmup-minutes 1   # a shortened check
    python3 bench/soak.py --rate 200 --out /tmp/rss.svg --csv /tmp/rss.csv     # a fixed rate, no capacity run

What runs, all on 127.0.0.1:
- bench/fastfake.py, the fast fake upstream, and the real server (`main.py`, the settings defaults:
  gunicorn, 2 gevent workers) with one openai account at the fake (bench/run.py's start_fake and
  start_server).
- the mix of requests, all through the server: 70% non-streaming POST /v1/chat/completions, 15%
  streamed ones, 15% non-streaming POST /api/chat (each stores a new conversation in the database).
- capacity, unless --rate is given: this process sends the mix closed loop at concurrency 32 for
  --capacity-seconds; the requests answered per second are the capacity.
- the load: one bench/loadproc.py process per kind of request (separate processes, so this
  driver's sampling never slows them), open loop at its share of half the capacity (or of --rate),
  for --minutes. Every reply's status and completeness is checked there.
- the samples: every --sample-seconds (from the load's start, and once at its end), the RSS of
  the gunicorn master and each worker (psutil; the workers are listed again at every sample, in
  case one was replaced), their sum, and their open file descriptors.

How to read the output: one line per sample while it runs; then the requests sent, ok, errors (by
kind) and late starts (a loadproc could not send a request within 10 ms of when it was due), the
achieved rate, and the verdict "flat within X% after warm-up": X = (max - min) / min of the total RSS
over the samples taken at or after --warmup-minutes; PASS when X <= 10%. The CSV has one row per
sample; the SVG (RSS MiB vs minutes: total, master and each worker) shades +-10% around the first
sample after warm-up. The exit status is 0 only with no errors and a PASS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402
import run  # noqa: E402
import svgplot  # noqa: E402

# (name, route, stream, share of the requests)
MIX = [("v1-json", "v1", False, 0.70), ("v1-stream", "v1", True, 0.15), ("api-chat", "api", False, 0.15)]
CYCLE = [0] * 14 + [1] * 3 + [2] * 3  # the same mix for the closed-loop capacity run, 20 requests a turn
MIB = 2**20


async def capacity(routes: run.Routes, seconds: float, concurrency: int = 32) -> tuple[float, Counter]:
    """The mix, closed loop: each worker sends on its own keep-alive connection back to back."""
    requests = [routes.request(route, stream)[1:] for _, route, stream, _ in MIX]
    ok, errors = 0, Counter()
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal ok
        conn, number = None, offset
        while time.perf_counter() < deadline:
            request, done = requests[CYCLE[number % len(CYCLE)]]
            number += 1
            try:
                if conn is None:
                    conn = await asyncio.open_connection(run.HOST, routes.server_port)
                reply = await loadgen.exchange(*conn, request)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                errors[type(exc).__name__] += 1
                conn = loadgen.close(conn)
                continue
            if reply.status == 200 and done in reply.body:
                ok += 1
            else:
                errors[f"status {reply.status}" if reply.status != 200 else "incomplete"] += 1
            if not reply.keep_alive:
                conn = loadgen.close(conn)
        loadgen.close(conn)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i * 7) for i in range(concurrency)))
    return ok / (time.perf_counter() - started), errors


def read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line being written right now
            lines.append(json.loads(text))
    return lines


def counts(paths: list[Path]) -> tuple[int, int, Counter, int]:
    """sent, ok, errors and late starts so far, over every loadproc's output."""
    sent = ok = late = 0
    errors: Counter = Counter()
    for path in paths:
        for line in read_lines(path):
            if not line.get("done"):
                sent, ok, late = sent + line["sent"], ok + line["ok"], late + line["late"]
                errors.update(line["errors"])
    return sent, ok, errors, late


def sample(server_pid: int, started: float, outputs: list[Path]) -> dict:
    procs = run.family(server_pid)
    master, workers = procs[0], procs[1:]
    fds = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            fds += proc.num_fds()
    sent, ok, errors, _ = counts(outputs)
    return {
        "minute": (time.perf_counter() - started) / 60,
        "total": run.rss(procs) / MIB,
        "master": run.rss([master]) / MIB,
        "workers": [run.rss([w]) / MIB for w in workers],
        "pids": [w.pid for w in workers],
        "fds": fds,
        "sent": sent,
        "ok": ok,
        "errors": sum(errors.values()),
    }


def write_outputs(args, samples: list[dict], band: tuple[float, float] | None, verdict: str) -> None:
    most = max(len(s["workers"]) for s in samples)
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as file:
        writer = csv.writer(file)
        workers = [f"worker{i + 1}_mib" for i in range(most)]
        writer.writerow(["minute", "total_mib", "master_mib", *workers, "worker_pids", "fds", "sent", "ok", "errors"])
        for s in samples:
            padded = [f"{w:.2f}" for w in s["workers"]] + [""] * (most - len(s["workers"]))
            pids = " ".join(map(str, s["pids"]))
            row = [f"{s['minute']:.3f}", f"{s['total']:.2f}", f"{s['master']:.2f}", *padded, pids]
            writer.writerow(row + [s["fds"], s["sent"], s["ok"], s["errors"]])
    series = [svgplot.Series("total (master + workers)", [(s["minute"], s["total"]) for s in samples])]
    series.append(svgplot.Series("master", [(s["minute"], s["master"]) for s in samples], dashed=True))
    for i in range(most):
        points = [(s["minute"], s["workers"][i]) for s in samples if len(s["workers"]) > i]
        series.append(svgplot.Series(f"worker {i + 1}", points))
    bands = [svgplot.Band("±10% of the first sample after warm-up", *band)] if band else []
    title = f"Server RSS under steady load ({args.rate:.0f} req/s; warm-up {args.warmup_minutes:g} min): {verdict}"
    svg = svgplot.line_chart(title, "minutes", "RSS (MiB)", series, bands=bands)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(svg)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60, help="how long the steady load runs")
    parser.add_argument("--sample-seconds", type=float, default=60, help="between RSS samples")
    parser.add_argument("--warmup-minutes", type=float, default=5, help="samples before this are not judged")
    parser.add_argument("--rate", type=float, help="requests/s of the load (default: half the measured capacity)")
    parser.add_argument("--capacity-seconds", type=float, default=10, help="the closed-loop capacity run")
    parser.add_argument("--out", default=str(run.ROOT / "docs" / "soak-rss.svg"), help="the plot")
    parser.add_argument("--csv", default=str(run.ROOT / "docs" / "soak-rss.csv"), help="the samples")
    args = parser.parse_args()

    limit = run.raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fake, fake_port = run.start_fake(folder)
        loads: list[subprocess.Popen] = []
        try:
            server, url = run.start_server(folder, f"http://{run.HOST}:{fake_port}/v1")
            try:
                time.sleep(0.5)  # every worker up before the processes are listed
                routes = run.Routes(fake_port, int(url.rsplit(":", 1)[1]))
                workers = len(run.family(server.pid)) - 1
                print(f"server: the settings defaults ({workers} workers); open files limit {limit}")
                for _, route, stream, _ in MIX:  # prime every route and worker before anything is measured
                    _, request, done = routes.request(route, stream)
                    asyncio.run(loadgen.run_cell(run.HOST, routes.server_port, request, 40, 4, done))
                if args.rate is None:
                    measured, errors = asyncio.run(capacity(routes, args.capacity_seconds))
                    args.rate = measured / 2
                    shown = f" (errors: {dict(errors)})" if errors else ""
                    print(
                        f"capacity: {measured:.0f} req/s on the mix, closed loop at concurrency 32 for "
                        f"{args.capacity_seconds:g} s{shown}; the load runs at half: {args.rate:.0f} req/s"
                    )
                else:
                    print(f"the load runs at {args.rate:g} req/s (--rate)")
                seconds = args.minutes * 60
                outputs = []
                for name, route, stream, share in MIX:
                    _, request, done = routes.request(route, stream)
                    (folder / f"{name}.request").write_bytes(request)
                    outputs.append(folder / f"{name}.jsonl")
                    command = [sys.executable, str(BENCH / "loadproc.py"), "--host", run.HOST]
                    command += ["--port", str(routes.server_port), "--request-file", str(folder / f"{name}.request")]
                    command += ["--rate", str(args.rate * share), "--seconds", str(seconds)]
                    command += ["--marker", done.decode(), "--out", str(outputs[-1])]
                    loads.append(subprocess.Popen(command))
                started = time.perf_counter()
                head = f"{'minute':>7}{'total MiB':>10}{'master':>8}  {'workers MiB':<18}"
                print(head + f"{'fds':>6}{'sent':>9}{'errors':>7}")
                samples = []
                for number in range(int(seconds // args.sample_seconds) + 2):
                    at = min(number * args.sample_seconds, seconds)
                    time.sleep(max(0.0, started + at - time.perf_counter()))
                    if samples and at <= samples[-1]["minute"] * 60 + 0.5:
                        break  # the end coincided with the last regular sample
                    if server.poll() is not None:
                        raise SystemExit("the server exited:\n" + (folder / "server.log").read_text()[-3000:])
                    s = sample(server.pid, started, outputs)
                    samples.append(s)
                    shown = " ".join(f"{w:.1f}" for w in s["workers"])
                    print(
                        f"{s['minute']:>7.2f}{s['total']:>10.1f}{s['master']:>8.1f}  {shown:<18}{s['fds']:>6}"
                        f"{s['sent']:>9}{s['errors']:>7}",
                        flush=True,
                    )
                for proc in loads:
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        proc.terminate()
                        proc.wait(10)
            finally:
                run.stop(server)
        finally:
            for proc in loads:
                if proc.poll() is None:
                    proc.kill()
            run.stop(fake)

        sent, ok, errors, late = counts(outputs)
        totals = [line for path in outputs for line in read_lines(path) if line.get("done")]
        if len(totals) != len(MIX):
            errors["loadproc died"] += len(MIX) - len(totals)
        bad = sum(errors.values())
    print()
    kinds = ", ".join(f"{k} {n}" for k, n in errors.most_common())
    print(f"requests: sent {sent}, ok {ok}, errors {bad}" + (f" ({kinds})" if kinds else "") + f", late starts {late}")
    print(f"achieved: {sent / seconds:.1f} req/s sent, {ok / seconds:.1f} req/s ok (target {args.rate:.1f} req/s)")
    print("RSS per sample (MiB, total): " + ", ".join(f"{s['minute']:.2f} min {s['total']:.1f}" for s in samples))
    judged = [s["total"] for s in samples if s["minute"] >= args.warmup_minutes - 1e-6]
    if len(judged) < 2:
        verdict, passed, band = "no verdict: fewer than 2 samples after warm-up", False, None
    else:
        spread = (max(judged) - min(judged)) / min(judged) * 100
        passed = spread <= 10
        verdict = f"flat within {spread:.1f}% after warm-up: {'PASS' if passed else 'FAIL'} (target <= 10%)"
        band = (judged[0] * 0.9, judged[0] * 1.1)
    if judged:
        low, high = min(judged), max(judged)
        print(f"judged: {len(judged)} samples from minute {args.warmup_minutes:g}, {low:.1f} to {high:.1f} MiB")
    print(f"verdict: {verdict}")
    write_outputs(args, samples, band, verdict.split(" (")[0])
    print(f"wrote {args.csv} and {args.out}")
    return 0 if passed and bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
