"""Serve a fixed list of raw server-sent events to any POST, for upstream events of any shape."""

from __future__ import annotations

from ._http import FakeHandler, FakeHTTPService


class _RawHandler(FakeHandler):
    def dispatch(self) -> None:
        fake: RawSSE = self.owner
        self.read_and_record()
        if self.command != "POST":
            self.send_json(404, {"detail": "Not Found"})
            return
        self.begin_stream()
        for event in fake.events:
            self.send_event(event)
        if fake.done:
            self.send_event("[DONE]")
        self.end_stream()


class RawSSE(FakeHTTPService):
    """Answer every POST with text/event-stream: `data: <event>` for each event, then `data: [DONE]` if done."""

    handler_class = _RawHandler

    def __init__(self, events: list[str], done: bool = True) -> None:
        super().__init__()
        self.events = list(events)
        self.done = done
