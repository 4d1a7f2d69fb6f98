"""The audit log: who changed what, for whom, when and from where. Admins read it; nobody edits it.

Every change an admin or client makes through any front is recorded by the service that makes
it, as are the pool's own account state changes (actor None: the server) and logins to the pages.
A detail never holds a key, token or password: account secrets appear only as the names of the
fields that changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from app.errors import BadRequest, Forbidden
from app.store.audit import AuditEntry, SqlAudit
from app.store.users import User

MAX_PAGE = 500
log = logging.getLogger(__name__)


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str | None, param: str) -> float | None:
    """A moment as an ISO date or date-time (UTC unless it says otherwise), or None."""
    if value in (None, ""):
        return None
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"{param} must be a date or time such as 2026-12-04 or 2026-12-04T10:00:00Z", param=param
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def public(entry: AuditEntry) -> dict:
    return {
        "id": entry.entry_id,
        "at": iso(entry.at),
        "actor": entry.actor_id,
        "actor_role": entry.actor_role,
        "action": entry.action,
        "target": entry.target,
        "detail": entry.detail,
        "address": entry.address,
    }


class AuditService:
    def __init__(self, audit: SqlAudit, address: Callable[[], str | None] = lambda: None):
        self.audit = audit
        self.address = address  # the client address of the request being served, if any

    def record(self, actor: User | None, action: str, target: str | None = None, **detail) -> None:
        """Append one entry. A failure is logged: the change it describes has happened already."""
        try:
            self.audit.append(
                action,
                actor_id=actor.user_id if actor else None,
                actor_role=actor.role if actor else None,
                target=target,
                detail=detail,
                address=self.address() if actor else None,
            )
        except Exception:
            log.exception("could not write the audit entry %s for %r", action, target)

    def list(
        self,
        actor: User,
        *,
        who: str | None = None,
        target: str | None = None,
        action: str | None = None,
        since: str | None = None,
        until: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> dict:
        if actor.role != "admin":
            raise Forbidden("only an admin may read the audit log")
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"limit must be from 1 to {MAX_PAGE}", param="limit")
        if offset < 0:
            raise BadRequest("offset must be 0 or more", param="offset")
        start, end = parse_time(since, "from"), parse_time(until, "to")
        if until and len(until) == 10 and end is not None:
            end += 86400  # a date as "to" includes that whole day
        entries, total = self.audit.query(
            actor=who, target=target, action=action, since=start, until=end, offset=offset, limit=limit
        )
        return {"entries": [public(e) for e in entries], "total": total, "offset": offset, "limit": limit}
