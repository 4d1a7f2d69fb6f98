"""The benchmark's load generator: a small asyncio HTTP/1.1 client, one event loop, no threads.

Each worker keeps one keep-alive connection and sends requests back to back; a stream's timings
are taken as its bytes arrive. bench/run.py runs each measured cell in a process of its own:

    python3 bench/loadgen.py --port P --request-file F --total N --concurrency C --marker M [--streams]

prints one JSON object (the cell's numbers, every latency, and this process's own CPU seconds), so
the measuring driver's own work (sampling processes, printing) never shares a process, or a GIL,
with the clock that times the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

TEXT_MARKER = b"piece-"  # every piece of reply text from bench/fastfake.py holds it


def build_request(
    host: str, port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None
) -> bytes:
    """The raw bytes of one request (built once per cell, then sent as is)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Reply:
    status: int
    body: bytes
    seconds: float  # the whole exchange: from sending to the last byte
    first_byte: float  # to the response's first bytes (status line)
    first_text: float | None  # to the first bytes of reply text (TEXT_MARKER)
    keep_alive: bool


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, on_head=None) -> Reply:
    """Send one request and read its whole response (Content-Length, chunked, or until close);
    on_head() is called as soon as the response's head is in."""
    started = time.perf_counter()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    first_byte = time.perf_counter() - started
    if on_head:
        on_head()
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip().lower() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    first_text = None
    if "chunked" in headers.get("transfer-encoding", ""):
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are sent here: just the final CRLF
                break
            data = (await reader.readexactly(size + 2))[:-2]
            if first_text is None and TEXT_MARKER in data:
                first_text = time.perf_counter() - started
            parts.append(data)
        body = b"".join(parts)
        keep = headers.get("connection") != "close"
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
        keep = headers.get("connection") != "close"
    else:
        body, keep = await reader.read(), False
    if first_text is None and TEXT_MARKER in body:
        first_text = time.perf_counter() - started
    return Reply(status, body, time.perf_counter() - started, first_byte, first_text, keep)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else float("nan")


@dataclass
class CellResult:
    rps: float
    p50: float  # milliseconds from here on
    p99: float
    ttfb: float
    text: float  # p50 to the first reply text
    errors: Counter = field(default_factory=Counter)
    cpu: float = 0.0  # CPU seconds the load generator used (set when it ran in a process of its own)


async def run_cell(
    host: str,
    port: int,
    request: bytes | Callable[[int], bytes],
    total: int,
    concurrency: int,
    done_marker: bytes,
) -> CellResult:
    """Send `total` copies of `request` from `concurrency` workers, each on its own keep-alive
    connection; a reply counts when it is a 200 whose body holds done_marker.

    request may be a function of the request's number (0, 1, ...) instead, e.g. to spread
    follow-ups over several conversations."""
    build = request if callable(request) else (lambda _number: request)
    left = total
    replies: list[Reply] = []
    errors: Counter = Counter()

    async def worker() -> None:
        nonlocal left
        conn = None
        while left > 0:
            number, left = total - left, left - 1
            try:
                if conn is None:
                    conn = await asyncio.open_connection(host, port)
                reply = await exchange(*conn, build(number))
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                errors[type(exc).__name__] += 1
                conn = close(conn)
                continue
            if reply.status != 200 or done_marker not in reply.body:
                errors[f"status {reply.status}" if reply.status != 200 else "incomplete"] += 1
            else:
                replies.append(reply)
            if not reply.keep_alive:
                conn = close(conn)
        close(conn)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = [r.seconds * 1000 for r in replies]
    texts = [r.first_text * 1000 for r in replies if r.first_text is not None]
    return CellResult(
        rps=len(replies) / elapsed,
        p50=statistics.median(ms) if ms else float("nan"),
        p99=percentile(ms, 0.99),
        ttfb=statistics.median(r.first_byte * 1000 for r in replies) if replies else float("nan"),
        text=statistics.median(texts) if texts else float("nan"),
        errors=errors,
    )


def close(conn):
    if conn is not None:
        conn[1].close()
    return None


@dataclass
class StreamsResult:
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    peak_open: int = 0  # streams that had begun (first byte in) and not yet ended, at most at once
    first_bytes: list[float] = field(default_factory=list)  # seconds from the start of the whole burst
    seconds: float = 0.0  # until the last stream ended


async def many_streams(
    host: str, port: int, request: bytes, count: int, done_marker: bytes, timeout: float, open_rate: float = 0
):
    """Open `count` streaming requests, each on its own new connection, and read them all: all at once, or
    open_rate a second (stream i starts i / open_rate seconds in)."""
    result = StreamsResult()
    open_now = 0
    started = time.perf_counter()

    async def one(number: int) -> None:
        nonlocal open_now
        conn, begun = None, False
        if open_rate:
            await asyncio.sleep(max(0.0, started + number / open_rate - time.perf_counter()))

        def head_in() -> None:
            nonlocal open_now, begun
            result.first_bytes.append(time.perf_counter() - started)
            begun, open_now = True, open_now + 1
            result.peak_open = max(result.peak_open, open_now)

        try:
            conn = await asyncio.open_connection(host, port)
            reply = await exchange(*conn, request, head_in)
            if reply.status != 200:
                result.errors[f"status {reply.status}"] += 1
            elif done_marker not in reply.body:
                result.errors["incomplete"] += 1
            else:
                result.ok += 1
        except ConnectionRefusedError:
            result.errors["refused"] += 1
        except (ConnectionResetError, BrokenPipeError):
            result.errors["reset"] += 1
        except asyncio.IncompleteReadError:
            result.errors["incomplete"] += 1
        except (OSError, asyncio.LimitOverrunError, ValueError) as exc:
            result.errors[type(exc).__name__] += 1
        finally:
            if begun:
                open_now -= 1
            close(conn)

    async def guarded(number: int) -> None:
        try:
            await asyncio.wait_for(one(number), timeout + (number / open_rate if open_rate else 0))
        except TimeoutError:
            result.errors["timeout"] += 1

    await asyncio.gather(*(guarded(number) for number in range(count)))
    result.seconds = time.perf_counter() - started
    return result


async def timed_get(host: str, port: int, path: str, timeout: float) -> float | None:
    """One GET on a new connection; its milliseconds, or None when it failed or timed out."""
    conn = None
    try:
        conn = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        request = build_request(host, port, "GET", path, headers={"Connection": "close"})
        reply = await asyncio.wait_for(exchange(*conn, request), timeout)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
        return None
    finally:
        close(conn)
    return reply.seconds * 1000 if reply.status == 200 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--request-file", required=True, help="the raw request, sent as it is")
    parser.add_argument("--total", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--marker", required=True, help="what a complete answer holds")
    parser.add_argument("--warm", type=int, default=2, help="requests per connection, first, not counted")
    parser.add_argument("--streams", action="store_true", help="open --total streams at once, each on a connection")
    parser.add_argument("--timeout", type=float, default=180, help="seconds before a stream counts as failed")
    parser.add_argument("--open-rate", type=float, default=0, help="streams opened a second (0: all at once)")
    args = parser.parse_args()
    request = open(args.request_file, "rb").read()  # noqa: SIM115 - read whole, at once
    marker = args.marker.encode()
    if args.streams:
        go()
        cpu = time.process_time()
        streamed = asyncio.run(
            many_streams(args.host, args.port, request, args.total, marker, args.timeout, args.open_rate)
        )
        out = {**streamed.__dict__, "errors": dict(streamed.errors), "cpu": time.process_time() - cpu}
    else:
        if args.warm:
            asyncio.run(run_cell(args.host, args.port, request, args.warm * args.concurrency, args.concurrency, marker))
        go()
        cpu = time.process_time()
        result = asyncio.run(run_cell(args.host, args.port, request, args.total, args.concurrency, marker))
        out = {**result.__dict__, "errors": dict(result.errors), "cpu": time.process_time() - cpu}
    json.dump(out, sys.stdout)


def go() -> None:
    """Say "ready" and wait for "go" on stdin, so the driver starts its CPU meters when the clock starts."""
    print("ready", flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
