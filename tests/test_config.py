"""Settings validation: defaults, errors that name the culprit, proxies, env secrets and secret-free reprs."""

from __future__ import annotations

import json

import pytest

from app import config
from app.errors import ConfigError

DEMO = {"name": "demo", "type": "demo"}


def openai(**fields) -> dict:
    """An openai account entry with a literal key unless fields say otherwise."""
    return {"name": "oa", "type": "openai", "api_key": "sk-literal-secret", **fields}


def only_account(raw_account: dict, **top) -> config.Account:
    """Validate settings holding one account and return it."""
    return config.validate({"accounts": [raw_account], **top})["accounts"][0]


def test_only_accounts_is_valid_with_defaults(tmp_path):
    """A file with only accounts loads, every other setting taking its default."""
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"accounts": [DEMO]}))
    settings, created = config.load(path)
    assert created is False
    for key in ("host", "port", "users_file", "database_url", "default_proxy", "max_body_bytes", "max_prompt_chars"):
        assert settings[key] == config.DEFAULTS[key], key
    for section in ("timeouts", "server", "byo_account", "routes"):
        assert settings[section] == config.DEFAULTS[section], section
    assert [(a.name, a.type, a.model, a.proxy) for a in settings["accounts"]] == [("demo", "demo", "demo", None)]
    assert settings["base_dir"] == str(tmp_path.resolve())
    assert settings["app_secret"], "an empty app_secret is replaced by a generated one"
    assert json.loads(path.read_text()) == {"accounts": [DEMO], "app_secret": settings["app_secret"]}
    assert path.stat().st_mode & 0o777 == 0o600


def test_partial_section_keeps_other_defaults():
    """Setting one timeout keeps the other at its default."""
    settings = config.validate({"accounts": [DEMO], "timeouts": {"connect": 3}})
    assert settings["timeouts"] == {"connect": 3, "read": config.DEFAULTS["timeouts"]["read"]}


BAD_SETTINGS = [
    ({"prot": 5000}, "prot"),
    ({"timeouts": {"conect": 1}}, "timeouts.conect"),
    ({"accounts": [{**DEMO, "nmae": "x"}]}, "accounts[0].nmae"),
    ({"accounts": [DEMO, openai(apikey="k")]}, "accounts[1].apikey"),
    ({"port": "80"}, "port"),
    ({"port": True}, "port"),
    ({"port": 5000.5}, "port"),
    ({"server": {"workers": 2.5}}, "server.workers"),
    ({"host": 127}, "host"),
    ({"accounts": [{**DEMO, "plus": "yes"}]}, "accounts[0].plus"),
    ({"accounts": [{**DEMO, "enabled": 1}]}, "accounts[0].enabled"),
    ({"timeouts": {"connect": "x"}}, "timeouts.connect"),
    ({"timeouts": {"read": 0}}, "timeouts.read"),
    ({"timeouts": 5}, "timeouts"),
    ({"accounts": {"name": "demo"}}, "accounts"),
    ({"default_proxy": "ftp://h:1"}, "default_proxy"),
    ({"accounts": [openai(proxy="ftp://h:1")]}, "accounts[0].proxy"),
    ({"accounts": [openai(proxy="socks5://nohost")]}, "accounts[0].proxy"),
    ({"accounts": [openai(proxy="socks5://:1080")]}, "accounts[0].proxy"),
    ({"accounts": [openai(proxy="socks5://")]}, "accounts[0].proxy"),
    ({"accounts": [openai(proxy="socks5://h")]}, "accounts[0].proxy"),
    ({"accounts": [openai(proxy="socks5://h:notaport")]}, "accounts[0].proxy"),
    ({"byo_account": {"proxy": "socks5://h"}}, "byo_account.proxy"),
    ({"accounts": [DEMO, DEMO]}, "'demo'"),
    ({"accounts": [{"name": "x", "type": "gemini"}]}, "accounts[0].type"),
    ({"accounts": [{"name": "x", "type": "gemini"}]}, "gemini"),
    ({"accounts": [{"name": "w", "type": "chatgpt-web"}]}, "accounts[0].access_token"),
    ({"accounts": [{"type": "demo"}]}, "accounts[0].name"),
    ({"accounts": [{**DEMO, "api_key": "k"}]}, "accounts[0].api_key"),
]


@pytest.mark.parametrize(("raw", "culprit"), BAD_SETTINGS, ids=[culprit for _raw, culprit in BAD_SETTINGS])
def test_invalid_settings_name_the_culprit(raw, culprit):
    """Each bad setting stops validation with a message that names it."""
    with pytest.raises(ConfigError) as caught:
        config.validate({"accounts": [DEMO], **raw})
    assert culprit in str(caught.value)


def test_duplicate_account_name_is_reported_as_duplicate():
    """Two accounts with one name are refused as a duplicate."""
    with pytest.raises(ConfigError, match="duplicate"):
        config.validate({"accounts": [openai(name="same"), {"name": "same", "type": "demo"}]})


@pytest.mark.parametrize(
    "proxy",
    [
        "socks5h://user:pa%40ss@proxy.example.com:1080",
        "socks5h://user:pass@proxy.example.com:1080",
        "socks5://10.0.0.1:1080",
        "http://proxy.example.com:3128",
        "https://u:p@proxy.example.com:443",
    ],
)
def test_good_proxy_urls_are_kept(proxy):
    """Well-formed proxy URLs, credentials included, are accepted unchanged."""
    assert only_account(openai(proxy=proxy)).proxy == proxy


def test_default_proxy_applies_to_accounts_without_one():
    """default_proxy fills in for accounts that name no proxy; "none" and an own proxy win over it."""
    default = "socks5h://user:pass@proxy.example.com:1080"
    own = "http://other.example.com:3128"
    accounts = [openai(name="a"), openai(name="b", proxy="none"), openai(name="c", proxy=own), {**DEMO}]
    settings = config.validate({"accounts": accounts, "default_proxy": default})
    proxies = {a.name: a.proxy for a in settings["accounts"]}
    assert proxies == {"a": default, "b": None, "c": own, "demo": default}
    assert settings["byo_account"]["proxy"] == default


def test_no_default_proxy_means_no_proxy():
    """Without default_proxy an account has no proxy."""
    assert only_account(openai()).proxy is None


def test_env_secret_is_resolved(monkeypatch):
    """ "env:NAME" takes the secret from the environment."""
    monkeypatch.setenv("CAS_TEST_OPENAI_KEY", "sk-from-environment")
    monkeypatch.setenv("CAS_TEST_WEB_TOKEN", "tok-from-environment")
    accounts = [
        openai(api_key="env:CAS_TEST_OPENAI_KEY"),
        {"name": "web", "type": "chatgpt-web", "access_token": "env:CAS_TEST_WEB_TOKEN"},
    ]
    oa, web = config.validate({"accounts": accounts})["accounts"]
    assert (oa.api_key, oa.secret) == ("sk-from-environment", "sk-from-environment")
    assert (web.access_token, web.secret) == ("tok-from-environment", "tok-from-environment")


def test_missing_env_secret_on_enabled_account_names_it(monkeypatch):
    """An enabled account whose env variable is unset is an error naming the variable and the key."""
    monkeypatch.delenv("CAS_TEST_MISSING_KEY", raising=False)
    with pytest.raises(ConfigError) as caught:
        config.validate({"accounts": [DEMO, openai(api_key="env:CAS_TEST_MISSING_KEY")]})
    assert "CAS_TEST_MISSING_KEY" in str(caught.value)
    assert "accounts[1].api_key" in str(caught.value)


def test_missing_env_secret_on_disabled_account_is_fine(monkeypatch):
    """A disabled account may name an unset env variable; it simply has no secret."""
    monkeypatch.delenv("CAS_TEST_MISSING_KEY", raising=False)
    account = only_account(openai(api_key="env:CAS_TEST_MISSING_KEY", enabled=False))
    assert (account.enabled, account.api_key) == (False, "")


def test_account_repr_never_shows_secrets(monkeypatch):
    """Neither repr nor str of an account, nor of the settings holding it, shows a secret."""
    monkeypatch.setenv("CAS_TEST_WEB_TOKEN", "tok-very-secret-value")
    accounts = [
        openai(api_key="sk-very-secret-value", proxy="socks5h://puser:proxy-secret-pw@p.example.com:1080"),
        {"name": "web", "type": "chatgpt-web", "access_token": "env:CAS_TEST_WEB_TOKEN"},
    ]
    settings = config.validate({"accounts": accounts})
    shown = " ".join([repr(settings["accounts"]), str(settings["accounts"][0]), f"{settings['accounts'][1]}"])
    for secret in ("sk-very-secret-value", "tok-very-secret-value", "proxy-secret-pw"):
        assert secret not in shown
    assert "oa" in shown and "web" in shown


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ('{"accounts": [\n  {"name": "demo", "type": "demo"},\n]}', 3, 1),
        ('{"accounts": []\n\n "port": 5000}', 3, 2),
        ("{'accounts': []}", 1, 2),
    ],
)
def test_invalid_json_names_line_and_column(tmp_path, text, line, column):
    """A file that is not JSON gives a ConfigError with the line and column of the fault."""
    path = tmp_path / "settings.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    message = str(caught.value)
    assert f"line {line}" in message and f"column {column}" in message
    assert str(path) in message


def test_load_refuses_an_invalid_file_without_rewriting_it(tmp_path):
    """An invalid settings file is reported and left as it was."""
    path = tmp_path / "settings.json"
    text = json.dumps({"accounts": [DEMO], "bogus": 1})
    path.write_text(text)
    with pytest.raises(ConfigError, match="bogus"):
        config.load(path)
    assert path.read_text() == text


def test_comment_keys_are_ignored():
    """Keys starting with "_" document the file and are not settings."""
    settings = config.validate({"_comment": "hi", "accounts": [{**DEMO, "_note": "x"}]})
    assert settings["accounts"][0].name == "demo"


def test_proxy_urls_can_come_from_the_environment(monkeypatch):
    """env:NAME works for proxies (their URLs hold passwords) as for keys; a missing one is named."""
    monkeypatch.setenv("CAS_TEST_PROXY", "socks5h://user:secret@proxy.internal:1080")
    settings = config.validate(
        {
            "default_proxy": "env:CAS_TEST_PROXY",
            "accounts": [{"name": "a", "type": "demo"}, {"name": "b", "type": "demo", "proxy": "env:CAS_TEST_PROXY"}],
        }
    )
    assert [a.proxy for a in settings["accounts"]] == ["socks5h://user:secret@proxy.internal:1080"] * 2
    with pytest.raises(ConfigError, match=r"accounts\[0\]\.proxy: environment variable CAS_NOT_SET"):
        config.validate({"accounts": [{"name": "a", "type": "demo", "proxy": "env:CAS_NOT_SET"}]})
