"""Measure what the server adds: the same chat straight to a fake upstream vs through the server.

    python bench/run.py [--requests 300] [--concurrency 1 8]

Starts a fake OpenAI-compatible upstream and the real server (`python main.py`, gunicorn) on
127.0.0.1, then for each concurrency sends the same number of chats (a) straight to the fake
and (b) through /api/chat, and prints requests/s, p50/p99 latency and the latency the server adds
(p50 through minus p50 direct). Ratios come from one run on one machine, so they compare fairly.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes import FakeOpenAI  # noqa: E402

ADMIN_KEY = "cas-bench-admin-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(folder: Path, upstream_url: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    settings = {
        "app_secret": "bench",
        "accounts": [{"name": "fake", "type": "openai", "base_url": upstream_url, "api_key": "sk-bench"}],
        "server": {"workers": 2, "threads": 32},
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    env = {**os.environ, "ADMIN_API_KEY": ADMIN_KEY}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "--settings", str(folder / "settings.json"), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            requests.get(url + "/api/health", timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


def load(send, total: int, concurrency: int) -> dict:
    """Send total requests with concurrency workers; return throughput and latency figures."""

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()

    fake = FakeOpenAI().start()
    fake.chunk_size = 64
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": True}
    with tempfile.TemporaryDirectory() as folder:
        proc, url = start_server(Path(folder), fake.url)
        try:

            def direct(session):
                return session.post(fake.url + "/chat/completions", json=body, timeout=30)

            def through(session):
                return session.post(
                    url + "/api/chat",
                    json={"prompt": "hello"},
                    headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                    timeout=30,
                )

            load(through, 20, 2)  # warm up both workers
            print(f"{'route':<22}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'added p50 ms':>14}")
            for concurrency in args.concurrency:
                base = load(direct, args.requests, concurrency)
                ours = load(through, args.requests, concurrency)
                print(
                    f"{'fake upstream direct':<22}{concurrency:>5}{base['rps']:>9.0f}{base['p50']:>9.2f}"
                    f"{base['p99']:>9.2f}{'':>14}"
                )
                print(
                    f"{'/api/chat via server':<22}{concurrency:>5}{ours['rps']:>9.0f}{ours['p50']:>9.2f}"
                    f"{ours['p99']:>9.2f}{ours['p50'] - base['p50']:>14.2f}"
                )
        finally:
            proc.terminate()
            proc.wait(10)
            fake.stop()


if __name__ == "__main__":
    main()
