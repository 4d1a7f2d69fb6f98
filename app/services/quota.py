"""Per-user limits: what applies to whom, admitting a turn before any upstream is asked, and the headers
that tell a client where it stands.

A user's limits are its role's defaults (settings "limits") with its own overrides on top. A turn
is admitted against the user's limits and, for a user a client created, against the client's own
limits too, counted over all of that client's users together: a bot cannot hand out more than it
was given. Counting happens in the database (app/store/usage.py), so it is exact across workers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from app import metrics
from app.config import check_limit
from app.errors import BadRequest, ConfigError, Forbidden, RateLimited
from app.services.principal import Principal
from app.store.usage import Admission, Refused, Rule, SqlUsage, Standing, day_of
from app.store.users import LIMIT_KEYS, User, UserStore

WHAT = {
    "requests_per_minute": "requests a minute",
    "requests_per_day": "requests a day",
    "tokens_per_day": "tokens a day",
}


@dataclass
class Ticket:
    """One admitted turn: whom it counts for, and what was counted."""

    admission: Admission
    user_id: str
    client_id: str | None  # the client it came through
    owner_id: str | None  # the client that owns the user
    started: float = field(default_factory=time.monotonic)

    @property
    def subjects(self) -> list[str]:
        return [self.user_id] + ([self.owner_id] if self.owner_id else [])


class Admit:
    """One turn's admission, done once: inside the pool's choice (as its `first`) or on its own (ensure)."""

    def __init__(self, quota: QuotaService, principal: Principal):
        self.quota, self.principal = quota, principal
        self.ticket: Ticket | None = None  # set once the admission has committed

    def __call__(self, db):
        """Admit inside db's transaction; return what to do once it has committed."""
        if self.ticket is not None:
            return None
        ticket = self.quota.admit(self.principal, db)
        return lambda: setattr(self, "ticket", ticket)

    def ensure(self) -> Ticket:
        """The ticket, admitting now (in a transaction of its own) if no choice did it."""
        if self.ticket is None:
            self.ticket = self.quota.admit(self.principal)
        return self.ticket


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: 20ms, 1.5s, 6m0s, 1h2m3s."""
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    tenths = math.ceil(seconds * 10) / 10
    if tenths < 60:
        return f"{tenths:g}s"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"


def rate_headers(standings: list[Standing], refused: tuple[str, Standing] | None = None) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the tightest of the limits that apply (none: no headers)."""
    requests, tokens = [], []
    for s in standings:
        rule = s.rule
        if rule.requests_per_minute is not None:
            requests.append((rule.requests_per_minute - s.minute, s.minute_reset, rule.requests_per_minute))
        if rule.requests_per_day is not None:
            requests.append((rule.requests_per_day - s.day_requests, s.day_reset, rule.requests_per_day))
        if rule.tokens_per_day is not None:
            tokens.append((rule.tokens_per_day - s.day_tokens, s.day_reset, rule.tokens_per_day))
    if refused is not None:  # the limit that said no has nothing left
        limit, s = refused
        value = getattr(s.rule, limit)
        reset = s.minute_reset if limit == "requests_per_minute" else s.day_reset
        (tokens if limit == "tokens_per_day" else requests).append((0, reset, value))
    headers = {}
    for kind, found in (("requests", requests), ("tokens", tokens)):
        if found:
            remaining, reset, limit = min(found, key=lambda f: (max(0, f[0]), f[1]))
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, remaining))
            headers[f"x-ratelimit-reset-{kind}"] = duration(reset)
    return headers


class QuotaService:
    def __init__(self, usage: SqlUsage, users: UserStore, settings: dict):
        self.usage = usage
        self.users = users
        self.defaults = settings["limits"]

    def limits_of(self, user: User) -> dict[str, int | None]:
        """The limits that apply to a user: its role's defaults with its own on top."""
        return {**self.defaults[user.role], **(user.limits or {})}

    def owner_of(self, user: User) -> User | None:
        """The client that created a plain user, if a client did (its limits bound the user's too)."""
        if user.role != "user" or not user.created_by:
            return None
        owner = self.users.get(user.created_by)
        return owner if owner is not None and owner.role == "client" else None

    def rule(self, user: User) -> Rule:
        return Rule(user.user_id, **self.limits_of(user))

    # -- admitting -----------------------------------------------------------------------

    def admit(self, principal: Principal, db=None) -> Ticket:
        """Count a turn against its user's (and its client's) limits, or raise RateLimited (429).

        db: a write transaction to count it in (the pool's choice), else one of its own.
        """
        user = principal.user
        owner = self.owner_of(user)
        rules = [self.rule(user)] + ([self.rule(owner)] if owner else [])
        try:
            admission = self.usage.admit(rules, db=db)
        except Refused as no:
            raise self._refusal(no, user, owner) from None
        return self.ticket(principal, admission, owner)

    def ticket(self, principal: Principal, admission: Admission | None = None, owner: User | None = None) -> Ticket:
        """A turn's ticket; without an admission, one that counted nothing (for a turn never admitted)."""
        user = principal.user
        owner = owner or self.owner_of(user)
        client = principal.actor.user_id if principal.actor.user_id != user.user_id else None
        now = time.time()
        return Ticket(admission or Admission(day_of(now), now), user.user_id, client, owner.user_id if owner else None)

    def admitting(self, principal: Principal) -> Admit:
        """A turn's admission, to be done in the transaction that chooses its account (or on its own)."""
        return Admit(self, principal)

    def take_back(self, ticket: Ticket) -> None:
        """The turn never reached an upstream: it does not count."""
        self.usage.take_back(ticket.admission)

    @staticmethod
    def headers(ticket: Ticket) -> dict[str, str]:
        return rate_headers(ticket.admission.standings)

    def _refusal(self, no: Refused, user: User, owner: User | None) -> RateLimited:
        limit, standing = no.limit, no.standing
        metrics.refused(limit)
        value = getattr(standing.rule, limit)
        if owner is not None and standing.rule.subject == owner.user_id:
            who = f"the users of client {owner.username!r} together may use {value} {WHAT[limit]}"
        else:
            who = f"this user may use {value} {WHAT[limit]}"
        if limit == "requests_per_minute":
            message = f"rate limit reached: {who}; try again in {math.ceil(no.retry_after)} s"
        else:
            hours, minutes = divmod(math.ceil(no.retry_after / 60), 60)
            message = f"daily quota reached: {who}; it starts again at 00:00 UTC (in {hours} h {minutes} min)"
        headers = rate_headers([standing], (limit, standing))
        return RateLimited(message, retry_after=no.retry_after, headers=headers, quota=limit != "requests_per_minute")

    # -- granting ------------------------------------------------------------------------

    def check_grant(self, actor: User, limits) -> dict[str, int | None]:
        """Return limits as a user's own, if actor may give them: a client never gives more than it has."""
        if not isinstance(limits, dict):
            raise BadRequest('limits must be an object such as {"requests_per_minute": 10}', param="limits")
        clean = {}
        for key, value in limits.items():
            if key not in LIMIT_KEYS:
                raise BadRequest(f"limits.{key}: unknown limit (known: {', '.join(LIMIT_KEYS)})", param="limits")
            try:
                clean[key] = check_limit(f"limits.{key}", value)
            except ConfigError as exc:  # settings and requests check a limit alike
                raise BadRequest(str(exc), param="limits") from None
        if actor.role == "client":
            own = self.limits_of(actor)
            for key, value in clean.items():
                if own[key] is not None and (value is None or value > own[key]):
                    raise Forbidden(
                        f"limits.{key}: a client cannot give more than its own limit ({own[key]} {WHAT[key]})",
                        param="limits",
                    )
        return clean
