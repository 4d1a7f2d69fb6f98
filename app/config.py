"""Load, check and (on first run) write settings.json.

Defaults live here; a settings file only says what differs. Every key is checked: an unknown
key, a wrong type, a malformed proxy URL or a duplicate account name stops start-up with a
message that names it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from app.errors import ConfigError

ROUTE_DEFAULTS = {
    "chat": "/api/chat",
    "conversations": "/api/conversations",
    "conversation": "/api/conversations/<conversation_id>",
    "users": "/api/users",
    "user": "/api/users/<user_id>",
    "user_key": "/api/users/<user_id>/key",
    "me": "/api/me",
    "health": "/api/health",
    "accounts": "/api/accounts",
    "account": "/api/accounts/<name>",
    "account_test": "/api/accounts/<name>/test",
    "usage": "/api/usage",
    "audit": "/api/audit",
    "metrics": "/metrics",  # Prometheus text format (app/metrics.py); metrics_token guards it
    "recall": "/api/recall",
    "remove_conversation": "/api/remove-conversation",
    "add_user": "/api/client/add-user",
    "ask": "/api/ask",
    "access_token": "/api/access-token",
    "openapi": "/api/openapi.json",
    # acheong08/ChatGPT-API-server's user routes (admin_key); /admin/users is also the users page
    "acheong_users": "/admin/users",
    "acheong_users_add": "/admin/users/add",
    "acheong_users_delete": "/admin/users/delete",
    # linweiyuan/go-chatgpt-api; /conversations is also the conversations page (and gajosu's list)
    "go_conversations": "/conversations",
    "go_conversation": "/conversation/<conversation_id>",
    "go_ask": "/conversation",
    "go_gen_title": "/conversation/gen_title/<conversation_id>",
    "go_feedback": "/conversation/message_feedback",
    # gajosu/chat-gpt-rest-api (its list is go_conversations with shape gajosu)
    "gajosu_new": "/conversations/new",
    "gajosu_ask": "/conversations/<conversation_id>/ask",
    "gajosu_messages": "/conversations/<conversation_id>/messages",
    "gajosu_conversation": "/conversations/<conversation_id>",
    "gajosu_delete_all": "/conversations/all",
}

# Routes that may share a page's path: a request with an Authorization header, an admin_key or asking
# for JSON gets the route's answer, a browser the page (app/web/routes.py).
SHARES_PAGE = {"acheong_users", "go_conversations"}

# The browser pages. Actions hang below these paths: chat + "/<conversation_id>[/rename|/delete]",
# conversations + "/delete", admin_users + "/<user_id>/key|/delete".
PAGE_DEFAULTS = {
    "login": "/login",
    "logout": "/logout",
    "chat": "/chat",
    "conversations": "/conversations",
    "recall": "/recall",
    "admin_users": "/admin/users",
    "admin_add_user": "/admin/add-user",
    "admin_accounts": "/admin/accounts",
    "admin_usage": "/admin/usage",
    "admin_audit": "/admin/audit",
    "access_token": "/access-token",
}

DEFAULT_AUTH_BASE = "https://chatgpt.com"

DEFAULTS = {
    "app_secret": "",
    "host": "127.0.0.1",
    "port": 5000,
    "users_file": "users.json",
    "database_url": "sqlite:///conversations.db",
    "users_store": "json",  # "json": users_file (the original's users.json); "sql": the database_url's users table
    "default_proxy": None,
    "timeouts": {"connect": 10.0, "read": 120.0},
    "max_body_bytes": 1_048_576,
    "max_prompt_chars": 100_000,
    # Limits that keep one request from holding a worker, a connection or memory without bound.
    "body_timeout": 30.0,  # seconds to receive a whole request body, however it trickles in
    "max_connections_per_address": 256,  # open connections one client address may hold per worker (0: no limit)
    "max_upstream_line_bytes": 1_048_576,  # one line of an upstream's event stream
    "max_reply_chars": 1_000_000,  # one reply from an upstream
    "max_history_chars": 400_000,  # history sent upstream with a follow-up: the most recent turns that fit
    "max_render_chars": 200_000,  # replies longer than this are shown as plain text, not rendered markdown
    "max_users_per_client": 10_000,  # users one client may create (0: no limit)
    "session_days": 30,
    "trusted_proxies": 0,
    # gevent: one greenlet per connection, so a worker holds many open streams (main.py patches the
    # standard library for it before anything else is imported); gthread: one thread per request.
    "server": {
        "worker_class": "gevent",
        "workers": 2,
        "worker_connections": 10_000,  # per worker: open connections (each open stream holds one)
        "threads": 32,
        "timeout": 600,
        "keepalive": 5,
        # Each worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads new connections
        # over them; false: one socket shared by all, which one busy worker may take a whole burst from.
        "reuse_port": True,
    },
    "byo_account": {
        "base_url": "https://chatgpt.com/backend-api",
        "model": "auto",
        "plus_model": "gpt-4o",
        "proxy": None,
        "auth_base": DEFAULT_AUTH_BASE,  # where /api/access-token trades a session token for an access token
    },
    # The pool's health rules (app/pool.py): how long an account rests after each kind of failure.
    "health": {
        "rate_limit_cooldown": 60.0,  # seconds after a 429 that gave no Retry-After
        "rate_limit_max": 3600.0,  # the longest a Retry-After is believed
        "backoff_start": 10.0,  # seconds after a first 5xx, refused connection, timeout or cut stream
        "backoff_max": 600.0,  # doubling up to this
    },
    # Per-user limits by role (app/services/quota.py); a user's own limits override these. None: no limit.
    "limits": {
        role: {"requests_per_minute": None, "requests_per_day": None, "tokens_per_day": None}
        for role in ("admin", "client", "user")
    },
    "key_failures_per_minute": 20,  # wrong API keys one client address may send a minute before a 429 (0: no limit)
    "model_aliases": {},  # a model name callers may ask for -> the model it means ("gpt-3.5-turbo": "gpt-4o-mini")
    "queue_timeout": 10.0,  # seconds a request waits for an account with room (max_concurrent, rpm)
    "metrics_token": None,  # a bearer token /metrics asks for (env:NAME works); None: /metrics is open
    "alerts": {"webhook_url": None},  # a JSON POST when an account needs attention or a class has none left
    "routes": dict(ROUTE_DEFAULTS),
    "pages": dict(PAGE_DEFAULTS),
    "accounts": [],
}

ACCOUNT_TYPES = {
    "openai": {"base_url": "https://api.openai.com/v1", "model": "gpt-4o-mini", "secrets": ("api_key",)},
    "chatgpt-web": {
        "base_url": "https://chatgpt.com/backend-api",
        "model": "auto",
        "secrets": ("access_token", "session_token"),
    },
    "demo": {"base_url": "", "model": "demo", "secrets": ()},
}
SECRET_KEYS = ("api_key", "access_token", "session_token")  # write-only: never shown, never logged

ACCOUNT_KEYS = {
    "name": str,
    "type": str,
    "api_key": str,
    "access_token": str,
    "session_token": str,
    "auth_base": str,
    "base_url": str,
    "model": str,
    "models": list,
    "plus": bool,
    "proxy": (str, type(None)),
    "enabled": bool,
    "max_concurrent": (int, type(None)),
    "rpm": (int, type(None)),
    "responses": bool,
}

ACCOUNT_NAME = re.compile(r"[A-Za-z0-9_@+-][A-Za-z0-9 ._@+-]{0,127}")  # it goes in paths: /api/accounts/<name>
MAX_LIMIT = 1_000_000  # the most max_concurrent or rpm may say (the database counts in 64 bits)
MAX_USER_LIMIT = 10**12  # the most a user's limit may say (tokens a day can be large)
PROXY_SCHEMES = ("socks5", "socks5h", "http", "https")
WORKER_CLASSES = ("gevent", "gthread")
NUMBER = (int, float)

USERS_STORES = ("json", "sql")


@dataclass(frozen=True)
class Account:
    """One upstream account as settings describe it (secrets resolved, proxy applied)."""

    name: str
    type: str
    base_url: str
    model: str
    plus: bool = False
    enabled: bool = True
    api_key: str = ""
    access_token: str = ""
    session_token: str = ""  # chatgpt-web: gets fresh access tokens from auth_base's session endpoint
    auth_base: str = DEFAULT_AUTH_BASE
    proxy: str | None = None
    max_concurrent: int | None = None  # requests in flight at once, across every worker and instance
    rpm: int | None = None  # requests per minute, likewise
    models: tuple[str, ...] = ()  # the other models it serves besides `model`, its default
    responses: bool = False  # openai: its upstream offers POST /responses, so /v1/responses goes there as it is

    def serves(self, name: str) -> bool:
        return name == self.model or name in self.models

    @property
    def all_models(self) -> tuple[str, ...]:
        return (self.model, *(m for m in self.models if m != self.model))

    @property
    def secret(self) -> str:
        return self.api_key or self.access_token or self.session_token

    def __repr__(self) -> str:  # never print secrets
        return f"Account(name={self.name!r}, type={self.type!r}, plus={self.plus}, enabled={self.enabled})"


def _type_name(expected) -> str:
    names = {
        str: "a string",
        bool: "true or false",
        int: "a whole number",
        dict: "an object",
        list: "a list",
        type(None): "null",
    }
    if isinstance(expected, tuple):
        return " or ".join(names.get(t, t.__name__) for t in expected if t is not float) or "a number"
    return names.get(expected, expected.__name__)


def _check_type(where: str, value, expected) -> None:
    if expected is NUMBER:
        ok = isinstance(value, NUMBER) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(f"{where}: must be a number, got {json.dumps(value)}")
        return
    bad_bool = isinstance(value, bool) and expected in (int, NUMBER)
    if bad_bool or not isinstance(value, expected):
        raise ConfigError(f"{where}: must be {_type_name(expected)}, got {json.dumps(value)[:60]}")


def check_proxy(where: str, url: str | None) -> str | None:
    """Return a usable proxy URL, None for no proxy, or raise naming the bad one."""
    if url is None or url == "none":
        return None
    parts = urlsplit(url)
    if parts.scheme not in PROXY_SCHEMES:
        raise ConfigError(
            f"{where}: proxy scheme must be one of {', '.join(PROXY_SCHEMES)} (got {parts.scheme or 'none'!r})"
        )
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1 or (parts.path not in ("", "/")):
        raise ConfigError(f"{where}: malformed proxy URL (expected scheme://[user:pass@]host:port)")
    if port is None:
        raise ConfigError(f"{where}: proxy URL needs a port")
    return url


def _resolve_secret(where: str, value: str, required: bool = True) -> str:
    """Allow "env:NAME" so secrets can live in the environment rather than the file."""
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ and not required:
            return ""
        if name not in os.environ:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return os.environ[name]
    return value


def _known_items(where: str, known, given: dict):
    """Yield the (key, value) pairs of given, skipping "_comment"-style keys; raise on an unknown key."""
    for key, value in given.items():
        if key.startswith("_"):  # "_comment" and friends document a file; they are not settings
            continue
        if key not in known:
            raise ConfigError(f"{where + '.' if where else ''}{key}: unknown key (known: {', '.join(known)})")
        yield key, value


def _check_account(index: int, raw, default_proxy: str | None) -> Account:
    where = f"accounts[{index}]"
    _check_type(where, raw, dict)
    for key, value in _known_items(where, ACCOUNT_KEYS, raw):
        _check_type(f"{where}.{key}", value, ACCOUNT_KEYS[key])
    for key in ("name", "type"):
        if not raw.get(key):
            raise ConfigError(f"{where}.{key}: required")
    if not ACCOUNT_NAME.fullmatch(raw["name"]):
        raise ConfigError(
            f"{where}.name: use letters, digits, spaces and . _ - @ + (at most 128, not starting with . or a space)"
        )
    kind = raw["type"]
    if kind not in ACCOUNT_TYPES:
        raise ConfigError(f"{where}.type: must be one of {', '.join(ACCOUNT_TYPES)} (got {kind!r})")
    spec = ACCOUNT_TYPES[kind]
    for field in (*SECRET_KEYS, "auth_base"):
        if field in raw and field not in spec["secrets"] and not (field == "auth_base" and kind == "chatgpt-web"):
            raise ConfigError(f"{where}.{field}: not used by type {kind!r}")
    if kind == "chatgpt-web" and not (raw.get("access_token") or raw.get("session_token")):
        raise ConfigError(f"{where}.access_token: required for type 'chatgpt-web' (or a session_token)")
    if raw.get("responses") and kind != "openai":
        raise ConfigError(f"{where}.responses: only an 'openai' account's upstream can offer /responses")
    for limit in ("max_concurrent", "rpm"):
        value = raw.get(limit)
        if isinstance(value, bool) or (value is not None and not 1 <= value <= MAX_LIMIT):
            raise ConfigError(f"{where}.{limit}: must be a whole number from 1 to {MAX_LIMIT} (or null for no limit)")
    auth_base = raw.get("auth_base", DEFAULT_AUTH_BASE)
    if urlsplit(auth_base).scheme not in ("http", "https") or not urlsplit(auth_base).hostname:
        raise ConfigError(f"{where}.auth_base: must be an http(s) URL such as {DEFAULT_AUTH_BASE}")
    enabled = raw.get("enabled", True)
    proxy = raw.get("proxy", default_proxy)
    if proxy and "proxy" in raw:  # a proxy URL holds a password too, so env:NAME works here as well
        proxy = _resolve_secret(f"{where}.proxy", proxy, enabled) or None
    return Account(
        name=raw["name"],
        type=kind,
        base_url=(raw.get("base_url") or spec["base_url"]).rstrip("/"),
        model=raw.get("model") or spec["model"],
        plus=raw.get("plus", False),
        enabled=enabled,
        api_key=_resolve_secret(f"{where}.api_key", raw.get("api_key", ""), enabled),
        access_token=_resolve_secret(f"{where}.access_token", raw.get("access_token", ""), enabled),
        session_token=_resolve_secret(f"{where}.session_token", raw.get("session_token", ""), enabled),
        auth_base=auth_base.rstrip("/"),
        proxy=check_proxy(f"{where}.proxy", proxy),
        max_concurrent=raw.get("max_concurrent"),
        rpm=raw.get("rpm"),
        models=_check_models(f"{where}.models", raw.get("models", [])),
        responses=raw.get("responses", False),
    )


def _check_models(where: str, models: list) -> tuple[str, ...]:
    if not all(isinstance(m, str) and 0 < len(m) <= 128 and m.isprintable() for m in models):
        raise ConfigError(f"{where}: must be a list of model names (1-128 printable characters each)")
    return tuple(dict.fromkeys(models))


def _merge_section(where: str, defaults: dict, given, types: dict | None = None) -> dict:
    _check_type(where, given, dict)
    merged = copy.deepcopy(defaults)
    for key, value in _known_items(where, defaults, given):
        expected = (types or {}).get(key) or _expected_for(defaults[key])
        _check_type(f"{where}.{key}", value, expected)
        merged[key] = value
    return merged


def _expected_for(default):
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return NUMBER
    if default is None:
        return (str, type(None))
    return type(default)


def validate(raw: dict, base_dir: Path | str = ".") -> dict:
    """Return complete settings from a (possibly partial) dict, or raise ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError("settings: the top level must be a JSON object")
    settings = copy.deepcopy(DEFAULTS)
    for key, value in _known_items("", DEFAULTS, raw):
        if key in ("timeouts", "server", "byo_account", "health", "alerts"):
            types = {"proxy": (str, type(None))} if key == "byo_account" else None
            settings[key] = _merge_section(key, DEFAULTS[key], value, types)
        elif key == "limits":
            settings[key] = _check_limits_section(value)
        elif key == "model_aliases":
            _check_type(key, value, dict)
            if not all(isinstance(v, str) and v and len(k) <= 128 and len(v) <= 128 for k, v in value.items()):
                raise ConfigError(
                    'model_aliases: must map model names to model names, e.g. {"gpt-3.5-turbo": "gpt-4o"}'
                )
            settings[key] = dict(value)
        elif key in ("routes", "pages"):
            settings[key] = _merge_section(key, DEFAULTS[key], value)
        elif key == "accounts":
            _check_type(key, value, list)
            settings[key] = value
        else:
            _check_type(key, value, _expected_for(DEFAULTS[key]))
            settings[key] = value
    for name, path in settings["routes"].items():
        if not path.startswith("/"):
            raise ConfigError(f"routes.{name}: must start with '/' (got {path!r})")
        wanted = set(re.findall(r"<([^>]+)>", ROUTE_DEFAULTS[name]))
        if set(re.findall(r"<([^>]+)>", path)) != wanted:
            shown = ", ".join(f"<{w}>" for w in sorted(wanted)) or "no placeholder"
            raise ConfigError(f"routes.{name}: must contain {shown} (got {path!r})")
    _check_pages(settings)
    server = settings["server"]
    if server["worker_class"] not in WORKER_CLASSES:
        raise ConfigError(
            f"server.worker_class: must be one of {', '.join(WORKER_CLASSES)} (got {server['worker_class']!r})"
        )
    for name in ("workers", "worker_connections", "threads", "timeout"):
        if server[name] < 1:
            raise ConfigError(f"server.{name}: must be 1 or more")
    if server["keepalive"] < 0:
        raise ConfigError("server.keepalive: must be 0 or more")
    if not 0 < settings["port"] < 65536:
        raise ConfigError(f"port: must be between 1 and 65535 (got {settings['port']})")
    for name in ("connect", "read"):
        if settings["timeouts"][name] <= 0:
            raise ConfigError(f"timeouts.{name}: must be more than 0")
    for name, value in settings["health"].items():
        if value < 0:
            raise ConfigError(f"health.{name}: must be 0 or more")
    if settings["queue_timeout"] < 0:
        raise ConfigError("queue_timeout: must be 0 or more")
    hook = settings["alerts"]["webhook_url"]
    if hook is not None:
        hook = _resolve_secret("alerts.webhook_url", hook)  # a webhook URL is a secret of its own
        if urlsplit(hook).scheme not in ("http", "https") or not urlsplit(hook).hostname:
            raise ConfigError("alerts.webhook_url: must be an http(s) URL")
        settings["alerts"]["webhook_url"] = hook
    if settings["metrics_token"] is not None:  # a secret too: env:NAME reads it from the environment
        settings["metrics_token"] = _resolve_secret("metrics_token", settings["metrics_token"]) or None
    default_proxy = settings["default_proxy"]
    default_proxy = check_proxy("default_proxy", default_proxy and _resolve_secret("default_proxy", default_proxy))
    byo = settings["byo_account"]
    byo_proxy = default_proxy if byo["proxy"] is None else _resolve_secret("byo_account.proxy", byo["proxy"])
    byo["proxy"] = check_proxy("byo_account.proxy", byo_proxy)
    if urlsplit(byo["auth_base"]).scheme not in ("http", "https") or not urlsplit(byo["auth_base"]).hostname:
        raise ConfigError(f"byo_account.auth_base: must be an http(s) URL such as {DEFAULT_AUTH_BASE}")
    byo["auth_base"] = byo["auth_base"].rstrip("/")
    accounts = [_check_account(i, a, default_proxy) for i, a in enumerate(settings["accounts"])]
    seen: set[str] = set()
    for account in accounts:
        if account.name in seen:
            raise ConfigError(f"accounts: duplicate account name {account.name!r}")
        seen.add(account.name)
    settings["accounts"] = accounts
    settings["base_dir"] = str(Path(base_dir).resolve())
    return settings


def check_limit(where: str, value) -> int | None:
    """A per-user limit: a whole number from 0 (nothing allowed) to MAX_USER_LIMIT, or None for no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_USER_LIMIT:
        raise ConfigError(f"{where}: must be a whole number from 0 to {MAX_USER_LIMIT}, or null for no limit")
    return value


def _check_limits_section(given) -> dict:
    """limits: {role: {limit: number or null}}, every role and limit optional."""
    _check_type("limits", given, dict)
    merged = copy.deepcopy(DEFAULTS["limits"])
    for role, limits in _known_items("limits", merged, given):
        _check_type(f"limits.{role}", limits, dict)
        for name, value in _known_items(f"limits.{role}", merged[role], limits):
            merged[role][name] = check_limit(f"limits.{role}.{name}", value)
    return merged


def _check_pages(settings: dict) -> None:
    """Page paths are plain absolute paths, and no two routes or pages share one."""
    for name, path in settings["pages"].items():
        if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", path):
            raise ConfigError(f"pages.{name}: must be a path like /chat, without placeholders (got {path!r})")
    seen: dict[str, str] = {}
    for section in ("routes", "pages"):
        for name, path in settings[section].items():
            shares = section == "pages" and seen.get(path, "").removeprefix("routes.") in SHARES_PAGE
            if path in seen and not shares:
                raise ConfigError(f"{section}.{name}: path {path!r} is already used by {seen[path]}")
            seen[path] = f"{section}.{name}"
    if settings["session_days"] < 1:
        raise ConfigError("session_days: must be 1 or more")
    if settings["trusted_proxies"] < 0:
        raise ConfigError("trusted_proxies: must be 0 or more")
    if settings["users_store"] not in USERS_STORES:
        raise ConfigError(f"users_store: must be one of {', '.join(USERS_STORES)} (got {settings['users_store']!r})")
    if settings["body_timeout"] <= 0:
        raise ConfigError("body_timeout: must be more than 0")
    for name in ("max_body_bytes", "max_prompt_chars", "max_upstream_line_bytes", "max_reply_chars"):
        if settings[name] < 1:
            raise ConfigError(f"{name}: must be 1 or more")
    for name in (
        "max_connections_per_address",
        "max_history_chars",
        "max_render_chars",
        "max_users_per_client",
        "key_failures_per_minute",
    ):
        if settings[name] < 0:
            raise ConfigError(f"{name}: must be 0 or more")


def resolve_path(settings: dict, value: str) -> Path:
    """Resolve a file setting relative to the settings file's folder."""
    path = Path(value)
    return path if path.is_absolute() else Path(settings["base_dir"]) / path


def database_url(settings: dict) -> str:
    """Return the database URL, with a relative SQLite path placed beside the settings file."""
    url = settings["database_url"]
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str(resolve_path(settings, url[len(prefix) :]))
    return url


def first_run_settings() -> dict:
    """Return the settings a fresh install starts with: a secret and the demo account."""
    return {
        "app_secret": secrets.token_urlsafe(32),
        "host": DEFAULTS["host"],
        "port": DEFAULTS["port"],
        "accounts": [{"name": "demo", "type": "demo"}],
    }


def write_private_json(path: Path, data: dict) -> None:
    """Write JSON readable only by its owner (mode 0600), atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load(path: Path | str) -> tuple[dict, bool]:
    """Load settings from path, writing first-run settings if it is missing. Return (settings, created)."""
    path = Path(path)
    created = False
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private_json(path, first_run_settings())
        created = True
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    settings = validate(raw, path.parent)
    if not settings["app_secret"]:
        raw["app_secret"] = secrets.token_urlsafe(32)
        write_private_json(path, raw)
        settings["app_secret"] = raw["app_secret"]
    return settings, created
