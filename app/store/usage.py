"""Usage in SQL: the ledger of every turn, and the counters that per-user limits are enforced on.

Like the pool's state (app/store/pool_state.py), these tables live on the conversation database,
so every worker and every instance on it counts the same requests. Admission is one write
transaction per turn: each limited subject's row for the day is bumped first (which also locks it
on PostgreSQL), then its limits are checked against what the row now says; a refusal rolls the
whole admission back, so nothing is counted for a request that was refused.

A subject is a user id: the user a turn is for, and the client that owns that user (whose row adds
up all of its users, so a client's limits bound what its users use together).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    and_,
    case,
    func,
    or_,
    select,
)

from app.store.conversations import metadata
from app.store.raw import Raw

WINDOW = 60.0  # seconds a per-minute limit counts over

usage_ledger = Table(
    "usage_ledger",
    metadata,
    Column("entry_id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),  # when the turn began
    Column("day", String(10), nullable=False),  # that moment's UTC date, YYYY-MM-DD
    Column("user_id", String(128), nullable=False),
    Column("client_id", String(128)),  # the client the turn came through (it spoke for its user)
    Column("owner_id", String(128)),  # the client that owns the user, if one does
    Column("account", String(128)),  # None: no account took it (none was available)
    Column("model", String(128)),
    Column("front", String(32), nullable=False),  # api | page | v1 | ...
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("estimated", Boolean, nullable=False),  # the counts are ours (chars / 4), not the upstream's
    Column("duration_ms", Integer, nullable=False),
    Column("outcome", String(8), nullable=False),  # ok | error | cut
    Column("status", Integer),  # an error's HTTP status
)
Index("ix_usage_ledger_day", usage_ledger.c.day)
Index("ix_usage_ledger_user_day", usage_ledger.c.user_id, usage_ledger.c.day)
Index("ix_usage_ledger_owner_day", usage_ledger.c.owner_id, usage_ledger.c.day)

# Requests and tokens per subject per UTC day: what daily limits are checked against.
usage_days = Table(
    "usage_days",
    metadata,
    Column("subject", String(128), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("requests", Integer, nullable=False, default=0),
    Column("tokens", BigInteger, nullable=False, default=0),  # a quota may be up to 10**12
)

# Each limited subject's requests per second of the last minute: what per-minute limits are checked against.
# At most 60 rows a subject, whatever the traffic, so a check costs the same at 1 request a minute or 10,000.
usage_seconds = Table(
    "usage_seconds",
    metadata,
    Column("subject", String(128), primary_key=True),
    Column("second", BigInteger, primary_key=True),  # whole seconds since the epoch (past 2038: 64 bits)
    Column("requests", Integer, nullable=False),
)

# Every turn runs these (app/store/raw.py): (subject, day, requests, tokens) -> (requests, tokens) after.
_BUMP = Raw(
    "UPDATE usage_days SET requests = requests + ?, tokens = tokens + ? WHERE subject = ? AND day = ?"
    " RETURNING requests, tokens"
)
_NEW_DAY = Raw("INSERT INTO usage_days (subject, day, requests, tokens) VALUES (?, ?, 0, 0) ON CONFLICT DO NOTHING")
_SECONDS = Raw(  # the last minute's requests, per second, oldest first
    "SELECT second, requests FROM usage_seconds WHERE subject = ? AND second > ? ORDER BY second"
)
_OLD_SECONDS = Raw("DELETE FROM usage_seconds WHERE subject = ? AND second <= ?")
_COUNT_SECOND = Raw("UPDATE usage_seconds SET requests = requests + ? WHERE subject = ? AND second = ?")
_NEW_SECOND = Raw("INSERT INTO usage_seconds (subject, second, requests) VALUES (?, ?, 0) ON CONFLICT DO NOTHING")
LEDGER_COLUMNS = [
    "at",
    "day",
    "user_id",
    "client_id",
    "owner_id",
    "account",
    "model",
    "front",
    "prompt_tokens",
    "completion_tokens",
    "estimated",
    "duration_ms",
    "outcome",
    "status",
]
_LEDGER = Raw(
    "INSERT INTO usage_ledger (at, day, user_id, client_id, owner_id, account, model, front, prompt_tokens,"
    " completion_tokens, estimated, duration_ms, outcome, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

GROUPS = {
    "user": usage_ledger.c.user_id,
    "account": usage_ledger.c.account,
    "model": usage_ledger.c.model,
    "day": usage_ledger.c.day,
}


_today = (0.0, 0.0, "")  # (the UTC day's first moment, the next day's, its date): every turn asks


def _day(moment: float) -> tuple[float, float, str]:
    global _today
    start, end, _name = _today
    if not start <= moment < end:
        midnight = datetime.fromtimestamp(moment, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        day = (midnight.timestamp(), (midnight + timedelta(days=1)).timestamp(), midnight.strftime("%Y-%m-%d"))
        if start <= day[0]:  # never go back to an older day for the moments after it
            _today = day
        return day
    return _today


def day_of(moment: float) -> str:
    """The UTC date of a moment, YYYY-MM-DD."""
    return _day(moment)[2]


def seconds_to_midnight(moment: float) -> float:
    """Seconds from moment to the next UTC midnight, when daily counts start again."""
    return _day(moment)[1] - moment


@dataclass(frozen=True)
class Rule:
    """One subject's limits (None: no limit)."""

    subject: str
    requests_per_minute: int | None = None
    requests_per_day: int | None = None
    tokens_per_day: int | None = None

    @property
    def limited(self) -> bool:
        return not (self.requests_per_minute is None and self.requests_per_day is None and self.tokens_per_day is None)


@dataclass(frozen=True)
class Standing:
    """Where one limited subject stands after its request was admitted (or refused)."""

    rule: Rule
    minute: int = 0  # requests in the last minute, this one included
    minute_reset: float = 0.0  # seconds until the per-minute count is back to nothing (OpenAI's reset)
    day_requests: int = 0  # requests today, this one included
    day_tokens: int = 0  # tokens today, before this request
    day_reset: float = 0.0  # seconds until the daily counts start again


class Refused(Exception):
    """A limit said no; nothing was counted."""

    def __init__(self, limit: str, standing: Standing, retry_after: float):
        super().__init__(limit)
        self.limit, self.standing, self.retry_after = limit, standing, retry_after


@dataclass
class Admission:
    """What admitting one request counted, so that it can be taken back or completed."""

    day: str
    at: float
    counted: list[str] = field(default_factory=list)  # subjects whose request was counted at admission
    seconds: list[str] = field(default_factory=list)  # subjects whose request was counted in this second
    standings: list[Standing] = field(default_factory=list)


@dataclass(frozen=True)
class Entry:
    """One turn, as the ledger keeps it."""

    at: float
    user_id: str
    client_id: str | None
    owner_id: str | None
    account: str | None
    model: str | None
    front: str
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    duration_ms: int
    outcome: str  # ok | error | cut
    status: int | None = None


class SqlUsage:
    """The usage ledger and the limit counters, on the conversation database (any SQLAlchemy URL)."""

    def __init__(self, store):
        self._store = store

    # -- limits --------------------------------------------------------------------------

    def admit(self, rules: list[Rule], now: float | None = None, db=None) -> Admission:
        """Count one request for every limited subject in rules, or raise Refused and count nothing.

        db: a write transaction to do it in (the pool's choice, typically), else one of its own.
        """
        now = time.time() if now is None else now
        admission = Admission(day_of(now), now)
        limited = [rule for rule in rules if rule.limited]
        if not limited:
            return admission
        if db is None:
            with self._store.write() as db:
                return self._admit(db, limited, admission)
        return self._admit(db, limited, admission)

    def _admit(self, db, limited: list[Rule], admission: Admission) -> Admission:
        """admit()'s work, inside its transaction."""
        now = admission.at
        to_midnight = seconds_to_midnight(now)
        for rule in limited:
            requests, tokens = self._bump(db, rule.subject, admission.day, 1, 0)
            standing = Standing(rule, day_requests=requests, day_tokens=tokens, day_reset=to_midnight)
            if rule.requests_per_day is not None and requests > rule.requests_per_day:
                raise Refused("requests_per_day", standing, to_midnight)
            if rule.tokens_per_day is not None and tokens >= rule.tokens_per_day:
                raise Refused("tokens_per_day", standing, to_midnight)
            if rule.requests_per_minute is not None:
                standing = self._minute(db, rule, standing, now, admission)
            admission.counted.append(rule.subject)
            admission.standings.append(standing)
        return admission

    def _minute(self, db, rule: Rule, standing: Standing, now: float, admission: Admission) -> Standing:
        """Check and count the per-minute limit inside the admission's transaction.

        The minute is the current second and the 59 before it; a second's requests leave the window together.
        """
        second, subject, limit = int(now), rule.subject, rule.requests_per_minute
        buckets = _SECONDS.run(db, subject, second - WINDOW).fetchall()  # [(second, requests)], oldest first
        count = sum(requests for _second, requests in buckets)
        if count >= limit:  # room comes when enough of the minute's requests have left it
            wait, left = WINDOW, count
            for bucket_second, requests in buckets:
                left -= requests
                if left < limit:
                    wait = bucket_second + WINDOW - now
                    break
            full = buckets[-1][0] + WINDOW - now if buckets else WINDOW  # back to the whole limit
            refused = Standing(rule, count, full, standing.day_requests - 1, standing.day_tokens, standing.day_reset)
            raise Refused("requests_per_minute", refused, max(0.001, wait))
        if not _COUNT_SECOND.run(db, 1, subject, second).rowcount:
            _OLD_SECONDS.run(db, subject, second - WINDOW)  # a new second: the old ones go
            _NEW_SECOND.run(db, subject, second)
            _COUNT_SECOND.run(db, 1, subject, second)
        admission.seconds.append(subject)
        # As OpenAI's x-ratelimit-reset-requests: the time until the whole limit is free again, which is when
        # this request (the newest) leaves the window.
        return Standing(rule, count + 1, WINDOW, standing.day_requests, standing.day_tokens, standing.day_reset)

    @staticmethod
    def _bump(db, subject: str, day: str, requests: int, tokens: int) -> tuple[int, int]:
        row = _BUMP.run(db, requests, tokens, subject, day).fetchone()
        if row is None:  # the subject's first request of the day
            _NEW_DAY.run(db, subject, day)
            row = _BUMP.run(db, requests, tokens, subject, day).fetchone()
        return row[0], row[1]

    def take_back(self, admission: Admission) -> None:
        """Uncount an admitted request that never reached an upstream (it was refused before one was asked)."""
        if not admission.counted:
            return
        with self._store.write() as db:
            for subject in admission.counted:
                _BUMP.run(db, -1, 0, subject, admission.day).fetchall()
            for subject in admission.seconds:
                _COUNT_SECOND.run(db, -1, subject, int(admission.at))
        admission.counted, admission.seconds = [], []

    # -- the ledger ----------------------------------------------------------------------

    def record(self, entry: Entry, admission: Admission, subjects: list[str], counts: bool = True) -> None:
        """Add a turn to the ledger and its tokens (and, where admission did not count it, its request)
        to each subject's day, together.

        The write is deferred to this process's next write transaction (the one that stores the turn's
        conversation, typically, or the next turn's), or 50 ms from now if none comes, or flush().
        """
        tokens = entry.prompt_tokens + entry.completion_tokens
        values, day = {"day": admission.day, **vars(entry)}, admission.day
        row = [values[name] for name in LEDGER_COLUMNS]
        counted = tuple(admission.counted) if counts else tuple(subjects)  # counted already, or not at all

        def write(db) -> None:
            _LEDGER.run(db, *row)
            for subject in subjects:
                self._bump(db, subject, day, 0 if subject in counted else 1, tokens)

        self._store.defer(write)

    def flush(self) -> None:
        """Write the turns this process has recorded, now."""
        self._store.flush()

    def today(self, subject: str, now: float | None = None) -> tuple[int, int]:
        """(requests, tokens) a subject has used today."""
        now = time.time() if now is None else now
        self._store.flush()  # this process's last turns first
        with self._store.engine.connect() as db:
            row = db.execute(
                select(usage_days.c.requests, usage_days.c.tokens).where(
                    usage_days.c.subject == subject, usage_days.c.day == day_of(now)
                )
            ).first()
        return (row.requests, row.tokens) if row else (0, 0)

    def report(
        self,
        first_day: str,
        last_day: str,
        group_by: list[str],
        users: list[str] | None = None,
        owner: str | None = None,
    ) -> list[dict]:
        """Totals per group over [first_day, last_day] (UTC dates), for the named users or one owner's users.

        users None and owner None: everyone. Groups come biggest first (by requests), then by key.
        """
        columns = [GROUPS[g].label(g) for g in group_by]
        errors = func.sum(case((usage_ledger.c.outcome == "error", 1), else_=0))
        cut = func.sum(case((usage_ledger.c.outcome == "cut", 1), else_=0))
        estimated = func.sum(case((usage_ledger.c.estimated, 1), else_=0))
        query = select(
            *columns,
            func.count().label("requests"),
            func.coalesce(func.sum(usage_ledger.c.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(usage_ledger.c.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(errors, 0).label("errors"),
            func.coalesce(cut, 0).label("cut"),
            func.coalesce(estimated, 0).label("estimated"),
        ).where(usage_ledger.c.day >= first_day, usage_ledger.c.day <= last_day)
        scope = []
        if users is not None:
            scope.append(usage_ledger.c.user_id.in_(users))
        if owner is not None:
            scope.append(or_(usage_ledger.c.owner_id == owner, usage_ledger.c.user_id == owner))
        if scope:
            query = query.where(and_(*scope))
        if columns:
            query = query.group_by(*columns).order_by(func.count().desc(), *columns)
        self._store.flush()  # this process's last turns first (other processes' are at most 50 ms behind)
        with self._store.engine.connect() as db:
            rows = db.execute(query).mappings().all()
        out = []
        for row in rows:
            item = dict(row)
            if not columns and not item["requests"]:
                item = {k: 0 for k in item}
            item["total_tokens"] = item["prompt_tokens"] + item["completion_tokens"]
            out.append(item)
        return out
