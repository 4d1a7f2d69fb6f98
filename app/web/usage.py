"""The usage page (admins; a client sees its own users): requests and tokens per day, top users, accounts.

The charts are SVG drawn here, with no script and no style attribute (the pages' CSP allows
neither): bars are <rect>s with presentation attributes and classes from static/style.css. A
viewBox lets them shrink to a phone's width, and every number they show is in a table as well.
"""

from __future__ import annotations

from datetime import date, timedelta

from flask import render_template, request

from app.context import services
from app.errors import AppError, BadRequest, Forbidden
from app.store.users import User
from app.web.forms import UsageForm
from app.web.helpers import attach_error, require_user

MAX_DAYS = 366  # the longest range the page shows day by day
TOP_USERS = 10
WIDTH, HEIGHT = 400, 200  # the chart's own units (its viewBox); it is drawn at the width of the page
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 26  # room for the axis labels
FIELDS = {"from": "first", "to": "last", "user_id": "user_id"}  # a service's param -> the form's field


def usage():
    """Show the usage the caller may see over a range of days (the last 30 by default)."""
    actor = require_user()
    if actor.role == "user":
        raise Forbidden("Only admins and clients see usage. Your key is a plain user's key.")
    form = UsageForm(request.args)
    typed = {name: (form[field].data or "").strip() or None for name, field in FIELDS.items()}
    try:
        report = _report(actor, typed["from"], typed["to"], typed["user_id"])
    except AppError as exc:
        _attach(form, exc)
        return render_template("admin_usage.html", form=form, report=None), exc.status
    form.first.data, form.last.data = report["from"], report["to"]
    return render_template("admin_usage.html", form=form, report=report)


def _report(actor: User, first: str | None, last: str | None, user_id: str | None) -> dict:
    """Gather usage per day (empty days too), per user and per account, with the totals."""
    report = services().usage.report
    by_day = report(actor, first, last, "day", user_id)
    days = _every_day(by_day["from"], by_day["to"])
    if len(days) > MAX_DAYS:
        raise BadRequest(f"choose at most {MAX_DAYS} days (from {by_day['from']} to {by_day['to']} is {len(days)})")
    counted = {row["day"]: row for row in by_day["groups"]}
    rows = [counted.get(day) or {"day": day, "requests": 0, "total_tokens": 0, "errors": 0} for day in days]
    users = report(actor, by_day["from"], by_day["to"], "user", user_id)["groups"]
    return {
        "from": by_day["from"],
        "to": by_day["to"],
        "user_id": user_id,
        "totals": by_day["totals"],
        "days": rows,
        "requests_chart": bar_chart([(r["day"], r["requests"]) for r in rows], "requests"),
        "tokens_chart": bar_chart([(r["day"], r["total_tokens"]) for r in rows], "tokens"),
        "users": users[:TOP_USERS],
        "user_count": len(users),
        "accounts": report(actor, by_day["from"], by_day["to"], "account", user_id)["groups"],
    }


def _every_day(first: str, last: str) -> list[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


def _attach(form: UsageForm, exc: AppError) -> None:
    """Put an error by the field of the parameter the service names (from is the form's first, to its last)."""
    if exc.param in FIELDS:
        field = form[FIELDS[exc.param]]
        field.errors = [*field.errors, exc.message]
    else:
        attach_error(form, exc)


# -- the chart -------------------------------------------------------------------------------


def short(n: float) -> str:
    """Write a number as an axis shows it: 950, 1.2k, 35k, 4M."""
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if n >= size:
            return f"{n / size:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{n:g}"


def top_of_axis(largest: int) -> int:
    """Return the smallest of 1, 2, 5, 10, 20, 50, ... at or above largest."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= largest:
                return step * factor
        step *= 10


def bar_chart(values: list[tuple[str, int]], what: str) -> dict:
    """Lay out bars for (day, value) pairs in the chart's own units, with the y axis' ticks and a few day labels."""
    top = top_of_axis(max((v for _, v in values), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(values))
    bars = []
    for n, (day, value) in enumerate(values):
        if not value:
            continue  # an empty day is a gap (the table still lists it)
        height = plot_h * value / top
        bars.append(
            {
                "x": round(LEFT + n * slot + slot * 0.1, 2),
                "y": round(TOP + plot_h - height, 2),
                "width": round(max(slot * 0.8, 0.5), 2),
                "height": round(height, 2),
                "label": f"{day}: {value} {what}",
            }
        )
    ticks = [0, top / 2, top] if top % 2 == 0 else [0, top]
    shown = sorted({0, len(values) // 2, len(values) - 1}) if values else []
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "base": TOP + plot_h,
        "what": what,
        "title": f"{what.capitalize()} per day, {values[0][0]} to {values[-1][0]}" if values else what,
        "bars": bars,
        "ticks": [{"y": round(TOP + plot_h - plot_h * t / top, 2), "label": short(t)} for t in ticks],
        "days": [_day_label(n, values[n][0], slot, len(values)) for n in shown],
    }


def _day_label(n: int, day: str, slot: float, count: int) -> dict:
    anchor = "start" if n == 0 else "end" if n == count - 1 else "middle"
    x = LEFT if n == 0 else WIDTH - RIGHT if n == count - 1 else LEFT + (n + 0.5) * slot
    return {"x": round(x, 2), "label": day[5:], "anchor": anchor}
