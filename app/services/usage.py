"""The usage ledger: every turn recorded once it ends, and totals for whoever may see them.

A user sees its own usage, a client its own users' (and its own), an admin everyone's. Token
counts are the upstream's `usage` when it gives one; otherwise an estimate (four characters a
token, of what was sent and what came back), and the entry says so.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, date, datetime, timedelta

from app import metrics
from app.errors import BadRequest
from app.services.quota import Ticket
from app.store.usage import GROUPS, Entry, SqlUsage, day_of
from app.store.users import User

DEFAULT_DAYS = 30  # a report without dates covers the last 30 days, today included
log = logging.getLogger(__name__)


def estimate(chars: int) -> int:
    return math.ceil(chars / 4)


def parse_day(value: str | None, param: str) -> date | None:
    if value in (None, ""):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except (TypeError, ValueError):
        raise BadRequest(f"{param} must be a date as YYYY-MM-DD (got {str(value)[:20]!r})", param=param) from None


def parse_groups(value) -> list[str]:
    """group_by as a list or a comma-separated string of user, account, model, day."""
    if value in (None, ""):
        return []
    parts = value if isinstance(value, list) else str(value).split(",")
    groups = []
    for part in parts:
        name = str(part).strip()
        if name not in GROUPS:
            raise BadRequest(f"group_by: {name!r} is not one of {', '.join(GROUPS)}", param="group_by")
        if name not in groups:
            groups.append(name)
    return groups


class UsageService:
    def __init__(self, usage: SqlUsage, users):
        self.usage = usage
        self.users = users  # UserService: who may see whom

    # -- recording -----------------------------------------------------------------------

    def record(
        self,
        ticket: Ticket,
        *,
        front: str,
        account: str | None,
        model: str | None,
        usage: dict | None,
        sent_chars: int,
        reply_chars: int,
        outcome: str,
        status: int | None = None,
        counts: bool = True,
    ) -> None:
        """Add one turn to the ledger. A failure to record is logged, never the caller's problem.

        The line is written with this process's next write (the turn's own conversation, or its next turn's
        admission), or 50 ms later: a worker counts its own turns at once, and another's within 50 ms.
        counts False: a turn that never reached an upstream, kept in the ledger (as an error) but not in
        anyone's requests for the day.
        """
        usage = usage or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        given = _count(prompt) and _count(completion)
        entry = Entry(
            at=ticket.admission.at,
            user_id=ticket.user_id,
            client_id=ticket.client_id,
            owner_id=ticket.owner_id,
            account=account,
            model=model,
            front=front,
            prompt_tokens=prompt if given else estimate(sent_chars),
            completion_tokens=completion if given else estimate(reply_chars),
            estimated=not given,
            duration_ms=round((time.monotonic() - ticket.started) * 1000),
            outcome=outcome,
            status=status,
        )
        metrics.tokens(model, entry.prompt_tokens, entry.completion_tokens)
        try:
            self.usage.record(entry, ticket.admission, ticket.subjects, counts)
        except Exception:  # the answer has gone already; losing it here would lose the turn twice
            log.exception("could not record a turn of user %r in the usage ledger", ticket.user_id)

    # -- reporting -----------------------------------------------------------------------

    def report(
        self,
        actor: User,
        first: str | None = None,
        last: str | None = None,
        group_by=None,
        user_id: str | None = None,
    ) -> dict:
        """Totals of requests, tokens and errors per group over a range of UTC days, as actor may see."""
        groups = parse_groups(group_by)
        last_day = parse_day(last, "to") or datetime.now(UTC).date()
        first_day = parse_day(first, "from") or last_day - timedelta(days=DEFAULT_DAYS - 1)
        if first_day > last_day:
            raise BadRequest("from must not be after to", param="from")
        users, owner = self._scope(actor, user_id)
        rows = self.usage.report(first_day.isoformat(), last_day.isoformat(), groups, users, owner)
        if "user" in groups:
            for row in rows:
                found = self.users.store.get(row["user"])
                row["username"] = found.username if found else None
        totals = self.usage.report(first_day.isoformat(), last_day.isoformat(), [], users, owner)[0]
        return {
            "from": first_day.isoformat(),
            "to": last_day.isoformat(),
            "group_by": groups,
            "user_id": user_id,
            "groups": rows,
            "totals": totals,
        }

    def _scope(self, actor: User, user_id: str | None) -> tuple[list[str] | None, str | None]:
        """(users, owner) whose turns actor may see: one user, a client's users, or (None, None) everyone."""
        if user_id == actor.user_id:
            return [actor.user_id], None
        if user_id:
            return [self.users.visible(actor, user_id).user_id], None
        if actor.role == "admin":
            return None, None
        if actor.role == "client":
            return None, actor.user_id
        return [actor.user_id], None

    def today(self, user: User) -> dict:
        requests, tokens = self.usage.today(user.user_id)
        return {"day": day_of(time.time()), "requests": requests, "tokens": tokens}


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
