"""An independent open-loop load generator process (used by bench/soak.py and bench/sweep.py).

    python3 bench/loadproc.py --host 127.0.0.1 --port P --request-file F --rate R --seconds S \\
        [--concurrency C] --marker BYTES --out results.jsonl
    python3 bench/loadproc.py ... --streams N [--rate OPENS_PER_S] --seconds S --marker 'data: [DONE]'

--request-file holds one raw HTTP/1.1 request (head and body, as bench/loadgen.py's build_request
makes it), sent as is on keep-alive connections. A reply is ok when it is a 200 whose body holds
--marker.

Rate mode (the default): request i is due at start + i/R, whatever happened to the earlier ones
(open loop: a slow server does not slow the sending down). At most --concurrency requests are in
flight, each on its own keep-alive connection (one idle for more than --idle-seconds is closed
rather than reused: the server may have closed it); a request that cannot start within 10 ms of
when it was due (every connection busy, or this process was itself late) is counted as "late" and
sent as soon as it can be.

Streams mode (--streams N): N slots, opened at --rate new connections per second, each sending the
request again on its connection as soon as its reply ended, until --seconds: so N streams stay open.

Output, one JSON line per second of the run (flushed as written, so a driver may tail it):
  {"t": 3, "sent": 20, "ok": 20, "errors": {"status 503": 1}, "late": 0, "p50": 4.1, "p99": 9.8,
   "in_flight": 2, "connections": 4, "open": 0, "opened": 0}
t is the second since the start (1 = the first second); sent/late count the requests started in
that second, ok/errors/p50/p99 (ms, from sending to the reply's last byte) those that ended in it;
in_flight, connections and open (streams mode: replies whose head is in and whose end is not) are
taken at the end of the second, and opened (streams mode) is how many of the N slots have had a
reply's head in so far (a slot sending its next stream on the same connection stays counted).
A last line {"done": true, "seconds": ..., "sent": ..., "ok": ..., "errors": {...}, "late": ...}
holds the totals. SIGTERM or SIGINT end the run early (the totals are still written).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402

LATE = 0.010  # seconds after its due time a request counts as started late
ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)


class Second:
    def __init__(self):
        self.sent = self.ok = self.late = 0
        self.errors: Counter = Counter()
        self.ms: list[float] = []


class Run:
    def __init__(self, args):
        self.args = args
        self.request = Path(args.request_file).read_bytes()
        self.marker = args.marker.encode()
        self.started = time.perf_counter()
        self.deadline = self.started + args.seconds
        self.now = Second()
        self.totals = Counter()
        self.total_errors: Counter = Counter()
        self.in_flight = self.connections = self.open = self.opened = 0
        self.idle: list = []  # keep-alive connections free for the next request
        self.stopping = asyncio.Event()

    def ended(self, reply: loadgen.Reply | None, error: str | None) -> None:
        if error is None and reply.status != 200:
            error = f"status {reply.status}"
        elif error is None and self.marker not in reply.body:
            error = "incomplete"
        if error:
            self.now.errors[error] += 1
            self.total_errors[error] += 1
        else:
            self.now.ok += 1
            self.totals["ok"] += 1
            self.now.ms.append(reply.seconds * 1000)

    async def one(self, due: float) -> None:
        """Rate mode: send one request on an idle connection (or a new one)."""
        self.in_flight += 1
        conn = None
        while self.idle and conn is None:  # the most recently used first: the others may go stale
            conn, since = self.idle.pop()
            if conn[0].at_eof() or time.perf_counter() - since > self.args.idle_seconds:
                self.drop(conn)  # the server closes idle keep-alive connections (its keepalive, 5 s)
                conn = None
        if time.perf_counter() - due > LATE:
            self.now.late += 1
            self.totals["late"] += 1
        self.now.sent += 1
        self.totals["sent"] += 1
        reply = error = None
        try:
            if conn is None:
                conn = await asyncio.open_connection(self.args.host, self.args.port)
                self.connections += 1
            reply = await loadgen.exchange(*conn, self.request)
        except ERRORS as exc:
            error = type(exc).__name__
        self.ended(reply, error)
        if error or not reply.keep_alive:
            self.drop(conn)
        else:
            self.idle.append((conn, time.perf_counter()))
        self.in_flight -= 1
        self.slots.release()

    def drop(self, conn) -> None:
        if conn is not None:
            loadgen.close(conn)
            self.connections -= 1

    async def rate_mode(self) -> None:
        self.slots = asyncio.Semaphore(self.args.concurrency)
        tasks = set()
        number = 0
        while not self.stopping.is_set():
            due = self.started + number / self.args.rate
            if due >= self.deadline:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                continue
            await self.slots.acquire()  # every connection busy: this one (and the next) will be late
            task = asyncio.create_task(self.one(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            number += 1
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.args.grace)
            if pending:  # no reply within --grace after the end: counted, then cut
                self.now.errors["unfinished"] += len(pending)
                self.total_errors["unfinished"] += len(pending)
                for task in pending:
                    task.cancel()

    async def slot(self, start_at: float) -> None:
        """Streams mode: one connection sending the stream request back to back."""
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        conn, first = None, True
        while not self.stopping.is_set() and time.perf_counter() < self.deadline:
            begun = False

            def head_in() -> None:
                nonlocal begun, first
                begun, self.open = True, self.open + 1
                if first:
                    first, self.opened = False, self.opened + 1

            reply = error = None
            self.now.sent += 1
            self.totals["sent"] += 1
            self.in_flight += 1
            try:
                if conn is None:
                    conn = await asyncio.open_connection(self.args.host, self.args.port)
                    self.connections += 1
                reply = await loadgen.exchange(*conn, self.request, head_in)
            except ERRORS as exc:
                error = type(exc).__name__
            finally:
                self.in_flight -= 1
                if begun:
                    self.open -= 1
            self.ended(reply, error)
            if error or not reply.keep_alive:
                self.drop(conn)
                conn = None
                if error:
                    await asyncio.sleep(0.5)  # do not spin on a refusing server
        self.drop(conn)

    async def streams_mode(self) -> None:
        step = 1 / self.args.rate
        tasks = [asyncio.create_task(self.slot(self.started + i * step)) for i in range(self.args.streams)]
        stopped = asyncio.create_task(self.stopping.wait())
        every = asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.wait([stopped, every], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:  # stopped early (the streams still open are cut, not counted), or all ended
            task.cancel()
        await every
        stopped.cancel()

    async def report(self, out) -> None:
        second = 0
        while True:
            second += 1
            await asyncio.sleep(max(0.0, self.started + second - time.perf_counter()))
            self.write(out, second)

    def write(self, out, second: int) -> None:
        now, self.now = self.now, Second()
        line = {"t": second, "sent": now.sent, "ok": now.ok, "errors": dict(now.errors), "late": now.late}
        line["p50"] = round(loadgen.percentile(now.ms, 0.5), 2) if now.ms else None
        line["p99"] = round(loadgen.percentile(now.ms, 0.99), 2) if now.ms else None
        line |= {"in_flight": self.in_flight, "connections": self.connections, "open": self.open}
        line["opened"] = self.opened
        out.write(json.dumps(line) + "\n")
        out.flush()

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        with open(self.args.out, "w") as out:
            reporter = asyncio.create_task(self.report(out))
            await (self.streams_mode() if self.args.streams else self.rate_mode())
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            elapsed = time.perf_counter() - self.started
            if self.now.sent or self.now.ok or self.now.errors:
                self.write(out, int(elapsed) + 1)  # the part second at the end
            for conn, _ in self.idle:
                loadgen.close(conn)
            totals = {"done": True, "seconds": round(elapsed, 3), "sent": self.totals["sent"]}
            totals |= {"ok": self.totals["ok"], "errors": dict(self.total_errors), "late": self.totals["late"]}
            out.write(json.dumps(totals) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--request-file", required=True, help="one raw HTTP/1.1 request")
    parser.add_argument("--rate", type=float, required=True, help="requests per second (streams mode: opens per s)")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--concurrency", type=int, default=256, help="rate mode: most requests in flight")
    parser.add_argument("--streams", type=int, default=0, help="streams mode: keep N streams open")
    parser.add_argument("--marker", required=True, help="bytes every good reply body holds")
    parser.add_argument("--idle-seconds", type=float, default=2, help="rate mode: drop connections idle longer")
    parser.add_argument("--grace", type=float, default=30, help="seconds to wait for the last replies")
    parser.add_argument("--out", required=True, help="the JSON lines file")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # streams mode holds one socket per stream
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))

    async def run() -> None:
        await Run(args).main()

    asyncio.run(run())


if __name__ == "__main__":
    main()
