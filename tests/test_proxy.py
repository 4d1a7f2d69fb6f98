"""Accounts behind a real SOCKS5 proxy: traffic goes through it, and a broken proxy fails fast and cleanly."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from fakes import BlackholeServer, FakeOpenAI, Socks5Server
from upstream_fixtures import (
    chat_requests,
    closed_port,
    openai_account,
    start_with_user,
    timed_chat,
    web_account,
)

PROXY_USER, PROXY_PASSWORD = "proxy-user", "pr0xy-p@ss:word"  # @ and : must survive URL quoting


@pytest.fixture
def proxy():
    """A SOCKS5 proxy that demands PROXY_USER / PROXY_PASSWORD."""
    with Socks5Server(PROXY_USER, PROXY_PASSWORD) as server:
        yield server


def assert_clean_error(response, status: int, code: str, secret: str = PROXY_PASSWORD) -> str:
    """Check an error answer that names the account and never shows the secret; return its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert (body["status"], body["code"]) == ("error", code)
    assert "'oa'" in body["message"]
    assert secret not in response.text and quote(secret, safe="") not in response.text
    return body["message"]


@pytest.mark.parametrize(
    "url_attr, host, proxy_sees",
    [("url", "127.0.0.1", "127.0.0.1"), ("url_h", "localhost", "localhost")],
    ids=["socks5", "socks5h"],
)
def test_account_traffic_goes_through_its_proxy(make_server, admin, proxy, openai_fake, url_attr, host, proxy_sees):
    """The proxy opens the connection to the fake upstream; socks5h leaves the name for the proxy to resolve."""
    base_url = openai_fake.url.replace("127.0.0.1", host)
    account = openai_account(openai_fake, base_url=base_url, proxy=getattr(proxy, url_attr))
    server, key = start_with_user(make_server, admin, [account])
    answer = server.chat(key, "through the tunnel")
    assert answer["reply"] == "echo: through the tunnel"
    assert (proxy_sees, openai_fake.port) in proxy.connections
    assert len(chat_requests(openai_fake)) == 1
    assert proxy.auth_failures == 0


@pytest.mark.parametrize("kind", ["openai", "chatgpt-web"])
def test_connections_are_reused_per_account(make_server, admin, proxy, openai_fake, web_fake, kind):
    """Consecutive replies (streamed, titles included) share one pooled connection through the proxy."""
    if kind == "openai":
        account = openai_account(openai_fake, proxy=proxy.url)
    else:
        account = web_account(web_fake, proxy=proxy.url)
    server, key = start_with_user(make_server, admin, [account])
    first = server.chat(key, "one")
    for n in range(4):
        server.chat(key, f"more {n}", conversation_id=first["conversation_id"])
    assert len(proxy.connections) == 1, proxy.connections


def test_default_proxy_applies_and_none_opts_out(make_server, admin, proxy):
    """default_proxy carries accounts that name no proxy; "proxy": "none" goes direct."""
    with FakeOpenAI() as proxied, FakeOpenAI() as direct:
        accounts = [
            openai_account(proxied, name="via-default"),
            openai_account(direct, name="direct", proxy="none"),
        ]
        server, key = start_with_user(make_server, admin, accounts, default_proxy=proxy.url)
        assert {server.chat(key, f"q{n}")["account"] for n in range(4)} == {"via-default", "direct"}
        assert len(chat_requests(proxied)) == 2 and len(chat_requests(direct)) == 2
        ports = {port for _, port in proxy.connections}
        assert proxied.port in ports
        assert direct.port not in ports


def test_web_account_through_proxy(make_server, admin, proxy, web_fake):
    """A chatgpt-web account, its title request and its follow-up all go through the proxy."""
    server, key = start_with_user(make_server, admin, [web_account(web_fake, proxy=proxy.url)])
    first = server.chat(key, "hello via proxy")
    follow = server.chat(key, "again via proxy", conversation_id=first["conversation_id"])
    assert follow["reply"] == "web echo: again via proxy"
    [upstream_id] = web_fake.conversations
    assert first["conversation_title"] == web_fake.titles[upstream_id]
    assert {(h, p) for h, p in proxy.connections} == {("127.0.0.1", web_fake.port)}


@pytest.mark.parametrize("scheme", ["socks5", "socks5h", "http"])
def test_dead_proxy_is_quick_502(make_server, admin, openai_fake, scheme):
    """A proxy port where nothing listens gives 502 at once, well before the timeouts, without the password."""
    dead_url = f"{scheme}://{PROXY_USER}:{quote(PROXY_PASSWORD, safe='')}@127.0.0.1:{closed_port()}"
    account = openai_account(openai_fake, proxy=dead_url)
    server, key = start_with_user(make_server, admin, [account], timeouts={"connect": 3, "read": 3})
    response, elapsed = timed_chat(server, key, "hello?")
    message = assert_clean_error(response, 502, "upstream_error")
    assert "proxy" in message
    assert elapsed < 1.5
    assert chat_requests(openai_fake) == []


@pytest.mark.parametrize("url_attr", ["url", "url_h"], ids=["socks5", "socks5h"])
def test_blackhole_proxy_is_504_within_connect_timeout(make_server, admin, openai_fake, url_attr):
    """A proxy that accepts and never answers gives 504 after about the connect timeout, never a hang."""
    with BlackholeServer() as blackhole:
        account = openai_account(openai_fake, proxy=getattr(blackhole, url_attr))
        server, key = start_with_user(make_server, admin, [account], timeouts={"connect": 1, "read": 2})
        response, elapsed = timed_chat(server, key, "hello?")
        assert blackhole.accepted >= 1
    message = assert_clean_error(response, 504, "upstream_timeout")
    assert "proxy" in message
    assert 0.9 <= elapsed < 1 + 2 + 2
    assert chat_requests(openai_fake) == []


def test_wrong_proxy_credentials_is_502(make_server, admin, proxy, openai_fake):
    """A proxy that rejects the credentials gives 502 whose message does not carry the password."""
    wrong_password = "wrong-secret-pw-123"
    bad_url = proxy.url.replace(PROXY_PASSWORD.replace("@", "%40").replace(":", "%3A"), wrong_password)
    assert wrong_password in bad_url
    server, key = start_with_user(make_server, admin, [openai_account(openai_fake, proxy=bad_url)])
    response, _ = timed_chat(server, key, "let me in")
    message = assert_clean_error(response, 502, "upstream_error", secret=wrong_password)
    assert "proxy" in message
    assert proxy.auth_failures >= 1
    assert chat_requests(openai_fake) == []


def test_unreachable_upstream_behind_working_proxy_is_502(make_server, admin, proxy):
    """When the proxy cannot reach the upstream, the answer is a quick 502 that says it went through the proxy."""
    port = closed_port()
    account = {"name": "oa", "type": "openai", "api_key": "sk-x", "base_url": f"http://127.0.0.1:{port}/v1"}
    server, key = start_with_user(make_server, admin, [{**account, "proxy": proxy.url}])
    response, elapsed = timed_chat(server, key, "hello?")
    message = assert_clean_error(response, 502, "upstream_error")
    assert "through its proxy" in message
    assert ("127.0.0.1", port) in proxy.connections
    assert elapsed < 1.5
