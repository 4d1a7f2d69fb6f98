"""`python3 main.py users|accounts|db ...` as subprocesses, beside a real `python3 main.py` on the same folder."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "cas-cli-test-admin-key-0123456789"
SECRET = "cli-test-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_settings(folder: Path) -> Path:
    """Two accounts: the demo, and an OpenAI-type account whose server is not there (port 9 answers nothing)."""
    settings = {
        "app_secret": SECRET,
        "accounts": [
            {"name": "demo", "type": "demo"},
            {"name": "broken", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
        ],
        "timeouts": {"connect": 2, "read": 5},
        "key_failures_per_minute": 0,
    }
    path = folder / "settings.json"
    path.write_text(json.dumps(settings, indent=2))
    return path


def environment(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ADMIN_API_KEY" and not k.lower().endswith("_proxy")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


class Site:
    """A folder with settings.json, users.json and the database, served by `python3 main.py`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.settings = write_settings(folder)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(folder.parent / f"server-{self.port}.log", "w")  # noqa: SIM115 (closed in stop)
        args = [sys.executable, "main.py", "--settings", str(self.settings), "--port", str(self.port)]
        self.popen = subprocess.Popen(
            args, cwd=ROOT, env=environment(ADMIN_API_KEY=ADMIN), stdout=self.log, stderr=subprocess.STDOUT
        )
        self.http = requests.Session()
        self.http.trust_env = False
        deadline = time.monotonic() + 30
        while True:
            if self.popen.poll() is not None:
                pytest.fail(f"server exited:\n{self.output()}")
            try:
                if self.http.get(self.url + "/api/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not start:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        return (self.folder.parent / f"server-{self.port}.log").read_text()

    def cli(self, *words: str, settings: bool = True) -> subprocess.CompletedProcess:
        """Run `python3 main.py WORDS... --settings FOLDER/settings.json`."""
        args = [sys.executable, "main.py", *words, *(("--settings", str(self.settings)) if settings else ())]
        proc = subprocess.run(args, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=60)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def cli_json(self, *words: str) -> dict:
        proc = self.cli(*words, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def get(self, path: str, key: str = ADMIN, **kwargs) -> requests.Response:
        return self.http.get(self.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=30, **kwargs)

    def post(self, path: str, key: str = ADMIN, **kwargs) -> requests.Response:
        return self.http.post(self.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=30, **kwargs)

    def users_file(self) -> dict:
        return json.loads((self.folder / "users.json").read_text())["users"]

    def stop(self) -> None:
        self.http.close()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self.log.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "site"
    folder.mkdir()
    running = Site(folder)
    yield running
    running.stop()


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# -- users -----------------------------------------------------------------------------------------


def test_create_prints_the_key_once_stores_its_hash_and_the_server_takes_it(site):
    proc = site.cli("users", "create", "Alice Smith", "--plus")
    assert proc.returncode == 0, proc.stderr
    assert "shown only this once" in proc.stdout
    key = next(word for word in proc.stdout.split() if word.startswith("cas-"))
    assert proc.stdout.count(key) == 1
    stored = [u for u in site.users_file().values() if u["username"] == "Alice Smith"]
    assert len(stored) == 1 and stored[0]["key_hash"] == sha256(key) and stored[0]["plus"] is True
    assert key not in (site.folder / "users.json").read_text()
    assert key not in (site.folder / "users.json.journal").read_text()

    me = site.get("/api/me", key)  # the running server knows the new user at once
    assert me.status_code == 200, me.text
    assert me.json()["username"] == "Alice Smith" and me.json()["plus"] is True
    assert site.post("/api/chat", key, json={"prompt": "hello from the cli's user"}).status_code == 200

    listed = site.cli("users", "list")
    assert listed.returncode == 0
    assert "Alice Smith" in listed.stdout and "USER_ID" in listed.stdout and key not in listed.stdout


def test_create_json_with_a_role_and_the_list_filters(site):
    made = site.cli_json("users", "create", "bot-one", "--role", "client")
    assert made["user"]["role"] == "client" and made["user"]["created_by"] == "admin"
    assert made["api_key"].startswith("cas-")
    assert site.users_file()[made["user"]["user_id"]]["key_hash"] == sha256(made["api_key"])
    # the client's key works on the server: it can create a user of its own there
    response = site.post("/api/users", made["api_key"], json={"username": "bot-user"})
    assert response.status_code == 201, response.text

    found = site.cli_json("users", "list", "--q", "BOT-ONE")
    assert [u["user_id"] for u in found["users"]] == [made["user"]["user_id"]] and found["total"] == 1
    assert all("key_hash" not in u and "api_key" not in u for u in site.cli_json("users", "list")["users"])


def test_rotate_key_the_old_key_stops_and_the_new_works(site):
    made = site.cli_json("users", "create", "rotor")
    user_id, old = made["user"]["user_id"], made["api_key"]
    assert site.get("/api/me", old).status_code == 200
    proc = site.cli("users", "rotate-key", user_id)
    assert proc.returncode == 0, proc.stderr
    new = next(word for word in proc.stdout.split() if word.startswith("cas-"))
    assert new != old and proc.stdout.count(new) == 1
    assert site.users_file()[user_id]["key_hash"] == sha256(new)
    assert site.get("/api/me", old).status_code == 401
    assert site.get("/api/me", new).status_code == 200
    again = site.cli_json("users", "rotate-key", user_id)
    assert site.get("/api/me", again["api_key"]).status_code == 200 and site.get("/api/me", new).status_code == 401


def test_delete_a_user_and_a_client_with_its_users(site):
    made = site.cli_json("users", "create", "leaver")
    proc = site.cli("users", "delete", made["user"]["user_id"])
    assert proc.returncode == 0, proc.stderr
    assert made["user"]["user_id"] in proc.stdout
    assert made["user"]["user_id"] not in site.users_file()
    assert site.get("/api/me", made["api_key"]).status_code == 401

    client = site.cli_json("users", "create", "bot-two", "--role", "client")
    owned = site.post("/api/users", client["api_key"], json={"username": "bot-two-user"}).json()
    deleted = site.cli_json("users", "delete", client["user"]["user_id"])["deleted"]
    assert {u["user_id"] for u in deleted} == {client["user"]["user_id"], owned["user_id"]}
    assert owned["user_id"] not in site.users_file()


def test_errors_exit_1_with_a_message_and_no_traceback(site):
    for words, message in (
        (("users", "delete", "no-such-user"), "no user 'no-such-user'"),
        (("users", "rotate-key", "no-such-user"), "no user"),
        (("users", "delete", "admin"), "last admin"),
        (("users", "create", "   "), "username is required"),
        (("accounts", "enable", "no-such-account"), "no account"),
        (("accounts", "test", "no-such-account"), "no account"),
        (("--as", "no-such-user", "users", "list"), "no user"),
    ):
        proc = site.cli(*words)
        assert proc.returncode == 1, (words, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("error: ") and message in proc.stderr, (words, proc.stderr)
    # acting as a non-admin is refused
    plain = site.cli_json("users", "create", "not-an-admin")["user"]["user_id"]
    proc = site.cli("--as", plain, "users", "list")
    assert proc.returncode == 1 and "not an admin" in proc.stderr
    # a settings file that is not there is an error, and nothing is made in its place
    missing = site.folder.parent / "nowhere" / "settings.json"
    proc = site.cli("users", "list", "--settings", str(missing), settings=False)
    assert proc.returncode == 1 and "no settings file" in proc.stderr and not missing.exists()


def test_bad_usage_exits_2(site):
    for words in (
        ("users",),
        ("users", "frob"),
        ("users", "create"),
        ("users", "create", "x", "--role", "god"),
        ("users", "delete"),
        ("accounts",),
        ("accounts", "enable"),
        ("db",),
        ("db", "downgrade"),
        ("users", "list", "--no-such-flag"),
    ):
        proc = site.cli(*words)
        assert proc.returncode == 2, (words, proc.stderr)
        assert "usage:" in proc.stderr


def test_as_another_admin_is_recorded_as_that_admin(site):
    second = site.cli_json("users", "create", "second-admin", "--role", "admin")["user"]["user_id"]
    made = site.cli_json("--as", second, "users", "create", "made-by-second")
    assert made["user"]["created_by"] == second
    entries = site.get("/api/audit", params={"actor": second, "action": "user.create"}).json()["entries"]
    assert [(e["target"], e["address"]) for e in entries] == [(made["user"]["user_id"], "cli")]


# -- accounts --------------------------------------------------------------------------------------


def server_account(site, name: str) -> dict:
    accounts = site.get("/api/accounts").json()["accounts"]
    return next(a for a in accounts if a["name"] == name)


def test_accounts_list_disable_enable_and_the_server_follows(site):
    listed = site.cli("accounts", "list")
    assert listed.returncode == 0
    for word in ("NAME", "STATE", "REQUESTS", "ERRORS", "demo", "broken"):
        assert word in listed.stdout
    accounts = {a["name"]: a for a in site.cli_json("accounts", "list")["accounts"]}
    assert set(accounts) == {"demo", "broken"}
    assert {"state", "requests", "errors", "enabled"} <= set(accounts["demo"])

    off = site.cli_json("accounts", "disable", "broken")["account"]
    assert off["enabled"] is False and off["state"] == "disabled"
    assert (
        next(a for a in json.loads(site.settings.read_text())["accounts"] if a["name"] == "broken")["enabled"] is False
    )
    deadline = time.monotonic() + 10
    while server_account(site, "broken")["state"] != "disabled":  # every worker looks at the file once a second
        assert time.monotonic() < deadline, "the server never saw the account disabled"
        time.sleep(0.2)
    proc = site.cli("accounts", "enable", "broken")
    assert proc.returncode == 0 and "enabled" in proc.stdout
    deadline = time.monotonic() + 10
    while not server_account(site, "broken")["enabled"]:
        assert time.monotonic() < deadline, "the server never saw the account enabled"
        time.sleep(0.2)


def test_accounts_test_works_and_fails_and_the_server_sees_the_health(site):
    good = site.cli_json("accounts", "test", "demo")
    assert good["ok"] is True and "demo" in good["reply"]
    proc = site.cli("accounts", "test", "demo")
    assert proc.returncode == 0 and "works" in proc.stdout

    proc = site.cli("accounts", "test", "broken", "--json")
    assert proc.returncode == 1 and proc.stderr.startswith("error: ")
    bad = json.loads(proc.stdout)
    assert bad["ok"] is False and bad["error"]["status"] >= 500
    seen = server_account(site, "broken")  # the health lives in the shared database
    assert seen["errors"] >= 1 and seen["state"] == "cooling"
    site.cli_json("accounts", "enable", "broken")  # a fresh start for the tests after this one


# -- the database ----------------------------------------------------------------------------------


def test_db_upgrade(site):
    result = site.cli_json("db", "upgrade")
    assert result["database"].endswith("conversations.db")
    try:
        from app.store import migrate
    except ImportError:
        assert result == {**result, "migrations": False, "revision": None}
    else:
        assert result["migrations"] is True and result["revision"] == migrate.head()
    proc = site.cli("db", "upgrade")  # again: nothing to do, same answer
    assert proc.returncode == 0 and "Database" in proc.stdout
    assert site.get("/api/health").status_code == 200


# -- safe while the server runs --------------------------------------------------------------------


def test_cli_and_server_create_users_at_once_and_none_is_lost(site):
    before = set(site.users_file())
    stop = time.monotonic() + 60
    chats: list[int] = []

    def chat_load():
        while time.monotonic() < stop and len(chats) < 40:
            chats.append(site.post("/api/chat", json={"prompt": "busy"}).status_code)

    def server_create(i: int) -> str:
        response = site.post("/api/users", json={"username": f"api-{i}"})
        assert response.status_code == 201, response.text
        return response.json()["user_id"]

    def cli_create(i: int) -> str:
        return site.cli_json("users", "create", f"cli-{i}")["user"]["user_id"]

    with ThreadPoolExecutor(max_workers=12) as pool:
        load = pool.submit(chat_load)
        from_cli = [pool.submit(cli_create, i) for i in range(6)]
        from_api = [pool.submit(server_create, i) for i in range(30)]
        made = {f.result() for f in from_cli} | {f.result() for f in from_api}
        load.result()
    assert chats and set(chats) == {200}
    assert len(made) == 36
    on_disk = set(site.users_file())
    assert made | before == on_disk  # no lost update
    served = {u["user_id"] for u in site.get("/api/users", params={"limit": 1000}).json()["users"]}
    assert served == on_disk
    assert {u["user_id"] for u in site.cli_json("users", "list")["users"]} == on_disk


def test_the_audit_log_has_the_clis_entries(site):
    made = site.cli_json("users", "create", "audited")
    user_id = made["user"]["user_id"]
    site.cli_json("users", "rotate-key", user_id)
    site.cli_json("users", "delete", user_id)
    site.cli_json("accounts", "disable", "demo")
    site.cli_json("accounts", "enable", "demo")
    entries = site.get("/api/audit", params={"limit": 500}).json()["entries"]
    mine = [(e["action"], e["target"]) for e in entries if e["address"] == "cli" and e["actor"] == "admin"]
    for wanted in (
        ("user.create", user_id),
        ("user.key_rotated", user_id),
        ("user.delete", user_id),
        ("account.disable", "demo"),
        ("account.enable", "demo"),
    ):
        assert wanted in mine
    assert all(e["actor_role"] == "admin" for e in entries if e["address"] == "cli")
    text = json.dumps(entries)
    assert made["api_key"] not in text and sha256(made["api_key"]) not in text
    # the CLI's own account edits are recorded as what they were, not as a hand edit of settings.json
    reloads = [e for e in entries if e["action"] == "settings.reload"]
    assert len(reloads) <= 1  # at most the server's own first look at the file


# -- the server itself is unchanged ----------------------------------------------------------------


def test_main_dispatch_sends_only_the_cli_words_to_the_cli():
    sys.path.insert(0, str(ROOT))
    import main

    assert main.cli_command(["users", "list"])
    assert main.cli_command(["--settings", "x.json", "accounts", "list"])
    assert main.cli_command(["--json", "db", "upgrade"])
    assert not main.cli_command([])
    assert not main.cli_command(["--settings", "users", "--port", "5000"])
    assert not main.cli_command(["--host", "0.0.0.0", "--port", "8080"])
    assert not main.cli_command(["serve"])  # argparse's own error, as before
    proc = subprocess.run([sys.executable, "main.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--port" in proc.stdout and "--host" in proc.stdout


def test_cli_help_names_every_command():
    proc = subprocess.run(
        [sys.executable, "main.py", "users", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for word in ("list", "create", "delete", "rotate-key"):
        assert word in proc.stdout
