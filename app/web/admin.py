"""Managing users in the browser (admins and clients): the same service calls as /api/users.

The list is paged and searchable; each user's edit page sends only what changed. A limit box holds
a number, the word "none" (no limit) or nothing (the role's default).
"""

from __future__ import annotations

import re

from flask import flash, redirect, render_template, request, url_for

from app import auth
from app.api.params import WHOLE, number
from app.context import services
from app.errors import AppError, Forbidden
from app.services.quota import WHAT
from app.store.users import LIMIT_KEYS, User
from app.web.forms import ConfirmForm, SearchForm, UserEditForm, UserForm
from app.web.helpers import attach_error, require_user

NO_STORE = {"Cache-Control": "no-store"}  # pages that may show a key
PAGE = 50  # users a page
NO_LIMIT = "none"
LIMIT_IN_MESSAGE = re.compile(r"^limits\.(\w+):")


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


def edit(user_id: str):
    """Show a user's name, plus, role and limits in a form; on POST send what changed."""
    actor = _manager()
    target = services().users.visible(actor, user_id)
    if request.method == "GET":
        return _edit_page(target, UserEditForm(data=_shown(target)), 200)
    form = UserEditForm()
    status = 400
    if form.validate():
        changes = _changes(actor, form, target)
        if not changes:
            flash(f"Nothing changed on {target.username}.")
            return redirect(url_for("web.users"), 303)
        try:
            updated = services().users.update(actor, target.user_id, changes)
        except AppError as exc:
            _attach(form, exc)
            status = exc.status
        else:
            flash(f"Saved {updated.username}.")
            return redirect(url_for("web.users"), 303)
    return _edit_page(target, form, status)


# -- helpers -------------------------------------------------------------------------------


def pager(endpoint: str, total: int, offset: int, size: int = PAGE) -> dict:
    """Say where this page starts and ends, and link the pages before and after it, keeping the other parameters."""
    kept = {key: value for key, value in request.args.items() if key != "offset" and value}

    def at(start: int) -> str:
        return url_for(endpoint, **kept, **({"offset": start} if start else {}))

    return {
        "first": offset + 1 if offset < total else 0,
        "last": min(total, offset + size),
        "total": total,
        "previous": at(max(0, offset - size)) if offset > 0 else None,
        "next": at(offset + size) if offset + size < total else None,
    }


def limits_text(limits: dict) -> str:
    """Put limits in words: "10 requests a minute, 500 tokens a day", or "no limits"."""
    said = [f"{limits[key]} {WHAT[key]}" for key in LIMIT_KEYS if limits.get(key) is not None]
    return ", ".join(said) or "no limits"


def _shown(user: User) -> dict:
    """Fill the edit form from a user: its fields, and its own limits (empty: the role's default)."""
    own = user.limits or {}
    limits = {key: ("" if key not in own else NO_LIMIT if own[key] is None else str(own[key])) for key in LIMIT_KEYS}
    return {"username": user.username, "role": user.role, "plus": user.plus, **limits}


def _limit(text: str) -> int | str | None:
    """Read a typed limit: "none" is None, digits a number, anything else stays as typed for the service to refuse."""
    if text.casefold() == NO_LIMIT:
        return None
    return int(text) if WHOLE.fullmatch(text) else text


def _changes(actor: User, form: UserEditForm, target: User) -> dict:
    """Return the fields that differ from the user as it is; plus and role only where the form offered them."""
    changes = {}
    if form.username.data.strip() != target.username:
        changes["username"] = form.username.data
    if (actor.role == "admin" or actor.plus) and form.plus.data != target.plus:
        changes["plus"] = form.plus.data
    if actor.role == "admin" and form.role.data != target.role:
        changes["role"] = form.role.data
    typed = {key: (form[key].data or "").strip() for key in LIMIT_KEYS}
    limits = {key: _limit(text) for key, text in typed.items() if text}
    if limits != (target.limits or {}):
        changes["limits"] = limits
    return changes


def _attach(form: UserEditForm, exc: AppError) -> None:
    """Put a limit's error next to its box (the message names it), any other where attach_error puts it."""
    found = LIMIT_IN_MESSAGE.match(exc.message) if exc.param == "limits" else None
    if found and found.group(1) in LIMIT_KEYS:
        form[found.group(1)].errors = [*form[found.group(1)].errors, exc.message]
    else:
        attach_error(form, exc)


def _page(actor: User, form: UserForm, created: dict | None, status: int):
    search = SearchForm(request.args)
    offset = number(request.args, "offset", 0)
    shown, total = services().users.search(actor, search.q.data, offset, PAGE)
    limits = {u.user_id: limits_text(services().quota.limits_of(u)) for u in shown}
    context = {"users": shown, "limits": limits, "search": search, "pager": pager("web.users", total, offset)}
    response = render_template("admin_users.html", form=form, created=created, **context)
    return response, status, NO_STORE


def _edit_page(target: User, form: UserEditForm, status: int):
    quota = services().quota
    context = {
        "target": target,
        "applied": quota.limits_of(target),
        "defaults": quota.limits_of(target.replace(limits=None)),
        "owner": quota.owner_of(target),
        "what": WHAT,
        "no_limit": NO_LIMIT,
    }
    return render_template("admin_user_edit.html", form=form, **context), status, NO_STORE
