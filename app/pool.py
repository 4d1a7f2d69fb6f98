"""The pool of upstream accounts: which one takes a new conversation, which one a follow-up.

It chooses; it does not talk HTTP. Cursors, health, leases and request counts live in the
database (app/store/pool_state.py), so every worker process and every instance on the same
database sees one pool: the spread stays even, an account one worker saw fail rests for all of
them, and `max_concurrent` and `rpm` count every request wherever it runs.

An account is `ok`, `cooling` (until a time), `needs_attention` (the upstream refused its
credentials) or `disabled` (in settings). What an upstream failure does to it is decided here,
from the failure's `fault` (app/errors.py).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from app.alerts import Alerts
from app.config import Account
from app.errors import BadRequest, Conflict, Forbidden, NoAccountAvailable, NotFound
from app.store.pool_state import Candidate, Choice, Health, SqlPoolState
from app.upstream import UPSTREAMS, Upstream, build

PLUS_MODES = ("false", "true", "any")
log = logging.getLogger(__name__)
STATES = ("ok", "cooling", "needs_attention", "disabled")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def back_in(health: Health | None) -> float | None:
    """Seconds until a resting account takes requests again (None: not resting, or not for a known time)."""
    if health is None or health.state == "needs_attention" or health.cooling_until is None:
        return None
    left = health.cooling_until - time.time()
    return left if left > 0 else None


def class_of(account: Account) -> str:
    return "plus" if account.plus else "free"


@dataclass
class Lease:
    """One request's hold on one account: released, or reported failed, when the request ends."""

    upstream: Upstream
    lease: str | None = None
    healing: bool = False
    tracked: bool = True  # False for a caller's own access token: not a pool account
    model: str | None = None  # the model it was chosen for, when the caller asked for one

    @property
    def name(self) -> str:
        return self.upstream.account.name

    @property
    def serving(self) -> str:
        """The model the request goes to: the one asked for, or the account's default."""
        return self.model or self.upstream.account.model


class Pool:
    def __init__(self, accounts: list[Account], settings: dict, state: SqlPoolState):
        self.timeouts = settings["timeouts"]
        self.max_line_bytes = settings["max_upstream_line_bytes"]
        self.byo = settings["byo_account"]
        self.state = state
        self.audit = None  # AuditService, told when an account starts cooling or needs attention
        self.accounts: dict[str, Account] = {}
        self.upstreams: dict[str, Upstream] = {}
        self._byo_lock = threading.Lock()
        self._byo_clients: dict[str, Upstream] = {}
        self.configure(accounts, settings)

    def configure(self, accounts: list[Account], settings: dict) -> None:
        """Take a new list of accounts (and health rules) at run time; unchanged accounts keep their sessions."""
        self.health_rules = dict(settings["health"])
        self.queue_timeout = float(settings["queue_timeout"])
        self.aliases = dict(settings.get("model_aliases") or {})
        self.alerts = Alerts(settings["alerts"]["webhook_url"], self.state)
        upstreams = {}
        for account in accounts:
            old = self.upstreams.get(account.name)
            same = old is not None and old.account == account
            upstreams[account.name] = old if same else build(account, self.timeouts, self.max_line_bytes)
        # Replaced sessions are left to close when their last request lets go of them.
        self.accounts, self.upstreams = {a.name: a for a in accounts}, upstreams

    def close(self) -> None:
        for upstream in [*self.upstreams.values(), *self._byo_clients.values()]:
            upstream.close()

    def enabled(self) -> list[Account]:
        return [a for a in self.accounts.values() if a.enabled]

    def demo_only(self) -> bool:
        """True while every enabled account is the built-in demo (a fresh install)."""
        enabled = self.enabled()
        return bool(enabled) and all(a.type == "demo" for a in enabled)

    # -- which accounts ----------------------------------------------------------------------

    def eligible(self, plus: str, user_plus: bool) -> tuple[str, list[Account]]:
        """Return the class name and the enabled accounts a new conversation may use."""
        if plus not in PLUS_MODES:
            raise ValueError(plus)
        if plus == "true" and not user_plus:
            raise Forbidden("plus accounts are for plus users; this key is not plus", param="plus")
        if plus == "any" and not user_plus:
            plus = "false"
        klass = {"false": "free", "true": "plus", "any": "any"}[plus]
        accounts = [a for a in self.enabled() if klass == "any" or a.plus == (klass == "plus")]
        return klass, accounts

    def pick(
        self, plus: str, user_plus: bool, exclude: Iterable[str] = (), first=None, model: str | None = None
    ) -> Lease:
        """Take the next eligible account for a new conversation (healthy, with room), waiting for room;
        with model, among those serving it (an alias names the model it stands for).

        first: work for the choice's own transaction (SqlPoolState.choose), such as the turn's admission.
        """
        klass, accounts = self.eligible(plus, user_plus)
        if not accounts:
            raise NoAccountAvailable(
                f"no enabled {klass} account is configured; "
                f"{'ask for plus=any or ' if klass == 'plus' else ''}"
                "add one to settings.json"
            )
        cursor, model = klass, self.resolve(model)
        if model:
            accounts, cursor = [a for a in accounts if a.serves(model)], f"{klass}:{model}"
            if not accounts:
                raise NotFound(f"no {klass} account serves the model {model!r}", param="model")
        lease = self._take(cursor, [a for a in accounts if a.name not in exclude], klass, first=first)
        return replace(lease, model=model) if model else lease

    def pick_model(
        self, model: str | None, user_plus: bool, exclude: Iterable[str] = (), first=None, needs: dict | None = None
    ) -> Lease:
        """Take the next account serving model among all the caller may use (any account when model is empty)
        that can do what the request needs ({capability: the parameter asking for it}, Upstream.capabilities)."""
        _klass, accounts = self.eligible("any", user_plus)
        model = self.resolve(model)
        if model:
            accounts = [a for a in accounts if a.serves(model)]
        if not accounts:
            if model:
                raise NotFound(f"the model {model!r} does not exist or you do not have access to it", param="model")
            raise NoAccountAvailable("no enabled account is configured; add one to settings.json")
        for need, param in (needs or {}).items():
            able = [a for a in accounts if need in UPSTREAMS[a.type].capabilities]
            if not able:
                served = f"model {model!r}" if model else "any model you may use"
                raise BadRequest(f"{param}: no account serving {served} supports {need}", param=param)
            accounts = able
        cursor = f"model:{model or '*'}:{int(user_plus)}"
        what = f"model {model}" if model else ""
        lease = self._take(cursor, [a for a in accounts if a.name not in exclude], what, first=first)
        return replace(lease, model=model) if model else lease

    def resolve(self, model: str | None) -> str | None:
        """The model a name means: itself, or the model an alias in settings stands for."""
        return self.aliases.get(model, model) if model else model

    def replacement(self, klass: str, user_plus: bool, exclude: Iterable[str], first=None) -> Lease:
        """Take another account of klass for a conversation whose history is kept here (stateless types)."""
        if klass == "plus" and not user_plus:
            raise Forbidden("this conversation runs on a plus account, and this key is not plus", param="plus")
        _klass, accounts = self.eligible("any", user_plus)
        accounts = [
            a
            for a in accounts
            if UPSTREAMS[a.type].sends_history and a.name not in exclude and (klass == "any" or class_of(a) == klass)
        ]
        if not accounts:
            raise NoAccountAvailable(
                f"this conversation's account is unavailable and no other {klass} account can carry it on; "
                "try again later or start a new conversation"
            )
        return self._take(klass, accounts, klass, first=first)

    def pinned(self, account_name: str) -> tuple[str, Health | None]:
        """Return the state of a conversation's account ("removed" if it is gone) and its health."""
        account = self.accounts.get(account_name)
        if account is None:
            return "removed", None
        if not account.enabled:
            return "disabled", None
        health = self.state.health([account_name])[account_name]
        return health.current_state(time.time()), health

    def take_pinned(self, account_name: str, first=None) -> Lease | None:
        """Take a lease on a follow-up's own account, waiting for room as a new conversation would;
        None if it is removed, disabled or unhealthy (pinned() then says which)."""
        account = self.accounts.get(account_name)
        if account is None or not account.enabled:
            return None
        return self._take(None, [account], "", unhealthy_is_none=True, first=first)

    def gone(self, account_name: str, state: str) -> Conflict:
        why = "is no longer configured" if state == "removed" else "is disabled"
        return Conflict(
            f"this conversation is pinned to account {account_name!r}, which {why}; start a new conversation"
        )

    def _take(
        self, cursor: str | None, accounts: list[Account], what: str, unhealthy_is_none: bool = False, first=None
    ):
        """Choose among accounts (round robin by cursor); wait up to queue_timeout while all healthy ones are full.

        When none is healthy: NoAccountAvailable, or None with unhealthy_is_none (the caller decides).
        """
        candidates = [Candidate(a.name, a.max_concurrent, a.rpm) for a in accounts]
        deadline, pause = time.monotonic() + self.queue_timeout, 0.02
        while True:
            choice = self.state.choose(cursor, candidates, first=first) if candidates else Choice(None)
            first = None  # done with the first look, whatever it found
            if choice.name is not None:
                upstream = self.upstreams.get(choice.name)
                if upstream is not None:
                    return Lease(upstream, choice.lease, choice.healing)
                self.state.release(choice.name, choice.lease)  # removed meanwhile: choose among the rest
                candidates = [c for c in candidates if c.name != choice.name]
                continue
            wait = None if choice.soonest is None else max(1.0, choice.soonest - time.time())
            label = f"{what} " if what and what != "any" else ""
            if choice.usable == 0:
                if unhealthy_is_none:
                    return None
                later = f"; the first comes back in {wait:.0f} s" if wait else ""
                raise NoAccountAvailable(
                    f"every eligible {label}account is unavailable right now (cooling down or needing attention)"
                    f"{later}; try again then",
                    retry_after=wait or 30,
                    rate_limited=choice.rate_limited,
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoAccountAvailable(
                    f"every eligible {label}account is at its limit (max_concurrent or rpm) and none had room "
                    f"within {self.queue_timeout:g} s; try again shortly",
                    retry_after=wait or 1,
                )
            time.sleep(min(pause, left))  # gevent's sleep under gunicorn; the last look is at the deadline itself
            pause = min(pause * 2, 0.25)

    # -- after a request ---------------------------------------------------------------------

    def renew(self, lease: Lease) -> None:
        if lease.tracked and lease.lease:
            self.state.renew(lease.lease)

    def succeeded(self, lease: Lease) -> None:
        """The request went well: give its lease back, and clear the account's backoff if it had one."""
        if lease.tracked:
            self.state.release(lease.name, lease.lease, healed=lease.healing)

    def released(self, lease: Lease) -> None:
        """The request ended with no verdict on the account (its caller left, or it was the caller's fault)."""
        if lease.tracked:
            self.state.release(lease.name, lease.lease)

    def failed(self, lease: Lease, exc) -> float | None:
        """Count an upstream failure against its account, as its fault says; return the seconds until the
        account comes back, if it rests for a known time."""
        fault = getattr(exc, "fault", "transient")
        if not lease.tracked or fault == "caller":
            self.released(lease)
            return None
        rules = self.health_rules

        def cooling(before: Health) -> tuple[float | None, float]:
            if fault == "rate_limited":
                asked = getattr(exc, "upstream_retry_after", None)
                return min(rules["rate_limit_max"], rules["rate_limit_cooldown"] if asked is None else asked), 0.0
            if not rules["backoff_start"]:
                return None, 0.0
            backoff = min(rules["backoff_max"], max(rules["backoff_start"], before.backoff * 2))
            return backoff, backoff

        before, after = self.state.fail(lease.name, lease.lease, exc.message, cooling, fault == "credentials")
        now = time.time()
        state = after.current_state(now)
        if self.audit is not None and state != "ok" and state != before.current_state(now):
            until = after.cooling_until if state == "cooling" else None
            self.audit.record(None, f"account.{state}", lease.name, error=exc.message[:300], fault=fault, until=until)
        try:
            self._alert(lease.upstream.account, after)
        except Exception:  # an alert is a nicety: never let it fail the request that saw the failure
            log.exception("could not decide on an alert for account %r", lease.name)
        return back_in(after)

    def _alert(self, account: Account, after: Health) -> None:
        """Tell the webhook, once per event, that an account needs attention or that its class has none left."""
        if self.alerts.url is None:
            return
        if after.state == "needs_attention":
            self.alerts.send(
                f"needs_attention:{account.name}",
                None,
                f"chatgpt-api-server: account {account.name!r} needs attention: {after.last_error}",
            )
        klass = class_of(account)
        peers = [a.name for a in self.enabled() if class_of(a) == klass]
        healths = self.state.health(peers).values()
        now = time.time()
        if peers and not any(h.usable(now) for h in healths):
            comes_back = [h.cooling_until for h in healths if h.state != "needs_attention" and h.cooling_until]
            until = min(comes_back) if comes_back else None
            self.alerts.send(
                f"class_down:{klass}",
                until,
                f"chatgpt-api-server: no {klass} account can take a request now ({len(peers)} configured)",
            )

    # -- what is known -----------------------------------------------------------------------

    def report(self, in_flight: bool = True) -> list[tuple[Account, Health, str]]:
        """Every configured account with its health and its state, in settings order (in_flight False: without
        counting requests in flight, which needs a write first; states alone need none)."""
        accounts = list(self.accounts.values())  # one view: configure() may swap the dict meanwhile
        healths = self.state.health([a.name for a in accounts], in_flight=in_flight)
        now = time.time()
        return [(a, healths[a.name], healths[a.name].current_state(now) if a.enabled else "disabled") for a in accounts]

    def counts(self) -> dict[str, int]:
        """How many accounts are in each state."""
        counts = dict.fromkeys(STATES, 0)
        for _account, _health, state in self.report(in_flight=False):  # /api/health: no write, however busy
            counts[state] += 1
        return counts

    def models(self, user_plus: bool) -> list[str]:
        """Return the models of the accounts the caller may use, each once, in settings order, then the aliases
        of those models."""
        served = dict.fromkeys(m for a in self.eligible("any", user_plus)[1] for m in a.all_models)
        return [*served, *(alias for alias, model in self.aliases.items() if model in served and alias not in served)]

    def access_token_for(self, session_token: str) -> str:
        """Trade a ChatGPT session token for a fresh access token at byo_account's auth_base, through its
        proxy (the default proxy unless byo_account names one). Raises UpstreamError as a turn would."""
        account = Account(
            name="session",
            type="chatgpt-web",
            base_url=self.byo["base_url"].rstrip("/"),
            model=self.byo["model"],
            session_token=session_token,
            auth_base=self.byo["auth_base"],
            proxy=self.byo["proxy"],
        )
        upstream = build(account, self.timeouts, self.max_line_bytes)
        try:
            return upstream.fresh_access_token()
        finally:
            upstream.close()

    def own_token(self, access_token: str, user_plus: bool) -> Lease:
        """Build (or reuse) a chatgpt-web account for a caller's own access token."""
        digest = token_hash(access_token)
        key = f"{digest}:{int(user_plus)}"
        with self._byo_lock:
            upstream = self._byo_clients.get(key)
            if upstream is None:
                account = Account(
                    name=f"own-token-{digest[:8]}",
                    type="chatgpt-web",
                    base_url=self.byo["base_url"].rstrip("/"),
                    model=self.byo["plus_model"] if user_plus else self.byo["model"],
                    plus=user_plus,
                    access_token=access_token,
                    proxy=self.byo["proxy"],
                )
                upstream = build(account, self.timeouts, self.max_line_bytes)
                if len(self._byo_clients) >= 256:  # bound memory: drop the oldest session
                    self._byo_clients.pop(next(iter(self._byo_clients))).close()
                self._byo_clients[key] = upstream
        return Lease(upstream, tracked=False)
