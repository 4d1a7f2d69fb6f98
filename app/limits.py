"""Bound every request body: in time (body_timeout), in shape (a malformed or cut body is a 400) and in size.

`BodyGuard` wraps the WSGI app so every read of a body (Werkzeug's form and JSON parsing, the
chunked reader below) goes through `GuardedInput`: the whole body must arrive within
`body_timeout` seconds of the request reaching the app, however it trickles in (a total deadline,
not one per read); a malformed chunked body, or one that ends before its length, is a 400 named
as such and logged in one line. After any of these the connection is closed (where the next
request would start is unknown).
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import threading
import time

from flask import Flask, request
from werkzeug.exceptions import RequestEntityTooLarge

from app.cooperative import under_gevent
from app.errors import AppError, BadRequest

log = logging.getLogger(__name__)


class BodyTimeout(AppError):
    status, code = 408, "request_timeout"


class MalformedBody(BadRequest):
    pass


def _gunicorn_errors() -> tuple[tuple, tuple]:
    """(errors of a malformed body, the error of a body cut short) as gunicorn raises them."""
    try:
        from gunicorn.http import errors as g
    except ImportError:  # pragma: no cover - served by something else
        return (), ()
    malformed = (g.InvalidChunkSize, g.ChunkMissingTerminator, g.InvalidChunkExtension, g.InvalidHeader)
    malformed += (g.InvalidHeaderName, g.LimitRequestHeaders, g.ObsoleteFolding)
    return malformed, (g.NoMoreData,)


MALFORMED, CUT = _gunicorn_errors()
WHAT = {
    "InvalidChunkSize": "bad chunk size",
    "ChunkMissingTerminator": "chunk not followed by CRLF",
    "InvalidChunkExtension": "bad chunk extension",
    "LimitRequestHeaders": "trailer section too large",
}


def _gevent_timeout():
    """gevent.Timeout in a gevent worker (main.py's default), else None."""
    if not under_gevent():
        return None
    from gevent import Timeout

    return Timeout


class GuardedInput:
    """wsgi.input whose reads share one deadline and whose failures are our 400/408 errors."""

    def __init__(self, stream, environ: dict, timeout: float, gevent_timeout):
        self.stream, self.environ, self.timeout = stream, environ, timeout
        self.deadline = time.monotonic() + timeout
        self.gevent_timeout = gevent_timeout
        self.socket = environ.get("gunicorn.socket")
        try:
            self.length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            self.length = None
        self.received = 0
        self.watchdog: threading.Timer | None = None
        self.expired = False
        self.finished = False  # the body was read to its end
        self.chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()

    # -- the file interface Werkzeug and the WSGI spec use ---------------------------------

    def read(self, size: int | None = -1) -> bytes:
        want = self._wanted(size)
        data = self._call(self.stream.read, size)
        self._count(data, short=want is not None and len(data) < want)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        data = self._call(self.stream.readline, size)
        wanted = self._wanted(size)
        ended = not data.endswith(b"\n") and (wanted is None or len(data) < wanted)
        self._count(data, short=ended and self.length is not None)
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines, total = [], 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def close(self) -> None:
        close = getattr(self.stream, "close", None)
        if close:
            close()

    # -- the guard ------------------------------------------------------------------------

    def _wanted(self, size: int | None) -> int | None:
        """How many bytes a read of size must return for the body to be whole (None: unknown)."""
        if self.length is None:
            return None
        remaining = max(0, self.length - self.received)
        return remaining if size is None or size < 0 else min(size, remaining)

    def _count(self, data: bytes, short: bool) -> None:
        self.received += len(data)
        if not data or (self.length is not None and self.received >= self.length):
            self.finished = True
        if self.length is not None and self.received >= self.length:
            self.disarm()
        if short and self.length is not None and self.received < self.length:
            self._fail(MalformedBody(f"request body ended early (received {self.received} of {self.length} bytes)"))

    def _call(self, read, size):
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self._timed_out()
        try:
            data = self._read_within(remaining, read, size)
        except AppError:
            raise
        except CUT:
            self._check_expired()
            self._fail(MalformedBody("request body ended early"))
        except MALFORMED as exc:
            self._check_expired()
            if getattr(exc, "term", None) == b"":  # the connection ended where a chunk's CRLF belonged
                self._fail(MalformedBody("request body ended early"))
            self._fail(MalformedBody(f"request body is malformed: {WHAT.get(type(exc).__name__, 'bad trailer')}"))
        except OSError:  # reset by the client mid-upload
            self._check_expired()
            self._fail(MalformedBody("request body ended early"))
        self._check_expired()
        return data

    def _read_within(self, remaining: float, read, size):
        """read(size), cut off when the body's deadline passes."""
        if self.gevent_timeout is not None:  # gevent: the whole read call runs under one timer
            timer = self.gevent_timeout(remaining)
            timer.start()
            try:
                return read(size)
            except self.gevent_timeout as exc:
                if exc is not timer:
                    raise
                self._timed_out()
            finally:
                timer.close()
        # Threads: a socket timeout bounds one recv() only, and one read() makes as many as a trickle
        # needs; so a watchdog shuts the socket's reading side when the deadline passes (recv() then
        # returns at once) and the read is reported as timed out.
        if self.watchdog is None and self.socket is not None:
            self.watchdog = threading.Timer(remaining, self._expire)
            self.watchdog.daemon = True
            self.watchdog.start()
        return read(size)

    def _expire(self) -> None:
        self.expired = True
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RD)

    def _check_expired(self) -> None:
        if self.expired:
            self._timed_out()

    def disarm(self) -> None:
        """Stop the watchdog (the body is in, or the request is over)."""
        if self.watchdog is not None:
            self.watchdog.cancel()

    def close_if_unread(self) -> None:
        """A body the app left unread (a 404, a 405, /api/health) is not drained: gunicorn would read it
        to its end with no time or size limit, and a fast sender would hold the worker. The connection
        closes after the answer instead."""
        if self.finished or not (self.chunked or (self.length or 0) > self.received):
            return
        with contextlib.suppress(AttributeError):
            self.stream.req.must_close = True

    def _timed_out(self):
        seconds = f"{self.timeout:g}"
        self._fail(BodyTimeout(f"request body not received within {seconds}s"))

    def _fail(self, exc: AppError):
        """Log one line, make the server close this connection after answering, and raise exc."""
        self.disarm()
        environ = self.environ
        log.warning(
            "refused the body of %s %s from %s: %s",
            environ.get("REQUEST_METHOD"),
            environ.get("PATH_INFO"),
            environ.get("REMOTE_ADDR"),
            exc.message,
        )
        with contextlib.suppress(AttributeError):
            self.stream.failed = True  # gunicorn's Body: its parser then closes the connection
            self.stream.req.must_close = True  # and the answer says so (app/serving.py's pre_request)
        raise exc


class BodyGuard:
    """WSGI middleware: the app reads its body through a GuardedInput."""

    def __init__(self, app, timeout: float):
        self.app, self.timeout = app, timeout
        self.gevent_timeout = None
        self.checked = False

    def __call__(self, environ, start_response):
        if not self.checked:  # decided on the first request, in the worker (after main.py patched)
            self.gevent_timeout, self.checked = _gevent_timeout(), True
        stream = environ.get("wsgi.input")
        if stream is None:
            return self.app(environ, start_response)
        guarded = environ["wsgi.input"] = GuardedInput(stream, environ, self.timeout, self.gevent_timeout)
        try:
            return self.app(environ, start_response)  # Flask has read what it reads of the body by now
        finally:
            guarded.disarm()
            guarded.close_if_unread()


def install(app: Flask) -> None:
    """Guard every body read (BodyGuard); read a chunked body up front, refusing it with 413 past max_body_bytes."""
    app.wsgi_app = BodyGuard(app.wsgi_app, float(app.config["SETTINGS"]["body_timeout"]))

    @app.before_request
    def _limit_chunked_body():
        if request.content_length is not None:
            return  # Werkzeug refuses an oversized declared length itself
        if "chunked" not in request.headers.get("Transfer-Encoding", "").lower():
            return
        limit = app.config["MAX_CONTENT_LENGTH"]
        stream, body = request.environ["wsgi.input"], bytearray()
        while len(body) <= limit:
            piece = stream.read(min(65536, limit + 1 - len(body)))
            if not piece:
                break
            body += piece
        if len(body) > limit:
            raise RequestEntityTooLarge()  # shaped like every 413, in errors.py
        # From here on the body is an ordinary one of known length.
        request.environ["wsgi.input"] = io.BytesIO(bytes(body))
        request.environ["CONTENT_LENGTH"] = str(len(body))
        request.environ.pop("HTTP_TRANSFER_ENCODING", None)
        request.environ.pop("wsgi.input_terminated", None)
        request.__dict__.pop("content_length", None)  # drop Werkzeug's cached None
