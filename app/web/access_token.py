"""The original's access-token page: a ChatGPT session token in, a fresh access token out (the same
service call as /api/access-token)."""

from __future__ import annotations

from flask import render_template

from app.context import services
from app.errors import AppError
from app.web.forms import AccessTokenForm
from app.web.helpers import attach_error, require_user


def access_token():
    require_user()
    form = AccessTokenForm()
    found, status = None, 200
    if form.validate_on_submit():
        try:
            found = services().chat.access_token("".join(form.session_token.data.split()))  # a pasted cookie may wrap
        except AppError as exc:
            attach_error(form, exc, "session_token")
            status = exc.status
    elif form.errors:
        status = 400
    return render_template("access_token.html", form=form, access_token=found), status, {"Cache-Control": "no-store"}
