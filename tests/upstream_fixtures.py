"""Helpers shared by the upstream, pool and proxy tests: accounts that point at the fakes, and small probes."""

from __future__ import annotations

import socket
import time

import requests

FAST = {"connect": 1, "read": 2}
NO_COOLDOWN = {"backoff_start": 0}  # health: a 5xx, a timeout or a cut stream leaves the account usable
WEB_TOKEN = "web-token-0123456789"


def closed_port() -> int:
    """Return a 127.0.0.1 port that nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def openai_account(fake, name: str = "oa", api_key: str = "sk-test-key-0123456789", **extra) -> dict:
    """Return settings for an openai account that talks to a FakeOpenAI."""
    return {"name": name, "type": "openai", "api_key": api_key, "base_url": fake.url, **extra}


def web_account(fake, name: str = "web", access_token: str = WEB_TOKEN, **extra) -> dict:
    """Return settings for a chatgpt-web account that talks to a FakeChatGPTWeb."""
    return {"name": name, "type": "chatgpt-web", "access_token": access_token, "base_url": fake.url, **extra}


def start_with_user(make_server, admin: str, accounts: list, plus: bool = False, **overrides):
    """Start a live server with short timeouts; return it and a new user's key."""
    overrides.setdefault("timeouts", FAST)
    server = make_server(accounts, **overrides)
    key = server.create_user(admin, "alice", plus=plus)["api_key"]
    return server, key


def timed_chat(server, key: str, prompt: str, **params) -> tuple[requests.Response, float]:
    """POST /api/chat on a fresh session (safe from any thread); return the response and seconds taken."""
    started = time.monotonic()
    with requests.Session() as session:
        session.trust_env = False
        response = session.post(
            server.url + "/api/chat",
            json={"prompt": prompt, **params},
            headers={"Authorization": f"Bearer {key}"},
            timeout=20,
        )
    return response, time.monotonic() - started


def conversation_total(server, key: str) -> int:
    """Return how many conversations the key's user has stored."""
    response = server.get("/api/conversations", key)
    assert response.status_code == 200, response.text
    return response.json()["total"]


def last_prompt(record: dict) -> str:
    """Return the newest user text of a recorded OpenAI or ChatGPT web request."""
    message = record["body"]["messages"][-1]
    content = message.get("content")
    return content if isinstance(content, str) else "".join(content["parts"])


def chat_requests(fake) -> list[dict]:
    """Return the chat requests a fake received (not titles or model lists)."""
    return [r for r in fake.requests if r["path"].endswith(("/chat/completions", "/conversation"))]
