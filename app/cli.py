"""The admin CLI: `python3 main.py users|accounts|db ...`, safe while the server runs.

It builds the same service layer the server builds (create_app on the same settings file, no server
started) and calls the same service functions the routes call, so every rule, file lock, atomic write
and audit entry is the server's own. It acts as the first admin (or `--as USER_ID`, an admin), and its
audit entries carry the address "cli".

Exit status: 0 success, 1 an error (a message on stderr, never a traceback), 2 bad usage (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path

COMMANDS = ("users", "accounts", "db")
CLI_ADDRESS = "cli"  # the audit log's address for what the CLI does


class CliError(Exception):
    """An error worth one line on stderr and exit status 1."""


# -- the command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # The common options work before or after the subcommand (`--settings X users list` and
    # `users list --settings X`); SUPPRESS keeps a sub-parser's default from hiding the top one's value.
    def common(defaults: bool) -> argparse.ArgumentParser:
        shared = argparse.ArgumentParser(add_help=False)
        default = (lambda value: value) if defaults else (lambda _value: argparse.SUPPRESS)
        shared.add_argument(
            "--settings", default=default("settings.json"), help="settings file, as the server takes it"
        )
        shared.add_argument("--json", action="store_true", default=default(False), help="JSON output for scripts")
        shared.add_argument(
            "--as",
            dest="actor",
            metavar="USER_ID",
            default=default(None),
            help="act as this admin (default: the first)",
        )
        return shared

    parser = argparse.ArgumentParser(
        prog="main.py",
        description="Manage users, accounts and the database of chatgpt-api-server.",
        parents=[common(True)],
    )
    sub = common(False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{users,accounts,db}")

    users = commands.add_parser("users", help="list, create, delete users; rotate their keys")
    users_sub = users.add_subparsers(
        dest="action", required=True, metavar="{list,create,delete,rotate-key,export,import}"
    )
    listing = users_sub.add_parser("list", parents=[sub], help="list users")
    listing.add_argument("--q", metavar="TEXT", help="only users whose name, id or client's id holds TEXT")
    create = users_sub.add_parser("create", parents=[sub], help="create a user and print its key once")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--role", choices=("user", "client", "admin"), default="user")
    create.add_argument("--plus", action="store_true", help="may use plus accounts")
    delete = users_sub.add_parser("delete", parents=[sub], help="delete a user (a client with its users)")
    delete.add_argument("user_id", metavar="USER_ID")
    rotate = users_sub.add_parser("rotate-key", parents=[sub], help="give a user a new key, printed once")
    rotate.add_argument("user_id", metavar="USER_ID")
    export = users_sub.add_parser(
        "export", parents=[sub], help="write every user, key hashes included, in users.json's format"
    )
    export.add_argument("file", metavar="FILE", nargs="?", default="-", help="where (default: standard output)")
    imported = users_sub.add_parser(
        "import", parents=[sub], help="add the users of an exported file (or a users.json) to this store"
    )
    imported.add_argument("file", metavar="FILE")

    accounts = commands.add_parser("accounts", help="list, enable, disable, test the pool's accounts")
    accounts_sub = accounts.add_subparsers(dest="action", required=True, metavar="{list,enable,disable,test}")
    accounts_sub.add_parser("list", parents=[sub], help="list accounts with their state, requests and errors")
    for action, text in (("enable", "enable"), ("disable", "disable"), ("test", "send one tiny request through")):
        one = accounts_sub.add_parser(action, parents=[sub], help=f"{text} an account")
        one.add_argument("name", metavar="NAME")

    db = commands.add_parser("db", help="the conversation database")
    db_sub = db.add_subparsers(dest="action", required=True, metavar="{upgrade}")
    db_sub.add_parser("upgrade", parents=[sub], help="bring the database's tables up to date")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # bad usage: argparse prints it and exits 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from app import serving

    serving.redact_handlers(logging.getLogger())  # no key reaches a log line
    try:
        if args.command == "db":
            return db_upgrade(args)
        with Admin(args) as admin:
            handler = HANDLERS[(args.command, args.action)]
            return handler(admin, args)
    except CliError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return fail("interrupted")
    except Exception as exc:  # an error, never a traceback
        from app.errors import AppError, ConfigError

        if isinstance(exc, AppError):
            return fail(exc.message)
        if isinstance(exc, ConfigError):
            return fail(f"settings error: {exc}")
        return fail(f"{type(exc).__name__}: {exc}")


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 1


# -- the service layer, as the server builds it ----------------------------------------------------


def settings_path(args) -> Path:
    path = Path(args.settings)
    if not path.is_file():
        raise CliError(f"no settings file at {path} (start the server once to make one, or pass --settings PATH)")
    return path


class Admin:
    """The server's services on the same settings (no server started), and the admin the CLI acts as."""

    def __init__(self, args):
        self.args = args
        self.services = None
        self.actor = None

    def __enter__(self) -> Admin:
        from app import create_app

        self.started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))

        app = create_app(settings_path=settings_path(self.args))
        self.services = app.extensions["services"]
        self.services.audit.address = lambda: CLI_ADDRESS  # every change is recorded as the CLI's
        created = app.config.pop("CREATED_ADMIN_KEY", None)
        if created:  # no users yet: create_app made the first admin, as the server's first run does
            print(
                f"First run: an admin was created. Its API key is shown only this once:\n    {created}",
                file=sys.stderr,
                flush=True,
            )
        self.actor = self._actor(self.args.actor)
        return self

    def __exit__(self, *_exc) -> None:
        if self.services is not None:
            self.services.store.close()  # writes whatever this process still has queued

    def _actor(self, user_id: str | None):
        store = self.services.users.store
        if user_id:
            user = store.get(user_id)
            if user is None:
                raise CliError(f"--as: no user {user_id!r}")
            if user.role != "admin":
                raise CliError(f"--as: {user_id!r} is a {user.role}, not an admin")
            return user
        admins = [user for user in store.list() if user.role == "admin"]
        if not admins:
            raise CliError("there is no admin to act as")
        return min(admins, key=lambda user: (user.created_at, user.user_id != "admin"))


# -- users -----------------------------------------------------------------------------------------

USER_COLUMNS = ("user_id", "username", "role", "plus", "created_by", "external_id", "created_at")


def users_list(admin: Admin, args) -> int:
    from app.services.users import MAX_PAGE

    users, offset = [], 0
    while True:
        page, total = admin.services.users.search(admin.actor, args.q, offset, MAX_PAGE)
        users += page
        offset += len(page)
        if not page or offset >= total:
            break
    rows = [user.public() for user in users]
    if args.json:
        return emit({"users": rows, "total": len(rows)})
    print(table(rows, USER_COLUMNS))
    print(f"\n{len(rows)} user(s)")
    return 0


def users_create(admin: Admin, args) -> int:
    user, key = admin.services.users.create(admin.actor, args.name, args.role, args.plus)
    return shown_key(args, user, key, "created")


def users_rotate_key(admin: Admin, args) -> int:
    user, key = admin.services.users.rotate_key(admin.actor, args.user_id)
    return shown_key(args, user, key, "has a new key (the old one and its sessions stopped working)")


def shown_key(args, user, key: str, what: str) -> int:
    if args.json:
        return emit({"user": user.public(), "api_key": key})
    print(f"User {user.user_id} ({user.username}, {user.role}{', plus' if user.plus else ''}) {what}.")
    print(f"\n  API key, shown only this once:\n\n      {key}\n")
    return 0


def users_delete(admin: Admin, args) -> int:
    removed = admin.services.users.delete(admin.actor, args.user_id)
    rows = [user.public() for user in removed]
    if args.json:
        return emit({"deleted": rows})
    print(f"Deleted {len(rows)} user(s) and their conversations:")
    print(table(rows, ("user_id", "username", "role", "created_by")))
    return 0


# -- accounts --------------------------------------------------------------------------------------

ACCOUNT_COLUMNS = ("name", "type", "plus", "enabled", "state", "in_flight", "requests", "errors", "last_error")


def account_row(public: dict) -> dict:
    error = public.get("last_error")
    state = public["state"] + (f" until {public['cooling_until']}" if public.get("cooling_until") else "")
    return {**public, "state": state, "last_error": error["message"] if error else ""}


def accounts_list(admin: Admin, args) -> int:
    reports = [report.public() for report in admin.services.accounts.list(admin.actor)]
    if args.json:
        return emit({"accounts": reports})
    print(table([account_row(public) for public in reports], ACCOUNT_COLUMNS))
    return 0


def accounts_switch(enabled: bool):
    def switch(admin: Admin, args) -> int:
        public = admin.services.accounts.update(admin.actor, args.name, {"enabled": enabled}).public()
        if args.json:
            return emit({"account": public})
        print(
            f"Account {public['name']} is {'enabled' if enabled else 'disabled'}"
            " (every server worker sees it within a second)."
        )
        print(table([account_row(public)], ACCOUNT_COLUMNS))
        return 0

    return switch


def accounts_test(admin: Admin, args) -> int:
    outcome = admin.services.accounts.test(admin.actor, args.name)
    if args.json:
        emit(outcome)
    elif outcome["ok"]:
        print(f"Account {outcome['name']} works ({outcome['latency_ms']} ms): {outcome['reply']!r}")
    else:
        print(f"Account {outcome['name']} failed ({outcome['latency_ms']} ms).")
    if not outcome["ok"]:
        error = outcome["error"]
        print(f"error: {error['status']} {error['code']}: {error['message']}", file=sys.stderr, flush=True)
        return 1
    return 0


# -- the database ----------------------------------------------------------------------------------


def db_upgrade(args) -> int:
    from sqlalchemy.engine import make_url

    from app import config

    settings, _created = config.load(settings_path(args))
    url = config.database_url(settings)
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        migrate = importlib.import_module("app.store.migrate")
    except ModuleNotFoundError as exc:
        if exc.name != "app.store.migrate":
            raise
        migrate = None
    if migrate is not None:
        # upgrade_url(url) where the module has it (its upgrade() takes an engine); else upgrade(url)
        revision = migrate.upgrade_url(url) if hasattr(migrate, "upgrade_url") else migrate.upgrade(url)
        result = {"database": shown, "revision": revision, "migrations": True}
        text = f"Database {shown} is at revision {revision} (the newest)."
    else:  # no migrations yet: opening the store creates every table that is missing
        from app.store import SqlConversationStore

        SqlConversationStore(url).close()
        result = {"database": shown, "revision": None, "migrations": False}
        text = f"Database {shown}: every table exists (no migrations in this version; missing tables were created)."
    if args.json:
        return emit(result)
    print(text)
    return 0


# -- output ----------------------------------------------------------------------------------------


def emit(value) -> int:
    print(json.dumps(value, indent=2, ensure_ascii=False))
    return 0


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = " ".join(str(value).split())
    return text if len(text) <= 60 else text[:59] + "…"


def table(rows: list[dict], columns: tuple[str, ...]) -> str:
    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[i]) for line in cells)]) for i, column in enumerate(columns)]
    lines = [[column.upper() for column in columns], ["-" * width for width in widths], *cells]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def users_export(admin: Admin, args) -> int:
    """Every user of the configured store (users.json or the database), hashes included: the file moves
    them to the other store with `users import` (users_store switched in between), or serves as users.json."""
    from app.store.users_json import dump_users

    everyone = admin.services.users.store.list()
    text = dump_users(everyone)
    if args.file == "-":
        sys.stdout.write(text)
    else:
        path = Path(args.file)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:  # key hashes
            out.write(text)
        print(f"{len(everyone)} users written to {path}", file=sys.stderr)
    admin.services.audit.record(admin.actor, "user.export", None, users=len(everyone))
    return 0


def users_import(admin: Admin, args) -> int:
    """Add an exported file's users to the configured store as they are (ids, roles, limits, key hashes):
    all or none; a user whose id or key is already there stops it, naming the user."""
    from app.store.users_json import load_users

    try:
        given = load_users(Path(args.file).read_text())
    except (OSError, ValueError) as exc:
        raise CliError(f"{args.file}: {exc}") from None
    store = admin.services.users.store
    everyone = store.list()
    fresh = len(everyone) == 1 and everyone[0].created_by is None and everyone[0].created_at >= admin.started
    if fresh and given:  # the first admin this run made on an empty store: the imported users replace it
        store.delete(everyone[0].user_id)
    added = store.put_all(given)
    actor = next((u for u in given if u.role == "admin"), None) if fresh else admin.actor
    admin.services.audit.record(actor, "user.import", None, users=added)
    if args.json:
        return emit({"imported": added})
    print(f"{added} users imported")
    return 0


HANDLERS = {
    ("users", "list"): users_list,
    ("users", "create"): users_create,
    ("users", "delete"): users_delete,
    ("users", "rotate-key"): users_rotate_key,
    ("users", "export"): users_export,
    ("users", "import"): users_import,
    ("accounts", "list"): accounts_list,
    ("accounts", "enable"): accounts_switch(True),
    ("accounts", "disable"): accounts_switch(False),
    ("accounts", "test"): accounts_test,
}
