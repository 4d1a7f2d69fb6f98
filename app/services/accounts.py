"""The pool's accounts at run time: list them with their health, add, change, remove, test. Admins only.

Changes go to settings.json (app/settings_file.py) and then to this worker's pool; the other
workers see the file change within a second (refresh(), run before every request). Secret fields
are write-only: an answer says only whether each is set (or which environment variable holds it).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from app.config import ACCOUNT_KEYS, ACCOUNT_TYPES, SECRET_KEYS, Account
from app.errors import AppError, BadRequest, ConfigError, Conflict, Forbidden, NotFound
from app.pool import Lease, Pool
from app.settings_file import SettingsFile
from app.store.pool_state import Health
from app.store.users import User
from app.upstream import Delta, Turn
from app.upstream.base import checked

TEST_PROMPT = "Reply with the single word OK."
TEST_REPLY_CHARS = 2000
log = logging.getLogger(__name__)


def iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class AccountReport:
    """One account as an admin sees it: settings without secrets, and its live health."""

    account: Account
    health: Health
    state: str
    secrets: dict[str, str]  # field -> "set" | "not set" | "env:NAME"

    def public(self) -> dict:
        a, h = self.account, self.health
        proxy = urlsplit(a.proxy) if a.proxy else None
        now = time.time()
        return {
            "name": a.name,
            "type": a.type,
            "plus": a.plus,
            "model": a.model,
            "models": list(a.models),
            "base_url": a.base_url,
            "enabled": a.enabled,
            "state": self.state,
            "cooling_until": iso(h.cooling_until) if self.state == "cooling" and h.cooling_until > now else None,
            "last_error": {"message": h.last_error, "at": iso(h.last_error_at)} if h.last_error else None,
            "in_flight": h.in_flight,
            "requests": h.requests,
            "errors": h.errors,
            "last_used": iso(h.last_used),
            "proxy": {"scheme": proxy.scheme, "host": proxy.hostname, "port": proxy.port} if proxy else None,
            "max_concurrent": a.max_concurrent,
            "rpm": a.rpm,
            "responses": a.responses,
            "secrets": self.secrets,
        }


class AccountService:
    def __init__(self, pool: Pool, settings_file: SettingsFile | None, settings: dict, audit=None):
        self.pool = pool
        self.file = settings_file
        self.max_reply_chars = settings["max_reply_chars"]
        self.audit = audit  # AuditService: every change is recorded (secrets by name only)

    # -- reading -------------------------------------------------------------------------

    def list(self, actor: User) -> list[AccountReport]:
        _admin(actor)
        raw = self._raw_accounts()
        return [AccountReport(a, h, state, _secrets(a, raw.get(a.name, {}))) for a, h, state in self.pool.report()]

    def get(self, actor: User, name: str) -> AccountReport:
        for report in self.list(actor):
            if report.account.name == name:
                return report
        raise NotFound(f"no account is named {name!r}", param="name")

    # -- changing ------------------------------------------------------------------------

    def add(self, actor: User, fields: dict) -> AccountReport:
        _admin(actor)
        fields = _fields(fields)
        name = fields.get("name")
        if not isinstance(name, str) or not name.strip():
            raise BadRequest("name is required", param="name")

        def change(raw: dict) -> None:
            accounts = raw.setdefault("accounts", [])
            if any(isinstance(a, dict) and a.get("name") == name for a in accounts):
                raise Conflict(f"an account named {name!r} exists already", param="name")
            accounts.append(fields)

        if name not in self.pool.accounts:
            self.pool.state.forget(name)  # an earlier account of that name leaves nothing behind
        self._edit(change, len(self._raw_list()))
        self._audit(actor, "account.add", name, fields=_shown(fields))
        return self.get(actor, name)

    def update(self, actor: User, name: str, fields: dict) -> AccountReport:
        _admin(actor)
        fields = _fields(fields)
        if fields.get("name", name) != name:
            raise BadRequest("an account's name cannot be changed; add a new account instead", param="name")
        index = self._index(name)

        def change(raw: dict) -> None:
            entry = raw["accounts"][self._index(name, raw)]
            for key, value in fields.items():
                if value is None and key in (*SECRET_KEYS, "auth_base", "base_url", "model"):
                    entry.pop(key, None)  # back to the default (or unset)
                else:
                    entry[key] = value

        self._edit(change, index)
        if fields != {"enabled": False}:  # re-enabled or edited: give it a fresh start
            self.pool.state.reset(name)
        action = {(): "account.clear", (("enabled", False),): "account.disable", (("enabled", True),): "account.enable"}
        self._audit(actor, action.get(tuple(fields.items()), "account.update"), name, fields=_shown(fields))
        return self.get(actor, name)

    def remove(self, actor: User, name: str) -> None:
        _admin(actor)
        self._index(name)
        self._edit(lambda raw: raw["accounts"].pop(self._index(name, raw)), None)
        self.pool.state.forget(name)
        self._audit(actor, "account.remove", name)

    def test(self, actor: User, name: str) -> dict:
        """Send one tiny request through the account; answer with how it went (and update its health)."""
        _admin(actor)
        upstream = self.pool.upstreams.get(name)
        if upstream is None:
            raise NotFound(f"no account is named {name!r}", param="name")
        lease = Lease(upstream)
        self.pool.state.used(name)
        started = time.monotonic()
        pieces: list[str] = []
        try:
            turn = Turn(prompt=TEST_PROMPT, model=upstream.account.model)
            for event in checked(upstream.stream(turn), self.max_reply_chars, name):
                if isinstance(event, Delta) and sum(map(len, pieces)) < TEST_REPLY_CHARS:
                    pieces.append(event.text)
        except AppError as exc:
            self.pool.failed(lease, exc)
            outcome = {"ok": False, "error": {"status": exc.status, "code": exc.code, "message": exc.message}}
        else:
            self.pool.state.reset(name)  # it works: whatever state it was in, it is ok now
            outcome = {"ok": True, "reply": "".join(pieces)[:TEST_REPLY_CHARS]}
        latency = round((time.monotonic() - started) * 1000, 1)
        return {"name": name, **outcome, "latency_ms": latency, "account": self.get(actor, name).public()}

    def refresh(self) -> None:
        """Pick up settings.json if it changed (at most one look a second); a broken file keeps what runs."""
        if self.file is None:
            return
        try:
            settings = self.file.changed()
        except ConfigError as exc:
            log.error("settings.json changed but is not valid; the accounts in use stay: %s", exc)
            return
        if settings is None:
            return
        try:
            self.pool.configure(settings["accounts"], settings)
        except Exception:  # whatever the new accounts do wrong, the worker goes on with the ones it has
            log.exception("settings.json changed but its accounts could not be set up; the accounts in use stay")
            return
        log.info("settings.json changed: %d accounts now", len(settings["accounts"]))
        # Every worker reloads; the first to claim this version of the file records it. A change made through
        # the API was claimed by the worker that made it, and recorded there as what it was.
        if self.audit is not None and self.pool.state.claim_alert(_version(self.file.stamp), None):
            self.audit.record(None, "settings.reload", "settings.json", accounts=len(settings["accounts"]))

    # -- helpers -------------------------------------------------------------------------

    def _edit(self, change, index: int | None) -> None:
        if self.file is None:
            raise Conflict("accounts can be changed at run time only when the server runs from a settings file")
        try:
            self.file.edit(change, then=self._applied)
        except ConfigError as exc:
            raise _as_bad_request(str(exc), index) from None

    def _applied(self, settings: dict, stamp) -> None:
        """Put an edit to use, in the order edits were written (SettingsFile.edit holds its lock meanwhile)."""
        self.pool.configure(settings["accounts"], settings)
        self.pool.state.claim_alert(_version(stamp), None)  # this worker records the change itself

    def _audit(self, actor: User, action: str, name: str, **detail) -> None:
        if self.audit is not None:
            self.audit.record(actor, action, name, **detail)

    def _raw_list(self) -> list:
        if self.file is None:
            return []
        try:
            accounts = self.file.read().get("accounts", [])
        except (ConfigError, OSError):
            return []
        return accounts if isinstance(accounts, list) else []

    def _raw_accounts(self) -> dict[str, dict]:
        return {a["name"]: a for a in self._raw_list() if isinstance(a, dict) and isinstance(a.get("name"), str)}

    def _index(self, name: str, raw: dict | None = None) -> int:
        accounts = raw["accounts"] if raw is not None else self._raw_list()
        for index, entry in enumerate(accounts):
            if isinstance(entry, dict) and entry.get("name") == name:
                return index
        if raw is None and name in self.pool.accounts and self.file is None:
            raise Conflict("accounts can be changed at run time only when the server runs from a settings file")
        raise NotFound(f"no account is named {name!r}", param="name")


def _admin(actor: User) -> None:
    if actor.role != "admin":
        raise Forbidden("only an admin may see or change the pool's accounts")


def _version(stamp) -> str:
    """The event a version of settings.json is claimed under, so that one change is recorded once."""
    return "settings:" + ":".join(map(str, stamp or ()))


def _shown(fields: dict) -> dict:
    """An account change as the audit log keeps it: secrets and proxies (which hold passwords) only named."""
    hidden = (*SECRET_KEYS, "proxy")
    return {k: ("removed" if v is None else "set") if k in hidden else v for k, v in fields.items()}


def _fields(fields) -> dict:
    """The account fields of a request, each a known key (types are checked with the whole file)."""
    if not isinstance(fields, dict):
        raise BadRequest("send the account's fields as a JSON object")
    for key in fields:
        if key not in ACCOUNT_KEYS:
            raise BadRequest(f"{key}: unknown account field (known: {', '.join(ACCOUNT_KEYS)})", param=key)
    return dict(fields)


def _secrets(account: Account, raw: dict) -> dict[str, str]:
    """Say of each secret field the account's type uses whether it is set, never what it is."""
    shown = {}
    for key in ACCOUNT_TYPES[account.type]["secrets"]:
        value = raw.get(key) if raw else getattr(account, key)
        if isinstance(value, str) and value.startswith("env:"):
            shown[key] = value
        else:
            shown[key] = "set" if value else "not set"
    return shown


def _as_bad_request(message: str, index: int | None) -> BadRequest:
    """A settings error about the edited account, named by its field ("accounts[3].proxy: ..." -> "proxy: ...")."""
    match = re.match(r"accounts\[(\d+)\]\.(\w+): (.*)", message, re.S)
    if match and (index is None or int(match.group(1)) == index):
        return BadRequest(f"{match.group(2)}: {match.group(3)}", param=match.group(2))
    if message.startswith("accounts: duplicate account name"):
        return BadRequest(message, param="name")
    return BadRequest(f"the change would make settings.json invalid: {message}")
