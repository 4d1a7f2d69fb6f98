"""The accounts page (/admin/accounts) over real HTTP: the table and its states, every action, the forms, roles, CSRF.

Servers start from a settings.json in tmp_path (accounts change at run time only then), and the
tests read that file to see what each form really wrote. Every secret used here holds SECRET, and
no page an admin is shown may ever hold it.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pytest
from conftest import ADMIN_KEY
from fakes import FakeOpenAI
from test_web_pages import CSRF_MESSAGE, Browser, Page, next_of, squash
from upstream_fixtures import FAST, openai_account

SECRET = "s3cr3t"  # part of every secret below
OA_KEY = f"sk-{SECRET}-oa-0123456789"
PAGE = "/admin/accounts"


class WatchedBrowser(Browser):
    """A browser that keeps every body it was sent, so a test can prove no secret was ever in one."""

    def __init__(self, server):
        super().__init__(server)
        self.bodies: list[tuple[str, str]] = []

    def request(self, method: str, path: str, **kwargs) -> Page:
        page = super().request(method, path, **kwargs)
        self.bodies.append((f"{method} {path}", page.response.text))
        return page


def settings_accounts(tmp_path) -> dict[str, dict]:
    """The accounts of settings.json on disk, by name, exactly as written."""
    raw = json.loads((tmp_path / "settings.json").read_text())
    return {a["name"]: a for a in raw["accounts"]}


def row(page: Page, name: str):
    found = page.doc.find("tr", **{"data-account": name})
    assert found is not None, f"no row for {name!r} in: {page.text[:2000]}"
    return found


def badge(page: Page, name: str) -> str:
    return squash(row(page, name).find("span", cls="badge").text)


def buttons(page: Page, name: str) -> list[str]:
    return [squash(b.text) for b in row(page, name).find_all("button")]


def flash(browser: Browser) -> list[str]:
    return browser.page(PAGE).flashes()


@pytest.fixture
def fake(openai_fake):
    """The fake OpenAI upstream, answering "OK"."""
    openai_fake.reply_text = "OK"
    return openai_fake


@pytest.fixture
def live(make_server, fake):
    """A server run from settings.json with a demo account and an openai one on the fake upstream."""
    accounts = [{"name": "demo", "type": "demo"}, openai_account(fake, "oa", api_key=OA_KEY)]
    return make_server(accounts, from_file=True, timeouts=FAST)


@pytest.fixture
def admin_browser(live):
    """The admin, logged in; after the test, no page it was shown may have held a secret."""
    browser = WatchedBrowser(live).log_in(ADMIN_KEY)
    yield browser
    leaks = [where for where, body in browser.bodies if SECRET in body]
    assert not leaks, f"a secret was sent in: {leaks}"


# -- the table ----------------------------------------------------------------------------------


def test_table_shows_each_state_with_a_badge_in_words(make_server, fake):
    """ok, cooling (after a 429 on a chat), needs attention (after a 401 on Test) and disabled, each in words."""
    with FakeOpenAI() as refusing:
        refusing.fail_status = 401
        accounts = [
            {"name": "fine", "type": "demo"},
            {"name": "off", "type": "demo", "enabled": False},
            openai_account(fake, "limited", api_key=OA_KEY, plus=True),
            openai_account(refusing, "refused", api_key=f"sk-{SECRET}-refused"),
        ]
        live = make_server(accounts, from_file=True, timeouts=FAST)
        fake.rate_limit("30")
        chat = live.post("/api/chat", ADMIN_KEY, json={"prompt": "hi", "plus": "true"})  # only "limited" is plus
        assert chat.status_code in (429, 502, 503), chat.text
        browser = WatchedBrowser(live).log_in(ADMIN_KEY)
        tested = browser.submit(f"{PAGE}/refused/test")
        assert tested.status == 200 and "Test of refused: failed" in tested.text

        page = browser.page(PAGE)
    assert page.status == 200 and page.headers["Cache-Control"] == "no-store"
    states = {name: badge(page, name) for name in ("fine", "off", "limited", "refused")}
    assert states == {"fine": "ok", "off": "disabled", "limited": "cooling", "refused": "needs attention"}

    limited = row(page, "limited")
    until = limited.find("p", cls="detail").find("time")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", until.attrs["datetime"])
    assert "until" in squash(limited.text) and "429" in squash(limited.find("p", cls="last-error").text)
    last_error = row(page, "refused").find("p", cls="last-error")
    assert last_error.find("time") is not None and "401" in squash(last_error.text)
    assert "Clear state of refused" in buttons(page, "refused") and "Enable off" in buttons(page, "off")
    assert not any(b.startswith("Clear state") for b in buttons(page, "fine"))
    assert all(SECRET not in body for _, body in browser.bodies)


def test_last_error_is_shown_as_text(make_server, fake):
    """An upstream's error message with markup is shown escaped, never as markup."""
    fake.fail_status, fake.fail_message = 500, "<script>window.x=1</script><b>bold</b>"
    live = make_server([openai_account(fake, "oa", api_key=OA_KEY)], from_file=True, timeouts=FAST)
    browser = Browser(live).log_in(ADMIN_KEY)
    browser.submit(f"{PAGE}/oa/test")
    page = browser.page(PAGE)
    assert "<script>window.x=1</script><b>bold</b>" in squash(row(page, "oa").find("p", cls="last-error").text)
    assert "<script>window.x" not in page.response.text and "&lt;script&gt;" in page.response.text
    assert row(page, "oa").find("b") is None


def test_table_lists_settings_but_never_secrets(make_server, fake, monkeypatch, tmp_path):
    """Type, model, plus, limits, proxy (without its password) and each secret as set / not set / env:NAME."""
    monkeypatch.setenv("OA_FROM_ENV", f"sk-{SECRET}-env")
    accounts = [
        openai_account(fake, "oa", api_key=OA_KEY, model="gpt-x", plus=True, max_concurrent=2, rpm=30),
        openai_account(fake, "env", api_key="env:OA_FROM_ENV", proxy=f"http://bob:{SECRET}@127.0.0.1:3128"),
        {"name": "web", "type": "chatgpt-web", "session_token": f"sess-{SECRET}", "base_url": fake.url},
    ]
    live = make_server(accounts, from_file=True, timeouts=FAST)
    browser = WatchedBrowser(live).log_in(ADMIN_KEY)
    page = browser.page(PAGE)
    oa, env, web = (squash(row(page, name).text) for name in ("oa", "env", "web"))
    assert "openai · gpt-x · plus" in oa and "max concurrent: 2" in oa and "per minute: 30" in oa
    assert "api_key: set" in oa and "proxy: none" in oa
    assert "api_key: env:OA_FROM_ENV" in env and "proxy: http://127.0.0.1:3128" in env
    assert "access_token: not set" in web and "session_token: set" in web
    for path in (PAGE, f"{PAGE}/oa/edit", f"{PAGE}/env/edit", f"{PAGE}/web/edit", f"{PAGE}/env/delete"):
        assert browser.page(path).status == 200
    assert not [where for where, body in browser.bodies if SECRET in body or "bob" in body]


# -- the buttons --------------------------------------------------------------------------------


def test_disable_then_enable(live, admin_browser, tmp_path):
    """Disable writes enabled=false and shows "disabled" with an Enable button; Enable undoes it."""
    page = admin_browser.submit(f"{PAGE}/oa/disable")
    assert page.status == 303 and page.location == PAGE
    assert settings_accounts(tmp_path)["oa"]["enabled"] is False
    page = admin_browser.page(PAGE)
    assert "Disabled oa: it takes no new conversations." in page.flashes()
    assert badge(page, "oa") == "disabled" and "Enable oa" in buttons(page, "oa")

    assert admin_browser.submit(f"{PAGE}/oa/enable").status == 303
    assert settings_accounts(tmp_path)["oa"]["enabled"] is True
    page = admin_browser.page(PAGE)
    assert "Enabled oa." in page.flashes() and badge(page, "oa") == "ok" and "Disable oa" in buttons(page, "oa")


def test_test_button_shows_the_reply_and_latency(live, fake, admin_browser):
    """Test sends one tiny request through the account and shows OK, the time it took and the reply."""
    page = admin_browser.submit(f"{PAGE}/oa/test")
    assert page.status == 200
    result = page.doc.find("section", cls="test-result")
    assert re.fullmatch(r"Test of oa: OK in [0-9.]+ ms", squash(result.find("h2").text))
    assert squash(result.find("q", cls="reply").text) == "OK"
    assert len(fake.requests_to("/v1/chat/completions")) == 1
    assert badge(page, "oa") == "ok"


def test_failed_test_shows_the_error_and_the_new_state(live, fake, admin_browser):
    """A test the upstream refuses (401) shows its error, and the account now needs attention."""
    fake.fail_status = 401
    page = admin_browser.submit(f"{PAGE}/oa/test")
    assert page.status == 200
    result = page.doc.find("section", cls="test-result")
    assert "failed" in result.attrs["class"] and "Test of oa: failed" in squash(result.text)
    assert "401" in squash(result.find("p", cls="error").text)
    assert "needs attention" in squash(result.text) and badge(page, "oa") == "needs attention"


def test_clear_state_gives_the_account_a_fresh_start(live, fake, admin_browser, tmp_path):
    """Clear state on an account that needs attention (and one cooling) makes it ok again."""
    fake.fail_status = 401
    admin_browser.submit(f"{PAGE}/oa/test")
    fake.heal()
    assert admin_browser.submit(f"{PAGE}/oa/clear").status == 303
    page = admin_browser.page(PAGE)
    assert "Cleared the state of oa." in page.flashes() and badge(page, "oa") == "ok"
    assert "401" in squash(row(page, "oa").find("p", cls="last-error").text)  # kept, as what happened last
    assert settings_accounts(tmp_path)["oa"]["enabled"] is True

    fake.rate_limit("30")
    assert badge(admin_browser.submit(f"{PAGE}/oa/test"), "oa") == "cooling"
    admin_browser.submit(f"{PAGE}/oa/clear")
    assert badge(admin_browser.page(PAGE), "oa") == "ok"


def test_delete_asks_first_then_removes_the_account(live, admin_browser, tmp_path):
    """Delete opens a confirmation page (GET changes nothing); confirming removes the account from settings.json."""
    confirm = admin_browser.page(f"{PAGE}/oa/delete")
    assert confirm.status == 200 and squash(confirm.doc.find("h1").text) == "Delete account oa?"
    assert "oa" in settings_accounts(tmp_path)
    assert confirm.doc.find("a", href=PAGE) is not None  # Cancel
    assert confirm.doc.find("button", type="submit").attrs.get("autofocus") is None
    page = admin_browser.submit(f"{PAGE}/oa/delete")
    assert page.status == 303 and page.location == PAGE
    assert list(settings_accounts(tmp_path)) == ["demo"]
    page = admin_browser.page(PAGE)
    assert "Deleted account oa." in page.flashes()
    assert page.doc.find("tr", **{"data-account": "oa"}) is None


def test_unknown_account_is_404(live, admin_browser):
    """Buttons and pages for an account that is not there answer 404 and say so."""
    assert admin_browser.page(f"{PAGE}/nope/edit").status == 404
    assert admin_browser.page(f"{PAGE}/nope/delete").status == 404
    page = admin_browser.submit(f"{PAGE}/nope/disable")
    assert page.status == 404 and "no account is named 'nope'" in page.text


# -- adding -------------------------------------------------------------------------------------


def test_add_sends_only_what_was_filled_in(live, fake, admin_browser, tmp_path):
    """The new account is written with the fields typed (numbers as numbers) and nothing left empty."""
    admin_browser.page(PAGE)
    form = {
        "name": " added ",
        "type": "openai",
        "model": "fake-model",
        "base_url": fake.url,
        "plus": "y",
        "enabled": "y",
        "proxy": "",
        "max_concurrent": "3",
        "rpm": "",
        "api_key": f"sk-{SECRET}-added",
        "access_token": "",
        "session_token": "",
        "auth_base": "",
    }
    page = admin_browser.submit(PAGE, form)
    assert page.status == 303 and page.location == PAGE
    assert settings_accounts(tmp_path)["added"] == {
        "name": "added",
        "type": "openai",
        "model": "fake-model",
        "base_url": fake.url,
        "api_key": f"sk-{SECRET}-added",
        "max_concurrent": 3,
        "plus": True,
    }
    page = admin_browser.page(PAGE)
    assert "Added account added." in page.flashes()
    assert badge(page, "added") == "ok" and "api_key: set" in squash(row(page, "added").text)
    assert squash(admin_browser.submit(f"{PAGE}/added/test").doc.find("q", cls="reply").text) == "OK"


def test_add_a_disabled_demo_account_with_nothing_else(live, admin_browser, tmp_path):
    """Unticked Enabled is the one default that must be written; the rest stays out of the file."""
    admin_browser.page(PAGE)
    assert admin_browser.submit(PAGE, {"name": "spare", "type": "demo"}).status == 303
    assert settings_accounts(tmp_path)["spare"] == {"name": "spare", "type": "demo", "enabled": False}
    assert badge(admin_browser.page(PAGE), "spare") == "disabled"


def test_add_form_starts_empty_with_enabled_ticked(live, admin_browser):
    page = admin_browser.page(PAGE)
    assert page.value("enabled") == "checked" and page.value("plus") == ""
    assert page.value("type") == "openai" and page.value("name") in (None, "")
    for field in ("name", "type", "model", "base_url", "plus", "enabled", "proxy", "max_concurrent", "rpm"):
        assert page.doc.find("label", for_=field) is not None, field
    for secret in ("api_key", "access_token", "session_token"):
        assert page.doc.find("input", id=secret).attrs["type"] == "password"


def test_bad_proxy_is_400_by_the_proxy_field_with_the_rest_kept(live, admin_browser, tmp_path):
    """The service's proxy error comes back next to the proxy field; name and model stay typed, the key does not."""
    before = (tmp_path / "settings.json").read_text()
    admin_browser.page(PAGE)
    typed = {"name": "eu", "type": "openai", "model": "gpt-eu", "proxy": "socks5://10.0.0.5", "enabled": "y"}
    page = admin_browser.submit(PAGE, {**typed, "api_key": f"sk-{SECRET}-eu"})
    assert page.status == 400
    assert page.error("proxy") == "proxy: proxy URL needs a port"
    assert page.doc.find("input", id="proxy").attrs.get("aria-invalid") == "true"
    assert (page.value("name"), page.value("model"), page.value("proxy")) == ("eu", "gpt-eu", "socks5://10.0.0.5")
    assert page.value("api_key") in (None, "")
    assert (tmp_path / "settings.json").read_text() == before


@pytest.mark.parametrize(
    ("typed", "field", "message"),
    [
        ({"rpm": "many"}, "rpm", 'rpm: must be a whole number or null, got "many"'),
        (
            {"max_concurrent": "0"},
            "max_concurrent",
            "max_concurrent: must be a whole number from 1 to 1000000 (or null for no limit)",
        ),
        ({"name": "demo"}, "name", "an account named 'demo' exists already"),
        ({"type": "chatgpt-web"}, "access_token", "required for type 'chatgpt-web'"),
        ({"type": "demo", "api_key": f"sk-{SECRET}"}, "api_key", "api_key: not used by type 'demo'"),
    ],
    ids=["not a number", "zero", "duplicate name", "missing token", "secret the type does not use"],
)
def test_service_errors_come_back_by_their_field(live, admin_browser, typed, field, message):
    """Each refusal of the service lands next to the field it names, with its status."""
    admin_browser.page(PAGE)
    page = admin_browser.submit(PAGE, {"name": "new", "type": "openai", "enabled": "y", **typed})
    assert page.status == (409 if field == "name" else 400)
    assert message in (page.error(field) or ""), page.text


def test_empty_name_is_refused_by_the_form(live, admin_browser):
    admin_browser.page(PAGE)
    page = admin_browser.submit(PAGE, {"name": "  ", "type": "demo", "model": "kept"})
    assert page.status == 400 and page.error("name") and page.value("model") == "kept"


# -- editing ------------------------------------------------------------------------------------


@pytest.fixture
def tuned(make_server, fake):
    """A server whose openai account has limits and plus set, to edit."""
    account = openai_account(fake, "oa", api_key=OA_KEY, model="gpt-a", plus=True, max_concurrent=3)
    return make_server([account], from_file=True, timeouts=FAST)


def test_edit_form_shows_the_settings_but_no_secret(tuned, fake):
    """Everything but secrets (and the proxy) is filled in; each secret says whether it is set."""
    browser = WatchedBrowser(tuned).log_in(ADMIN_KEY)
    page = browser.page(f"{PAGE}/oa/edit")
    assert page.status == 200 and page.headers["Cache-Control"] == "no-store"
    assert squash(page.doc.find("h1").text) == "Edit account oa"
    assert page.doc.find("input", id="name") is None  # a name cannot change
    shown = {f: page.value(f) for f in ("type", "model", "base_url", "plus", "enabled", "max_concurrent", "rpm")}
    assert shown == {
        "type": "openai",
        "model": "gpt-a",
        "base_url": fake.url,
        "plus": "checked",
        "enabled": "checked",
        "max_concurrent": "3",
        "rpm": "",
    }
    for field in ("proxy", "api_key", "access_token", "session_token", "auth_base"):
        assert page.value(field) in (None, ""), field
    assert "Now: set." in squash(page.doc.find("p", id="api_key-hint").text)
    assert "Now: none." in squash(page.doc.find("p", id="proxy-hint").text)
    assert all(SECRET not in body for _, body in browser.bodies)


def _edit(browser: Browser, **changes) -> Page:
    """Send the edit form as the page showed it, with changes."""
    shown = browser.page(f"{PAGE}/oa/edit")
    form = {f: shown.value(f) or "" for f in ("type", "model", "base_url", "max_concurrent", "rpm")}
    form |= {f: "y" for f in ("plus", "enabled") if shown.value(f) == "checked"}
    form |= {f: "" for f in ("proxy", "api_key", "access_token", "session_token", "auth_base")}
    return browser.submit(f"{PAGE}/oa/edit", {k: v for k, v in (form | changes).items() if v is not None})


def test_edit_sends_only_what_changed_and_keeps_the_secret(tuned, fake, tmp_path):
    """A new model and an rpm are written; the empty API key field leaves the key as it was."""
    browser = WatchedBrowser(tuned).log_in(ADMIN_KEY)
    before = settings_accounts(tmp_path)["oa"]
    page = _edit(browser, model="gpt-b", rpm="10")
    assert page.status == 303 and page.location == PAGE
    assert settings_accounts(tmp_path)["oa"] == {**before, "model": "gpt-b", "rpm": 10}
    assert "Saved account oa." in flash(browser)

    _edit(browser, max_concurrent="", plus=None)  # emptied: no limit; unticked: not plus
    assert settings_accounts(tmp_path)["oa"] == {
        **before,
        "model": "gpt-b",
        "rpm": 10,
        "max_concurrent": None,
        "plus": False,
    }
    row_text = squash(row(browser.page(PAGE), "oa").text)
    assert "max concurrent: no limit" in row_text and "per minute: 10" in row_text and "· plus" not in row_text

    _edit(browser, api_key=f"sk-{SECRET}-rotated", proxy="socks5h://127.0.0.1:1080")
    written = settings_accounts(tmp_path)["oa"]
    assert written["api_key"] == f"sk-{SECRET}-rotated" and written["proxy"] == "socks5h://127.0.0.1:1080"
    assert all(SECRET not in body for _, body in browser.bodies)


def test_edit_without_changes_writes_nothing(tuned, tmp_path):
    browser = Browser(tuned).log_in(ADMIN_KEY)
    before = (tmp_path / "settings.json").read_text()
    page = _edit(browser)
    assert page.status == 303 and "Nothing changed on oa." in flash(browser)
    assert (tmp_path / "settings.json").read_text() == before


def test_edit_errors_come_back_by_the_field_with_the_typing_kept(tuned, tmp_path):
    browser = Browser(tuned).log_in(ADMIN_KEY)
    before = (tmp_path / "settings.json").read_text()
    page = _edit(browser, model="gpt-typed", proxy="ftp://127.0.0.1:21", api_key=f"sk-{SECRET}-lost")
    assert page.status == 400 and "proxy scheme must be one of" in page.error("proxy")
    assert page.value("model") == "gpt-typed" and page.value("proxy") == "ftp://127.0.0.1:21"
    assert SECRET not in page.response.text
    assert (tmp_path / "settings.json").read_text() == before


def test_changing_the_type_drops_the_old_types_secret(tuned, fake, tmp_path):
    """openai -> chatgpt-web with an access token: the API key (which chatgpt-web cannot take) goes."""
    browser = Browser(tuned).log_in(ADMIN_KEY)
    page = _edit(browser, type="chatgpt-web", access_token=f"tok-{SECRET}")
    assert page.status == 303, page.text
    written = settings_accounts(tmp_path)["oa"]
    assert written["type"] == "chatgpt-web" and written["access_token"] == f"tok-{SECRET}"
    assert "api_key" not in written
    assert "access_token: set" in squash(row(browser.page(PAGE), "oa").text)


# -- who may ----------------------------------------------------------------------------------


def test_nav_shows_accounts_to_admins_only(live):
    admin = Browser(live).log_in(ADMIN_KEY)
    link = admin.page("/chat").doc.find("nav").find("a", href=PAGE)
    assert link is not None and squash(link.text) == "Accounts"
    assert admin.page(PAGE).doc.find("nav").find("a", href=PAGE).attrs.get("aria-current") == "page"
    for role in ("client", "user"):
        made = live.create_user(ADMIN_KEY, f"a-{role}", role=role)
        page = Browser(live).log_in(made["api_key"]).page("/chat")
        assert page.doc.find("a", href=PAGE) is None and "Accounts" not in squash(page.doc.find("nav").text)


@pytest.mark.parametrize("role", ["client", "user"])
def test_clients_and_users_get_403_and_change_nothing(live, role, tmp_path):
    made = live.create_user(ADMIN_KEY, f"a-{role}", role=role)
    browser = Browser(live).log_in(made["api_key"])
    before = (tmp_path / "settings.json").read_text()
    for path in (PAGE, f"{PAGE}/oa/edit", f"{PAGE}/oa/delete"):
        page = browser.page(path)
        assert page.status == 403 and "Only admins manage the pool's accounts." in page.text, path
    for path, data in [
        (PAGE, {"name": "mine", "type": "demo"}),
        (f"{PAGE}/oa/disable", {}),
        (f"{PAGE}/oa/test", {}),
        (f"{PAGE}/oa/edit", {"type": "demo"}),
        (f"{PAGE}/oa/delete", {}),
    ]:
        assert browser.submit(path, data).status == 403, path
    assert (tmp_path / "settings.json").read_text() == before


@pytest.mark.parametrize("path", [PAGE, f"{PAGE}/oa/edit", f"{PAGE}/oa/delete"])
def test_logged_out_visitor_is_sent_to_login(live, path):
    page = Browser(live).page(path)
    assert page.status == 303 and urlsplit(page.location).path == "/login" and next_of(page.location) == path


POSTS = [
    (PAGE, {"name": "forged", "type": "demo"}),
    (f"{PAGE}/oa/edit", {"type": "demo"}),
    (f"{PAGE}/oa/disable", {}),
    (f"{PAGE}/oa/enable", {}),
    (f"{PAGE}/oa/clear", {}),
    (f"{PAGE}/oa/test", {}),
    (f"{PAGE}/oa/delete", {}),
]


@pytest.mark.parametrize(("path", "data"), POSTS, ids=[p.rsplit("/", 1)[-1] for p, _ in POSTS])
def test_post_without_csrf_token_is_refused(live, fake, path, data, tmp_path):
    """Every form of the page refuses a POST without its token (400, says why) and changes nothing."""
    browser = Browser(live).log_in(ADMIN_KEY)
    before = (tmp_path / "settings.json").read_text()
    for token in (None, "not-a-token"):
        page = browser.submit(path, data, with_csrf=token is not None, token=token)
        assert page.status == 400 and CSRF_MESSAGE in page.text
    assert (tmp_path / "settings.json").read_text() == before
    assert fake.requests_to("/v1/chat/completions") == []


# -- without a settings file, at other paths, headers --------------------------------------------


def test_without_a_settings_file_changes_are_a_409_shown_on_the_page(make_server, fake):
    """A server started from a dict can list and test accounts; a change says why it cannot be made."""
    live = make_server([{"name": "demo", "type": "demo"}, openai_account(fake, "oa", api_key=OA_KEY)])
    browser = Browser(live).log_in(ADMIN_KEY)
    page = browser.page(PAGE)
    assert page.status == 200 and "started without a settings file" in page.text
    refused = browser.submit(f"{PAGE}/oa/disable")
    assert refused.status == 409 and "only when the server runs from a settings file" in refused.form_errors()
    assert badge(refused, "oa") == "ok"
    added = browser.submit(PAGE, {"name": "new", "type": "demo", "model": "typed", "enabled": "y"})
    assert added.status == 409 and "only when the server runs from a settings file" in added.form_errors()
    assert added.value("name") == "new" and added.value("model") == "typed"
    assert browser.submit(f"{PAGE}/oa/test").status == 200


def test_page_answers_at_the_path_settings_give(make_server):
    live = make_server(from_file=True, pages={"admin_accounts": "/ops/pool"})
    browser = Browser(live).log_in(ADMIN_KEY)
    page = browser.page("/ops/pool")
    assert page.status == 200 and page.doc.find("form", action="/ops/pool") is not None
    assert page.doc.find("nav").find("a", href="/ops/pool") is not None
    assert browser.page(PAGE).status == 404
    assert browser.submit("/ops/pool/demo/disable").location == "/ops/pool"


@pytest.mark.parametrize("path", [PAGE, f"{PAGE}/oa/edit", f"{PAGE}/oa/delete"])
def test_pages_are_strict_and_uncached(admin_browser, path):
    """Strict CSP, no inline script or handler, assets only from /static/, and no-store."""
    page = admin_browser.page(path)
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["Cache-Control"] == "no-store"
    assert all("src" in n.attrs and n.attrs["src"].startswith("/static/") for n in page.doc.find_all("script"))
    assert not [n for n in page.doc.iter() for a in n.attrs if a.startswith("on")]
    assert " style=" not in page.response.text


@pytest.mark.parametrize("path", [PAGE, f"{PAGE}/oa/edit"])
def test_every_field_has_a_label(admin_browser, path):
    page = admin_browser.page(path)
    fields = [
        n for n in page.doc.iter() if n.tag in ("input", "select", "textarea") and n.attrs.get("type") != "hidden"
    ]
    assert fields
    labelled = {n.attrs.get("for") for n in page.doc.find_all("label") if squash(n.text)}
    assert [f.attrs.get("id") for f in fields if f.attrs.get("id") not in labelled] == []
