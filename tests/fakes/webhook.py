"""Receive webhook calls on 127.0.0.1 for tests, recording each JSON body."""

from __future__ import annotations

import threading
import time

from ._http import FakeHandler, FakeHTTPService


class _WebhookHandler(FakeHandler):
    def dispatch(self) -> None:
        fake: FakeWebhook = self.owner
        entry, body = self.read_and_record()
        if self.command != "POST":
            self.send_json(405, {"detail": "Method Not Allowed"})
            return
        if not self.pause(fake.delay):
            return
        fake.receive({"path": entry["path"], "headers": entry["headers"], "body": body})
        status = fake.status
        if status == 204:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_json(status, {"ok": status < 400})


class FakeWebhook(FakeHTTPService):
    """Accept POSTs to any path, record each as {"path", "headers", "body"} in received, answer status."""

    handler_class = _WebhookHandler
    url_path = "/hook"

    def __init__(self) -> None:
        super().__init__()
        self.status = 204
        self.delay = 0.0  # seconds to wait before recording and answering
        self.received: list[dict] = []
        self._arrived = threading.Condition(self._lock)

    def receive(self, call: dict) -> None:
        """Record one call and wake wait_for()."""
        with self._arrived:
            self.received.append(call)
            self._arrived.notify_all()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[dict]:
        """Return every call received once there are at least n; raise AssertionError after timeout seconds."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.received) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.received)} of {n} webhook calls arrived in {timeout}s")
                self._arrived.wait(left)
            return list(self.received)
