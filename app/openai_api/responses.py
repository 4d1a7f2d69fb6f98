"""POST /v1/responses (whole, or as its typed event stream), GET and DELETE /v1/responses/<id>.

The translation lives in app/services/responses.py; here the answer is shaped: a response object, or
server-sent events named by their type (`event: response.output_text.delta`), as OpenAI sends them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from flask import Flask, jsonify

from app import auth
from app.api.params import json_object
from app.context import services
from app.errors import AppError, NotFound
from app.openai_api.routes import v1_caller
from app.sse import event, opened, sse_response

log = logging.getLogger(__name__)


def create():
    principal = auth.principal({}, actor=v1_caller())
    body = json_object()
    run = services().responses.create(principal, body)
    if body.get("stream"):
        return sse_response(_events(opened(run.stream()), run))
    return jsonify(run.whole())


def _events(stream, run) -> Iterator[str]:
    try:
        for item in stream:
            yield event(item, item["type"])
    except AppError as exc:  # the upstream failed mid-stream: an error event, as OpenAI sends one
        failure = {"type": "error", "code": exc.code, "message": exc.message, "param": exc.param}
        yield event({**failure, "sequence_number": run.sequence}, "error")
    except Exception:
        log.exception("unexpected error in a /v1/responses stream")
        failure = {"type": "error", "code": "internal_error", "message": "the server hit an unexpected error"}
        yield event({**failure, "param": None, "sequence_number": run.sequence}, "error")
    finally:
        stream.close()


def one(response_id: str):
    principal = auth.principal({}, actor=v1_caller())
    found = services().responses.stored.get(principal.user.user_id, response_id)
    if found is None:
        raise NotFound(f"no response {response_id!r}", param="response_id")
    return jsonify(found[0])


def delete(response_id: str):
    principal = auth.principal({}, actor=v1_caller())
    if not services().responses.stored.delete(principal.user.user_id, response_id):
        raise NotFound(f"no response {response_id!r}", param="response_id")
    return jsonify({"id": response_id, "object": "response", "deleted": True})


def register(app: Flask) -> None:
    app.add_url_rule("/v1/responses", endpoint="v1.responses", view_func=create, methods=["POST"])
    app.add_url_rule("/v1/responses/<response_id>", endpoint="v1.response", view_func=one, methods=["GET"])
    app.add_url_rule("/v1/responses/<response_id>", endpoint="v1.response_delete", view_func=delete, methods=["DELETE"])
