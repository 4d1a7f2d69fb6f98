"""Run chatgpt-api-server with a production WSGI server (gunicorn, threaded workers)."""

from __future__ import annotations

import argparse
import logging
import sys

from gunicorn.app.base import BaseApplication

from app import create_app
from app.errors import ConfigError

# The access log names the path only: a key sent as ?user=KEY must never reach a log.
ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--settings", default="settings.json", help="settings file (made on first run)")
    parser.add_argument("--host", help="address to listen on (default: settings host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: settings port, 5000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

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
    print(f"  Serving on http://{host}:{port}  (settings: {args.settings})", flush=True)
    Server(
        app,
        {
            "bind": f"{host}:{port}",
            "workers": int(server["workers"]),
            "worker_class": "gthread",
            "threads": int(server["threads"]),
            "timeout": int(server["timeout"]),
            "keepalive": int(server["keepalive"]),
            "accesslog": "-",
            "access_log_format": ACCESS_LOG_FORMAT,
            # Each worker gets its own database connections (never share sockets across a fork).
            "post_fork": lambda _server, _worker: app.extensions["services"].store.engine.dispose(close=False),
            "control_socket_disable": True,  # no shared ~/.gunicorn socket: several instances may run
        },
    ).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
