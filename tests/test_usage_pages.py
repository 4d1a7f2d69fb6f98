"""The usage, audit and user-editing pages over real HTTP (no browser): numbers, scopes, filters, paging, errors.

Servers are conftest's (the demo account, whose replies carry a `usage`); a `Browser` from
test_web_pages logs in on the login page and posts forms with the session's CSRF token.
"""

from __future__ import annotations

import re

import pytest
from conftest import ADMIN_KEY
from test_web_pages import CSRF_MESSAGE, Browser, Page, squash


def cells(page: Page, table_class: str) -> list[list[str]]:
    """The body rows of a table as lists of their cells' text (header cells of a row included)."""
    table = page.doc.find("table", cls=table_class)
    assert table is not None, f"no table.{table_class} in: {page.text[:1500]}"
    return [[squash(c.text) for c in row.iter() if c.tag in ("th", "td")] for row in table.find("tbody").find_all("tr")]


def total(page: Page, name: str) -> int:
    return int(squash(page.doc.find("dd", **{"data-total": name}).text))


def chat_times(server, key: str, times: int, **params) -> int:
    """Chat times times on /api/chat; return the tokens the answers said they used."""
    return sum(server.chat(key, f"question {n}", **params)["usage"]["total_tokens"] for n in range(times))


def nav_links(page: Page) -> list[str]:
    return [squash(a.text) for a in page.doc.find("nav", **{"aria-label": "Main"}).find_all("a")]


# -- the usage page ------------------------------------------------------------------------------


def test_usage_page_shows_what_was_sent_in_a_chart_and_tables(server, user):
    """4 chats by the admin and 2 by alice: the day table, totals, top users and accounts say so; the SVG is there."""
    tokens = chat_times(server, ADMIN_KEY, 4) + chat_times(server, user["api_key"], 2)
    page = Browser(server).log_in(ADMIN_KEY).page("/admin/usage")
    assert page.status == 200 and "Usage" in nav_links(page) and "Audit" in nav_links(page)

    days = cells(page, "usage-days")
    assert len(days) == 30  # the last 30 days by default, the empty ones too
    assert sum(int(row[1]) for row in days) == 6 and sum(int(row[2]) for row in days) == tokens
    assert total(page, "requests") == 6 and total(page, "tokens") == tokens and total(page, "errors") == 0
    users = cells(page, "usage-users")
    assert [(row[0].split()[0], row[1]) for row in users] == [("admin", "4"), ("alice", "2")]
    assert cells(page, "usage-accounts") == [["demo", "6", "0", str(tokens)]]

    chart = page.doc.find("svg", cls="chart-requests")
    assert chart.attrs["role"] == "img" and chart.attrs["width"] == "100%"
    assert re.fullmatch(r"0 0 \d+ \d+", chart.attrs["viewbox"])
    title = chart.find("title", id=chart.attrs["aria-labelledby"])
    assert title is not None and squash(title.text).startswith("Requests per day")
    bars = chart.find_all("rect", cls="bar")
    assert [squash(bar.text).split(": ")[1] for bar in bars] == ["6 requests"]
    assert page.doc.find("svg", cls="chart-tokens").find("rect", cls="bar") is not None
    assert " style=" not in page.response.text  # the pages' CSP allows no style attribute


def test_usage_page_shows_failed_turns_under_no_account(server):
    """A turn no account could take (503: no plus account) counts as an error of "none available"."""
    chat_times(server, ADMIN_KEY, 2)
    refused = server.post("/api/chat", ADMIN_KEY, json={"prompt": "plus please", "plus": "true"})
    assert refused.status_code == 503, refused.text
    page = Browser(server).log_in(ADMIN_KEY).page("/admin/usage")
    accounts = {row[0]: row[1:3] for row in cells(page, "usage-accounts")}
    assert accounts == {"demo": ["2", "0"], "none available": ["1", "1"]}
    assert total(page, "requests") == 3 and total(page, "errors") == 1


def test_client_sees_only_its_own_users_usage(server, client_role, user):
    """A client's page counts its users' turns only; the admin's and alice's are not there."""
    bots_user = server.create_user(client_role["api_key"], "bots-user", user_id="ext-1")
    chat_times(server, bots_user["api_key"], 2)
    chat_times(server, client_role["api_key"], 1, user_id="ext-1")  # the bot speaking for its user
    chat_times(server, ADMIN_KEY, 3)
    chat_times(server, user["api_key"], 1)

    page = Browser(server).log_in(client_role["api_key"]).page("/admin/usage")
    assert page.status == 200 and "Usage" in nav_links(page) and "Audit" not in nav_links(page)
    assert total(page, "requests") == 3
    assert [(row[0].split()[0], row[1]) for row in cells(page, "usage-users")] == [("bots-user", "3")]
    link = page.doc.find("table", cls="usage-users").find("a")
    assert Browser(server).log_in(client_role["api_key"]).page(link.attrs["href"]).status == 200  # its user's own page
    assert "alice" not in page.text and user["user_id"] not in page.response.text
    assert Browser(server).log_in(client_role["api_key"]).page(f"/admin/usage?user_id={user['user_id']}").status == 404


def test_usage_page_for_one_user_and_a_chosen_range(server, user):
    """user_id narrows the page to one user; from and to are kept in the form."""
    chat_times(server, ADMIN_KEY, 2)
    chat_times(server, user["api_key"], 1)
    page = (
        Browser(server).log_in(ADMIN_KEY).page(f"/admin/usage?user_id={user['user_id']}&from=2020-01-01&to=2020-01-07")
    )
    assert page.status == 200 and total(page, "requests") == 0 and len(cells(page, "usage-days")) == 7
    assert page.value("from") == "2020-01-01" and page.value("to") == "2020-01-07"
    page = Browser(server).log_in(ADMIN_KEY).page(f"/admin/usage?user_id={user['user_id']}")
    assert total(page, "requests") == 1 and page.value("user_id") == user["user_id"]


def test_plain_user_gets_403_and_no_usage_link(server, user):
    """A plain user's nav has neither Usage nor Audit, and /admin/usage answers an Error 403 page."""
    browser = Browser(server).log_in(user["api_key"])
    page = browser.page("/admin/usage")
    assert page.status == 403 and "Error 403" in page.text
    assert "Usage" not in nav_links(page) and "Audit" not in nav_links(page)


@pytest.mark.parametrize(
    ("query", "field", "said"),
    [
        ("from=2026-13-01", "from", "from must be a date as YYYY-MM-DD"),
        ("to=yesterday", "to", "to must be a date as YYYY-MM-DD"),
        ("from=2026-02-02&to=2026-02-01", "from", "from must not be after to"),
    ],
)
def test_bad_dates_are_400_next_to_their_field(server, query, field, said):
    """A date that is not YYYY-MM-DD, or from after to, is a 400 with the service's words next to the field."""
    page = Browser(server).log_in(ADMIN_KEY).page(f"/admin/usage?{query}")
    assert page.status == 400 and said in page.error(field)
    assert page.doc.find("svg") is None


def test_a_range_too_long_to_draw_is_400(server):
    """More than 366 days cannot be drawn day by day: a 400 above the form."""
    page = Browser(server).log_in(ADMIN_KEY).page("/admin/usage?from=2020-01-01&to=2026-01-01")
    assert page.status == 400 and "choose at most 366 days" in page.form_errors()


# -- the audit page ------------------------------------------------------------------------------


def audit_rows(page: Page) -> list[dict]:
    names = ("time", "who", "action", "target", "detail", "address")
    return [dict(zip(names, row, strict=True)) for row in cells(page, "audit")]


def test_audit_page_lists_logins_creations_and_rotations_newest_first(server):
    """Log in, create a user and rotate its key on the pages: three entries, newest first, filterable by action."""
    browser = Browser(server).log_in(ADMIN_KEY)
    browser.page("/admin/users")
    assert browser.submit("/admin/users", {"username": "dora", "role": "user"}).status == 201
    dora = next(u for u in server.get("/api/users", ADMIN_KEY).json()["users"] if u["username"] == "dora")
    assert browser.submit(f"/admin/users/{dora['user_id']}/key").status == 200

    page = browser.page("/admin/audit")
    assert page.status == 200 and "Entries 1–3 of 3" in page.text
    rows = audit_rows(page)
    assert [r["action"] for r in rows] == ["user.key_rotated", "user.create", "login"]
    assert all(r["who"] == "admin admin" and r["address"] == "127.0.0.1" for r in rows)
    assert [r["target"] for r in rows] == [dora["user_id"], dora["user_id"], "admin"]
    assert "username: dora" in rows[1]["detail"] and "role: user" in rows[1]["detail"]
    assert rows[2]["detail"] == "page: login"

    only = audit_rows(browser.page("/admin/audit?action=user.create"))
    assert [r["action"] for r in only] == ["user.create"]
    assert [r["action"] for r in audit_rows(browser.page("/admin/audit?action=user."))] == [
        "user.key_rotated",
        "user.create",
    ]
    assert [r["action"] for r in audit_rows(browser.page(f"/admin/audit?target={dora['user_id']}"))] == [
        "user.key_rotated",
        "user.create",
    ]
    assert audit_rows(browser.page("/admin/audit?actor=nobody")) == []
    assert audit_rows(browser.page("/admin/audit?to=2020-01-01")) == []


def test_logins_by_link_are_recorded_and_failed_ones_are_not(server, user):
    """A link login confirmed on the page is a login entry of that user; a wrong key pasted leaves none."""
    stranger = Browser(server)
    stranger.page("/login")
    assert stranger.submit("/login", {"api_key": "cas-wrong-key"}).status == 401
    linked = Browser(server)
    linked.page(f"/conversations?user={user['api_key']}")
    linked.page("/login?next=/conversations")
    assert linked.submit("/login", {"confirm": "1", "next": "/conversations"}).status == 303
    rows = audit_rows(Browser(server).log_in(ADMIN_KEY).page("/admin/audit?action=login"))
    assert [(r["who"], r["target"]) for r in rows] == [
        ("admin admin", "admin"),
        (f"{user['user_id']} user", user["user_id"]),
    ]
    assert "cas-wrong-key" not in str(server.get("/api/audit", ADMIN_KEY).json())


def test_audit_details_are_text_not_markup(server):
    """Markup in a user's name is shown as text in the detail column."""
    evil = '<img src=x onerror="alert(1)">'
    server.create_user(ADMIN_KEY, evil)
    page = Browser(server).log_in(ADMIN_KEY).page("/admin/audit?action=user.create")
    assert page.doc.find("img") is None and f"username: {evil}" in audit_rows(page)[0]["detail"]


def test_audit_page_is_paged_by_50(server):
    """55 entries: page 1 holds the newest 50, page 2 the oldest 5; the links keep the filters."""
    for n in range(54):
        server.create_user(ADMIN_KEY, f"paged-{n}")
    browser = Browser(server).log_in(ADMIN_KEY)  # the 55th entry
    first = browser.page("/admin/audit")
    assert "Entries 1–50 of 55" in first.text and len(audit_rows(first)) == 50
    assert first.doc.find("a", rel="prev") is None
    second = browser.page(first.doc.find("a", rel="next").attrs["href"])
    assert "Entries 51–55 of 55" in second.text and second.doc.find("a", rel="next") is None
    assert [re.search(r"username: ([^;]+)", r["detail"]).group(1) for r in audit_rows(second)] == [
        f"paged-{n}" for n in (4, 3, 2, 1, 0)
    ]
    filtered = browser.page("/admin/audit?action=user.create&offset=50")
    assert filtered.doc.find("a", rel="prev").attrs["href"] == "/admin/audit?action=user.create"


@pytest.mark.parametrize("who", ["client", "user"])
def test_audit_page_is_for_admins_only(server, client_role, user, who):
    """Clients and plain users get an Error 403 page."""
    key = client_role["api_key"] if who == "client" else user["api_key"]
    page = Browser(server).log_in(key).page("/admin/audit")
    assert page.status == 403 and "Only admins read the audit log." in page.text


def test_audit_page_bad_date_is_400(server):
    """A from that is not a date is a 400 next to its field."""
    page = Browser(server).log_in(ADMIN_KEY).page("/admin/audit?from=soon")
    assert page.status == 400 and "from must be a date or time" in page.error("from")


# -- the users page: search and paging ------------------------------------------------------------


def user_rows(page: Page) -> list[str]:
    """The names in the users table (empty-page rows left out)."""
    return [row[0] for row in cells(page, "users") if len(row) > 1]


def test_users_page_is_paged_and_searchable(server):
    """56 users: page 1 holds 50, page 2 the other 6; q finds one by any case of its name, and by its id."""
    made = [server.create_user(ADMIN_KEY, f"member-{n:02}") for n in range(54)]
    zebra = server.create_user(ADMIN_KEY, "Findable Zebra")
    listed = [u["username"] for u in server.get("/api/users?limit=100", ADMIN_KEY).json()["users"]]  # oldest first
    listed = ["admin (you)" if name == "admin" else name for name in listed]
    browser = Browser(server).log_in(ADMIN_KEY)
    first = browser.page("/admin/users")
    assert "All users (56)" in first.text and "Users 1–50 of 56" in first.text
    assert user_rows(first) == listed[:50] and first.doc.find("a", rel="prev") is None
    second = browser.page(first.doc.find("a", rel="next").attrs["href"])
    assert second.response.url.endswith("/admin/users?offset=50") and "Users 51–56 of 56" in second.text
    assert user_rows(second) == listed[50:] and second.doc.find("a", rel="next") is None
    assert second.doc.find("a", rel="prev").attrs["href"] == "/admin/users"

    found = browser.page("/admin/users?q=zEBRA")
    assert user_rows(found) == ["Findable Zebra"] and "All users (1 matching “zEBRA”)" in found.text
    assert found.value("q") == "zEBRA" and found.doc.find("nav", cls="pager") is None
    assert user_rows(browser.page(f"/admin/users?q={made[7]['user_id']}")) == ["member-07"]
    many = browser.page("/admin/users?q=member&offset=50")
    assert user_rows(many) == [name for name in listed if name.startswith("member")][50:] and len(user_rows(many)) == 4
    assert many.doc.find("a", rel="prev").attrs["href"] == "/admin/users?q=member"
    assert zebra["user_id"] not in browser.page("/admin/users?q=nobody-by-this-name").response.text


def test_client_searches_only_its_own_users(server, client_role, user):
    """A client's search matches its users by name and by its own id for them, never others' users."""
    server.create_user(client_role["api_key"], "bots-alice", user_id="discord-77")
    browser = Browser(server).log_in(client_role["api_key"])
    assert user_rows(browser.page("/admin/users?q=alice")) == ["bots-alice"]
    assert user_rows(browser.page("/admin/users?q=discord-77")) == ["bots-alice"]
    assert user_rows(browser.page(f"/admin/users?q={user['user_id']}")) == []


def test_users_page_bad_offset_is_400(server):
    """A negative offset is the service's 400."""
    assert Browser(server).log_in(ADMIN_KEY).page("/admin/users?offset=-1").status == 400


# -- editing a user -------------------------------------------------------------------------------

LIMITS = ("requests_per_minute", "requests_per_day", "tokens_per_day")


def edit(browser: Browser, user_id: str, **fields) -> Page:
    """Open a user's edit page and send its form with fields changed (the rest as the page shows them)."""
    shown = browser.page(f"/admin/users/{user_id}/edit")
    assert shown.status == 200, shown.text[:500]
    data = {name: shown.value(name) or "" for name in ("username", "role", *LIMITS) if shown.value(name) is not None}
    if shown.value("plus") == "checked":
        data["plus"] = "y"
    data.update(fields)
    return browser.submit(f"/admin/users/{user_id}/edit", {k: v for k, v in data.items() if v is not None})


def test_admin_edits_name_plus_role_and_limits(server, user):
    """The saved user has the new name, plus, role and own limits (an empty box left out, "none" = no limit)."""
    browser = Browser(server).log_in(ADMIN_KEY)
    saved = edit(
        browser,
        user["user_id"],
        username="alicia",
        plus="y",
        role="client",
        requests_per_minute="5",
        requests_per_day="",
        tokens_per_day="None",
    )
    assert saved.status == 303 and saved.location == "/admin/users"
    assert "Saved alicia." in browser.page("/admin/users").flashes()
    got = server.get(f"/api/users/{user['user_id']}", ADMIN_KEY).json()
    assert (got["username"], got["plus"], got["role"]) == ("alicia", True, "client")
    assert got["limits"] == {"requests_per_minute": 5, "tokens_per_day": None}
    assert got["effective_limits"] == {"requests_per_minute": 5, "requests_per_day": None, "tokens_per_day": None}

    page = browser.page(f"/admin/users/{user['user_id']}/edit")
    assert [page.value(name) for name in LIMITS] == ["5", "", "none"] and page.value("plus") == "checked"
    applied = {row[0]: row[1:] for row in cells(page, "applied-limits")}
    assert applied["Requests a minute"] == ["5", "5", "no limit"]
    assert applied["Requests a day"] == ["no limit", "not set", "no limit"]
    listed = next(row for row in cells(browser.page("/admin/users"), "users") if row[0] == "alicia")
    assert listed[4] == "5 requests a minute (own)"
    actions = [r["action"] for r in audit_rows(browser.page(f"/admin/audit?target={user['user_id']}"))]
    assert actions[:2] == ["user.limits", "user.update"]

    cleared = edit(browser, user["user_id"], requests_per_minute="", tokens_per_day="")
    assert cleared.status == 303
    assert server.get(f"/api/users/{user['user_id']}", ADMIN_KEY).json()["limits"] == {}


def test_role_defaults_show_on_the_edit_page_and_in_the_list(make_server):
    """A role's default (settings "limits") is what an empty box means, and what the list shows."""
    server = make_server(limits={"user": {"requests_per_day": 100}})
    alice = server.create_user(ADMIN_KEY, "alice")
    page = Browser(server).log_in(ADMIN_KEY).page(f"/admin/users/{alice['user_id']}/edit")
    applied = {row[0]: row[1:] for row in cells(page, "applied-limits")}
    assert applied["Requests a day"] == ["100", "not set", "100"]
    assert "Empty: the default, 100." in page.text
    rows = {row[0]: row for row in cells(Browser(server).log_in(ADMIN_KEY).page("/admin/users"), "users")}
    assert rows["alice"][4] == "100 requests a day"


def test_nothing_changed_saves_nothing(server, user):
    """Saving the form as shown changes nothing and writes no audit entry."""
    browser = Browser(server).log_in(ADMIN_KEY)
    page = edit(browser, user["user_id"])
    assert page.status == 303 and "Nothing changed on alice." in browser.page("/admin/users").flashes()
    assert [r["action"] for r in audit_rows(browser.page("/admin/audit?action=user."))] == ["user.create"]


def test_client_cannot_give_more_than_its_own_limit(server, client_role):
    """A client held to 10 a minute: 20 or "none" for its user is a 403 on the field, with what was typed kept."""
    patched = server.call(
        "PATCH", f"/api/users/{client_role['user_id']}", ADMIN_KEY, json={"limits": {"requests_per_minute": 10}}
    )
    assert patched.status_code == 200, patched.text
    bots = server.create_user(client_role["api_key"], "bots-user")
    browser = Browser(server).log_in(client_role["api_key"])
    assert browser.page(f"/admin/users/{bots['user_id']}/edit").doc.find(id="role") is None  # no role for a client
    for typed in ("20", "none"):
        page = edit(browser, bots["user_id"], username="renamed too", requests_per_minute=typed)
        assert page.status == 403
        assert "a client cannot give more than its own limit (10 requests a minute)" in page.error(
            "requests_per_minute"
        )
        assert page.value("requests_per_minute") == typed and page.value("username") == "renamed too"
    assert server.get(f"/api/users/{bots['user_id']}", ADMIN_KEY).json()["username"] == "bots-user"
    assert edit(browser, bots["user_id"], requests_per_minute="10", role="admin").status == 303
    got = server.get(f"/api/users/{bots['user_id']}", ADMIN_KEY).json()
    assert (
        got["limits"] == {"requests_per_minute": 10} and got["role"] == "user"
    )  # a role it was not offered is not sent


def test_demoting_the_last_admin_is_409_on_the_role_field(server):
    """The only admin cannot make itself a user: 409 by the role field, the choice kept."""
    browser = Browser(server).log_in(ADMIN_KEY)
    page = edit(browser, "admin", role="user")
    assert page.status == 409 and page.error("role") == "cannot demote the last admin"
    assert page.value("role") == "user"
    assert server.get("/api/users/admin", ADMIN_KEY).json()["role"] == "admin"


@pytest.mark.parametrize(("field", "typed"), [("requests_per_day", "lots"), ("tokens_per_day", "-3")])
def test_a_limit_that_is_not_a_number_is_400_on_its_field(server, user, field, typed):
    """A limit that is not a whole number from 0 is a 400 by its box, as typed."""
    page = edit(Browser(server).log_in(ADMIN_KEY), user["user_id"], **{field: typed})
    assert page.status == 400 and "must be a whole number" in page.error(field) and page.value(field) == typed


def test_empty_name_is_400_and_a_client_cannot_edit_others(server, client_role, user):
    """An empty name is a 400; a client gets 404 on another's user, a plain user 403."""
    page = edit(Browser(server).log_in(ADMIN_KEY), user["user_id"], username="  ")
    assert page.status == 400 and page.error("username")
    bot = Browser(server).log_in(client_role["api_key"])
    assert bot.page(f"/admin/users/{user['user_id']}/edit").status == 404
    assert Browser(server).log_in(user["api_key"]).page(f"/admin/users/{user['user_id']}/edit").status == 403


def test_edit_without_csrf_token_changes_nothing(server, user):
    """The edit form refuses a POST without the session's CSRF token."""
    browser = Browser(server).log_in(ADMIN_KEY)
    page = browser.submit(f"/admin/users/{user['user_id']}/edit", {"username": "mallory"}, with_csrf=False)
    assert page.status == 400 and CSRF_MESSAGE in page.text
    assert server.get(f"/api/users/{user['user_id']}", ADMIN_KEY).json()["username"] == "alice"
