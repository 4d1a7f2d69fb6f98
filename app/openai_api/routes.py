"""POST /v1/chat/completions and GET /v1/models, in OpenAI's shapes.

Stateless: the caller sends the whole history in `messages`, and nothing is stored. Errors use
OpenAI's shape ({"error": {"message", "type", "param", "code"}}), made in app/errors.py.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Iterator

from flask import Flask, jsonify, request

from app import auth
from app.api.params import json_object
from app.context import services
from app.errors import AppError, NotFound, Unauthorized, openai_error
from app.sse import event, opened, sse_response
from app.upstream import Delta, Done, Upstream

OWNER = "chatgpt-api-server"
log = logging.getLogger(__name__)


def v1_caller():
    """/v1 takes its key as OpenAI does: Authorization: Bearer KEY (a `user` field is OpenAI's, not a key)."""
    if not request.headers.get("Authorization", "").lower().startswith("bearer "):
        raise Unauthorized("no API key: send 'Authorization: Bearer KEY' (your key as the SDK's api_key)")
    return auth.caller({})


def chat_completions():
    caller = v1_caller()
    body = json_object()
    completion, upstream, events = services().chat.complete_stream(auth.principal({}, actor=caller), body)
    reply = Reply(upstream, body.get("model"))
    if completion.stream:
        return sse_response(reply.chunks(opened(events), completion.include_usage))
    return jsonify(reply.whole(events))


class Reply:
    """Shape one upstream reply as a chat.completion, or as chat.completion.chunk events."""

    def __init__(self, upstream: Upstream, asked_model: str | None):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = asked_model or upstream.account.model

    def whole(self, events) -> dict:
        """The answer: the upstream's own when it relayed the request (Done.raw), else one made of its text."""
        pieces, done = [], None
        for item in events:
            if isinstance(item, Done):
                done = item
            else:
                pieces.append(item.text)
        if done is not None and done.raw is not None:
            return done.raw
        text = "".join(pieces)
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": _finish(done),
                }
            ],
            "usage": _usage(done, text),
        }

    def chunks(self, events, include_usage: bool) -> Iterator[str]:
        """The reply as chunk events: the upstream's own chunks when it relayed the request (Delta.raw, usage
        only if the caller asked for it), else chunks made of its text."""
        said = []
        try:
            first = next(events, None)
            if isinstance(first, Delta) and first.raw is not None:
                yield from _relayed(first, events, include_usage)
                return
            yield event(self._chunk({"role": "assistant", "content": ""}))
            done = None
            for item in itertools.chain([first] if first is not None else [], events):
                if isinstance(item, Done):
                    done = item
                else:
                    said.append(item.text)
                    yield event(self._chunk({"content": item.text}))
            yield event(self._chunk({}, _finish(done)))
            if include_usage:
                yield event({**self._head(), "choices": [], "usage": _usage(done, "".join(said))})
            yield event("[DONE]")
        except AppError as exc:  # the upstream failed mid-stream: an error event, as OpenAI sends one
            yield event({"error": openai_error(exc.status, exc.code, exc.message, exc.param)})
        except Exception:  # never a silent end: the SDK raises on this event
            log.exception("unexpected error in a /v1 stream")
            yield event({"error": openai_error(500, "internal_error", "the server hit an unexpected error")})
        finally:
            events.close()  # the caller went away: close the upstream request now

    def _head(self) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}

    def _chunk(self, delta: dict, finish: str | None = None) -> dict:
        return {**self._head(), "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def _relayed(first: Delta, events, include_usage: bool) -> Iterator[str]:
    """Pass a relayed stream's chunks on as the upstream sent them, then [DONE]. The server always asks for
    usage (the ledger counts it); a caller that did not ask gets neither the usage chunk nor the usage fields."""
    for item in itertools.chain([first], events):
        if not isinstance(item, Delta) or item.raw is None:
            continue
        chunk = item.raw
        if not include_usage and "usage" in chunk:
            if not chunk.get("choices"):
                continue  # the usage-only chunk at the end
            chunk = {k: v for k, v in chunk.items() if k != "usage"}
        yield event(chunk)
    yield event("[DONE]")


def _finish(done: Done | None) -> str:
    reason = done.finish_reason if done else "stop"
    return reason if reason in ("stop", "length", "content_filter", "tool_calls") else "stop"


def _usage(done: Done | None, text: str) -> dict:
    """The upstream's token counts, or (for account types that give none) zeros for the prompt and
    a rough count of the reply at four characters a token."""
    usage = (done.usage if done else None) or {}
    prompt = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else 0
    completion = usage.get("completion_tokens")
    completion = completion if isinstance(completion, int) else (len(text) + 3) // 4
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _model(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": OWNER}


def models():
    names = services().chat.models(auth.principal({}, actor=v1_caller()))
    return jsonify({"object": "list", "data": [_model(n) for n in names]})


def model(model_id: str):
    if model_id not in services().chat.models(auth.principal({}, actor=v1_caller())):
        raise NotFound(f"the model {model_id!r} does not exist or you do not have access to it", param="model")
    return jsonify(_model(model_id))


def embeddings():
    caller = v1_caller()
    return jsonify(services().chat.embed(auth.principal({}, actor=caller), json_object()))


def register(app: Flask) -> None:
    app.add_url_rule("/v1/chat/completions", endpoint="v1.chat", view_func=chat_completions, methods=["POST"])
    app.add_url_rule("/v1/embeddings", endpoint="v1.embeddings", view_func=embeddings, methods=["POST"])
    app.add_url_rule("/v1/models", endpoint="v1.models", view_func=models, methods=["GET"])
    app.add_url_rule("/v1/models/<path:model_id>", endpoint="v1.model", view_func=model, methods=["GET"])
