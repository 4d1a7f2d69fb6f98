"""acheong08/ChatGPT-API-server's user routes (/admin/users with admin_key): a thin front over UserService."""

from __future__ import annotations

VIEWS: dict = {}
