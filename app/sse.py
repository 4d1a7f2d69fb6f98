"""Server-sent events: one helper for every streaming answer (/api/chat and /v1)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

from flask import Response

from app.errors import AppError, error_body

log = logging.getLogger(__name__)

LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}
STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx and friends: pass each event on at once
    "Content-Encoding": "identity",  # never compressed, so nothing in between holds bytes back
}


def event(data, name: str | None = None) -> str:
    """Format one event; data that is not a string goes as compact JSON."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    # Characters some line readers (JavaScript's regexes, str.splitlines) take for line ends stay escaped.
    text = text.translate(LINE_BREAKS)
    return (f"event: {name}\n" if name else "") + f"data: {text}\n\n"


class opened:  # noqa: N801 - used like a function
    """Run a reply's generator up to its first event before answering, so an upstream that fails
    before sending any text is a plain HTTP error (502/503/504), not a 200 stream with an error in it.
    The first byte still leaves with the upstream's first piece. close() always reaches the
    generator (a wrapping generator that never started would skip its own cleanup)."""

    def __init__(self, events: Iterator):
        self.events = events
        self.first = [next(events)]

    def __iter__(self):
        return self

    def __next__(self):
        return self.first.pop() if self.first else next(self.events)

    def close(self) -> None:
        self.events.close()


def chat_stream(events: Iterator) -> Response:
    """Answer a chat (/api/chat or the chat page) as events, once the upstream's first piece is in."""
    return sse_response(chat_events(opened(events)))


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
    except Exception:  # never a silent end: the caller learns the turn failed
        log.exception("unexpected error in a chat stream")
        yield event(
            error_body(500, "internal_error", "the server hit an unexpected error; it has been logged"), "error"
        )
    finally:
        events.close()  # the caller went away: close the upstream now and keep the partial reply
