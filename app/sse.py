"""Server-sent events: one helper for every streaming answer (/api/chat and /v1)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from flask import Response

from app.errors import AppError, error_body

STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx and friends: pass each event on at once
    "Content-Encoding": "identity",  # never compressed, so nothing in between holds bytes back
}


def event(data, name: str | None = None) -> str:
    """Format one event; data that is not a string goes as compact JSON."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return (f"event: {name}\n" if name else "") + f"data: {text}\n\n"


def opened(events: Iterator) -> Iterator:
    """Run a reply's generator up to its first event before answering, so an upstream that fails
    before sending any text is a plain HTTP error (502/503/504), not a 200 stream with an error in it.
    The first byte still leaves with the upstream's first piece."""
    first = next(events)

    def rest():
        try:
            yield first
            yield from events  # closing rest() closes events too
        finally:
            events.close()

    return rest()


def sse_response(events: Iterator[str]) -> Response:
    """Stream events as they come: each one is written (and flushed) as soon as it is yielded."""
    return Response(events, mimetype="text/event-stream", headers=STREAM_HEADERS)


def chat_events(events) -> Iterator[str]:
    """Turn a chat's events into SSE: `delta` per piece of text, then `done` (the answer) or `error`."""
    try:
        for item in events:
            if isinstance(item, dict):
                yield event(item, "done")
            else:
                yield event({"text": item.text}, "delta")
    except AppError as exc:  # the upstream failed after the stream began: say so in the stream
        yield event(error_body(exc.status, exc.code, exc.message, exc.param), "error")
    finally:
        events.close()  # the caller went away: close the upstream now and keep the partial reply
