"""The pool's shared state in SQL: round-robin cursors, account health, leases and request counts.

Every worker process and every instance on the same database reads and writes the same rows, so
a 429 seen by one worker keeps all of them off that account, and `max_concurrent` and `rpm` are
counted across all of them. One choice is one write transaction: the cursor steps on, the
candidates' health and room are read, and the chosen account's lease and request are recorded.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import threading
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from app.cooperative import later
from app.store.conversations import metadata, pool_cursors
from app.store.raw import Raw, marks

account_health = Table(
    "account_health",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("state", String(32), nullable=False, default="ok"),  # ok | cooling | needs_attention
    Column("cooling_until", Float),
    Column("backoff", Float, nullable=False, default=0.0),  # the last transient cooldown, doubled on the next
    Column("last_error", Text),
    Column("last_error_at", Float),
    Column("requests", Integer, nullable=False, default=0),
    Column("errors", Integer, nullable=False, default=0),
    Column("last_used", Float),
)

# One row per request in flight on an account; a worker that died leaves its leases to expire.
account_leases = Table(
    "account_leases",
    metadata,
    Column("lease_id", String(32), primary_key=True),
    Column("name", String(128), nullable=False, index=True),
    Column("expires_at", Float, nullable=False),
)

# When each request of the last minute began, for accounts with an `rpm` limit.
account_hits = Table(
    "account_hits",
    metadata,
    Column("hit_id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False),
    Column("at", Float, nullable=False),
)
Index("ix_account_hits_name_at", account_hits.c.name, account_hits.c.at)

# Alerts already sent, so that one event is one message however many requests see it.
alerts_sent = Table(
    "alerts_sent",
    metadata,
    Column("event", String(160), primary_key=True),
    Column("until", Float),  # the event may be told again after this (None: not until it is cleared)
)

WINDOW = 60.0  # seconds an rpm limit counts over
CURSOR_CHARS = pool_cursors.c.name.type.length  # a longer cursor name is shortened (PostgreSQL enforces it)
FLUSH_AFTER = 0.05  # seconds a finished request's lease may wait for the next write before one of its own

# The statements of every choice, sent straight to the driver (app/store/raw.py): through SQLAlchemy a
# choice's four statements cost several times what SQLite takes to run them.
_STEP = Raw("UPDATE pool_cursors SET value = value + 1 WHERE name = ? RETURNING value")
_HEALTH_COLUMNS = [c.name for c in account_health.columns]
_LEASE = Raw("INSERT INTO account_leases (lease_id, name, expires_at) VALUES (?, ?, ?)")
_UNLEASE = delete(account_leases).where(account_leases.c.lease_id == bindparam("lease"))
_USED = Raw("UPDATE account_health SET requests = requests + 1, last_used = ? WHERE name = ?")
_NEW_HEALTH = Raw(
    "INSERT INTO account_health (name, state, backoff, requests, errors) VALUES (?, 'ok', 0.0, 0, 0) "
    "ON CONFLICT DO NOTHING"
)
_HEALTH_OF = "SELECT " + ", ".join(_HEALTH_COLUMNS) + " FROM account_health WHERE name IN ({})"  # noqa: S608 - column names
_UNLEASE_MANY = "DELETE FROM account_leases WHERE lease_id IN ({})"
_OLD_HITS = delete(account_hits).where(account_hits.c.name == bindparam("n"), account_hits.c.at <= bindparam("before"))
_NTH_HIT = (  # the rpm-th most recent request of the last minute, if there are that many
    select(account_hits.c.at)
    .where(account_hits.c.name == bindparam("n"))
    .order_by(account_hits.c.at.desc())
    .limit(1)
    .offset(bindparam("skip"))
)
_FLYING = (
    select(func.count())
    .select_from(account_leases)
    .where(account_leases.c.name == bindparam("n"), account_leases.c.expires_at > bindparam("now"))
)


@dataclass(frozen=True)
class Health:
    """One account's shared state as last written."""

    name: str
    state: str = "ok"
    cooling_until: float | None = None
    backoff: float = 0.0
    last_error: str | None = None
    last_error_at: float | None = None
    requests: int = 0
    errors: int = 0
    last_used: float | None = None
    in_flight: int = 0

    def usable(self, now: float) -> bool:
        """True if the account may take a request now (health only; room is counted apart)."""
        if self.state == "needs_attention":
            return False
        return self.cooling_until is None or self.cooling_until <= now

    def current_state(self, now: float) -> str:
        if self.state == "needs_attention":
            return "needs_attention"
        return "cooling" if self.cooling_until is not None and self.cooling_until > now else "ok"

    @property
    def healing(self) -> bool:
        """True if a success has something to clear (a backoff, or a cooldown that has run out)."""
        return self.backoff > 0 or self.state != "ok" or self.cooling_until is not None


@dataclass(frozen=True)
class Candidate:
    name: str
    max_concurrent: int | None = None
    rpm: int | None = None


@dataclass(frozen=True)
class Choice:
    """What one attempt to choose found: the account taken (with its lease), or why none was."""

    name: str | None
    lease: str | None = None
    healing: bool = False  # the account taken has a backoff or an old cooldown that a success clears
    usable: int = 0  # candidates healthy enough to take a request (busy or not)
    soonest: float | None = None  # the earliest time a candidate comes back (cooldown or room)
    rate_limited: bool = False  # every unusable candidate is cooling after a 429


class SqlPoolState:
    """Shared pool state on the conversation database (any SQLAlchemy URL)."""

    def __init__(self, store, lease_seconds: float):
        self._store = store
        self.lease_seconds = lease_seconds
        self._pending: list[str] = []  # leases of finished requests, deleted with the next write
        self._pending_lock = threading.Lock()
        self._flush_armed = False

    # -- choosing ----------------------------------------------------------------------------

    def choose(self, cursor: str | None, candidates: list[Candidate], now: float | None = None, first=None) -> Choice:
        """Step cursor on and take the next candidate in turn that is healthy and has room, in one transaction.

        cursor None: no round robin, the candidates are tried in the order given (a pinned account).
        first(db), if given, runs first in the same transaction (a turn's admission under its user's limits:
        one transaction instead of two); it may raise to refuse, which rolls back the whole choice, and it
        may return a function to call once the transaction has committed.
        """
        now = time.time() if now is None else now
        with self._writing() as db:
            committed = first(db) if first is not None else None
            choice = self._choose(db, cursor, candidates, now)
        if committed is not None:
            committed()
        return choice

    def _choose(self, db, cursor: str | None, candidates: list[Candidate], now: float) -> Choice:
        """choose()'s work, inside its transaction."""
        names = [c.name for c in candidates]
        start = _advance(db, cursor) if cursor else 0
        rows = _health_rows(db, names)
        healthy, soonest, limited = [], None, True
        for candidate in candidates:
            health = _health(rows.get(candidate.name), candidate.name)
            if health.usable(now):
                healthy.append((candidate, health))
                continue
            if health.cooling_until is not None:
                soonest = _earliest(soonest, health.cooling_until)
            limited = limited and _rate_limited(health)
        usable = len(healthy)
        # Turns go round among the healthy ones, so a resting account's share is spread evenly.
        for step in range(usable):
            candidate, health = healthy[(start + step) % usable]
            wait = _room(db, candidate, now)
            if wait:
                soonest = _earliest(soonest, now + wait)
                continue
            lease = uuid.uuid4().hex
            _LEASE.run(db, lease, candidate.name, now + self.lease_seconds)
            if candidate.rpm:
                db.execute(insert(account_hits).values(name=candidate.name, at=now))
            if candidate.name not in rows:
                _NEW_HEALTH.run(db, candidate.name)
            _USED.run(db, now, candidate.name)
            return Choice(candidate.name, lease, health.healing, usable)
        return Choice(None, None, False, usable, soonest, rate_limited=limited and usable == 0 and bool(candidates))

    # -- after a request ---------------------------------------------------------------------

    def _finished(self, lease: str) -> None:
        with self._pending_lock:
            self._pending.append(lease)
            if self._flush_armed:
                return
            self._flush_armed = True
        later(FLUSH_AFTER, self.flush)

    @contextlib.contextmanager
    def _writing(self):
        """A pool write transaction that also deletes the leases of this process's finished requests
        (put back to wait for the next one if the transaction fails)."""
        with self._pending_lock:
            done, self._pending = self._pending, []
        try:
            with self._store.write() as db:
                if done:
                    Raw.once(_UNLEASE_MANY.format(marks(len(done)))).run(db, *done)
                yield db
        except BaseException:
            with self._pending_lock:
                self._pending[:0] = done
            raise

    def flush(self) -> None:
        """Write what finished requests left pending (the timer's job when no choice came first)."""
        with self._pending_lock:
            self._flush_armed = False
            if not self._pending:
                return
        with self._writing():
            pass

    def renew(self, lease: str) -> None:
        with self._store.write() as db:
            db.execute(
                update(account_leases)
                .where(account_leases.c.lease_id == lease)
                .values(expires_at=time.time() + self.lease_seconds)
            )

    def release(self, name: str, lease: str | None, healed: bool = False) -> None:
        """End a request that went well (or was left by its caller); healed clears the account's backoff.

        A plain release is not a transaction of its own: the lease is deleted by this process's next
        write to the pool (its next choice, typically a moment later), or FLUSH_AFTER from now if none
        comes, so a request's end costs one DELETE in a transaction that happens anyway.
        """
        if not healed:
            if lease:
                self._finished(lease)
            return
        with self._writing() as db:
            if lease:
                db.execute(_UNLEASE, {"lease": lease})
            if healed:
                db.execute(
                    update(account_health)
                    .where(
                        account_health.c.name == name,
                        account_health.c.state != "needs_attention",
                        # a cooldown another request set while this one ran stands
                        or_(account_health.c.cooling_until.is_(None), account_health.c.cooling_until <= time.time()),
                    )
                    .values(state="ok", cooling_until=None, backoff=0.0)
                )

    def fail(self, name: str, lease: str | None, message: str, cooling, attention: bool) -> tuple[Health, Health]:
        """Record a failure that counts against the account; return its health before and after.

        cooling(before) gives (seconds to rest or None, the backoff to remember), read inside the
        transaction so two workers failing at once double the backoff once each, in turn.
        """
        now = time.time()
        with self._writing() as db:
            if lease:
                db.execute(_UNLEASE, {"lease": lease})
            row = db.execute(select(account_health).where(account_health.c.name == name)).first()
            before = _health(row, name)
            changes = {"last_error": message[:500], "last_error_at": now, "errors": account_health.c.errors + 1}
            seconds, backoff = cooling(before)
            if attention:
                changes.update(state="needs_attention", cooling_until=None)
            elif seconds is not None and before.state != "needs_attention":
                until = max(now + seconds, before.cooling_until or 0)
                changes.update(state="cooling", cooling_until=until, backoff=backoff)
            _bump(db, name, {name: row} if row else {}, **changes)
            after = _health(db.execute(select(account_health).where(account_health.c.name == name)).first(), name)
        return before, after

    def used(self, name: str) -> None:
        """Count a request sent outside choose() (an admin's test)."""
        with self._store.write() as db:
            _NEW_HEALTH.run(db, name)
            _USED.run(db, time.time(), name)

    def reset(self, name: str) -> None:
        """Clear an account's cooldown, backoff and needs-attention (an admin re-enabled or fixed it)."""
        with self._store.write() as db:
            db.execute(
                update(account_health)
                .where(account_health.c.name == name)
                .values(state="ok", cooling_until=None, backoff=0.0)
            )
            _forget_alerts(db, name)

    def forget(self, name: str) -> None:
        """Drop what is kept about an account that was removed."""
        with self._store.write() as db:
            for table in (account_health, account_leases, account_hits):
                db.execute(delete(table).where(table.c.name == name))
            _forget_alerts(db, name)

    # -- reading -----------------------------------------------------------------------------

    def health(self, names: list[str], in_flight: bool = True) -> dict[str, Health]:
        """Every named account's health and requests in flight (accounts never used read as fresh); in_flight
        False leaves the count out (0), and with it the write that settles this process's finished requests."""
        if in_flight:
            self.flush()  # this process's finished requests are not in flight
        now, flying = time.time(), {}
        with self._store.engine.connect() as db:
            rows = _health_rows(db, names)
            if in_flight:
                flying = dict(
                    db.execute(
                        select(account_leases.c.name, func.count())
                        .where(account_leases.c.name.in_(names), account_leases.c.expires_at > now)
                        .group_by(account_leases.c.name)
                    ).all()
                )
        return {n: _health(rows.get(n), n, flying.get(n, 0)) for n in names}

    def claim_alert(self, event: str, until: float | None) -> bool:
        """Return True once per event (until it may be told again, or is cleared): the caller sends it."""
        now = time.time()
        with self._store.write() as db:
            row = db.execute(select(alerts_sent.c.until).where(alerts_sent.c.event == event)).first()
            if row is not None and (row.until is None or row.until > now):
                return False
            db.execute(delete(alerts_sent).where(alerts_sent.c.event == event))
            db.execute(insert(alerts_sent).values(event=event, until=until))
        return True

    # -- cursors -----------------------------------------------------------------------------

    def next_cursor(self, name: str) -> int:
        """Advance a round-robin counter shared by every process on this database; return its old value."""
        with self._store.write() as db:
            return _advance(db, name)


def _forget_alerts(db, name: str) -> None:
    """Let the account's own events, and every class's, be told again (the account was reset or removed)."""
    db.execute(delete(alerts_sent).where(alerts_sent.c.event == f"needs_attention:{name}"))
    db.execute(delete(alerts_sent).where(alerts_sent.c.event.startswith("class_down:", autoescape=True)))


def _advance(db, name: str) -> int:
    """Inside a write transaction: step the named cursor on and return its old value."""
    if len(name) > CURSOR_CHARS:  # a long model's cursor: its name, cut, and a digest of the whole
        name = name[: CURSOR_CHARS - 41] + ":" + hashlib.sha1(name.encode()).hexdigest()  # noqa: S324
    row = _STEP.run(db, name).fetchone()
    if row is None:  # its first use
        _insert_missing(db, pool_cursors, name=name, value=0)
        row = _STEP.run(db, name).fetchone()
    return row[0] - 1


_HealthRow = collections.namedtuple("_HealthRow", _HEALTH_COLUMNS)  # one account_health row, by column name


def _health_rows(db, names: list[str]) -> dict:
    """The named accounts' health rows (those that have one), by name."""
    if not names:
        return {}
    found = Raw.once(_HEALTH_OF.format(marks(len(names)))).run(db, *names).fetchall()
    return {row[0]: _HealthRow._make(row) for row in found}


def _insert_missing(db, table: Table, **values) -> None:
    """Insert a row unless one with its primary key exists (another process may have made it)."""
    dialect = db.dialect.name
    if dialect in ("sqlite", "postgresql"):
        module = sqlite if dialect == "sqlite" else postgresql
        db.execute(module.insert(table).values(**values).on_conflict_do_nothing())
        return
    key = table.primary_key.columns.values()[0]
    if db.execute(select(key).where(key == values[key.name])).first() is None:
        db.execute(insert(table).values(**values))


def _room(db, candidate: Candidate, now: float) -> float:
    """Seconds until candidate has room under its limits (0: it has room now)."""
    if candidate.max_concurrent:
        flying = db.execute(_FLYING, {"n": candidate.name, "now": now}).scalar_one()
        if flying >= candidate.max_concurrent:
            return 1.0  # a request ends at some point: look again soon
    if candidate.rpm:
        db.execute(_OLD_HITS, {"n": candidate.name, "before": now - WINDOW})
        oldest = db.execute(_NTH_HIT, {"n": candidate.name, "skip": candidate.rpm - 1}).scalar()
        if oldest is not None:  # rpm requests in the last minute: room when the oldest of them leaves it
            return max(0.001, oldest + WINDOW - now)
    return 0.0


def _bump(db, name: str, rows: dict, **changes) -> None:
    """Update an account's health row, creating it first if it has none."""
    if name not in rows:
        _insert_missing(db, account_health, name=name, state="ok", backoff=0.0, requests=0, errors=0)
    db.execute(update(account_health).where(account_health.c.name == name).values(**changes))


def _health(row, name: str, in_flight: int = 0) -> Health:
    if row is None:
        return Health(name, in_flight=in_flight)
    return Health(
        name=name,
        state=row.state,
        cooling_until=row.cooling_until,
        backoff=row.backoff or 0.0,
        last_error=row.last_error,
        last_error_at=row.last_error_at,
        requests=row.requests or 0,
        errors=row.errors or 0,
        last_used=row.last_used,
        in_flight=in_flight,
    )


def _rate_limited(health: Health) -> bool:
    return health.state == "cooling" and health.backoff == 0.0 and health.cooling_until is not None


def _earliest(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)
