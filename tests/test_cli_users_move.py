"""`python3 main.py users export | import`: users move from users.json to the database (users_store "sql")
and back without losing anyone or any key hash; every key keeps working."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LiveServer

from app import create_app

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "cas-move-test-admin-key-0123456789"


def cli(settings: Path, *words: str, admin_key: str | None = ADMIN) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ADMIN_API_KEY" and not k.lower().endswith("_proxy")}
    if admin_key:
        env["ADMIN_API_KEY"] = admin_key
    return subprocess.run(
        [sys.executable, "main.py", *words, "--settings", str(settings)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def site(folder: Path, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "app_secret": "move-test-secret-0123456789",
        "accounts": [{"name": "demo", "type": "demo"}],
        "users_file": str(folder / "users.json"),
        "database_url": f"sqlite:///{folder / 'conversations.db'}",
        **extra,
    }
    path = folder / "settings.json"
    path.write_text(json.dumps(settings))
    return path


def keys_work(settings_path: Path, keys: dict[str, str]) -> dict[str, str]:
    """Each key's username on a server started from settings_path."""
    server = LiveServer(create_app(settings_path=settings_path)).start()
    try:
        return {name: server.get("/api/me", key).json().get("username") for name, key in keys.items()}
    finally:
        server.stop()


def test_users_move_to_the_database_and_back_with_their_keys(tmp_path):
    json_site = site(tmp_path / "json")
    keys = {"admin": ADMIN}
    for name, role in (("alice", "user"), ("bot", "client")):
        made = cli(json_site, "users", "create", name, "--role", role, "--json")
        assert made.returncode == 0, made.stderr
        keys[name] = json.loads(made.stdout)["api_key"]
    exported = tmp_path / "users-export.json"
    out = cli(json_site, "users", "export", str(exported))
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600  # it holds every key hash
    assert not any(key in exported.read_text() for key in keys.values())

    # the same site, switched to users in the database: the first run's own admin gives way to the imported ones
    sql_site = site(tmp_path / "sql", users_store="sql")
    imported = cli(sql_site, "users", "import", str(exported), "--json", admin_key=None)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout) == {"imported": 3}
    listed = json.loads(cli(sql_site, "users", "list", "--json").stdout)["users"]
    assert sorted(u["username"] for u in listed) == ["admin", "alice", "bot"]
    assert keys_work(sql_site, keys) == {"admin": "admin", "alice": "alice", "bot": "bot"}
    again = cli(sql_site, "users", "import", str(exported))
    assert again.returncode == 1 and "already" in again.stderr and "Traceback" not in again.stderr

    # and back: export from the database, import into a fresh users.json
    back_file = tmp_path / "back.json"
    assert cli(sql_site, "users", "export", str(back_file)).returncode == 0
    assert json.loads(back_file.read_text())["users"] == json.loads(exported.read_text())["users"]
    back_site = site(tmp_path / "back")
    assert cli(back_site, "users", "import", str(back_file), admin_key=None).returncode == 0
    assert keys_work(back_site, keys) == {"admin": "admin", "alice": "alice", "bot": "bot"}
    for folder in ("sql", "back"):
        db = sqlite3.connect(tmp_path / folder / "conversations.db")
        actions = [row[0] for row in db.execute("SELECT action FROM audit_log WHERE action LIKE 'user.%port'")]
        db.close()
        assert "user.import" in actions, (folder, actions)


@pytest.mark.parametrize("content, words", [("{nope", "not JSON"), ('{"version": 1}', "users")])
def test_a_bad_file_is_refused_by_name(tmp_path, content, words):
    settings = site(tmp_path / "s")
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    result = cli(settings, "users", "import", str(bad))
    assert result.returncode == 1 and words in result.stderr and "Traceback" not in result.stderr
    missing = cli(settings, "users", "import", str(tmp_path / "nothing.json"))
    assert missing.returncode == 1 and "nothing.json" in missing.stderr
