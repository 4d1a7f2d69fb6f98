"""Optional alerts: one JSON POST to `alerts.webhook_url` per event, never per request.

The body carries both `content` (Discord) and `text` (Slack), so either kind of incoming webhook
takes it as it is. Which worker sends is settled in the database (SqlPoolState.claim_alert), so
two workers seeing the same event send one message. Sending happens beside the request, never
in its way, and a webhook that fails is logged (without its URL, which is a secret) and dropped.
"""

from __future__ import annotations

import logging
import threading

import requests

TIMEOUT = (3.0, 5.0)
log = logging.getLogger(__name__)


class Alerts:
    def __init__(self, url: str | None, state):
        self.url = url
        self._state = state

    def send(self, event: str, until: float | None, text: str) -> bool:
        """Send text for event unless it was sent already (until: when it may be sent again); True if sent."""
        if self.url is None or not self._state.claim_alert(event, until):
            return False
        body = {"content": text, "text": text, "event": event.split(":", 1)[0]}
        threading.Thread(target=self._post, args=(body,), daemon=True).start()  # a greenlet under gevent
        return True

    def _post(self, body: dict) -> None:
        try:
            with requests.Session() as session:
                session.trust_env = False
                session.post(self.url, json=body, timeout=TIMEOUT).raise_for_status()
        except requests.RequestException as exc:
            log.warning("alert webhook failed (%s): %s", body["event"], type(exc).__name__)
