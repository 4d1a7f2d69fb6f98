"""Managing users in the browser (admins and clients): the same service calls as /api/users."""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for

from app import auth
from app.context import services
from app.errors import AppError, Forbidden
from app.store.users import User
from app.web.forms import ConfirmForm, UserForm
from app.web.helpers import attach_error, require_user


def _manager() -> User:
    user = require_user()
    if user.role == "user":
        raise Forbidden("Only admins and clients manage users. Your key is a plain user's key.")
    return user


def _user_form(actor: User, formdata=...) -> UserForm:
    form = UserForm() if formdata is ... else UserForm(formdata=formdata)
    if actor.role != "admin":  # a client makes plain users only
        del form.role
    if actor.role != "admin" and not actor.plus:  # and grants plus only if it has it
        del form.plus
    return form


def users():
    """List the users the caller manages; on POST create one and show its key once."""
    actor = _manager()
    form = _user_form(actor)
    created, status = None, 200
    if request.method == "POST":
        status = 400
        if form.validate():
            try:
                user, key = services().users.create(
                    actor,
                    form.username.data,
                    role=(form.role.data or "user") if "role" in form else "user",
                    plus=bool(form.plus.data) if "plus" in form else False,
                    user_id=(form.user_id.data or "").strip() or None,
                )
            except AppError as exc:
                attach_error(form, exc)
                status = exc.status
            else:
                created, status = {"user": user, "key": key, "what": "created"}, 201
                form = _user_form(actor, formdata=None)
    return _page(actor, form, created, status)


def rotate(user_id: str):
    """Give a user a new key (the old one stops working at once) and show it once."""
    actor = _manager()
    updated, key = services().users.rotate_key(actor, user_id)
    if updated.user_id == actor.user_id:  # rotating one's own key must not log oneself out
        auth.log_in(updated)
    return _page(actor, _user_form(actor, formdata=None), {"user": updated, "key": key, "what": "given a new key"}, 200)


def delete(user_id: str):
    actor = _manager()
    target = services().users.visible(actor, user_id)
    form = ConfirmForm()
    if request.method == "POST" and form.validate():
        removed = services().users.delete(actor, user_id)
        extra = len(removed) - 1
        flash(f"Deleted {target.username}" + (f" and the {extra} user(s) it created." if extra else "."))
        return redirect(url_for("web.users"), 303)
    owned = sum(1 for u in services().users.list(actor) if u.created_by == target.user_id and u.role == "user")
    detail = f"{target.username} ({target.role}, id {target.user_id}) will lose access, and their conversations go too."
    if target.role == "client" and owned:
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


NO_STORE = {"Cache-Control": "no-store"}


def _page(actor: User, form: UserForm, created: dict | None, status: int):
    response = render_template("admin_users.html", form=form, users=services().users.list(actor), created=created)
    return response, status, NO_STORE
