"""Write the shared settings.json for compose.yaml's instances on first start; leave an existing one alone.

    python3 /app/deploy/init_settings.py [/data/settings.json]

The file is the server's own first-run settings (app/config.py first_run_settings) with what several
instances behind a reverse proxy need: one app_secret for all of them ($APP_SECRET, so a session cookie
made by one instance is good on the other), the shared database ($DATABASE_URL; its password stays in
the environment as PGPASSWORD, not in the file), 0.0.0.0, one trusted proxy and no per-address connection
limit (every connection comes from the proxy); $USERS_STORE sets users_store if given. It is checked
by config.validate before it is written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import config  # noqa: E402
from app.errors import ConfigError  # noqa: E402


def settings_for_compose(environ) -> dict:
    settings = config.first_run_settings()  # a generated secret and the demo account
    if environ.get("APP_SECRET"):
        settings["app_secret"] = environ["APP_SECRET"]
    settings.update(
        host="0.0.0.0",  # noqa: S104 (inside the container, behind the proxy)
        port=5000,
        trusted_proxies=1,
        max_connections_per_address=0,
    )
    if environ.get("DATABASE_URL"):
        settings["database_url"] = environ["DATABASE_URL"]
    if environ.get("USERS_STORE"):  # "sql": users in the database too (instances on several machines)
        settings["users_store"] = environ["USERS_STORE"]
    return settings


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "/data/settings.json")
    if path.exists():
        print(f"{path} exists; left as it is", flush=True)
        return 0
    settings = settings_for_compose(os.environ)
    try:
        config.validate(dict(settings), path.parent)
    except ConfigError as exc:
        print(f"settings error: {exc}", file=sys.stderr)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    config.write_private_json(path, settings)
    print(f"{path} written", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
