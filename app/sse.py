"""Server-sent events: one helper for every streaming answer (/api/chat and /v1)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from flask import Response

STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx and friends: pass each event on at once
    "Content-Encoding": "identity",  # never compressed, so nothing in between holds bytes back
}


def event(data, name: str | None = None) -> str:
    """Format one event; data that is not a string goes as compact JSON."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return (f"event: {name}\n" if name else "") + f"data: {text}\n\n"


def sse_response(events: Iterator[str]) -> Response:
    """Stream events as they come: each one is written (and flushed) as soon as it is yielded."""
    return Response(events, mimetype="text/event-stream", headers=STREAM_HEADERS)
