"""chatgpt-api-server: share a pool of ChatGPT/OpenAI accounts among an organisation's people."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

from flask import Flask, g, has_request_context, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from app import auth, config, errors, limits, metrics
from app.pool import Pool
from app.services import ChatService, ConversationService, UserService
from app.services.accounts import AccountService
from app.services.audit import AuditService
from app.services.quota import QuotaService
from app.services.responses import ResponseService
from app.services.usage import UsageService
from app.settings_file import SettingsFile
from app.store import JsonUserStore, SqlConversationStore
from app.store.audit import SqlAudit, SqlKeyThrottle
from app.store.pool_state import SqlPoolState
from app.store.responses import SqlResponses
from app.store.usage import SqlUsage

ROOT = Path(__file__).resolve().parent.parent


class SessionInterface(SecureCookieSessionInterface):
    """The signed session cookie, marked Secure whenever the page came over https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or super().get_cookie_secure(app)

    def get_signing_serializer(self, app: Flask):
        """Flask's serializer, made once per secret rather than on every request (it builds a signer each time)."""
        key = (app.secret_key, tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        made = getattr(self, "_serializer", None)
        if made is None or made[0] != key:
            made = self._serializer = (key, super().get_signing_serializer(app))
        return made[1]


def user_store(settings: dict, store: SqlConversationStore):
    """The users: users.json (users_store "json", the default) or the database's users table ("sql")."""
    if settings["users_store"] == "sql":
        from app.store.users_sql import SqlUserStore

        return SqlUserStore(store)
    return JsonUserStore(config.resolve_path(settings, settings["users_file"]))


def create_app(
    settings: dict | None = None,
    *,
    settings_path: str | Path = "settings.json",
    base_dir: str | Path | None = None,
    admin_key: str | None = None,
) -> Flask:
    """Build the app from a settings dict (tests) or a settings file (first run writes one).

    If there are no users yet, an admin is created with admin_key, else $ADMIN_API_KEY, else a
    generated key; a generated key is left in app.config["CREATED_ADMIN_KEY"] for main.py to print
    once.
    """
    settings_file = None
    if settings is None:
        settings, _created = config.load(settings_path)
        settings_file = SettingsFile(settings_path)  # accounts changed at run time are written here
    else:
        settings = config.validate(settings, base_dir or Path.cwd())

    app = Flask(__name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static"))
    app.config.update(
        SECRET_KEY=settings["app_secret"] or os.urandom(32),
        MAX_CONTENT_LENGTH=settings["max_body_bytes"],
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(days=settings["session_days"]),
        SETTINGS=settings,
    )
    app.session_interface = SessionInterface()
    if settings["trusted_proxies"]:  # behind a reverse proxy: believe its X-Forwarded-* (https, host, client)
        hops = settings["trusted_proxies"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_prefix=hops)
    app.json.sort_keys = False

    store = SqlConversationStore(config.database_url(settings))
    users = user_store(settings, store)
    # A lease outlives any live request on its account, as a turn's claim does (app/services/chat.py).
    pool = Pool(settings["accounts"], settings, SqlPoolState(store, float(settings["timeouts"]["read"]) + 30.0))
    conversations = ConversationService(store)
    audit = AuditService(SqlAudit(store), _client_address)
    pool.audit = audit
    quota = QuotaService(SqlUsage(store), users, settings)
    throttle = SqlKeyThrottle(store, settings["key_failures_per_minute"])
    user_service = UserService(
        users, store, settings["max_users_per_client"], quota=quota, audit=audit, throttle=throttle
    )
    usage = UsageService(quota.usage, user_service)
    services = SimpleNamespace(
        accounts=AccountService(pool, settings_file, settings, audit),
        users=user_service,
        conversations=conversations,
        chat=ChatService(store, pool, conversations, settings, quota=quota, usage=usage, on_admit=_limits_in_headers),
        quota=quota,
        usage=usage,
        responses=None,
        audit=audit,
        pool=pool,
        store=store,
    )
    services.responses = ResponseService(services.chat, SqlResponses(store))
    app.extensions["services"] = services

    wanted = admin_key or os.environ.get("ADMIN_API_KEY") or None
    created = services.users.ensure_admin(wanted)
    if created and created != wanted:
        app.config["CREATED_ADMIN_KEY"] = created

    app.after_request(metrics.request_done)  # first registered, so it runs last: counts the final status
    errors.register(app)
    limits.install(app)
    app.after_request(_rate_limit_headers)
    app.before_request(auth.note_arrival)  # first of all: before any key or session is looked up
    app.before_request(metrics.request_started)
    app.before_request(_new_request_id)
    app.after_request(_request_id_header)
    app.before_request(services.accounts.refresh)  # settings.json edited elsewhere: seen within a second
    from app.api.routes import register as register_api
    from app.openai_api.responses import register as register_responses
    from app.openai_api.routes import register as register_v1
    from app.web.routes import register as register_web

    register_api(app, settings["routes"])
    register_v1(app)
    register_responses(app)
    register_web(app)
    return app


def _new_request_id() -> None:
    g.request_id = "req_" + uuid.uuid4().hex


def _request_id_header(response):
    """Every answer names its request, as OpenAI's do (the access log prints it too)."""
    response.headers["x-request-id"] = g.get("request_id") or "req_" + uuid.uuid4().hex
    return response


def _client_address() -> str | None:
    """The address of the client being served (after ProxyFix, when behind trusted proxies)."""
    return request.remote_addr if has_request_context() else None


def _limits_in_headers(ticket) -> None:
    """Keep an admitted turn's x-ratelimit-* headers for its answer (a stream's too: they go before its body);
    None: the turn was taken back, and its answer reports none."""
    if has_request_context():
        g.rate_limit_headers = QuotaService.headers(ticket) if ticket is not None else {}


def _rate_limit_headers(response):
    for name, value in (g.get("rate_limit_headers") or {}).items():
        response.headers.setdefault(name, value)
    return response
