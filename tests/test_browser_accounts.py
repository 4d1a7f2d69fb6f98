"""The accounts page in real Chromium: an admin adds, tests and disables an account with the keyboard alone.

Skipped when /usr/bin/chromium is missing. The server runs from a settings.json in tmp_path, with
one account on the fake OpenAI upstream.
"""

from __future__ import annotations

import json
import re

import pytest
import test_browser
from conftest import ADMIN_KEY
from playwright.sync_api import Locator, Page, expect
from test_browser import ARTIFACTS, assert_all_fields_labelled, log_in

browser = test_browser.browser  # the one Chromium fixture (a missing Chromium fails: CI installs it)
SECRET = "sk-s3cr3t-typed-in-chromium"
FOCUS_RING_JS = "e => getComputedStyle(e).outlineStyle !== 'none' && parseFloat(getComputedStyle(e).outlineWidth) > 0"


@pytest.fixture
def live(make_server, openai_fake):
    openai_fake.reply_text = "OK"
    account = {"name": "first", "type": "openai", "api_key": "sk-first-0123456789", "base_url": openai_fake.url}
    return make_server([account], from_file=True)


@pytest.fixture
def page(live, browser):
    """A private window (asked for after the server, so it closes before the server stops)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()


def tab_to(page: Page, target: Locator, limit: int = 80) -> None:
    """Press Tab until target has the focus, as a keyboard user would."""
    for _ in range(limit):
        if target.evaluate("e => e === document.activeElement"):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {target}")


def row(page: Page, name: str) -> Locator:
    return page.locator(f'table.accounts tr[data-account="{name}"]')


def press_enter_and_wait(page: Page) -> int:
    with page.expect_navigation() as navigation:
        page.keyboard.press("Enter")
    return navigation.value.status


def test_admin_adds_tests_and_disables_an_account_with_the_keyboard(live, openai_fake, page, tmp_path):
    """Nav link, add form, Test and Disable, all by keyboard; the table shows ok, the result, then disabled."""
    log_in(page, live, ADMIN_KEY)
    accounts_link = page.get_by_role("navigation", name="Main").get_by_role("link", name="Accounts", exact=True)
    page.goto(live.url + "/conversations")  # a page without autofocus: Tab starts at the top
    tab_to(page, accounts_link)
    press_enter_and_wait(page)
    expect(page.locator("h1")).to_have_text("Accounts")
    expect(row(page, "first").locator(".badge")).to_have_text("ok")

    for label, keys in [  # in the order Tab reaches them
        ("Name", "keyboard"),
        ("Model", "fake-model"),
        ("Base URL", openai_fake.url),
        ("Plus account", " "),
        ("Max concurrent requests", "2"),
        ("API key", SECRET),
    ]:
        field = page.get_by_label(label, exact=True)
        tab_to(page, field)
        assert field.evaluate(FOCUS_RING_JS), f"{label} shows no focus ring"
        page.keyboard.type(keys)
    tab_to(page, page.get_by_role("button", name="Add account", exact=True))
    assert press_enter_and_wait(page) == 200  # after the 303
    expect(page.locator("p.flash")).to_have_text("Added account keyboard.")
    added = row(page, "keyboard")
    expect(added.locator(".badge")).to_have_text("ok")
    expect(added).to_contain_text("openai · fake-model · plus")
    expect(added).to_contain_text("max concurrent: 2")
    expect(added).to_contain_text("api_key: set")
    assert SECRET not in page.content()
    written = {a["name"]: a for a in json.loads((tmp_path / "settings.json").read_text())["accounts"]}
    assert written["keyboard"]["api_key"] == SECRET and written["keyboard"]["plus"] is True

    test_button = page.get_by_role("button", name="Test keyboard", exact=True)
    tab_to(page, test_button)
    assert test_button.evaluate(FOCUS_RING_JS)
    press_enter_and_wait(page)
    result = page.locator("section.test-result")
    expect(result.locator("h2")).to_have_text(re.compile(r"^Test of keyboard: OK in [0-9.]+ ms$"))
    expect(result.locator("q.reply")).to_have_text("OK")
    assert len(openai_fake.requests_to("/v1/chat/completions")) == 1

    tab_to(page, page.get_by_role("button", name="Disable keyboard", exact=True))
    press_enter_and_wait(page)
    expect(page.locator("p.flash")).to_have_text("Disabled keyboard: it takes no new conversations.")
    expect(row(page, "keyboard").locator(".badge")).to_have_text("disabled")
    expect(page.get_by_role("button", name="Enable keyboard", exact=True)).to_be_visible()
    assert_all_fields_labelled(page)


def test_bad_proxy_is_shown_by_its_field_with_the_typing_kept(live, page):
    """The service's refusal comes back next to the proxy field, which has the focus; the key is not kept."""
    log_in(page, live, ADMIN_KEY)
    page.goto(live.url + "/admin/accounts")
    page.get_by_label("Name", exact=True).fill("eu")
    page.get_by_label("Proxy", exact=True).fill("socks5://10.0.0.5")
    page.get_by_label("API key", exact=True).fill(SECRET)
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Add account", exact=True).click()
    assert navigation.value.status == 400
    proxy = page.get_by_label("Proxy", exact=True)
    expect(proxy).to_be_focused()
    expect(proxy).to_have_value("socks5://10.0.0.5")
    expect(page.locator("#proxy-error")).to_have_text("proxy: proxy URL needs a port")
    expect(page.get_by_label("Name", exact=True)).to_have_value("eu")
    expect(page.get_by_label("API key", exact=True)).to_have_value("")


def test_accounts_pages_fit_a_phone_and_are_screenshotted(live, browser, openai_fake):
    """At 360 px the table stacks into cards with no sideways scroll; screenshots go to tests/artifacts/."""
    openai_fake.rate_limit("30")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        log_in(page, live, ADMIN_KEY)
        page.goto(live.url + "/admin/accounts")
        with page.expect_navigation():
            page.get_by_role("button", name="Test first", exact=True).click()
        expect(row(page, "first").locator(".badge")).to_have_text("cooling")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "accounts-1280.png"), full_page=True)

        page.set_viewport_size({"width": 360, "height": 740})
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        expect(row(page, "first").locator("td").first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "accounts-360.png"), full_page=True)

        page.goto(live.url + "/admin/accounts/first/edit")
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        assert_all_fields_labelled(page)
        expect(page.get_by_label("API key", exact=True)).to_have_value("")
        page.screenshot(path=str(ARTIFACTS / "accounts-edit-360.png"), full_page=True)
    finally:
        context.close()
