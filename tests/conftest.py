"""Fixtures that read like the domain: a live server on 127.0.0.1, and admin, client and user keys.

Every app is built from a settings dict in a temporary folder, never from the repo's own
settings.json, and served over real HTTP by a threaded WSGI server.
"""

from __future__ import annotations

import gc
import json
import threading
from dataclasses import dataclass, field

import pytest
import requests
from fakes import FakeChatGPTWeb, FakeOpenAI
from openai import OpenAI
from pg import database, pg_cluster, pg_url  # noqa: F401  (fixtures: a throwaway PostgreSQL)
from werkzeug import serving

from app import create_app

ADMIN_KEY = "cas-test-admin-key-0123456789"


def pytest_collection_finish(session):
    """The live servers run in this process, beside every test module pytest imported (the openai SDK,
    langchain, schemathesis...): a full garbage collection then walks all of that, and pauses every server
    thread for 100 ms and more, which timing tests (health stays fast) read as a stalled server. Freezing
    what collection made keeps those objects out of every later collection."""
    gc.collect()
    gc.freeze()


DEMO = [{"name": "demo", "type": "demo"}]


@dataclass
class LiveServer:
    """An app served on 127.0.0.1 at an ephemeral port."""

    app: object
    url: str = ""
    _server: object = None
    _thread: threading.Thread | None = None
    session: requests.Session = field(default_factory=requests.Session)

    def start(self) -> LiveServer:
        self.session.trust_env = False
        self._server = serving.make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        # A short poll interval makes shutdown() return in ~50 ms instead of Werkzeug's 0.5 s.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        services = self.app.extensions["services"]
        services.pool.close()
        services.store.close()
        self.session.close()

    @property
    def services(self):
        return self.app.extensions["services"]

    def call(self, method: str, path: str, key: str | None = None, **kwargs) -> requests.Response:
        """Send a request; key goes in the Authorization header."""
        headers = kwargs.pop("headers", {})
        if key:
            headers["Authorization"] = f"Bearer {key}"
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.url + path, headers=headers, **kwargs)

    def get(self, path: str, key: str | None = None, **kwargs) -> requests.Response:
        return self.call("GET", path, key, **kwargs)

    def post(self, path: str, key: str | None = None, **kwargs) -> requests.Response:
        return self.call("POST", path, key, **kwargs)

    def chat(self, key: str, prompt: str, **params) -> dict:
        """POST /api/chat and return the JSON answer, asserting success."""
        response = self.post("/api/chat", key, json={"prompt": prompt, **params})
        assert response.status_code == 200, response.text
        return response.json()

    def create_user(self, key: str, username: str, **fields) -> dict:
        """POST /api/users and return the answer (with api_key), asserting 201."""
        response = self.post("/api/users", key, json={"username": username, **fields})
        assert response.status_code == 201, response.text
        return response.json()


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def no_proxy_from_the_environment(monkeypatch):
    """Test traffic stays on 127.0.0.1 whatever proxy the machine's environment names."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def settings_for(tmp_path, accounts=None, **overrides) -> dict:
    """Return a settings dict whose files live in tmp_path."""
    settings = {
        "accounts": DEMO if accounts is None else accounts,
        "users_file": str(tmp_path / "users.json"),
        "database_url": f"sqlite:///{tmp_path / 'conversations.db'}",
        "timeouts": {"connect": 2, "read": 5},
    }
    settings.update(overrides)
    return settings


def start_server(folder, accounts=None, admin_key: str = ADMIN_KEY, from_file: bool = False, **overrides) -> LiveServer:
    """Build an app whose files live in folder and serve it; the caller stops it.

    from_file: write the settings to folder/settings.json and start from that file, as main.py does
    (accounts can then be changed at run time).
    """
    settings = settings_for(folder, accounts, **overrides)
    if from_file:
        path = folder / "settings.json"
        path.write_text(json.dumps({"app_secret": "test-secret-0123456789", **settings}, indent=2))
        app = create_app(settings_path=path, admin_key=admin_key)
    else:
        app = create_app(settings, base_dir=folder, admin_key=admin_key)
    return LiveServer(app).start()


@pytest.fixture
def make_server(tmp_path):
    """Return a function that starts a live server from accounts and setting overrides."""
    started: list[LiveServer] = []

    def make(accounts=None, admin_key: str = ADMIN_KEY, **overrides) -> LiveServer:
        server = start_server(tmp_path, accounts, admin_key, **overrides)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One demo server for a whole test module; tests on it must make their own fresh users."""
    server = start_server(tmp_path_factory.mktemp("shared"))
    yield server
    server.stop()


@pytest.fixture
def openai_fake():
    """A running fake OpenAI-compatible upstream (tests/fakes), stopped after the test."""
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def sdk():
    """Return client(server, key): an official openai client for the server's /v1, closed after the test."""
    clients: list[OpenAI] = []

    def client(server, key: str) -> OpenAI:
        clients.append(OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=10))
        return clients[-1]

    yield client
    for made in clients:
        made.close()


@pytest.fixture
def web_fake():
    """A running fake ChatGPT web backend (tests/fakes), stopped after the test."""
    with FakeChatGPTWeb() as fake:
        yield fake


@pytest.fixture
def server(make_server) -> LiveServer:
    """A live server with only the demo account."""
    return make_server()


@pytest.fixture
def admin() -> str:
    return ADMIN_KEY


@pytest.fixture
def client_role(server, admin) -> dict:
    """A client (like a Discord bot) made by the admin, without plus: {'user_id', 'api_key', ...}."""
    return server.create_user(admin, "discord-bot", role="client")


@pytest.fixture
def user(server, admin) -> dict:
    """A plain user made by the admin, without plus."""
    return server.create_user(admin, "alice")
