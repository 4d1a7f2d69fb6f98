"""The usage page and the user edit page in real Chromium on a phone-sized window (360 px wide).

The chart is server-drawn SVG: it must show, fit the window (no sideways scrolling) and have its
numbers in a table too. Limits typed on the edit page must be the ones the API then reports.
"""

from __future__ import annotations

import pytest
import test_browser
from conftest import ADMIN_KEY
from playwright.sync_api import Page, expect
from test_browser import ARTIFACTS, assert_all_fields_labelled, log_in

browser = test_browser.browser  # the one Chromium fixture (a missing Chromium fails: CI installs it)
PHONE = {"width": 360, "height": 780}
SCROLL_WIDTH_JS = "() => document.documentElement.scrollWidth"


@pytest.fixture
def live(server):
    """The conftest demo server (its replies carry a usage)."""
    return server


@pytest.fixture
def phone(live, browser) -> Page:
    """A private window 360 px wide (asked for after the server, so it closes before the server stops)."""
    context = browser.new_context(viewport=PHONE)
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()


def assert_no_sideways_scroll(page: Page) -> None:
    width = page.evaluate(SCROLL_WIDTH_JS)
    assert width <= PHONE["width"], f"the page is {width} px wide in a {PHONE['width']} px window"


def test_usage_chart_fits_a_phone_and_its_table_has_the_numbers(live, phone):
    """5 chats: the requests chart shows one bar inside the window, and the day table and totals say 5."""
    tokens = sum(live.chat(ADMIN_KEY, f"question {n}")["usage"]["total_tokens"] for n in range(5))
    log_in(phone, live, ADMIN_KEY)
    phone.get_by_role("navigation", name="Main").get_by_role("link", name="Usage", exact=True).click()
    expect(phone.locator("h1")).to_have_text("Usage")

    chart = phone.get_by_role("img", name="Requests per day", exact=False).first
    expect(chart).to_be_visible()
    box = chart.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] and box["height"] > 50
    bar = phone.locator("svg.chart-requests rect.bar")
    expect(bar).to_have_count(1)
    bar_box = bar.bounding_box()
    assert bar_box["height"] > 0.5 * box["height"]  # 5 of an axis topped at 5 fills the plot
    assert bar.evaluate("e => getComputedStyle(e).fill") != "none"
    expect(phone.get_by_role("img", name="Tokens per day", exact=False).first).to_be_visible()
    assert_no_sideways_scroll(phone)

    days = phone.locator("table.usage-days tbody tr")
    expect(days).to_have_count(30)
    counts = [int(text) for text in phone.locator("table.usage-days tbody tr td:nth-child(2)").all_inner_texts()]
    assert sum(counts) == 5
    expect(phone.locator('dd[data-total="requests"]')).to_have_text("5")
    expect(phone.locator('dd[data-total="tokens"]')).to_have_text(str(tokens))
    account_cells = phone.locator("table.usage-accounts tbody tr").locator("th, td")
    expect(account_cells).to_have_text(["demo", "5", "0", str(tokens)])
    phone.screenshot(path=str(ARTIFACTS / "usage-360.png"), full_page=True)


def test_dates_typed_in_the_range_form_are_shown(live, phone):
    """The date fields fill in the range; a 7-day range has 7 rows."""
    live.chat(ADMIN_KEY, "hello")
    log_in(phone, live, ADMIN_KEY)
    phone.goto(live.url + "/admin/usage")
    assert_all_fields_labelled(phone)
    phone.get_by_label("From", exact=True).fill("2020-03-01")
    phone.get_by_label("To", exact=True).fill("2020-03-07")
    with phone.expect_navigation():
        phone.get_by_role("button", name="Show", exact=True).click()
    expect(phone.locator("table.usage-days tbody tr")).to_have_count(7)
    expect(phone.locator('dd[data-total="requests"]')).to_have_text("0")
    expect(phone.locator("svg.chart-requests rect.bar")).to_have_count(0)
    assert_no_sideways_scroll(phone)


def test_limits_edited_on_the_page_are_what_the_api_reports(live, phone):
    """On a phone, an admin opens alice's edit page from the list, sets two limits and sees them applied."""
    alice = live.create_user(ADMIN_KEY, "alice")
    log_in(phone, live, ADMIN_KEY)
    phone.goto(live.url + "/admin/users")
    assert_no_sideways_scroll(phone)  # the wide table scrolls inside its own box
    phone.get_by_role("link", name="Edit alice", exact=True).click()
    expect(phone.locator("h1")).to_have_text("Edit alice")
    assert_all_fields_labelled(phone)
    assert_no_sideways_scroll(phone)

    phone.get_by_label("Requests a minute", exact=True).fill("7")
    phone.get_by_label("Tokens a day", exact=True).fill("none")
    with phone.expect_navigation() as navigation:
        phone.get_by_role("button", name="Save", exact=True).click()
    assert navigation.value.status == 200  # after the 303
    expect(phone.locator("p.flash")).to_have_text("Saved alice.")
    expect(phone.locator(f'tr[data-user="{alice["user_id"]}"] td.limits')).to_have_text("7 requests a minute (own)")

    got = live.get(f"/api/users/{alice['user_id']}", ADMIN_KEY).json()
    assert got["limits"] == {"requests_per_minute": 7, "tokens_per_day": None}
    assert got["effective_limits"]["requests_per_minute"] == 7

    phone.get_by_role("link", name="Edit alice", exact=True).click()
    expect(phone.get_by_label("Requests a minute", exact=True)).to_have_value("7")
    expect(phone.locator('tr[data-limit="requests_per_minute"] td').first).to_have_text("7")


def test_an_error_on_the_edit_page_is_announced_by_its_field(live, phone):
    """Demoting the only admin: 409, the error is tied to the role field and the choice stays."""
    log_in(phone, live, ADMIN_KEY)
    phone.goto(live.url + "/admin/users/admin/edit")
    phone.get_by_label("Role", exact=True).select_option("user")
    with phone.expect_navigation() as navigation:
        phone.get_by_role("button", name="Save", exact=True).click()
    assert navigation.value.status == 409
    role = phone.get_by_label("Role", exact=True)
    expect(role).to_have_value("user")
    expect(role).to_have_attribute("aria-invalid", "true")
    expect(phone.locator("#role-error")).to_have_text("cannot demote the last admin")
    assert "role-error" in role.get_attribute("aria-describedby")
