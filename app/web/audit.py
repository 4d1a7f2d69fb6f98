"""The audit log in the browser (admins only): who changed what, for whom, when and from where, newest first.

Details come from what people typed (names, ids, upstream messages), so they are plain text here
and the template escapes them like any other value.
"""

from __future__ import annotations

import json

from flask import render_template, request

from app.api.params import number
from app.context import services
from app.errors import AppError, Forbidden
from app.store.users import User
from app.web.admin import pager
from app.web.forms import AuditForm
from app.web.helpers import attach_error, require_user

PAGE = 50
SHORT = 160  # characters of a detail the table shows
FIELDS = {"actor": "actor", "action": "action", "target": "target", "from": "first", "to": "last"}
ACTIONS = [
    ("", "Any action"),
    ("user.", "Any change to users"),
    *((name, name) for name in ("user.create", "user.update", "user.limits", "user.key_rotated", "user.delete")),
    ("account.", "Any change to accounts"),
    *((name, name) for name in ("account.add", "account.update", "account.enable", "account.disable")),
    *((name, name) for name in ("account.remove", "account.cooling", "account.needs_attention")),
    ("settings.reload", "settings.reload"),
    ("login", "login"),
]


def audit():
    """Show one page of the entries that match the filters."""
    actor = _admin()
    form = AuditForm(request.args)
    form.action.choices = _choices(form.action.data)
    typed = {name: (form[field].data or "").strip() or None for name, field in FIELDS.items()}
    offset = number(request.args, "offset", 0)
    try:
        found = services().audit.list(
            actor,
            who=typed["actor"],
            target=typed["target"],
            action=typed["action"],
            since=typed["from"],
            until=typed["to"],
            offset=offset,
            limit=PAGE,
        )
    except AppError as exc:
        _attach(form, exc)
        return render_template("admin_audit.html", form=form, entries=[], pager=None), exc.status
    entries = [{**entry, "said": describe(entry["detail"])} for entry in found["entries"]]
    paged = pager("web.audit", found["total"], offset, PAGE)
    return render_template("admin_audit.html", form=form, entries=entries, pager=paged)


def _admin() -> User:
    user = require_user()
    if user.role != "admin":
        raise Forbidden("Only admins read the audit log.")
    return user


def _choices(chosen: str | None) -> list[tuple[str, str]]:
    """Offer the known actions, and the one asked for if it is not among them (so the form shows the filter)."""
    if chosen and chosen not in dict(ACTIONS):
        return [*ACTIONS, (chosen, chosen)]
    return ACTIONS


def _attach(form: AuditForm, exc: AppError) -> None:
    if exc.param in FIELDS:
        field = form[FIELDS[exc.param]]
        field.errors = [*field.errors, exc.message]
    else:
        attach_error(form, exc)


# -- details in words ------------------------------------------------------------------------


def describe(detail: dict) -> dict:
    """Write a detail as a short line of text, with the whole of it as JSON when the line had to be cut."""
    detail = detail or {}
    parts = [_part(key, value) for key, value in detail.items() if key not in ("before", "after")]
    if "before" in detail or "after" in detail:
        parts.insert(0, f"{_value(detail.get('before'))} → {_value(detail.get('after'))}")
    line = "; ".join(parts)
    if len(line) <= SHORT:
        return {"line": line, "whole": None}
    return {"line": line[: SHORT - 1] + "…", "whole": json.dumps(detail, indent=2, ensure_ascii=False)}


def _part(key: str, value) -> str:
    if key == "changes" and isinstance(value, dict):
        return ", ".join(f"{name}: {_pair(change)}" for name, change in value.items())
    return f"{key}: {_value(value)}"


def _pair(change) -> str:
    if isinstance(change, list) and len(change) == 2:
        return f"{_value(change[0])} → {_value(change[1])}"
    return _value(change)


def _value(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)
