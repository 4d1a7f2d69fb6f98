"""The pool's accounts in the browser (admins only): the same service calls as /api/accounts.

The forms send only what a person typed or changed: an empty secret keeps the one in settings,
an empty optional field on the add form leaves the type's default, and every value, numbers
included, goes to the service as typed, which says what is wrong with it next to its field.
"""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for

from app.api.params import WHOLE
from app.config import ACCOUNT_TYPES, SECRET_KEYS
from app.context import services
from app.errors import AppError, Forbidden
from app.store.users import User
from app.web.forms import AccountForm, AddAccountForm, ConfirmForm
from app.web.helpers import attach_error, require_user

NO_STORE = {"Cache-Control": "no-store"}  # error pages give back what was typed (a proxy URL may hold a password)
WRITE_ONLY = (*SECRET_KEYS, "auth_base")  # never shown; empty on the edit form means "keep it"
NUMBERS = ("max_concurrent", "rpm")


def _admin() -> User:
    user = require_user()
    if user.role != "admin":
        raise Forbidden("Only admins manage the pool's accounts.")
    return user


def accounts():
    """List every account with its health; on POST add one."""
    me = _admin()
    form = AddAccountForm()
    status = 200
    if request.method == "POST":
        status = 400
        if form.validate():
            try:
                report = services().accounts.add(me, _added(form))
            except AppError as exc:
                attach_error(form, exc)
                status = exc.status
            else:
                flash(f"Added account {report.account.name}.")
                return redirect(url_for("web.accounts"), 303)
    return _page(me, form, status)


def edit(name: str):
    """Show one account's settings in a form; on POST send what changed."""
    me = _admin()
    current = services().accounts.get(me, name).public()
    if request.method == "GET":
        return _edit_page(current, AccountForm(data=_shown(current)), 200)
    form = AccountForm()
    status = 400
    if form.validate():
        changes = _changes(form, current)
        if not changes:
            flash(f"Nothing changed on {name}.")
            return redirect(url_for("web.accounts"), 303)
        try:
            services().accounts.update(me, name, changes)
        except AppError as exc:
            attach_error(form, exc)
            status = exc.status
        else:
            flash(f"Saved account {name}.")
            return redirect(url_for("web.accounts"), 303)
    return _edit_page(current, form, status)


def enable(name: str):
    return _update(name, {"enabled": True}, f"Enabled {name}.")


def disable(name: str):
    return _update(name, {"enabled": False}, f"Disabled {name}: it takes no new conversations.")


def clear(name: str):
    """Forget a cooldown or a needs_attention (the service gives an account a fresh start when it is enabled)."""
    return _update(name, {"enabled": True}, f"Cleared the state of {name}.")


def test(name: str):
    """Send one tiny request through the account and show how it went."""
    me = _admin()
    try:
        result = services().accounts.test(me, name)
    except AppError as exc:
        return _page(me, AddAccountForm(formdata=None), exc.status, problem=exc.message)
    return _page(me, AddAccountForm(formdata=None), 200, tested=result)


def delete(name: str):
    me = _admin()
    account = services().accounts.get(me, name).account
    form = ConfirmForm()
    if request.method == "POST" and form.validate():
        try:
            services().accounts.remove(me, name)
        except AppError as exc:
            return _page(me, AddAccountForm(formdata=None), exc.status, problem=exc.message)
        flash(f"Deleted account {name}.")
        return redirect(url_for("web.accounts"), 303)
    if account.type == "chatgpt-web":
        after = "Conversations started on it live upstream, so their follow-ups will be refused."
    else:
        after = "Follow-ups of conversations started on it move to another account of the same kind."
    page = render_template(
        "confirm.html",
        form=form,
        title=f"Delete account {name}?",
        detail=f"{name} ({account.type}) leaves settings.json and the pool at once, secrets and all. {after}",
        action=url_for("web.delete_account", name=name),
        button="Delete",
        cancel=url_for("web.accounts"),
    )
    return page, 200, NO_STORE


# -- helpers -------------------------------------------------------------------------------


def _update(name: str, fields: dict, said: str):
    me = _admin()
    try:
        services().accounts.update(me, name, fields)
    except AppError as exc:
        return _page(me, AddAccountForm(formdata=None), exc.status, problem=exc.message)
    flash(said)
    return redirect(url_for("web.accounts"), 303)


def _typed(form: AccountForm, key: str) -> str:
    return (form[key].data or "").strip()


def _number(text: str) -> int | str:
    """A whole number as an int; anything else as typed, for the service to refuse with its own words."""
    return int(text) if WHOLE.fullmatch(text) else text


def _added(form: AddAccountForm) -> dict:
    """The fields of a new account: only what was filled in (the rest keeps the type's defaults)."""
    fields = {"name": _typed(form, "name"), "type": form.type.data}
    for key in ("model", "base_url", "proxy", *WRITE_ONLY):
        if _typed(form, key):
            fields[key] = _typed(form, key)
    for key in NUMBERS:
        if _typed(form, key):
            fields[key] = _number(_typed(form, key))
    if form.plus.data:
        fields["plus"] = True
    if not form.enabled.data:
        fields["enabled"] = False
    return fields


def _shown(current: dict) -> dict:
    """What the edit form shows filled in: everything but secrets and the proxy (whose password is not known here)."""
    shown = {key: current[key] for key in ("type", "model", "base_url", "plus", "enabled")}
    return shown | {key: "" if current[key] is None else str(current[key]) for key in NUMBERS}


def _changes(form: AccountForm, current: dict) -> dict:
    """The fields that differ from the account as it is; an emptied number means "no limit" (None)."""
    changes = {}
    if form.type.data != current["type"]:
        changes["type"] = form.type.data
        changes.update(_dropped_secrets(current, form.type.data))
    for key in ("model", "base_url"):
        if _typed(form, key) and _typed(form, key) != (current[key] or ""):
            changes[key] = _typed(form, key)
    for key in ("proxy", *WRITE_ONLY):
        if _typed(form, key):
            changes[key] = _typed(form, key)
    for key in NUMBERS:
        value = _number(_typed(form, key)) if _typed(form, key) else None
        if value != current[key]:
            changes[key] = value
    for key in ("plus", "enabled"):
        if form[key].data != current[key]:
            changes[key] = form[key].data
    return changes


def _dropped_secrets(current: dict, new_type: str) -> dict:
    """Secrets the old type used and the new one cannot (settings would refuse them): None removes them."""
    if new_type not in ACCOUNT_TYPES:
        return {}  # the service names the bad type
    keep = ACCOUNT_TYPES[new_type]["secrets"]
    dropped = {key: None for key, state in current["secrets"].items() if key not in keep and state != "not set"}
    if current["type"] == "chatgpt-web" and new_type != "chatgpt-web":
        dropped["auth_base"] = None
    return dropped


def _page(me: User, form: AddAccountForm, status: int, tested: dict | None = None, problem: str | None = None):
    context = {
        "form": form,
        "accounts": [report.public() for report in services().accounts.list(me)],
        "editable": services().accounts.file is not None,
        "tested": tested,
        "problem": problem,
        "types": ACCOUNT_TYPES,
    }
    return render_template("admin_accounts.html", **context), status, NO_STORE


def _edit_page(current: dict, form: AccountForm, status: int):
    return render_template("admin_account_edit.html", form=form, account=current, types=ACCOUNT_TYPES), status, NO_STORE
