"""Read parameters the same way on every /api route: query string, JSON body or form."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from flask import jsonify, request

from app.errors import AppError, BadRequest, error_headers

WHOLE = re.compile(r"-?[0-9]{1,18}")
TOKEN = re.compile(r"[\x21-\x7e]+")
TRUE = {"true", "1", "yes", "on"}
FALSE = {"false", "0", "no", "off", ""}


def request_params() -> dict:
    """Merge the query string with a JSON object or form body (the body wins)."""
    params = {k: v for k, v in request.args.items()}
    if request.method in ("POST", "PATCH", "PUT", "DELETE") and request.content_length != 0:
        if request.is_json:
            params.update(json_object(required=False) or {})
        elif request.form:
            params.update(request.form.items())
    if None in params or "" in params:  # a field without a name (`?=x`, a form part whose name did not parse)
        params = {k: v for k, v in params.items() if k}  # is one nothing can ask for: it is left out
    return params


def json_object(required: bool = True) -> dict | None:
    """Return the request's JSON object body (None if empty and not required), or BadRequest."""
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # nesting deeper than the parser goes
        body = None
    if body is None and (required or request.get_data(cache=True)):
        raise BadRequest("request body is not valid JSON (send a JSON object with Content-Type: application/json)")
    if body is not None and not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


# Ids that may come as JSON integers as well as strings: Discord's ids arrive as numbers.
INTEGER_IDS = ("user_id", "userid")


def text(params: dict, name: str, required: bool = False, max_len: int = 1000) -> str | None:
    """Read a string parameter; JSON true, 3.5 or [..] where a string is meant is a 400, not "True"."""
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise BadRequest(f"{name} is required", param=name)
        return None
    if name in INTEGER_IDS and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        kind = "an integer or a string" if name in INTEGER_IDS else "a string"
        raise BadRequest(f"{name} must be {kind}, not {json_kind(value)}", param=name)
    if len(value) > max_len:
        raise BadRequest(f"{name} is longer than {max_len} characters", param=name)
    return valid_text(value, name)


def json_kind(value) -> str:
    """Name a value's JSON type, for error messages."""
    if isinstance(value, bool):
        return "true or false"
    return {int: "a number", float: "a number", list: "a list", dict: "an object"}.get(type(value), "another type")


def token(params: dict, name: str, max_len: int = 8192) -> str | None:
    """Read a credential that will travel in an HTTP header: visible ASCII only."""
    value = text(params, name, max_len=max_len)
    if value is not None and not TOKEN.fullmatch(value):
        raise BadRequest(f"{name} must be printable ASCII without spaces", param=name)
    return value


def valid_text(value: str, name: str) -> str:
    """Refuse text that cannot be stored as UTF-8 (lone surrogates from JSON escapes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{name} is not valid text (it holds an unpaired surrogate)", param=name) from None
    return value


def flag(params: dict, name: str, default: bool = False) -> bool:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
        return value.strip().lower() in TRUE
    raise BadRequest(f"{name} must be true or false (also 1/0, yes/no, on/off)", param=name)


def choice(params: dict, name: str, options: tuple[str, ...], default: str) -> str:
    value = params.get(name)
    if value is None or value == "":
        value = default
    if isinstance(value, bool):
        value = "true" if value else "false"
    value = str(value).strip().lower()
    aliases = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}
    value = aliases.get(value, value)
    if value not in options:
        raise BadRequest(f"{name} must be one of {', '.join(options)}", param=name)
    return value


def number(params: dict, name: str, default: int, largest: int = 10**9) -> int:
    """Read a whole number written in ASCII digits, between -largest and largest."""
    value = params.get(name)
    if value is None or value == "":
        value = default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and WHOLE.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be a whole number", param=name)
    if abs(value) > largest:
        raise BadRequest(f"{name} must be at most {largest}", param=name)
    return value


def errors_as(shape: Callable[[AppError], dict]):
    """Answer a view's errors in an original system's own body (shape(exc)), with the right status and
    headers (Retry-After, the rate-limit headers): each original's clients parse their own."""

    def wrap(view):
        @functools.wraps(view)
        def run(*args, **kwargs):
            try:
                return view(*args, **kwargs)
            except AppError as exc:
                response = jsonify(shape(exc))
                response.status_code = exc.status
                response.headers.update(error_headers(exc))
                return response

        return run

    return wrap
