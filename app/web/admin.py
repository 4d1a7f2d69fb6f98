"""Managing users in the browser (admins and clients): the same service calls as /api/users."""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for

from app import auth
from app.context import services
from app.errors import AppError, Forbidden
from app.store.users import User
from app.web.forms import ConfirmForm, UserForm
from app.web.helpers import attach_error, require_user

NO_STORE = {"Cache-Control": "no-store"}  # pages that may show a key


def _manager() -> User:
    user = require_user()
    if user.role == "user":
        raise Forbidden("Only admins and clients manage users. Your key is a plain user's key.")
    return user


def users():
    """List the users the caller manages; on POST create one and show its key once."""
    actor = _manager()
    form = UserForm()  # the template offers a client no role, and plus only if it has plus; the service decides
    created, status = None, 200
    if request.method == "POST":
        status = 400
        if form.validate():
            try:
                user, key = services().users.create(
                    actor,
                    form.username.data,
                    role=form.role.data or "user",
                    plus=form.plus.data,
                    user_id=(form.user_id.data or "").strip() or None,
                )
            except AppError as exc:
                attach_error(form, exc)
                status = exc.status
            else:
                created, status = {"user": user, "key": key, "what": "created"}, 201
                form = UserForm(formdata=None)
    return _page(actor, form, created, status)


def rotate(user_id: str):
    """Give a user a new key (the old one stops working at once) and show it once."""
    actor = _manager()
    updated, key = services().users.rotate_key(actor, user_id)
    if updated.user_id == actor.user_id:  # rotating one's own key must not log oneself out
        auth.log_in(updated)
    return _page(actor, UserForm(formdata=None), {"user": updated, "key": key, "what": "given a new key"}, 200)


def delete(user_id: str):
    actor = _manager()
    target = services().users.visible(actor, user_id)
    form = ConfirmForm()
    if request.method == "POST" and form.validate():
        removed = services().users.delete(actor, user_id)
        extra = len(removed) - 1
        flash(f"Deleted {target.username}" + (f" and the {extra} user(s) it created." if extra else "."))
        return redirect(url_for("web.users"), 303)
    owned = len(services().users.list(target)) if target.role == "client" else 0  # a client's list is its users
    detail = f"{target.username} ({target.role}, id {target.user_id}) will lose access, and their conversations go too."
    if owned:
        detail += f" The {owned} user(s) this client created are deleted with it."
    page = render_template(
        "confirm.html",
        form=form,
        title=f"Delete {target.username}?",
        detail=detail,
        action=url_for("web.delete_user", user_id=user_id),
        button="Delete",
        cancel=url_for("web.users"),
    )
    return page, 200, NO_STORE


def _page(actor: User, form: UserForm, created: dict | None, status: int):
    response = render_template("admin_users.html", form=form, users=services().users.list(actor), created=created)
    return response, status, NO_STORE
