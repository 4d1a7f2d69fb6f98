"""The pool of upstream accounts: which one takes a new conversation, which one a follow-up.

It chooses; it does not talk HTTP. Round-robin cursors live in the conversation database, so
every worker process (and every server instance on a shared database) takes turns from the
same counter and the spread stays even.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

from app.config import Account
from app.errors import Conflict, Forbidden, NoAccountAvailable, NotFound
from app.upstream import Upstream, build

PLUS_MODES = ("false", "true", "any")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Pool:
    def __init__(self, accounts: list[Account], settings: dict, next_cursor: Callable[[str], int]):
        self.timeouts = settings["timeouts"]
        self.max_line_bytes = settings["max_upstream_line_bytes"]
        self.byo = settings["byo_account"]
        self.accounts = {a.name: a for a in accounts}
        self.upstreams = {a.name: build(a, self.timeouts, self.max_line_bytes) for a in accounts}
        self._next_cursor = next_cursor
        self._byo_lock = threading.Lock()
        self._byo_clients: dict[str, Upstream] = {}

    def close(self) -> None:
        for upstream in [*self.upstreams.values(), *self._byo_clients.values()]:
            upstream.close()

    def enabled(self) -> list[Account]:
        return [a for a in self.accounts.values() if a.enabled]

    def demo_only(self) -> bool:
        """True while every enabled account is the built-in demo (a fresh install)."""
        enabled = self.enabled()
        return bool(enabled) and all(a.type == "demo" for a in enabled)

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

    def pick(self, plus: str, user_plus: bool) -> Upstream:
        """Pick the next eligible account for a new conversation."""
        klass, accounts = self.eligible(plus, user_plus)
        if not accounts:
            raise NoAccountAvailable(
                f"no enabled {klass} account is configured; "
                f"{'ask for plus=any or ' if klass == 'plus' else ''}"
                "add one to settings.json"
            )
        return self._next(klass, accounts)

    def pick_model(self, model: str | None, user_plus: bool) -> Upstream:
        """Pick the next account serving model among all the caller may use (any account when model is empty)."""
        _klass, accounts = self.eligible("any", user_plus)
        if model:
            accounts = [a for a in accounts if a.model == model]
        if not accounts:
            if model:
                raise NotFound(f"the model {model!r} does not exist or you do not have access to it", param="model")
            raise NoAccountAvailable("no enabled account is configured; add one to settings.json")
        return self._next(f"model:{model or '*'}:{int(user_plus)}", accounts)

    def _next(self, cursor: str, accounts: list[Account]) -> Upstream:
        """Take the next of accounts in turn, by the shared round-robin counter named cursor."""
        return self.upstreams[accounts[self._next_cursor(cursor) % len(accounts)].name]

    def models(self, user_plus: bool) -> list[str]:
        """Return the models of the accounts the caller may use, each once, in settings order."""
        return list(dict.fromkeys(a.model for a in self.eligible("any", user_plus)[1]))

    def pinned(self, account_name: str) -> Upstream:
        """Return the account a conversation is pinned to, or Conflict if it is gone or disabled."""
        account = self.accounts.get(account_name)
        if account is None:
            raise Conflict(
                f"this conversation is pinned to account {account_name!r}, which is no longer "
                "configured; start a new conversation"
            )
        if not account.enabled:
            raise Conflict(
                f"this conversation is pinned to account {account_name!r}, which is disabled; start a new conversation"
            )
        return self.upstreams[account_name]

    def own_token(self, access_token: str, user_plus: bool) -> Upstream:
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
        return upstream
