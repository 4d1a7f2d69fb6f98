"""The browser's forms. Field names are the original server's, so its users' habits keep working.

Forms check only what a person can fix before sending (a field left empty); the rules themselves
(lengths, roles, plus, ownership) live in the services, and their errors come back onto the field
they name.
"""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField, PasswordField, SelectField, StringField, TextAreaField
from wtforms.fields import SelectChoice
from wtforms.validators import InputRequired
from wtforms.widgets import DateInput, SearchInput

PLUS_CHOICES = [
    SelectChoice("false", "Free accounts"),
    SelectChoice("true", "Plus accounts"),
    SelectChoice("any", "Any account"),
]
TYPE_CHOICES = [
    SelectChoice("openai", "openai"),
    SelectChoice("chatgpt-web", "chatgpt-web"),
    SelectChoice("demo", "demo"),
]
ROLE_CHOICES = [
    SelectChoice("user", "User"),
    SelectChoice("client", "Client (a program)"),
    SelectChoice("admin", "Admin"),
]


class LoginForm(FlaskForm):
    api_key = PasswordField("API key", validators=[InputRequired("Paste your API key.")])
    next = HiddenField()


class ChatForm(FlaskForm):
    api_key = PasswordField("API key")  # shown only to a visitor who has not logged in
    prompt = TextAreaField("Message", validators=[InputRequired("Type a message first.")])
    conversation_id = HiddenField()
    plus = SelectField("Accounts", choices=PLUS_CHOICES, default="false", validate_choice=False)  # service checks
    pretty = BooleanField("Render markdown", default=True)
    reply_only = BooleanField("Answer with the reply text only")
    access_token = PasswordField("Your own ChatGPT access token")
    user_plus = BooleanField("That token belongs to a Plus account")
    model = StringField("Model (empty: the account's own)")


class RenameForm(FlaskForm):
    title = StringField("Title", validators=[InputRequired("Type a title.")])


class AccessTokenForm(FlaskForm):
    session_token = PasswordField("Session token", validators=[InputRequired("Paste the session token first.")])


class ConfirmForm(FlaskForm):
    """A form whose only field is its CSRF token: delete, delete all, rotate, log out."""


class UserForm(FlaskForm):
    username = StringField("Name", validators=[InputRequired("Type a name for the new user.")])
    role = SelectField("Role", choices=ROLE_CHOICES, default="user", validate_choice=False)  # the service checks
    plus = BooleanField("Plus")
    user_id = StringField("Id (optional)")


class AccountForm(FlaskForm):
    """An account's settings as a person edits them; every value is checked by the accounts service.

    Numbers are text here so that whatever was typed reaches the service, which says what is wrong
    with it; secrets are password fields, which are never filled in when the page is shown again.
    """

    type = SelectField("Type", choices=TYPE_CHOICES, default="openai", validate_choice=False)  # the service checks
    model = StringField("Model")
    base_url = StringField("Base URL")
    plus = BooleanField("Plus account")
    enabled = BooleanField("Enabled", default=True)
    proxy = StringField("Proxy")
    max_concurrent = StringField("Max concurrent requests")
    rpm = StringField("Requests per minute")
    api_key = PasswordField("API key")
    access_token = PasswordField("Access token")
    session_token = PasswordField("Session token")
    auth_base = StringField("Auth base URL")


class AddAccountForm(AccountForm):
    name = StringField("Name", validators=[InputRequired("Type a name for the new account.")])


class UserEditForm(FlaskForm):
    """A user's name, plus, role and own limits: a number, "none" (no limit) or empty (the role's default)."""

    username = StringField("Name", validators=[InputRequired("Type a name.")])
    role = SelectField("Role", choices=ROLE_CHOICES, validate_choice=False)  # the service checks
    plus = BooleanField("Plus")
    requests_per_minute = StringField("Requests a minute")
    requests_per_day = StringField("Requests a day")
    tokens_per_day = StringField("Tokens a day")


class SearchForm(FlaskForm):
    """The users page's search box (a GET form: nothing to protect)."""

    class Meta:
        csrf = False

    q = StringField("Search by name or id", widget=SearchInput())


class UsageForm(FlaskForm):
    """The usage page's date range and user (a GET form)."""

    class Meta:
        csrf = False

    first = StringField("From", name="from", widget=DateInput())
    last = StringField("To", name="to", widget=DateInput())
    user_id = StringField("User id (optional)")


class AuditForm(FlaskForm):
    """The audit page's filters (a GET form)."""

    class Meta:
        csrf = False

    actor = StringField("Who (user id)")
    action = SelectField("Action", validate_choice=False)  # the choices are the page's
    target = StringField("To whom or what")
    first = StringField("From", name="from", widget=DateInput())
    last = StringField("To", name="to", widget=DateInput())
