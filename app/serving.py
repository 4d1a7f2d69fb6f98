"""What main.py hands gunicorn: its workers and its logger, hardened.

- `GeventWorker` (server.worker_class "gevent") bounds the connections one client address may
  hold in a worker (`max_connections_per_address`; over it: a short 429 and the socket closed), and
  bounds reading a request head even when keep-alive is off (gunicorn bounds it by `keepalive`
  only when keep-alive is on).
- Both workers answer gunicorn's own errors (414, 431, a malformed request line or header) with
  the JSON every other error has, and log them in one line that never holds the request line.
- `Logger` and `RedactFilter` keep keys out of every log: query strings after a path, `name=value`
  for the parameters that carry keys, `Bearer …`, and anything shaped like our keys (`cas-…`) or
  OpenAI's (`sk-…`) are replaced, in messages and in exception text alike.
- `OneSendResponse` sends a response's head with the first piece of its body (one packet for a small
  answer), and `Logger.access` writes the access line from its seven fields, not from gunicorn's
  dictionary of every header (issue 13's profile).
- Metrics across workers (app/metrics.py): `configure` switches prometheus_client to multiprocess
  mode in the master before it forks, and `MetricsHooks.check_config` (gunicorn calls it in the
  master) adds a child_exit hook that drops a dead worker's in-flight gauge.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import re
import select
import socket
import ssl
import sys
import time
import traceback
from collections import Counter
from datetime import datetime

import gevent
from gevent.monkey import get_original
from gunicorn import glogging, util
from gunicorn.http import errors as http_errors
from gunicorn.http import wsgi
from gunicorn.http.message import MAX_REQUEST_LINE
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers import ggevent, gthread

from app import metrics
from app.errors import error_body

# gunicorn's request line limit, at its maximum (gunicorn refuses anything larger).
REQUEST_LINE_LIMIT = MAX_REQUEST_LINE  # 8190 bytes: method, path, query string and version
DRAIN_BYTES = 65536  # read and dropped after an error answer, so closing does not reset the connection

# -- keeping keys out of logs -------------------------------------------------------------------

REDACTED = "[redacted]"
_PATTERNS = [
    # a query string after a path: "/api/chat?user=KEY" (a request line, a URL, a repr of either)
    (re.compile(r"(/[^\s?#'\"]*)\?[^\s'\"]+"), r"\1?" + REDACTED),
    # the parameters that carry keys, wherever they stand: user=KEY, api_key=KEY, "api_key": "KEY"
    (
        re.compile(
            r"(?i)(?<![A-Za-z0-9_])(user|api_key|apikey|key|client|admin|admin_key|access_token|session_token|token|password|secret)=[^\s&'\"]*"
        ),
        r"\1=" + REDACTED,
    ),
    (
        re.compile(
            r"(?i)([\"'](?:api_key|apikey|admin_key|access_token|session_token|token|password|secret)[\"']\s*:\s*)[\"'][^\"']*[\"']"
        ),
        r"\1'" + REDACTED + "'",
    ),
    (re.compile(r"(?i)(authorization\s*:\s*)[^\r\n'\"]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)\bbearer\s+[^\s'\",]+"), "Bearer " + REDACTED),
    # our keys (cas-…) and OpenAI's (sk-…), wherever they appear
    (re.compile(r"(?<![A-Za-z0-9])(cas|sk)-[A-Za-z0-9_-]{6,}"), r"\1-" + REDACTED),
]


def redact(text: str) -> str:
    """Return text with query strings, key-carrying parameters and key-shaped words replaced."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactFilter(logging.Filter):
    """A handler filter: the message, the exception text and the stack are redacted before formatting."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format: let the handler report it as it would
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def redact_handlers(*loggers: logging.Logger) -> None:
    """Put a RedactFilter on every handler of the given loggers (the root logger if none)."""
    for logger in loggers or (logging.getLogger(),):
        for handler in logger.handlers:
            if not any(isinstance(f, RedactFilter) for f in handler.filters):
                handler.addFilter(RedactFilter())


class RedactingStream:
    """A text stream that redacts what it is given (gevent prints greenlet errors straight to stderr)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(redact(text))

    def flush(self) -> None:
        self.stream.flush()


# The access log names the path only: a key sent as ?user=KEY must never reach a log.
ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms %({x-request-id}o)s'


class Logger(glogging.Logger):
    """gunicorn's logger (server.logger_class), with every handler redacting keys."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        redact_handlers(self.error_log, self.access_log, logging.getLogger())

    def access(self, resp, req, environ, request_time) -> None:
        """The access line of ACCESS_LOG_FORMAT, made from its seven fields alone: gunicorn's own builds a
        dictionary of every header and environ entry for each line (about 60 µs a request)."""
        if self.cfg.access_log_format != ACCESS_LOG_FORMAT:
            super().access(resp, req, environ, request_time)
            return
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        request_id = next((v for k, v in resp.headers if k.lower() == "x-request-id"), "-")
        ms = request_time.seconds * 1000 + request_time.microseconds // 1000
        line = (
            f'{environ.get("REMOTE_ADDR", "-")} "{environ.get("REQUEST_METHOD")} {environ.get("PATH_INFO")}" '
            f"{status} {getattr(resp, 'sent', None)} {ms}ms {request_id}"
        )
        try:
            self.access_log.info(line)
        except Exception:
            self.error(traceback.format_exc())


class OneSendResponse(Response):
    """gunicorn's response, its head sent together with the first piece of its body: one send, one packet
    for a whole small answer instead of two (gunicorn sends the head on its own first)."""

    _held = None

    def send_headers(self):
        """gunicorn's head, kept for the first write (close() sends it alone if no body comes)."""
        if self.headers_sent:
            return
        lines = self.default_headers()
        lines.extend(f"{k}: {v}\r\n" for k, v in self.headers)
        self._held = util.to_bytestring("".join(lines) + "\r\n", "latin-1")
        self.headers_sent = True

    def _emit_body(self, data):
        head, self._held = self._held, None
        if head is None:
            super()._emit_body(data)
        elif self.chunked:
            util.write(self.sock, head + b"%X\r\n%s\r\n" % (len(data), data))
        else:
            util.write(self.sock, head + data)

    def _head_out(self) -> None:
        """Send the head now, alone (a file follows, or no body comes at all)."""
        self.send_headers()
        head, self._held = self._held, None
        if head:
            util.write(self.sock, head)

    def sendfile(self, respiter):
        self._head_out()
        return super().sendfile(respiter)

    def close(self):
        self._head_out()
        super().close()


# -- gunicorn's own error answers ---------------------------------------------------------------

HEADER_ERRORS = (
    http_errors.InvalidHeader,
    http_errors.InvalidHeaderName,
    http_errors.ObsoleteFolding,
    http_errors.InvalidSchemeHeaders,
)
CHUNK_ERRORS = (http_errors.InvalidChunkSize, http_errors.ChunkMissingTerminator, http_errors.InvalidChunkExtension)
REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    414: "URI Too Long",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
}


# gunicorn's errors before the app runs, first match wins: (exception classes, status, code, message).
PLAIN_ERRORS = [
    (http_errors.InvalidRequestLine, 400, "bad_request", "the request line is malformed"),
    (http_errors.InvalidRequestMethod, 400, "bad_request", "the request method is malformed"),
    (
        http_errors.InvalidHTTPVersion,
        400,
        "bad_request",
        "the HTTP version is not supported (send HTTP/1.1 or HTTP/1.0)",
    ),
    (HEADER_ERRORS, 400, "bad_request", "a request header is malformed"),
    (CHUNK_ERRORS, 400, "bad_request", "request body is malformed: bad chunked encoding"),
    (
        (http_errors.InvalidProxyLine, http_errors.InvalidProxyHeader, http_errors.InvalidH2CPreface),
        400,
        "bad_request",
        "the connection's preface is malformed",
    ),
    (
        http_errors.UnsupportedTransferCoding,
        501,
        "not_implemented",
        "the request's Transfer-Encoding is not supported (send chunked or none)",
    ),
    (
        http_errors.ExpectationFailed,
        417,
        "expectation_failed",
        "the request's Expect header cannot be met (only 100-continue is)",
    ),
    (http_errors.ForbiddenProxyRequest, 403, "forbidden", "PROXY protocol is not accepted from this address"),
    (ssl.SSLError, 403, "forbidden", "TLS error"),
    (gevent.Timeout, 408, "request_timeout", "request headers not received in time"),
]


def describe(exc: BaseException, cfg) -> tuple[int, str, str]:
    """(status, code, message) for an error gunicorn met before the app ran. The message never quotes the request."""
    if isinstance(exc, http_errors.LimitRequestLine):
        return (
            414,
            "uri_too_long",
            f"the request line is longer than {REQUEST_LINE_LIMIT} bytes; "
            "send long prompts by POST (a JSON or form body)",
        )
    if isinstance(exc, http_errors.LimitRequestHeaders):
        return (
            431,
            "request_header_fields_too_large",
            f"the request headers are too large (at most {cfg.limit_request_fields} header fields "
            f"of at most {cfg.limit_request_field_size} bytes each)",
        )
    for kinds, status, code, message in PLAIN_ERRORS:
        if isinstance(exc, kinds):
            return status, code, message
    return 500, "internal_error", "the server hit an unexpected error; it has been logged"


def error_answer(status: int, code: str, message: str, extra_headers: str = "") -> bytes:
    """A whole HTTP/1.1 answer carrying our JSON error body; the connection closes after it."""
    body = json.dumps(error_body(status, code, message)).encode()
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra_headers}\r\n"
    )
    return head.encode("latin-1") + body


def drain(sock) -> None:
    """Say we are done writing, and drop what the client already sent, without waiting for more.

    Closing a socket with unread bytes makes the kernel reset the connection, which can lose the
    answer just written before the client reads it. Never waits: a refusal must stay cheap."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.setblocking(False)
        drained = 0
        while drained < DRAIN_BYTES:
            data = sock.recv(DRAIN_BYTES)
            if not data:
                break
            drained += len(data)
    except OSError:  # nothing more buffered (EAGAIN), or the client is gone: either way, done
        pass


class JsonErrors:
    """Mixin for gunicorn workers: their own error answers in our JSON shape, logged in one line."""

    def handle_error(self, req, client, addr, exc):
        request_start = datetime.now()
        addr = addr or ("", -1)  # a unix socket
        status, code, message = describe(exc, self.cfg)
        if status == 500:
            known = hasattr(req, "method") and hasattr(req, "path")
            where = f"{req.method} {req.path}" if known else "(no request read)"  # the path: never the query
            self.log.exception("Error handling request %s", where)
        elif status == 408:
            self.log.info("Request headers from ip=%s not received in time; connection closed", addr[0])
        else:
            detail = ""
            if isinstance(exc, (http_errors.LimitRequestLine, http_errors.LimitRequestHeaders)):
                detail = f" ({redact(str(exc))[:200]})"  # sizes only
            self.log.warning("Invalid request from ip=%s: %s [%s]%s", addr[0], message, type(exc).__name__, detail)
            if req is None and isinstance(exc, HEADER_ERRORS):
                req = getattr(exc, "req", None)  # for the access log
        if req is not None:
            try:
                environ = default_environ(req, client, self.cfg)
                environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = addr[0], str(addr[1])
                resp = Response(req, client, self.cfg)
                resp.status = f"{status} {REASONS.get(status, 'Error')}"
                resp.response_length = 0
                self.log.access(resp, req, environ, datetime.now() - request_start)
            except Exception:
                self.log.debug("Could not log the refused request.")
        try:
            util.write_nonblock(client, error_answer(status, code, message))
            drain(client)
        except Exception:
            self.log.debug("Failed to send error message.")


# -- the workers --------------------------------------------------------------------------------


_blocking_poll = get_original("select", "poll")  # a timer's callback must not yield to the hub


def _bytes_waiting(sock) -> bool:
    """True if sock has something unread (a request, or the caller's close); never yields to the hub."""
    try:
        poller = _blocking_poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed already
        return False


class IdleTimeout(gevent.Timeout):
    """gunicorn's silent keep-alive timer, except that it lets go of idle connections only.

    gunicorn reads every request on a connection, the first one included, under a silent
    gevent.Timeout(keepalive). A burst of requests can hold a worker's event loop for seconds
    (a turn runs to its end without yielding, SQLite's waits for the other worker's write lock
    included); when the loop comes back, a timer that ran out meanwhile and a request that arrived
    meanwhile are due together, and the timer went first: the connection was closed with the
    request unread (the caller saw a reset, nothing was logged: 3 of 800 streams). A timer that runs
    out while bytes wait to be read starts again, and the read takes them.
    """

    def __init__(self, seconds: float, sock):
        super().__init__(seconds, False)
        self.sock = sock

    def _on_expiration(self, prev_greenlet, ex):
        if self.sock is not None and _bytes_waiting(self.sock):
            self.timer.start(self._on_expiration, prev_greenlet, ex, update=True)
        else:
            super()._on_expiration(prev_greenlet, ex)


class MetricsHooks:
    """Mixin for gunicorn workers: when the master checks the worker class (Arbiter.setup, before any
    worker forks), it also gets a child_exit hook that drops a dead worker's in-flight gauge from the
    metrics (app/metrics.py), whatever killed the worker."""

    @classmethod
    def check_config(cls, cfg, log):
        parent = getattr(super(), "check_config", None)
        if parent is not None:
            parent(cfg, log)
        before = cfg.child_exit
        if getattr(before, "marks_metrics", False):
            return

        def child_exit(server, worker):
            metrics.process_dead(worker.pid)
            before(server, worker)

        child_exit.marks_metrics = True
        cfg.set("child_exit", child_exit)

    def init_process(self):
        metrics.warm()  # this worker's metric files are made now, not during its first requests
        super().init_process()

    def load_wsgi(self):
        """Load the app, then freeze what loading made (modules, the app, its settings): a full garbage
        collection never walks it again, so none pauses a worker's requests for tens of milliseconds."""
        super().load_wsgi()
        gc.collect()
        gc.freeze()


class GeventWorker(MetricsHooks, JsonErrors, ggevent.GeventWorker):
    """gunicorn's gevent worker with a per-address connection limit, JSON errors, and a keep-alive
    timer that never closes a connection whose request has arrived."""

    # Set by configure() in the master before it forks; workers inherit them.
    max_connections_per_address = 256
    head_timeout = 30.0
    refusal_log_interval = 60.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.open_by_address: Counter[str] = Counter()
        self.refusals_logged: dict[str, float] = {}
        self.head_timers: dict = {}
        self.clients: dict = {}  # greenlet -> the connection it serves, for IdleTimeout

    def timeout_ctx(self):
        return IdleTimeout(self.cfg.keepalive, self.clients.get(gevent.getcurrent()))

    def run(self):
        gevent.get_hub().exception_stream = RedactingStream(sys.stderr)
        super().run()

    def handle(self, listener, client, addr):
        address = addr[0] if isinstance(addr, tuple) and addr else None
        limit = self.max_connections_per_address
        if address is not None and limit > 0 and self.open_by_address[address] >= limit:
            self.refuse(client, address)
            return
        timer = None
        if not self.cfg.keepalive:
            # gunicorn reads a request head within `keepalive` seconds only when keep-alive is on;
            # with it off, bound the head here (handle_request stops the timer once it is read).
            timer = gevent.Timeout(self.head_timeout)
            self.head_timers[gevent.getcurrent()] = timer
            timer.start()
        if address is not None:
            self.open_by_address[address] += 1
        me = gevent.getcurrent()
        self.clients[me] = client
        try:
            super().handle(listener, client, addr)
        finally:
            self.clients.pop(me, None)
            if timer is not None:
                timer.close()
                self.head_timers.pop(gevent.getcurrent(), None)
            if address is not None:
                self.open_by_address[address] -= 1
                if self.open_by_address[address] <= 0:
                    del self.open_by_address[address]

    def handle_request(self, listener_name, req, sock, addr):
        timer = self.head_timers.pop(gevent.getcurrent(), None) if self.head_timers else None
        if timer is not None:
            timer.close()
        return super().handle_request(listener_name, req, sock, addr)

    def refuse(self, client, address: str) -> None:
        """Answer 429 at once and close: this address already holds its share of the worker."""
        limit = self.max_connections_per_address
        now = time.monotonic()
        if now - self.refusals_logged.get(address, -1e9) >= self.refusal_log_interval:
            self.refusals_logged[address] = now  # one line a minute per address, however many are refused
            if len(self.refusals_logged) > 10000:
                self.refusals_logged.clear()
            self.log.warning(
                "Refusing connections from ip=%s: it already holds %d open connections to this worker", address, limit
            )
        message = (
            f"too many open connections from this address (at most {limit} per server process); close some and retry"
        )
        try:
            client.setblocking(False)
            client.send(error_answer(429, "too_many_connections", message, "Retry-After: 1\r\n"))
            drain(client)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EAGAIN):
                self.log.debug("Could not send the 429: %s", exc)
        finally:
            util.close(client)


class ThreadWorker(MetricsHooks, JsonErrors, gthread.ThreadWorker):
    """gunicorn's threaded worker with JSON errors (its connections are bounded by worker_connections)."""


def pre_request(worker, req) -> None:
    """gunicorn's pre_request hook: let the body know its request, so a refused body can close the
    connection with Connection: close (app/limits.py sets req.must_close)."""
    worker.log.debug("%s %s", req.method, req.path)  # gunicorn's own pre_request
    if req.body is not None:
        req.body.req = req


def configure(settings: dict) -> None:
    """Hand the workers their limits from settings (called in the master, before the workers fork)."""
    GeventWorker.max_connections_per_address = int(settings["max_connections_per_address"])
    GeventWorker.head_timeout = float(settings["body_timeout"])
    wsgi.Response = OneSendResponse  # what gunicorn's wsgi.create() makes for every request, in every worker
    metrics.use_multiprocess()  # each worker writes its metrics to files of its own; a scrape sums them all


def worker_class_path(kind: str) -> str:
    """The gunicorn worker class for server.worker_class."""
    return "app.serving.GeventWorker" if kind == "gevent" else "app.serving.ThreadWorker"
