"""Run chatgpt-api-server with a production WSGI server: gunicorn with gevent workers (or threads)."""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
from pathlib import Path

DEFAULT_WORKER_CLASS = "gevent"  # the same default as app/config.py DEFAULTS["server"] (a test checks)


def worker_class(settings_path: str) -> str:
    """Read server.worker_class straight from the file, before anything else is imported."""
    try:
        raw = json.loads(Path(settings_path).read_text())
        chosen = raw["server"]["worker_class"]
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_WORKER_CLASS  # a missing or broken file is reported properly by config.load
    return chosen if isinstance(chosen, str) else DEFAULT_WORKER_CLASS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--settings", default="settings.json", help="settings file (made on first run)")
    parser.add_argument("--host", help="address to listen on (default: settings host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: settings port, 5000)")
    return parser.parse_args(argv)


CLI_COMMANDS = ("users", "accounts", "db")  # the admin CLI's (app/cli.py); anything else runs the server
VALUE_OPTIONS = ("--settings", "--host", "--port", "--as")


def cli_command(argv: list[str]) -> bool:
    """Whether argv names an admin command: `main.py [--settings PATH] users list` and the like."""
    words = iter(argv)
    for word in words:
        if word in VALUE_OPTIONS:
            next(words, None)
        elif not word.startswith("-"):
            return word in CLI_COMMANDS
    return False


if __name__ == "__main__" and cli_command(sys.argv[1:]):
    from app.cli import main as cli_main  # no server, no gevent: the same services on the same files

    sys.exit(cli_main(sys.argv[1:]))

if __name__ == "__main__" and worker_class(parse_args(None).settings) == "gevent":
    # gevent must patch sockets, ssl and locks before requests, SQLAlchemy or Flask create any,
    # or a lock made before the patch could block a whole worker.
    from gevent import monkey

    monkey.patch_all()

import logging  # noqa: E402

from gunicorn.app.base import BaseApplication  # noqa: E402

from app import create_app, serving  # noqa: E402
from app.errors import ConfigError  # noqa: E402


class Server(BaseApplication):
    def __init__(self, app, options: dict):
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        return self.application


def raise_open_files_limit() -> int:
    """Lift this process's open-files limit to the hard limit its system allows (workers inherit it):
    every open stream holds two sockets, one to its caller and one to the upstream. Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            pass
    return soft


def port_free(host: str, port: int) -> OSError | None:
    """None if host:port can be listened on; else why not. Each worker listens on a socket of its own
    (SO_REUSEPORT), which would share a port another server already holds without a word: look first."""
    try:
        probe = socket.create_server((host, port))  # SO_REUSEADDR, no SO_REUSEPORT: any listener refuses it
    except OSError as exc:
        return exc
    probe.close()
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serving.redact_handlers(logging.getLogger())  # no key reaches a log, whatever the message or exception holds

    try:
        app = create_app(settings_path=args.settings)
    except ConfigError as exc:
        print(f"settings error: {exc}", file=sys.stderr)
        return 2
    settings = app.config["SETTINGS"]
    new_key = app.config.pop("CREATED_ADMIN_KEY", None)
    if new_key:
        print(
            "\n  First run: an admin was created. Its API key is shown only this once:\n"
            f"\n      {new_key}\n\n  Keep it safe; it cannot be recovered (rotate it with /api/users/admin/key).\n",
            flush=True,
        )
    host, port = args.host or settings["host"], args.port or settings["port"]
    server = settings["server"]
    refused = port_free(host, port)
    if refused is not None:
        print(f"cannot listen on {host}:{port}: {refused.strerror or refused}", file=sys.stderr)
        return 2
    raise_open_files_limit()
    print(f"  Serving on http://{host}:{port}  (settings: {args.settings})", flush=True)
    if server["worker_class"] == "gevent" and "gevent.monkey" not in sys.modules:
        print("settings error: server.worker_class gevent needs main.py run as the program", file=sys.stderr)
        return 2
    serving.configure(settings)  # the workers' limits, inherited when they fork
    worker = serving.worker_class_path(server["worker_class"])
    print(f"  Using worker: {server['worker_class']} ({worker})", flush=True)
    Server(
        app,
        {
            "bind": f"{host}:{port}",
            "workers": int(server["workers"]),
            "worker_class": worker,  # gunicorn's, plus a per-address connection limit and JSON errors
            "logger_class": "app.serving.Logger",  # every log handler redacts keys
            "pre_request": serving.pre_request,
            "limit_request_line": serving.REQUEST_LINE_LIMIT,  # gunicorn's maximum: long GET prompts fit
            "worker_connections": int(server["worker_connections"]),
            "threads": int(server["threads"]),
            "timeout": int(server["timeout"]),
            "keepalive": int(server["keepalive"]),
            "accesslog": "-",
            "access_log_format": serving.ACCESS_LOG_FORMAT,  # the path only: never a query string
            # Each worker gets its own database connections (never share sockets across a fork).
            "post_fork": lambda _server, _worker: app.extensions["services"].store.close(after_fork=True),
            "control_socket_disable": True,  # no shared ~/.gunicorn socket: several instances may run
            # Each worker listens on a socket of its own (SO_REUSEPORT): the kernel spreads new connections
            # over them, so one worker cannot take every keep-alive connection of a burst (docs/benchmarks.md).
            "reuse_port": bool(server["reuse_port"]),
        },
    ).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
