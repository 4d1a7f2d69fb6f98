"""The browser front: one blueprint of form pages at the paths settings give ("pages").

Every POST carries a CSRF token (checked before any view runs); pages answer with a strict
Content-Security-Policy, so even markup that slipped past sanitising could not run a script.
"""

from __future__ import annotations

from urllib.parse import urlencode

from flask import Blueprint, Flask, current_app, flash, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect
from markupsafe import Markup

from app import auth
from app.context import services
from app.errors import AppError, asks_for_api
from app.render import render_markdown
from app.web import access_token, accounts, admin, audit, chat, usage
from app.web.forms import ConfirmForm, LoginForm
from app.web.helpers import key_problem, safe_next

csrf = CSRFProtect()

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
URL_KEY_PARAMS = ("user", "api_key")


def _log_in_from_url():
    """The original's `?user=KEY` still works: the key leaves the address bar at once, and the
    login page asks "Log in as NAME?" (a POST with a CSRF token), so a link planted by someone
    else cannot log a person into another account behind their back."""
    if request.method != "GET" or not any(request.args.get(name) for name in URL_KEY_PARAMS):
        return None
    key = next(request.args[name] for name in URL_KEY_PARAMS if request.args.get(name))
    rest = [(k, v) for k, v in request.args.items(multi=True) if k not in URL_KEY_PARAMS]
    clean = request.path + ("?" + urlencode(rest) if rest else "")
    try:
        user = services().users.authenticate(key, request.remote_addr)
    except AppError as exc:
        form = LoginForm(formdata=None, next=clean)
        form.api_key.errors = [key_problem(exc)]
        return render_template("login.html", form=form), exc.status
    current = auth.session_user()
    if current is not None and current.user_id == user.user_id:
        return redirect(clean, 303)
    auth.offer_log_in(user)
    return redirect(url_for("web.login", next=clean), 303)


def _api_on_shared_path():
    """Where an original system's route shares a page's path (/conversations, /admin/users), a program
    (an Authorization header, an admin_key, asking for JSON) gets the route's answer; a browser the page."""
    view, methods = current_app.config["SHARED_API_VIEWS"].get(request.url_rule.rule, (None, ()))
    if view is not None and request.method in methods and asks_for_api():
        return view(**(request.view_args or {}))
    return None


def _check_csrf():
    if request.method == "POST":
        csrf.protect()


def _csrf_failed(exc: CSRFError):
    message = "This form was not sent from this site's own page, or it expired. Send it again from the page."
    if request.endpoint == "web.chat":  # keep what was typed
        return chat.chat_page_with_error(message, 400)
    return render_template("error.html", status=400, message=message), 400


def _page_headers(response):
    response.headers.setdefault("X-Content-Type-Options", "nosniff")  # a text/plain reply must stay text
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def _page_context():
    pool = services().pool
    return {"me": auth.session_user(), "pages": current_app.config["SETTINGS"]["pages"], "demo_only": pool.demo_only()}


def index():
    pool = services().pool
    routes = current_app.config["SETTINGS"]["routes"]
    return render_template("index.html", accounts=pool.enabled(), routes=routes)


def login():
    form = LoginForm()
    if request.method == "GET":
        form.next.data = safe_next(request.args.get("next"))
        return render_template("login.html", form=form, offered=auth.pending_log_in())
    if request.form.get("confirm"):  # "Log in as NAME?" after a link with ?user=KEY
        user = auth.pending_log_in(take=True)
        if user is not None:
            return _logged_in(user, form.next.data)
        form.form_errors.append("That login link has expired. Paste the key instead.")
        return render_template("login.html", form=form), 400
    status = 400
    if form.validate():
        try:
            user = services().users.authenticate(form.api_key.data.strip(), request.remote_addr)
        except AppError as exc:
            form.api_key.errors = [key_problem(exc)]
            status = exc.status
        else:
            return _logged_in(user, form.next.data)
    return render_template("login.html", form=form), status


def _logged_in(user, next_path: str | None):
    auth.log_in(user)
    services().audit.record(user, "login", user.user_id, page="login")
    flash(f"Logged in as {user.username}.")
    return redirect(safe_next(next_path) or url_for("web.chat"), 303)


def logout():
    form = ConfirmForm()
    if request.method == "POST" and form.validate():
        auth.log_out()
        flash("You are logged out.")
        return redirect(url_for("web.login"), 303)
    return render_template("confirm.html", form=form, title="Log out", action=url_for("web.logout"), button="Log out")


def register(app: Flask) -> None:
    """Add the pages at their configured paths; actions hang below them."""
    pages = app.config["SETTINGS"]["pages"]
    app.config.update(WTF_CSRF_CHECK_DEFAULT=False, WTF_CSRF_TIME_LIMIT=None)
    csrf.init_app(app)
    rules = [
        ("/", "index", index, ["GET"]),
        (pages["login"], "login", login, ["GET", "POST"]),
        (pages["logout"], "logout", logout, ["GET", "POST"]),
        (pages["chat"], "chat", chat.chat, ["GET", "POST"]),
        (pages["chat"] + "/<conversation_id>", "conversation", chat.chat, ["GET"]),
        (pages["chat"] + "/<conversation_id>/rename", "rename", chat.rename, ["POST"]),
        (pages["chat"] + "/<conversation_id>/delete", "delete", chat.delete, ["GET", "POST"]),
        (pages["conversations"], "conversations", chat.conversations, ["GET"]),
        (pages["conversations"] + "/delete", "delete_all", chat.delete_all, ["GET", "POST"]),
        (pages["recall"], "recall", chat.recall, ["GET"]),
        (pages["admin_users"], "users", admin.users, ["GET", "POST"]),
        (pages["admin_add_user"], "add_user", admin.users, ["GET", "POST"]),
        (pages["admin_users"] + "/<user_id>/edit", "edit_user", admin.edit, ["GET", "POST"]),
        (pages["admin_users"] + "/<user_id>/key", "rotate", admin.rotate, ["POST"]),
        (pages["admin_users"] + "/<user_id>/delete", "delete_user", admin.delete, ["GET", "POST"]),
        (pages["admin_accounts"], "accounts", accounts.accounts, ["GET", "POST"]),
        (pages["admin_accounts"] + "/<name>/edit", "edit_account", accounts.edit, ["GET", "POST"]),
        (pages["admin_accounts"] + "/<name>/enable", "enable_account", accounts.enable, ["POST"]),
        (pages["admin_accounts"] + "/<name>/disable", "disable_account", accounts.disable, ["POST"]),
        (pages["admin_accounts"] + "/<name>/clear", "clear_account", accounts.clear, ["POST"]),
        (pages["admin_accounts"] + "/<name>/test", "test_account", accounts.test, ["POST"]),
        (pages["admin_accounts"] + "/<name>/delete", "delete_account", accounts.delete, ["GET", "POST"]),
        (pages["admin_usage"], "usage", usage.usage, ["GET"]),
        (pages["admin_audit"], "audit", audit.audit, ["GET"]),
        (pages["access_token"], "access_token", access_token.access_token, ["GET", "POST"]),
    ]
    bp = Blueprint("web", __name__)  # one per app: tests build many apps, each with its own paths
    for path, endpoint, view, methods in rules:
        bp.add_url_rule(path, endpoint=endpoint, view_func=view, methods=methods)
    bp.before_request(_api_on_shared_path)
    bp.before_request(_log_in_from_url)
    bp.before_request(_check_csrf)
    bp.register_error_handler(CSRFError, _csrf_failed)
    bp.after_app_request(_page_headers)
    bp.app_context_processor(_page_context)
    app.register_blueprint(bp)
    # render_markdown escapes raw HTML and sanitises the rest with nh3, so its output is safe markup.
    app.add_template_filter(lambda text: Markup(render_markdown(text or "")), "markdown")  # noqa: S704
