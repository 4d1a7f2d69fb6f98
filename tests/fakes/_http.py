"""Provide the HTTP/1.1 plumbing shared by the fake OpenAI and ChatGPT web servers."""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from ._common import HOST, BackgroundServer, TrackingServerMixin


class FakeHTTPServer(TrackingServerMixin, ThreadingHTTPServer):
    """Serve one fake on 127.0.0.1 with tracked, daemon handler threads."""

    def __init__(self, owner, handler_class) -> None:
        self.owner = owner
        self.init_tracking()
        super().__init__((HOST, 0), handler_class)

    def server_bind(self) -> None:
        """Bind without the reverse DNS lookup HTTPServer does."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class FakeHTTPService(BackgroundServer):
    """Hold the recorded requests and the server of one HTTP fake."""

    handler_class: type[BaseHTTPRequestHandler]
    url_path = ""
    chat_path: str | None = None  # the POST route counted by in_flight, max_in_flight and chat_count

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict] = []
        self.in_flight = 0  # chat requests read and not yet answered: each leaves just before its last bytes
        self.max_in_flight = 0  # peak of in_flight since start or reset_peak()
        self.chat_count = 0  # chat requests received

    def _make_server(self) -> FakeHTTPServer:
        return FakeHTTPServer(self, self.handler_class)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + self.url_path

    def record(self, entry: dict) -> None:
        """Append one request record, thread-safely."""
        with self._lock:
            self.requests.append(entry)

    def take_failure(self) -> int | None:
        """Return the status this request must fail with (self.fail_status), counting down fail_times."""
        with self._lock:
            status, times = getattr(self, "fail_status", None), getattr(self, "fail_times", None)
            if status is None or (times is not None and times <= 0):
                return None
            if times is not None:
                self.fail_times = times - 1
            return status

    def chat_started(self) -> None:
        """Count one chat request as received and in flight."""
        with self._lock:
            self.chat_count += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def chat_finished(self) -> None:
        """Count one chat request as answered or dropped."""
        with self._lock:
            self.in_flight -= 1

    def reset_peak(self) -> None:
        """Restart max_in_flight from the requests in flight now."""
        with self._lock:
            self.max_in_flight = self.in_flight

    def requests_to(self, path: str) -> list[dict]:
        """Return the recorded requests whose path is path."""
        with self._lock:
            return [r for r in self.requests if r["path"] == path]


class FakeUpstream(FakeHTTPService):
    """Hold the failure knobs that the fake OpenAI and ChatGPT web servers share."""

    default_fail_message = "fake failure"

    def __init__(self) -> None:
        super().__init__()
        self.reply_text = None  # str, or callable(body) -> str; None echoes the prompt
        self.chunk_size = 4
        self.delay = 0.0  # seconds to wait after reading a request, before any byte of the answer
        self.stream_delay = 0.0
        self.fail_status: int | None = None
        self.fail_message = self.default_fail_message
        self.fail_times: int | None = None  # None: fail every request while fail_status is set
        self.fail_headers: dict[str, str] = {}  # extra headers of a fail_status answer, e.g. Retry-After
        self.cut_after: int | None = None  # drop a streamed reply's connection after this many content chunks
        self.error_in_stream: str | None = None

    @property
    def hang(self) -> float:
        """Return the delay: seconds to wait after reading a request, before any byte of the answer."""
        return self.delay

    @hang.setter
    def hang(self, seconds: float) -> None:
        self.delay = seconds

    def retry_after_headers(self, retry_after: str | None) -> dict[str, str]:
        """Return the headers of a rate-limit answer."""
        return {} if retry_after is None else {"Retry-After": str(retry_after)}

    def heal(self) -> None:
        """Clear every failure knob: answer normally from now on."""
        with self._lock:
            self.fail_status, self.fail_times, self.fail_headers = None, None, {}
            self.fail_message = self.default_fail_message
            self.cut_after, self.delay, self.error_in_stream = None, 0.0, None


class FakeHandler(BaseHTTPRequestHandler):
    """Read JSON, answer JSON or a chunked event stream, keep connections alive."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small SSE writes must leave at once (no 40 ms delayed-ACK stalls)
    server_version = "FakeUpstream/1.0"
    sys_version = ""
    server: FakeHTTPServer
    _counted = False  # whether this request is counted in the owner's in_flight

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class names it so
        """Keep test output clean."""

    @property
    def owner(self):
        return self.server.owner

    @property
    def route(self) -> str:
        return urlsplit(self.path).path

    def read_body(self) -> bytes:
        """Read the request body, by Content-Length or chunked framing."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def read_and_record(self) -> tuple[dict, object]:
        """Read the body, record the request and return (record, parsed JSON or None)."""
        raw = self.read_body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        entry = {
            "method": self.command,
            "path": self.route,
            "query": urlsplit(self.path).query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        }
        self.owner.record(entry)
        if self.command == "POST" and self.route == self.owner.chat_path and not self._counted:
            self._counted = True
            self.owner.chat_started()
        return entry, body

    def bearer(self) -> str:
        """Return the bearer token of the request, or ""."""
        value = self.headers.get("Authorization", "")
        scheme, _, token = value.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""

    def pause(self, seconds: float | None) -> bool:
        """Sleep unless the server stops first; return False if it is stopping."""
        if seconds and seconds > 0:
            return not self.server.stopping.wait(seconds)
        return not self.server.stopping.is_set()

    def chat_done(self) -> None:
        """Stop counting this request in flight: just before its answer's last bytes, or when dispatch ends."""
        if self._counted:
            self._counted = False
            self.owner.chat_finished()

    def send_json(self, status: int, obj, headers: dict | None = None) -> None:
        """Answer a complete JSON document with Content-Length."""
        self.chat_done()
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def begin_stream(self) -> None:
        """Send the headers of a chunked text/event-stream answer."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def send_event(self, data, event: str | None = None) -> None:
        """Send one server-sent event as one chunk; data is JSON-encoded unless it is a str."""
        text = data if isinstance(data, str) else json.dumps(data)
        frame = (f"event: {event}\n" if event else "") + f"data: {text}\n\n"
        payload = frame.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))

    def end_stream(self) -> None:
        """Send the last chunk of a chunked answer."""
        self.chat_done()
        self.wfile.write(b"0\r\n\r\n")

    def drop_connection(self) -> None:
        """Close the connection at once, mid-answer: no last chunk, no more bytes."""
        self.chat_done()
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def send_response(self, code: int, message: str | None = None) -> None:
        self._responded = True
        super().send_response(code, message)

    def do_GET(self) -> None:
        self.safe_dispatch()

    def do_POST(self) -> None:
        self.safe_dispatch()

    def safe_dispatch(self) -> None:
        """Dispatch; a bug in the fake or in a test's reply_text callable becomes a 500 with a traceback."""
        self._responded = self._counted = False
        try:
            self.dispatch()
        except OSError:
            raise
        except Exception as exc:
            traceback.print_exc()
            if self._responded:
                self.close_connection = True
                return
            self.send_json(500, {"error": {"message": f"fake server error: {exc!r}"}, "detail": repr(exc)})
        finally:
            self.chat_done()

    def dispatch(self) -> None:
        raise NotImplementedError
