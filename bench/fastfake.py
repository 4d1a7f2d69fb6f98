"""A fast fake OpenAI-compatible upstream for the benchmark, meant to run in its own process.

    python bench/fastfake.py [--port 0]     # prints "port N" once it listens

Plain asyncio (one process, one thread, no framework) so it costs the machine as little as
possible. Any POST whose path ends in /chat/completions is answered:

- "stream": false  ->  one chat.completion JSON (Content-Length, keep-alive);
- "stream": true   ->  chunked text/event-stream: a role chunk, REPLY_PIECES content chunks, a
  finish chunk, a usage chunk, then `data: [DONE]`, all in one write.

The knob: when the last user message contains `slow:N:MS` the stream sends N content chunks, one
every MS milliseconds (so bench/run.py can hold 1,000 streams open at once). It works straight
and through the server alike, since the server passes the prompt on to the upstream.

For bench/failover.py:

    python bench/fastfake.py --name b --log arrivals-b.txt --fail-429 --retry-after 30

--name TAG ends every reply's text with ` @TAG`, so a caller that is not told the account (/v1)
can still tell which upstream answered; --log PATH writes one line per chat request as it
arrives, `<unix time> <status>`; --fail-429 answers every chat with OpenAI's 429 (its JSON error
body, `Retry-After: N` from --retry-after, keep-alive).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
import uuid

REPLY_PIECES = ["piece-1 ", "piece-2 ", "piece-3 ", "piece-4"]  # run.py looks for "piece-" as the first text
SLOW = re.compile(r"slow:(\d+):(\d+)")
RATE_LIMITED = {  # what api.openai.com answers past a rate limit
    "error": {
        "message": "Rate limit reached for fake-model in organization org-bench on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Please try again in 30s.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}


class Options:
    """The process's --name, --log and --fail-429 (set once in main)."""

    tag = ""
    log = None  # a line-buffered file
    fail_429 = False
    retry_after = 30


def chunk_frame(data: str) -> bytes:
    """One server-sent event as one HTTP chunk."""
    payload = f"data: {data}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def head(status: str, content_type: str, extra: str) -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra}\r\n".encode()


class Reply:
    """The frames of one answer; built from the parsed request body."""

    def __init__(self, body: dict):
        self.model = body.get("model") or "fake-model"
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        messages = body.get("messages") or []
        users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        last = users[-1] if users else ""
        found = SLOW.search(last) if isinstance(last, str) else None
        self.pieces = [f"piece-{i + 1} " for i in range(int(found[1]))] if found else list(REPLY_PIECES)
        if Options.tag:
            self.pieces[-1] += f" @{Options.tag}"
        self.delay = int(found[2]) / 1000 if found else 0.0
        self.usage = {"prompt_tokens": 3, "completion_tokens": len(self.pieces), "total_tokens": 3 + len(self.pieces)}

    def chunk(self, delta: dict, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        data = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        return chunk_frame(json.dumps({**data, "choices": [choice]}))

    def start(self) -> bytes:
        headers = head("200 OK", "text/event-stream; charset=utf-8", "Transfer-Encoding: chunked\r\n")
        return headers + self.chunk({"role": "assistant", "content": ""})

    def end(self) -> bytes:
        data = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        usage = chunk_frame(json.dumps({**data, "choices": [], "usage": self.usage}))
        return self.chunk({}, "stop") + usage + chunk_frame("[DONE]") + b"0\r\n\r\n"

    def whole(self) -> bytes:
        message = {"role": "assistant", "content": "".join(self.pieces)}
        data = json.dumps(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
                "usage": self.usage,
            }
        ).encode()
        return head("200 OK", "application/json", f"Content-Length: {len(data)}\r\n") + data


def simple(status: str, text: str) -> bytes:
    data = text.encode()
    return head(status, "text/plain", f"Content-Length: {len(data)}\r\n") + data


def rate_limited() -> bytes:
    data = json.dumps(RATE_LIMITED).encode()
    extra = f"Retry-After: {Options.retry_after}\r\nContent-Length: {len(data)}\r\n"
    return head("429 Too Many Requests", "application/json", extra) + data


class FakeProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, one request at a time per connection (no pipelining needed)."""

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""
        self.busy = False  # a slow stream is being written: later bytes wait in the buffer

    def data_received(self, data: bytes):
        self.buffer += data
        if not self.busy:
            self.serve()

    def serve(self):
        while not self.busy:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length") or 0)
            if len(self.buffer) < end + 4 + length:
                return  # the body is not all here yet
            raw, self.buffer = self.buffer[end + 4 : end + 4 + length], self.buffer[end + 4 + length :]
            method, path = (lines[0].split(" ") + ["", ""])[:2]
            self.handle(method, path, raw, headers.get("connection", "").lower() == "close")

    def handle(self, method: str, path: str, raw: bytes, close: bool):
        write = self.transport.write
        if method != "POST" or not path.split("?")[0].endswith("/chat/completions"):
            write(simple("404 Not Found", "not found"))
        elif Options.fail_429:
            self.arrived("429")
            write(rate_limited())
        else:
            try:
                body = json.loads(raw)
                reply = Reply(body)
            except (ValueError, AttributeError, TypeError):
                self.arrived("400")
                write(simple("400 Bad Request", "the body must be a JSON object"))
            else:
                self.arrived("200")
                if not body.get("stream"):
                    write(reply.whole())
                elif reply.delay:
                    self.busy = True
                    self.task = asyncio.ensure_future(self.slow_stream(reply, close))  # keep a reference
                    return
                else:
                    write(reply.start() + b"".join(reply.chunk({"content": p}) for p in reply.pieces) + reply.end())
        if close:
            self.transport.close()

    @staticmethod
    def arrived(status: str) -> None:
        """Log a chat request (its whole body is in, it is about to be answered) with --log."""
        if Options.log:
            Options.log.write(f"{time.time():.6f} {status}\n")

    async def slow_stream(self, reply: Reply, close: bool):
        try:
            self.transport.write(reply.start())
            for piece in reply.pieces:
                await asyncio.sleep(reply.delay)
                if self.transport.is_closing():
                    return  # the caller went away
                self.transport.write(reply.chunk({"content": piece}))
            self.transport.write(reply.end())
        finally:
            self.busy = False
        if close:
            self.transport.close()
        else:
            self.serve()


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(FakeProtocol, "127.0.0.1", port, backlog=4096)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--name", default="", help="end every reply with ' @NAME'")
    parser.add_argument("--log", help="append '<unix time> <status>' for every chat request as it arrives")
    parser.add_argument("--fail-429", action="store_true", help="answer every chat with 429 rate_limit_exceeded")
    parser.add_argument("--retry-after", type=int, default=30, help="the 429's Retry-After, in seconds")
    args = parser.parse_args()
    Options.tag, Options.fail_429, Options.retry_after = args.name, args.fail_429, args.retry_after
    if args.log:
        Options.log = open(args.log, "a", buffering=1)  # noqa: SIM115 - open for the life of the process
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
