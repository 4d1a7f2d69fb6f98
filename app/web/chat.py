"""The chat page and the conversation list: the same service calls as /api/chat and /api/conversations."""

from __future__ import annotations

import json
import re

from flask import flash, redirect, render_template, request, url_for

from app import auth
from app.context import services
from app.errors import AppError, error_headers
from app.render import reply_only_response
from app.sse import chat_stream
from app.store.users import User
from app.web.forms import ChatForm, ConfirmForm, RenameForm
from app.web.helpers import attach_error, key_problem, own, require_user

SIDEBAR = 50
PAGE = 50


def chat(conversation_id: str | None = None):
    """Show the chat (a conversation when one is named); on POST, ask and show the answer."""
    if request.method == "POST":
        return _ask()
    if not conversation_id and request.args.get("conversation_id"):
        return redirect(url_for("web.conversation", conversation_id=request.args["conversation_id"]), 303)
    user = require_user() if conversation_id else auth.session_user()
    form = ChatForm(formdata=None, conversation_id=conversation_id or "")
    return _page(user, form, conversation_id)


def _ask():
    form = ChatForm()
    valid = form.validate()  # first: validating clears errors, and _form_user may add one
    user = _form_user(form)
    status, headers = 400 if not valid else 401, {}
    if valid and user is not None:
        options = {
            "conversation_id": form.conversation_id.data or None,
            "model": (form.model.data or "").strip() or None,
            "plus": form.plus.data or "false",
            "access_token": (form.access_token.data or "").strip() or None,
            "user_plus": form.user_plus.data,
            "front": "page",
        }
        try:
            if _wants_stream(form):  # the page's script shows the reply as it comes
                return chat_stream(services().chat.ask_stream(own(user), form.prompt.data, **options))
            answer = services().chat.ask(own(user), form.prompt.data, **options)
        except AppError as exc:
            attach_error(form, exc)
            status, headers = exc.status, error_headers(exc)  # a 429 says when to come back, as /api does
        else:
            if form.reply_only.data:
                return reply_only_response(answer["reply"], form.pretty.data)
            form.prompt.data = ""
            form.conversation_id.data = answer["conversation_id"]
            return _page(user, form, answer["conversation_id"], answer=answer)
    page, status = _page(user, form, form.conversation_id.data, status=status)
    return page, status, headers


def _wants_stream(form: ChatForm) -> bool:
    return not form.reply_only.data and "text/event-stream" in request.headers.get("Accept", "")


def _form_user(form: ChatForm) -> User | None:
    """The logged-in user, or whoever's key came in the form's api_key field (which logs them in)."""
    key = (form.api_key.data or "").strip()
    if key:
        try:
            user = services().users.authenticate(key, request.remote_addr)
        except AppError as exc:
            form.api_key.errors = [key_problem(exc)]
            return None
        auth.log_in(user)
        services().audit.record(user, "login", user.user_id, page="chat")
    user = auth.session_user()
    if user is None and not key:
        form.api_key.errors = ["Log in first, or paste your API key here."]
    return user


def chat_page_with_error(message: str, status: int):
    """Show the chat page again with what was typed and an error above the form."""
    form = ChatForm(meta={"csrf": False})
    form.form_errors.append(message)
    return _page(auth.session_user(), form, form.conversation_id.data, status=status)


def _page(
    user: User | None,
    form: ChatForm,
    conversation_id: str | None,
    answer: dict | None = None,
    status: int = 200,
    rename_form: RenameForm | None = None,
):
    conversation = None
    if user and conversation_id:
        try:
            conversation = services().conversations.get(own(user), conversation_id)
        except AppError:
            if status == 200:  # the page itself names a conversation that is not the user's
                raise
    if rename_form is None and conversation:
        rename_form = RenameForm(formdata=None, title=conversation["title"])
    context = {
        "form": form,
        "conversation": conversation,
        "sidebar": services().conversations.list(own(user), 0, SIDEBAR) if user else None,
        "answer_json": json.dumps(answer, indent=2, ensure_ascii=False) if answer else None,
        "rename_form": rename_form,
        "models": services().chat.models(own(user)) if user else None,
    }
    return render_template("chat.html", **context), status


def rename(conversation_id: str):
    user = require_user()
    form = RenameForm()
    status = 400
    if form.validate():
        try:
            services().conversations.rename(own(user), conversation_id, form.title.data)
        except AppError as exc:
            if exc.status == 404:  # no such conversation (any more): there is no page to show the form on
                raise
            attach_error(form, exc, "title")
            status = exc.status
        else:
            flash("Conversation renamed.")
            return redirect(url_for("web.conversation", conversation_id=conversation_id), 303)
    chat_form = ChatForm(formdata=None, conversation_id=conversation_id)
    return _page(user, chat_form, conversation_id, status=status, rename_form=form)


def delete(conversation_id: str):
    user = require_user()
    conversation = services().conversations.get(own(user), conversation_id)
    form = ConfirmForm()
    if request.method == "POST" and form.validate():
        services().conversations.delete(own(user), conversation_id)
        flash(f"Deleted “{conversation['title']}”.")
        return redirect(url_for("web.chat"), 303)
    return render_template(
        "confirm.html",
        form=form,
        title="Delete this conversation?",
        detail=f"“{conversation['title']}” and its {conversation['message_count']} message(s) will be gone for good.",
        action=url_for("web.delete", conversation_id=conversation_id),
        button="Delete",
        cancel=url_for("web.conversation", conversation_id=conversation_id),
    )


def conversations():
    user = require_user()
    offset = request.args.get("offset", "0")
    offset = int(offset) if re.fullmatch(r"[0-9]{1,9}", offset) else 0
    listing = services().conversations.list(own(user), offset, PAGE)
    return render_template("conversations.html", listing=listing, page=PAGE)


def delete_all():
    user = require_user()
    form = ConfirmForm()
    if request.method == "POST" and form.validate():
        deleted = services().conversations.delete_all(own(user))["deleted"]
        flash(f"Deleted {deleted} conversation{'' if deleted == 1 else 's'}.")
        return redirect(url_for("web.conversations"), 303)
    total = services().conversations.list(own(user), 0, 1)["total"]
    return render_template(
        "confirm.html",
        form=form,
        title="Delete all your conversations?",
        detail=f"All {total} conversation(s) and their messages will be gone for good.",
        action=url_for("web.delete_all"),
        button="Delete all",
        cancel=url_for("web.conversations"),
    )


def recall():
    """The original's recall page: the list, or one conversation with ?conversation_id=."""
    if request.args.get("conversation_id"):
        return redirect(url_for("web.conversation", conversation_id=request.args["conversation_id"]), 303)
    return redirect(url_for("web.conversations"), 303)
