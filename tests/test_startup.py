"""`python main.py` as a real subprocess: first run, the admin key, restarts, bad settings and the access log."""

from __future__ import annotations

import hashlib
import json
import os
import re
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
KEY_PATTERN = re.compile(r"cas-[A-Za-z0-9_-]{20,}")
FIXED_KEY = "some-key-from-the-environment-0123"


def users_in(folder: Path) -> dict:
    """The users held in folder/users.json, by id."""
    return json.loads((folder / "users.json").read_text())["users"]


def printed_keys(proc) -> list[str]:
    """Every generated-looking API key in a process's output."""
    return KEY_PATTERN.findall(proc.stdout + proc.stderr)


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """One `python main.py` run whose output goes to files outside the settings folder."""

    def __init__(self, folder: Path, logs: Path, env_extra: dict | None = None):
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        name = f"run-{time.monotonic_ns()}"
        self.out_path, self.err_path = logs / f"{name}.out", logs / f"{name}.err"
        env = {k: v for k, v in os.environ.items() if k not in ("ADMIN_API_KEY", "CAS_UNSET_VAR")}
        env.update(PYTHONUNBUFFERED="1", **(env_extra or {}))
        args = [sys.executable, "main.py", "--settings", str(folder / "settings.json"), "--port", str(self.port)]
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=err)
        self.session = requests.Session()
        self.session.trust_env = False
        self.terminated = False

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                pytest.fail(f"server exited with {self.popen.returncode}:\n{self.stdout}\n{self.stderr}")
            try:
                if self.session.get(self.url + "/api/health", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        pytest.fail(f"server did not answer /api/health in {timeout}s:\n{self.stdout}\n{self.stderr}")

    def get(self, path: str, key: str | None = None, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return self.session.get(self.url + path, headers=headers, timeout=30, **kwargs)

    def post(self, path: str, key: str | None = None, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return self.session.post(self.url + path, headers=headers, timeout=30, **kwargs)

    def wait_for_output(self, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stdout + self.stderr:
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} never appeared in the output:\n{self.stdout}\n{self.stderr}")
            time.sleep(0.05)

    def terminate(self) -> None:
        """Send SIGTERM once, if the process still runs."""
        if self.popen.poll() is None and not self.terminated:
            self.popen.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited in 15 s."""
        self.session.close()
        self.terminate()
        if self.popen.poll() is None:
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """Return a function that starts main.py on a folder; every process still running is stopped at the end."""
    logs = tmp_path_factory.mktemp("logs")
    procs: list[Proc] = []

    def run(folder: Path, env: dict | None = None, ready: bool = True) -> Proc:
        folder.mkdir(exist_ok=True)
        proc = Proc(folder, logs, env)
        procs.append(proc)
        if ready:
            proc.wait_ready()
        return proc

    yield run
    for proc in procs:  # SIGTERM all first, so their graceful shutdowns overlap
        proc.terminate()
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="module")
def site(launch, tmp_path_factory) -> tuple[Proc, str]:
    """One first run on a fresh folder, shared by the tests that only look at it: (process, printed key)."""
    proc = launch(tmp_path_factory.mktemp("site"))
    keys = printed_keys(proc)
    assert len(keys) == 1, f"expected one printed key:\n{proc.stdout}"
    return proc, keys[0]


def files_holding(folder: Path, needle: str) -> list[str]:
    """Return every file under folder whose bytes contain needle."""
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_first_run_writes_settings_and_one_admin(site):
    """A fresh folder gets a 0600 settings.json with a secret and the demo account, and one admin."""
    proc, key = site
    settings_file = proc.folder / "settings.json"
    assert settings_file.stat().st_mode & 0o777 == 0o600
    settings = json.loads(settings_file.read_text())
    assert isinstance(settings["app_secret"], str) and len(settings["app_secret"]) >= 32
    assert [a["type"] for a in settings["accounts"]] == ["demo"]
    assert [u["role"] for u in users_in(proc.folder).values()] == ["admin"]
    assert "First run" in proc.stdout and key in proc.stdout
    me = proc.get("/api/me", key).json()
    assert (me["user_id"], me["role"]) == ("admin", "admin")


def test_printed_key_chats_by_get_and_post_on_the_demo_account(site):
    """The printed admin key works as ?user=KEY on GET and as a Bearer header on POST; demo answers."""
    proc, key = site
    by_get = proc.get("/api/chat", params={"prompt": "hi", "user": key})
    assert by_get.status_code == 200, by_get.text
    by_post = proc.post("/api/chat", key, json={"prompt": "hi again"})
    assert by_post.status_code == 200, by_post.text
    for answer, prompt in ((by_get.json(), "hi"), (by_post.json(), "hi again")):
        assert answer["account"] == "demo"
        assert f"You said: {prompt}" in answer["reply"]
        assert answer["api_user"] == "admin"
    assert proc.post("/api/chat", "cas-not-a-real-key", json={"prompt": "hi"}).status_code == 401


def test_key_plaintext_is_in_no_file_only_its_hash(site):
    """After use, the admin key is stored nowhere in the folder except as its sha256."""
    proc, key = site
    assert proc.get("/api/chat", params={"prompt": "remember me", "user": key}).status_code == 200
    assert proc.post("/api/chat", key, json={"prompt": "and me"}).status_code == 200
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert [u["key_hash"] for u in users_in(proc.folder).values()] == [digest]
    assert files_holding(proc.folder, key) == []


def test_server_is_gunicorn_not_the_flask_dev_server(site):
    """The production server runs: gunicorn says so, and the Flask dev server's banner is absent."""
    proc, _key = site
    output = proc.stdout + proc.stderr
    assert "gunicorn" in output.lower()
    assert "development server" not in output
    assert "Running on http" not in output


def test_access_log_never_holds_the_key(site):
    """Requests with ?user=KEY (good or bad) are logged by path only; the key appears just once, when printed."""
    proc, key = site
    bad_key = "cas-this-key-is-wrong-but-secret-too"
    assert proc.get("/api/chat", params={"prompt": "logged?", "user": key}).status_code == 200
    assert proc.get("/api/me", params={"user": bad_key}).status_code == 401
    assert proc.get("/api/conversations", params={"api_key": key}).status_code == 200
    proc.wait_for_output('"GET /api/conversations"')
    proc.wait_for_output('"GET /api/me"')
    output = proc.stdout + proc.stderr
    assert '"GET /api/chat"' in output
    assert output.count(key) == 1
    assert bad_key not in output


def test_admin_api_key_from_environment_is_used_and_not_printed(launch, site, tmp_path):
    """With ADMIN_API_KEY set on a fresh folder, that key is the admin's and nothing is printed."""
    folder = tmp_path / "site"
    proc = launch(folder, env={"ADMIN_API_KEY": FIXED_KEY})
    me = proc.get("/api/me", FIXED_KEY)
    assert me.status_code == 200, me.text
    assert me.json()["role"] == "admin"
    assert proc.get("/api/chat", params={"prompt": "hi", "user": FIXED_KEY}).json()["account"] == "demo"
    proc.wait_for_output('"GET /api/chat"')
    assert FIXED_KEY not in proc.stdout + proc.stderr
    assert printed_keys(proc) == []
    assert "First run" not in proc.stdout
    assert len(users_in(folder)) == 1
    secret = json.loads((folder / "settings.json").read_text())["app_secret"]
    assert secret != json.loads((site[0].folder / "settings.json").read_text())["app_secret"]


def test_second_start_makes_no_new_admin_and_prints_no_key(launch, tmp_path):
    """Restarting on the same folder keeps the one admin and its key, prints no key, and stored no plaintext."""
    folder = tmp_path / "site"
    first = launch(folder)
    (key,) = printed_keys(first)
    assert first.post("/api/chat", key, json={"prompt": "before restart"}).status_code == 200
    before = users_in(folder)
    first.stop()
    assert files_holding(folder, key) == []

    second = launch(folder)
    assert printed_keys(second) == []
    assert "First run" not in second.stdout
    assert users_in(folder) == before
    assert second.get("/api/me", key).json()["user_id"] == "admin"
    listed = second.get("/api/conversations", key).json()["conversations"]
    assert [c["title"] for c in listed] == ["before restart"]


def write_as_admin(url: str, key: str, name: str) -> None:
    """Create a client, let it speak for a new user, rotate its key: three users.json writes, fresh connections."""

    def post(path: str, bearer: str, body: dict | None = None) -> dict:
        headers = {"Authorization": f"Bearer {bearer}", "Connection": "close"}
        response = requests.post(url + path, json=body, headers=headers, timeout=30)
        assert response.status_code in (200, 201), response.text
        return response.json()

    made = post("/api/users", key, {"username": name, "role": "client"})
    post("/api/chat", made["api_key"], {"prompt": "hi", "user_id": "p1", "username": "p"})
    post(f"/api/users/{made['user_id']}/key", key)


def test_forked_workers_write_users_json(launch, tmp_path):
    """Under gunicorn's forked workers every users.json write works, on first run and after a restart."""
    folder = tmp_path / "site"
    keys: list[str] = []
    for attempt in range(2):
        proc = launch(folder)
        keys += printed_keys(proc)
        key = keys[0]
        names = [f"u{attempt}{i}" for i in range(4)]
        with ThreadPoolExecutor(4) as pool:  # concurrent, on fresh connections: both workers take writes
            list(pool.map(write_as_admin, [proc.url] * 4, [key] * 4, names))
        proc.stop()
    assert len(users_in(folder)) == 1 + 2 * 4 * 2


@pytest.mark.parametrize(
    ("text", "culprit"),
    [
        (json.dumps({"accounts": [{"name": "demo", "type": "demo"}], "prot": 1}), "prot: unknown key"),
        ('{"accounts": [}', "line 1"),
        (json.dumps({"accounts": [{"name": "o", "type": "openai", "api_key": "env:CAS_UNSET_VAR"}]}), "CAS_UNSET_VAR"),
    ],
)
def test_bad_settings_exit_2_naming_the_culprit(launch, tmp_path, text, culprit):
    """Bad settings stop main.py with exit code 2 and a plain message naming the culprit, no traceback."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "settings.json").write_text(text)
    proc = launch(folder, ready=False)
    assert proc.popen.wait(timeout=30) == 2
    output = proc.stdout + proc.stderr
    assert culprit in output
    assert "Traceback" not in output
    assert not (folder / "users.json").exists()


def test_default_worker_class_is_gevent_in_both_places():
    """main.py decides whether to patch for gevent before it can import app.config: both defaults agree."""
    import main
    from app.config import DEFAULTS

    assert main.DEFAULT_WORKER_CLASS == DEFAULTS["server"]["worker_class"] == "gevent"


@pytest.mark.parametrize("kind", ["gevent", "gthread"])
def test_both_worker_classes_serve_chats_and_streams(launch, tmp_path, kind):
    """server.worker_class picks gunicorn's worker; either way chats and streams are answered."""
    folder = tmp_path / "site"
    folder.mkdir()
    settings = {"accounts": [{"name": "demo", "type": "demo"}], "server": {"worker_class": kind, "workers": 1}}
    (folder / "settings.json").write_text(json.dumps(settings))
    proc = launch(folder)
    key = printed_keys(proc)[0]
    assert f"Using worker: {kind}" in proc.stdout + proc.stderr
    assert proc.get("/api/chat", params={"prompt": "hi", "user": key}).json()["status"] == "success"
    stream = proc.get("/api/chat", params={"prompt": "hi", "user": key, "stream": "true"})
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    assert stream.text.count("event: delta") > 1 and "event: done" in stream.text
