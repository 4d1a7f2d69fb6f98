"""The one exception tree, and the one place that turns it into HTTP answers.

AppError                     any error a caller should see (status, code, message)
├── BadRequest           400 a missing or invalid parameter (names it)
├── Unauthorized         401 no key, or a key we do not know
├── Forbidden            403 known caller, not allowed
├── NotFound             404 unknown (or someone else's) conversation or user
├── Conflict             409 already exists, last admin, pinned account gone
├── PayloadTooLarge      413 body over the configured limit
├── RateLimited          429 a user's (or its client's) limit, or too many wrong keys from one address;
│                            Retry-After and OpenAI's x-ratelimit-* headers say when and how much
├── UpstreamError        502 the upstream answered with an error, or could not be reached
│   ├── StreamCut        502 the upstream's event stream ended before its end marker
│   └── UpstreamRejected 4xx the upstream refused the request itself: its status, code, param and words
├── NoAccountAvailable   503 no eligible account for the asked class (Retry-After when one comes back;
│                            /v1 answers 429 when every account is rate limited)
├── Busy                 503 a shared resource stayed locked too long; Retry-After says when to retry
└── UpstreamTimeout      504 the upstream or its proxy did not answer in time

An upstream failure (UpstreamError, UpstreamTimeout) also says whose fault it was (`fault`), which
decides what it does to the account's health (app/pool.py): "rate_limited" (with the upstream's
Retry-After), "credentials" (401/403), "transient" (5xx, connection, timeout, a cut stream), or
"caller" (the request's own fault, or one of our limits: it does not count against the account).

ConfigError                  settings.json is wrong; stops start-up (never reaches HTTP)
"""

from __future__ import annotations

import logging
import math

from flask import Flask, Response, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """Settings are invalid; the message names the key."""


class AppError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequest(AppError):
    status, code = 400, "bad_request"


class Unauthorized(AppError):
    status, code = 401, "unauthorized"


class Forbidden(AppError):
    status, code = 403, "forbidden"


class NotFound(AppError):
    status, code = 404, "not_found"


class Conflict(AppError):
    status, code = 409, "conflict"


class PayloadTooLarge(AppError):
    status, code = 413, "payload_too_large"


class RateLimited(AppError):
    """A limit refused the request before any upstream was asked; quota: a daily limit (OpenAI's
    insufficient_quota), else a per-minute one (rate_limit_exceeded)."""

    status, code = 429, "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        headers: dict | None = None,
        quota: bool = False,
        param: str | None = None,
    ):
        super().__init__(message, param=param)
        self.retry_after = retry_after
        self.headers = headers or {}
        self.quota = quota
        if quota:
            self.code = "insufficient_quota"


FAULTS = ("rate_limited", "credentials", "transient", "caller")


class _UpstreamFault:
    """What an upstream failure says about its account: whose fault, and when to try it again."""

    def __init__(
        self, message: str, *, fault: str = "transient", retry_after: float | None = None, param: str | None = None
    ):
        super().__init__(message, param=param)
        self.fault = fault
        self.upstream_retry_after = retry_after  # seconds, from the upstream's own Retry-After
        self.retry_after: float | None = None  # set when the pool knows when the caller may come back


class UpstreamError(_UpstreamFault, AppError):
    status, code = 502, "upstream_error"


class StreamCut(UpstreamError):
    pass


class UpstreamRejected(UpstreamError):
    """The upstream refused the request itself (400/404/409/413/422: a bad tool schema, an unknown parameter):
    the caller gets the upstream's own status and words (scrubbed of secrets), not a 502."""

    CODES = {400: "bad_request", 404: "not_found", 409: "conflict", 413: "payload_too_large", 422: "unprocessable"}

    def __init__(self, message: str, *, status: int, code: str | None = None, param: str | None = None):
        super().__init__(message, fault="caller", param=param)
        self.status = status
        self.code = code or self.CODES.get(status, "bad_request")


class NoAccountAvailable(AppError):
    status, code = 503, "no_account_available"

    def __init__(
        self, message: str, *, retry_after: float | None = None, rate_limited: bool = False, param: str | None = None
    ):
        super().__init__(message, param=param)
        self.retry_after = retry_after
        self.rate_limited = rate_limited  # every account is cooling after a 429: /v1 says 429, as OpenAI does


class Busy(AppError):
    status, code = 503, "busy"

    def __init__(self, message: str, *, retry_after: int = 1, param: str | None = None):
        super().__init__(message, param=param)
        self.retry_after = retry_after


class UpstreamTimeout(_UpstreamFault, AppError):
    status, code = 504, "upstream_timeout"


def error_headers(exc: AppError) -> dict[str, str]:
    """The headers an error's answer carries, on every front: Retry-After and a limit's x-ratelimit-*."""
    headers = {}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    headers.update(getattr(exc, "headers", None) or {})
    return headers


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict:
    """Build the JSON body every error uses."""
    body = {"status": "error", "code": code, "message": message}
    if param:
        body["param"] = param
    return body


OPENAI_TYPES = {401: "invalid_request_error", 403: "permission_error", 429: "requests"}
OPENAI_CODE_TYPES = {"insufficient_quota": "insufficient_quota"}  # OpenAI gives these a type of their own


def openai_error(status: int, code: str, message: str, param: str | None = None) -> dict:
    """The inside of OpenAI's error body ({"error": ...}) for one of our errors, as /v1 answers it."""
    if code == "unauthorized":
        code = "invalid_api_key"
        if message == "unknown API key":  # OpenAI's words, which clients match; never the key itself
            message = "Incorrect API key provided. Use a key this server gave you (an admin or your client makes them)."
    elif code == "not_found" and param == "model":
        code = "model_not_found"
    kind = OPENAI_CODE_TYPES.get(code) or OPENAI_TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )
    return {"message": message, "type": kind, "param": param, "code": code}


def under_api(path: str) -> bool:
    """Whether a path's first segment is one only the API uses (/api, /v1, and where settings move routes)."""
    first = "/" + path.lstrip("/").split("/", 1)[0]
    return first in current_app.config.get("JSON_PREFIXES", ("/api", "/v1"))


def asks_for_api() -> bool:
    """Whether a request is a program's, not a browser's: it carries an Authorization header or an
    admin_key, or asks for JSON. On a path an original system's route shares with a page, it gets the
    route's answer."""
    if request.headers.get("Authorization") or request.args.get("admin_key"):
        return True
    if request.mimetype == "application/json":  # by its header: the body is never read here
        return True
    return request.accept_mimetypes.best == "application/json"


def _wants_json() -> bool:
    """JSON under the API's own path prefixes (configurable routes included) or from a program."""
    return under_api(request.path) or asks_for_api()


def _respond(status: int, code: str, message: str, param: str | None = None) -> Response:
    if request.path.startswith("/v1/"):
        response = jsonify({"error": openai_error(status, code, message, param)})
    elif _wants_json():
        response = jsonify(error_body(status, code, message, param))
    else:
        response = Response(render_template("error.html", status=status, message=message), mimetype="text/html")
    response.status_code = status
    return response


def register(app: Flask) -> None:
    """Map every error to its status and a JSON (or HTML) body."""

    @app.errorhandler(AppError)
    def _app_error(exc: AppError):
        status, code = exc.status, exc.code
        if getattr(exc, "rate_limited", False) and request.path.startswith("/v1/"):
            status, code = 429, "rate_limit_exceeded"
        response = _respond(status, code, exc.message, exc.param)
        response.headers.update(error_headers(exc))
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        if status == 413:  # Werkzeug's, for a declared length or a chunked body (app/limits.py)
            return _app_error(PayloadTooLarge(f"request body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes"))
        code = (exc.name or "error").lower().replace(" ", "_")
        return _respond(status, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _respond(500, "internal_error", "the server hit an unexpected error; it has been logged")
