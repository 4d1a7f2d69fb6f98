"""Small pieces every page uses: who is logged in, where errors go, where to go next."""

from __future__ import annotations

from flask import abort, redirect, request, url_for
from flask_wtf import FlaskForm

from app import auth
from app.errors import AppError
from app.services.principal import Principal
from app.store.users import User


def require_user() -> User:
    """Return the logged-in user, or send the browser to the login page and back here after."""
    user = auth.session_user()
    if user is None:
        abort(redirect(url_for("web.login", next=request.full_path.rstrip("?")), 303))
    return user


def own(user: User) -> Principal:
    """A browser always acts as itself."""
    return Principal(user, user, auth.arrived())


def attach_error(form: FlaskForm, exc: AppError, default_field: str | None = None) -> None:
    """Put a service's error next to the (visible) field it names, else above the form."""
    name = exc.param if exc.param in form._fields else default_field
    if name and name in form._fields and form[name].type not in ("HiddenField", "CSRFTokenField"):
        form[name].errors = [*form[name].errors, exc.message]
    else:
        form.form_errors.append(exc.message)


def safe_next(target: str | None) -> str | None:
    """Allow only a path on this site as a place to return to (never //elsewhere or a scheme).

    Browsers drop tabs and newlines from addresses and read a backslash as a slash, so any of
    those (or any other blank or control character) makes the target unsafe.
    """
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    if "\\" in target or any(ch.isspace() or not ch.isprintable() for ch in target):
        return None
    return target


def key_problem(exc: AppError) -> str:
    """Say in plain words what is wrong with a key someone pasted."""
    if exc.status == 401:  # a key was pasted, so the only 401 left is a key nobody has
        return "That key is not known here. Check that you pasted all of it, or ask for a new one."
    return exc.message
