"""The one way a front reaches the service layer built by create_app."""

from __future__ import annotations

from flask import current_app


def services():
    """Return the services of the app handling this request (users, conversations, chat, pool, store)."""
    return current_app.extensions["services"]
