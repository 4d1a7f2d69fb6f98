"""The HTTP helper every upstream shares: proxy, timeouts, pooled connections, error mapping.

Failures become the app's own errors with messages a user can act on, and never carry the
account's key or its proxy password: upstream messages are scrubbed before they are passed on.

It speaks through urllib3's pools directly (a SOCKS or HTTP proxy through urllib3's own proxy
managers): requests' Session, built over the same pools, cost about 300 µs of each call in merging
settings and preparing the request (issue 13's profile). Bodies are asked for uncompressed
(`Accept-Encoding: identity`), since they are read raw, event by event.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import io
import json
import logging
import math
import re
import time
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import urllib3
from urllib3.exceptions import ProxyError, ReadTimeoutError

from app.cooperative import Pacer
from app.errors import StreamCut, UpstreamError, UpstreamRejected, UpstreamTimeout

MAX_ERROR_BODY = 4096
READ_SIZE = 65536
STREAM_LINES = 64  # one answer may carry this many full-length lines' worth of bytes at most
FRAGMENT = 8  # a run this long of a secret is redacted wherever it shows (an echo cut short is still a leak)
# What sending, or reading a body, can raise when the connection fails: urllib3's and the socket's.
BROKEN = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)
USER_AGENT = "chatgpt-api-server"
POOL_SIZE = 1024  # idle upstream connections one account keeps per host
# urllib3 warns for every connection it drops past POOL_SIZE: thousands of lines while thousands of streams end.
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
log = logging.getLogger(__name__)
CALLER_FAULTS = (400, 404, 409, 413, 422)  # the request's own fault: they say nothing about the account
SCRUB_CHARS = 4000  # upstream text is cut to this before scrubbing (scrubbing is linear; callers cut further)


class Response:
    """An upstream's answer, its body not yet read: status, reason, headers (any case) and the raw body."""

    __slots__ = ("raw", "status_code", "reason", "headers")

    def __init__(self, raw: urllib3.BaseHTTPResponse):
        self.raw, self.status_code, self.reason, self.headers = raw, raw.status, raw.reason, raw.headers

    def close(self) -> None:
        """Done with the body: a connection whose body was read to its end goes back to the pool, one left
        part-way is closed first."""
        if not (self.raw.isclosed() or self.raw.length_remaining == 0):
            self.raw.close()
        self.raw.release_conn()


def _manager(proxy: str | None, maxsize: int) -> urllib3.PoolManager:
    """The connection pools of one account: direct, or through its SOCKS or HTTP proxy."""
    options = {"num_pools": 4, "maxsize": maxsize, "block": False, "retries": False}
    if not proxy:
        return urllib3.PoolManager(**options)
    if proxy.lower().startswith("socks"):
        from urllib3.contrib.socks import SOCKSProxyManager

        user, password = _proxy_login(proxy)
        return SOCKSProxyManager(proxy, username=user, password=password, **options)
    user, password = _proxy_login(proxy)  # urllib3 does not send an HTTP proxy's login by itself
    auth = urllib3.make_headers(proxy_basic_auth=f"{user}:{password or ''}") if user is not None else {}
    return urllib3.ProxyManager(proxy, proxy_headers=auth, **options)


def _proxy_login(proxy: str) -> tuple[str | None, str | None]:
    """The user and password in a proxy URL, decoded (the URL holds them percent-encoded)."""
    parts = urlsplit(proxy)
    return tuple(unquote(v) if v is not None else None for v in (parts.username, parts.password))


class HttpClient:
    def __init__(self, account, timeouts: dict, max_line_bytes: int = 1_048_576):
        self.account = account
        self.timeout = (float(timeouts["connect"]), float(timeouts["read"]))
        self._options = {  # every call's: the body is read raw, as it comes; no redirect, no retry
            "timeout": urllib3.Timeout(connect=self.timeout[0], read=self.timeout[1]),
            "preload_content": False,
            "decode_content": False,
            "redirect": False,
            "retries": False,
            "assert_same_host": False,
        }
        self.max_line_bytes = max_line_bytes
        # Connections kept for reuse, per host: more streams at once than this open connections of their own,
        # dropped after (never one from the environment: the account's proxy, or none).
        self.pools = _manager(account.proxy, maxsize=POOL_SIZE)
        self._pools: dict[str, tuple] = {}  # url -> (its host's pool, its path)
        self._secrets = [account.api_key, account.access_token, account.session_token, *_proxy_secrets(account.proxy)]
        self.scrub = Scrubber(self._secrets)

    def add_secret(self, secret: str) -> None:
        """Redact one more secret from now on (an access token fetched at run time)."""
        self._secrets.append(secret)
        self.scrub = Scrubber(self._secrets)

    def close(self) -> None:
        self._pools.clear()
        self.pools.clear()

    @property
    def _via(self) -> str:
        return " through its proxy" if self.account.proxy else ""

    def _send(self, method: str, url: str, headers: dict, body: bytes | None = None) -> Response:
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
        try:
            if self.account.proxy:  # the proxy manager frames the request for its proxy
                raw = self.pools.urlopen(method, url, body=body, headers=headers, **self._options)
            else:  # straight to the host's own pool: PoolManager.urlopen would parse the URL again each time
                pool, path = self._pool(url)
                raw = pool.urlopen(method, path, body=body, headers=headers, **self._options)
        except BROKEN as exc:
            raise self._unreachable(exc) from None
        return Response(raw)

    def _pool(self, url: str) -> tuple[urllib3.HTTPConnectionPool, str]:
        """The connection pool of url's host, and the path to ask it for (both kept per URL: an account asks few)."""
        found = self._pools.get(url)
        if found is None or found[0].pool is None:  # never seen, or a pool the manager has closed since
            parts = urllib3.util.parse_url(url)
            found = (self.pools.connection_from_url(url), parts.request_uri)
            if len(self._pools) < 64:
                self._pools[url] = found
        return found

    def post(self, url: str, payload: dict, headers: dict) -> Response:
        """POST JSON; return a 2xx response, its body not yet read, or raise UpstreamError / UpstreamTimeout."""
        try:
            body = json.dumps(payload, allow_nan=False).encode()
        except ValueError:
            raise UpstreamRejected(
                "the request holds a number JSON cannot carry (NaN or Infinity)", status=400
            ) from None
        response = self._send("POST", url, headers, body)
        self._raise_for_status(response)
        return response

    def get_json(self, url: str, headers: dict, limit: int = 65536) -> dict:
        """GET a small JSON object (through the account's proxy), or raise as post() does."""
        response = self._send("GET", url, headers)
        self._raise_for_status(response)
        try:
            data = json.loads(self.body(response, limit))
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise UpstreamError(f"account {self.account.name!r}: {url} did not answer with a JSON object")
        return data

    def _unreachable(self, exc: BaseException) -> UpstreamError | UpstreamTimeout:
        name = self.account.name
        if isinstance(exc, ReadTimeoutError):
            return self._read_timeout("did not answer")
        if isinstance(exc, ProxyError):
            return UpstreamError(f"account {name!r}: its proxy refused or failed the connection")
        if _is_timeout(exc):  # ConnectTimeout included
            return UpstreamTimeout(
                f"account {name!r}: connecting to the upstream{self._via} timed out after {self.timeout[0]:g}s"
            )
        return UpstreamError(f"account {name!r}: could not connect to the upstream{self._via}")

    def _raise_for_status(self, response: Response) -> None:
        """Turn an error answer into UpstreamError, saying whose fault it is (see app/errors.py)."""
        status, name = response.status_code, self.account.name
        if status < 400:
            return
        if status in (401, 403):  # whatever it says may echo the credential: say nothing of it
            response.close()
            raise UpstreamError(
                f"account {name!r}: the upstream refused the account's credentials ({status}); "
                "its key or token needs to be checked",
                fault="credentials",
            )
        detail, error = self._error_detail(response)
        response.close()
        message = f"account {name!r}: the upstream answered {status}: {detail}"
        if status == 429:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            raise UpstreamError(message, fault="rate_limited", retry_after=wait)
        if status in CALLER_FAULTS:  # the request's own fault: the caller gets the upstream's own answer
            log.info("account %r: the upstream refused the request (%d): %s", name, status, detail)
            param, code = as_name(error.get("param")), as_name(error.get("code"))
            raise UpstreamRejected(detail, status=status, code=code, param=param)
        raise UpstreamError(message, fault="transient")

    def _read_timeout(self, what: str) -> UpstreamTimeout:
        return UpstreamTimeout(f"account {self.account.name!r}: the upstream {what} for {self.timeout[1]:g}s")

    def _error_detail(self, response: Response) -> tuple[str, dict]:
        """The error answer's message (scrubbed, at most 500 characters) and its error object ({} if none)."""
        try:
            raw = response.raw.read(MAX_ERROR_BODY)
        except BROKEN:
            raw = b""
        text = raw.decode("utf-8", "replace")
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        message = upstream_message(data) if data is not None else None
        error = data.get("error") if isinstance(data, dict) and isinstance(data.get("error"), dict) else {}
        return self.scrub(message or text.strip() or response.reason or "no details")[:500], error

    def sse_data(self, response: Response) -> Iterator[str]:
        """Yield the data field of each server-sent event until [DONE] or the end of the body."""
        with self._reading(response):
            for line in self._lines(response):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip().decode("utf-8", "replace")
                if data == "[DONE]":
                    _drain(response)
                    return
                yield data
            raise StreamCut(f"account {self.account.name!r}: the upstream ended the reply before finishing it")

    def body(self, response: Response, limit: int) -> bytes:
        """Read a whole (non-streamed) answer, at most limit bytes of it: past that it is a 502."""
        data = bytearray()
        with self._reading(response):
            while piece := response.raw.read1(READ_SIZE):
                data += piece
                if len(data) > limit:
                    raise UpstreamError(
                        f"account {self.account.name!r}: the upstream's answer is larger than {limit} bytes"
                    )
        return bytes(data)

    @contextlib.contextmanager
    def _reading(self, response: Response):
        """Read a response's body: a broken connection is a 502, a silent one a 504; closed in any case."""
        try:
            yield
        except BROKEN as exc:
            if _is_timeout(exc):
                raise self._read_timeout("stopped sending") from None
            raise UpstreamError(f"account {self.account.name!r}: the upstream connection broke mid-reply") from None
        finally:
            response.close()

    def _lines(self, response: Response) -> Iterator[bytes]:
        """Yield the body's lines as they arrive, in time linear in their length, none longer than the limit.

        A whole answer may carry at most STREAM_LINES lines' worth of bytes (a cumulative stream resends
        its text in every event), and the reader pauses every few milliseconds, so a fast upstream
        never keeps a gevent worker from its other connections.
        """
        raw, buffer, scanned = response.raw, bytearray(), 0
        total, most, pace = 0, self.max_line_bytes * STREAM_LINES, Pacer()
        while True:
            piece = raw.read1(READ_SIZE)  # whatever has arrived: an event is passed on without waiting for more
            if not piece:
                break
            total += len(piece)
            if total > most:
                raise UpstreamError(
                    f"account {self.account.name!r}: the upstream sent more than {most} bytes for one reply; "
                    "it was stopped"
                )
            buffer += piece
            start = 0
            while (end := buffer.find(b"\n", scanned)) >= 0:
                yield bytes(buffer[start:end]).rstrip(b"\r")
                start = scanned = end + 1
            del buffer[:start]
            scanned = len(buffer)  # the rest holds no line end: never search it again
            if scanned > self.max_line_bytes:
                raise UpstreamError(
                    f"account {self.account.name!r}: the upstream sent a line longer than "
                    f"{self.max_line_bytes} bytes; the reply was stopped"
                )
            pace()
        if buffer:
            yield bytes(buffer)


def _drain(response: Response, limit: int = 65536) -> None:
    """Read what is left of a finished body (the closing chunk) so the connection can be reused."""
    left = limit
    while left >= 0:
        piece = response.raw.read1(8192)  # read1, as the lines were read: the two chunk readers must not mix
        if not piece:
            return
        left -= len(piece)
    # more than an ending: let close() drop the connection instead


def upstream_message(data) -> str | None:
    """Find the human message in the error shapes upstreams use."""
    if isinstance(data, dict):
        for key in ("error", "detail", "message", "errorMessage"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, dict):
                found = upstream_message(value)
                if found:
                    return found
    return None


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Read a Retry-After header: seconds, or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _is_timeout(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if "timeout" in type(exc).__name__.lower() or "timed out" in str(exc).lower():
            return True
        wrapped = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        exc = exc.__cause__ or exc.__context__ or wrapped
    return False


def _proxy_secrets(proxy: str | None) -> list[str]:
    """Return the proxy password as written in the URL and decoded (either may be echoed back)."""
    password = urlsplit(proxy).password if proxy else None
    return [password, unquote(password)] if password else []


class Scrubber:
    """Redact an account's secrets from text that came from outside: whole, and any run of FRAGMENT or more
    of their characters, so an echo that is cut short, or joined to other text, leaks nothing either."""

    def __init__(self, secrets: list[str]):
        secrets = [s for s in secrets if s]
        self._whole = sorted({s for s in secrets if len(s) < FRAGMENT}, key=len, reverse=True)
        self._grams = {s[i : i + FRAGMENT] for s in secrets if len(s) >= FRAGMENT for i in range(len(s) - FRAGMENT + 1)}

    def __call__(self, text: str) -> str:
        text = text[:SCRUB_CHARS]
        for secret in self._whole:
            text = text.replace(secret, "[redacted]")
        if not self._grams or len(text) < FRAGMENT:
            return text
        hidden = [False] * len(text)
        for i in range(len(text) - FRAGMENT + 1):
            if text[i : i + FRAGMENT] in self._grams:
                hidden[i : i + FRAGMENT] = [True] * FRAGMENT
        if not any(hidden):
            return text
        out, i = [], 0
        while i < len(text):
            if hidden[i]:
                while i < len(text) and hidden[i]:
                    i += 1
                out.append("[redacted]")
            else:
                out.append(text[i])
                i += 1
        return "".join(out)


# -- reading a response's head -------------------------------------------------------------------

_HEADER_LINE = re.compile(r"[\041-\071\073-\176]+:")  # a field name and its colon (email's feedparser's rule)
_email_parse_headers = http.client.parse_headers


def parse_headers(fp, _class=http.client.HTTPMessage):
    """http.client's parse_headers, without the email package's general parser (about 80 µs of every upstream
    call): the same message, with the same (name, value) pairs as email's compat32 policy stores them. A head
    holding anything but plain fields and folded continuation lines is left to the email parser."""
    lines = http.client._read_headers(fp)
    fields: list[list[str]] = []
    for raw in lines:
        line = raw.decode("iso-8859-1")
        if line in ("\r\n", "\n", ""):
            break
        if line[0] in " \t" and fields:
            fields[-1].append(line)
        elif _HEADER_LINE.match(line):
            fields.append([line])
        else:
            return _email_parse_headers(io.BytesIO(b"".join(lines)), _class)
    message = _class()
    for source in fields:
        name, value = source[0].split(":", 1)
        message._headers.append((name, (value.lstrip(" \t") + "".join(source[1:])).rstrip("\r\n")))
    return message


http.client.parse_headers = parse_headers  # what urllib3's responses (and every http.client one) are read with


NAME = re.compile(r"[A-Za-z0-9_.\[\]-]{1,100}")


def as_name(value) -> str | None:
    """An upstream's error code or parameter name (`messages[0].content`), if it looks like one (short, plain)."""
    if isinstance(value, str) and NAME.fullmatch(value):
        return value
    return None
