"""The audit log and failed-key counts in SQL, on the conversation database.

The audit log is append-only: this module has no way to change or remove an entry, and no route
reaches one. Failed key attempts are counted per client address over the last minute, shared by
every worker and instance on the database, so keys cannot be guessed faster by spreading guesses.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from sqlalchemy import Column, Float, Index, Integer, String, Table, Text, delete, func, insert, select

from app.store.conversations import metadata
from app.store.raw import Raw

audit_log = Table(
    "audit_log",
    metadata,
    Column("entry_id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor_id", String(128)),  # None: the server itself (an account's state changed)
    Column("actor_role", String(16)),
    Column("action", String(64), nullable=False),
    Column("target", String(160)),
    Column("detail", Text),  # JSON; never a key, token or password
    Column("address", String(64)),
)
Index("ix_audit_log_at", audit_log.c.at)
Index("ix_audit_log_actor", audit_log.c.actor_id, audit_log.c.entry_id)
Index("ix_audit_log_target", audit_log.c.target, audit_log.c.entry_id)
Index("ix_audit_log_action", audit_log.c.action, audit_log.c.entry_id)

key_failures = Table(
    "key_failures",
    metadata,
    Column("failure_id", Integer, primary_key=True, autoincrement=True),
    Column("address", String(64), nullable=False),
    Column("at", Float, nullable=False),
)
Index("ix_key_failures_address_at", key_failures.c.address, key_failures.c.at)

WINDOW = 60.0  # seconds failed keys are counted over
# How long this process believes an address it found unthrottled: a wrong key seen here clears the belief at
# once, so the most another worker's throttling can be missed is one key per address per this long.
TRUST_FOR = 0.1
_FAILURES = Raw("SELECT count(*), min(at) FROM key_failures WHERE address = ? AND at > ?")


@dataclass(frozen=True)
class AuditEntry:
    entry_id: int
    at: float
    actor_id: str | None
    actor_role: str | None
    action: str
    target: str | None
    detail: dict
    address: str | None


class SqlAudit:
    def __init__(self, store):
        self._store = store

    def append(
        self,
        action: str,
        *,
        actor_id: str | None,
        actor_role: str | None,
        target: str | None,
        detail: dict | None,
        address: str | None,
    ) -> None:
        values = {
            "at": time.time(),
            "actor_id": actor_id,
            "actor_role": actor_role,
            "action": action,
            "target": target,
            "detail": json.dumps(detail or {}, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
            "address": address,
        }
        with self._store.write() as db:
            db.execute(insert(audit_log).values(**values))

    def query(
        self,
        *,
        actor: str | None = None,
        target: str | None = None,
        action: str | None = None,
        since: float | None = None,
        until: float | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[AuditEntry], int]:
        """The newest entries first that match every filter given (action: exact, or a prefix ending in '.'),
        and how many match in all."""
        where = []
        if actor is not None:
            where.append(audit_log.c.actor_id == actor)
        if target is not None:
            where.append(audit_log.c.target == target)
        if action is not None:
            prefix = action.endswith(".")
            where.append(
                audit_log.c.action.startswith(action, autoescape=True) if prefix else audit_log.c.action == action
            )
        if since is not None:
            where.append(audit_log.c.at >= since)
        if until is not None:
            where.append(audit_log.c.at < until)
        page = select(audit_log).where(*where).order_by(audit_log.c.entry_id.desc()).offset(offset).limit(limit)
        with self._store.engine.connect() as db:
            rows = db.execute(page).mappings().all()
            total = db.execute(select(func.count()).select_from(audit_log).where(*where)).scalar_one()
        return [_entry(row) for row in rows], total


def _entry(row) -> AuditEntry:
    try:
        detail = json.loads(row["detail"] or "{}")
    except ValueError:
        detail = {}
    return AuditEntry(
        entry_id=row["entry_id"],
        at=row["at"],
        actor_id=row["actor_id"],
        actor_role=row["actor_role"],
        action=row["action"],
        target=row["target"],
        detail=detail if isinstance(detail, dict) else {},
        address=row["address"],
    )


class SqlKeyThrottle:
    """Failed key attempts per client address in the last minute, across every worker."""

    def __init__(self, store, per_minute: int):
        self._store = store
        self.per_minute = per_minute  # 0: no throttle
        self._clear: dict[str, float] = {}  # address -> until when it is known unthrottled (monotonic)

    def wait(self, address: str, now: float | None = None) -> float | None:
        """Seconds this address must wait before its next key is looked at, or None if it may try now."""
        if not self.per_minute:
            return None
        clock = time.monotonic()
        if self._clear.get(address, 0.0) > clock:
            return None
        now = time.time() if now is None else now
        with self._store.engine.connect() as db:
            count, oldest = _FAILURES.run(db, address, now - WINDOW).fetchone()
        if count < self.per_minute:
            if len(self._clear) > 10_000:
                self._clear.clear()
            self._clear[address] = clock + TRUST_FOR
            return None
        return max(1.0, oldest + WINDOW - now)

    def failed(self, address: str, now: float | None = None) -> None:
        """Count one wrong key from address (and forget every failure older than the window)."""
        if not self.per_minute:
            return
        self._clear.pop(address, None)
        now = time.time() if now is None else now
        with self._store.write() as db:
            db.execute(delete(key_failures).where(key_failures.c.at <= now - WINDOW))  # a small table: old rows go
            db.execute(insert(key_failures).values(address=address, at=now))
