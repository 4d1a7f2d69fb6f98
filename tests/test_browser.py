"""The browser front in a real browser (Chromium driven by Playwright): what a person sees and can do.

One Chromium per module; each test opens fresh contexts (a context is a private window: its own
cookies). Servers are the conftest ones, on 127.0.0.1, answering from the fake OpenAI upstream.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ADMIN_KEY
from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
COMPLETIONS = "/v1/chat/completions"
CSRF_MESSAGE = "This form was not sent from this site's own page, or it expired."
CONVERSATION_URL = re.compile(r"/chat/[^/?#]+$")

# Every input, select and textarea a person can reach that has no name a screen reader could read.
UNLABELLED_FIELDS_JS = """() => [...document.querySelectorAll("input, select, textarea")]
  .filter((e) => e.type !== "hidden")
  .filter((e) => !([...(e.labels || [])].some((l) => l.textContent.trim())
                   || (e.getAttribute("aria-label") || "").trim()
                   || e.getAttribute("aria-labelledby")))
  .map((e) => e.outerHTML)"""


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module; missing Chromium is a failure, not a skip (CI installs it)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package to run the browser tests")
    with pytest.MonkeyPatch.context() as env, sync_playwright() as playwright:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            env.delenv(name, raising=False)  # every request goes to 127.0.0.1 directly
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_window(browser):
    """Return a function that opens a page in a fresh context (a private window); all close after the test."""
    contexts = []

    def open_(**options) -> Page:
        context = browser.new_context(**options)
        context.set_default_timeout(10_000)
        contexts.append(context)
        return context.new_page()

    yield open_
    for context in contexts:
        context.close()


@pytest.fixture
def live(make_server, openai_fake):
    """A live server whose one account is the fake OpenAI upstream (replies echo the prompt by default)."""
    return make_server([{"name": "real", "type": "openai", "base_url": openai_fake.url}])


@pytest.fixture
def page(live, open_window) -> Page:
    """A fresh private window (asks for the server first, so the window closes before the server stops)."""
    return open_window()


def log_in(page: Page, server, key: str) -> None:
    """Log in on the login page with key and land on the chat page."""
    page.goto(server.url + "/login")
    page.get_by_label("API key", exact=True).fill(key)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in", exact=True).click()
    expect(page.locator("p.flash")).to_contain_text("Logged in as")


def send(page: Page, prompt: str) -> int:
    """Type prompt in the chat form, press Send, wait for the answer page; return its HTTP status."""
    page.locator("#prompt").fill(prompt)
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Send", exact=True).click()
    return navigation.value.status


def prompts(page: Page) -> list[str]:
    return page.locator("ol.messages li.turn .msg.you .text").all_inner_texts()


def sent_messages(fake) -> list[list[dict]]:
    """The messages list of every chat request the fake upstream received, in order."""
    return [r["body"]["messages"] for r in fake.requests_to(COMPLETIONS)]


def sidebar(page: Page):
    return page.get_by_role("navigation", name="Your conversations")


# -- chatting -----------------------------------------------------------------------------


def test_admin_logs_in_chats_and_follows_up_in_place(live, openai_fake, page):
    """The admin key logs in; the reply shows; a follow-up stays in the conversation and sends its history."""
    log_in(page, live, ADMIN_KEY)
    expect(page.locator("p.flash")).to_have_text("Logged in as admin.")
    assert send(page, "Hello there") == 200
    expect(page.locator(".msg.bot .markdown")).to_have_text("echo: Hello there")
    expect(page).to_have_url(CONVERSATION_URL)
    address = page.url

    assert send(page, "And again") == 200
    expect(page.locator("li.turn")).to_have_count(2)
    assert prompts(page) == ["Hello there", "And again"]
    expect(page.locator(".msg.bot .markdown").nth(1)).to_have_text("echo: And again")
    expect(page).to_have_url(address)
    assert sent_messages(openai_fake)[-1] == [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "echo: Hello there"},
        {"role": "user", "content": "And again"},
    ]


def test_old_conversation_opens_from_the_sidebar_oldest_first(live, page):
    """After starting a second conversation, the first one opens from the sidebar with its turns in order."""
    log_in(page, live, ADMIN_KEY)
    send(page, "first question")
    send(page, "second question")
    page.get_by_role("link", name="New conversation", exact=True).click()
    expect(page.locator("h1#chat-title")).to_have_text("New conversation")
    send(page, "another topic")
    expect(sidebar(page).get_by_role("listitem")).to_have_text(["another topic", "first question"])

    sidebar(page).get_by_role("link", name="first question", exact=True).click()
    expect(page.locator("h1#chat-title")).to_have_text("first question")
    assert prompts(page) == ["first question", "second question"]
    expect(page.locator(".msg.bot .markdown")).to_have_text(["echo: first question", "echo: second question"])
    expect(sidebar(page).locator("a[aria-current=page]")).to_have_text("first question")


def test_rename_then_delete_a_conversation(live, page):
    """Rename shows the new title in the heading and the sidebar; Delete after confirming removes it everywhere."""
    log_in(page, live, ADMIN_KEY)
    send(page, "a dull title")
    page.locator("details.rename summary").click()
    page.get_by_label("Title", exact=True).fill("Holiday plans")
    with page.expect_navigation():
        page.get_by_role("button", name="Save title", exact=True).click()
    expect(page.locator("p.flash")).to_have_text("Conversation renamed.")
    expect(page.locator("h1#chat-title")).to_have_text("Holiday plans")
    expect(sidebar(page).get_by_role("link", name="Holiday plans", exact=True)).to_be_visible()

    page.locator(".chat-actions").get_by_role("link", name="Delete", exact=True).click()
    expect(page.locator("h1")).to_have_text("Delete this conversation?")
    with page.expect_navigation():
        page.get_by_role("button", name="Delete", exact=True).click()
    expect(page.locator("p.flash")).to_have_text("Deleted “Holiday plans”.")
    expect(sidebar(page).get_by_text("Holiday plans")).to_have_count(0)
    page.goto(live.url + "/conversations")
    expect(page.get_by_text("Holiday plans")).to_have_count(0)
    expect(page.locator("main")).to_contain_text("No conversations yet.")


# -- users and keys -----------------------------------------------------------------------


def create_on_page(page: Page, username: str, role: str | None = None) -> str:
    """Fill the create form on /admin/users, expect 201 and return the key shown once."""
    page.get_by_label("Name", exact=True).fill(username)
    if role:
        page.get_by_label("Role", exact=True).select_option(role)
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Create", exact=True).click()
    assert navigation.value.status == 201
    expect(page.locator("section.key-once h2")).to_contain_text(f"{username} was created")
    key_field = page.locator("input#new-key")
    expect(key_field).to_have_value(re.compile(r"^cas-\S{16,}$"))
    expect(page.get_by_role("button", name="Copy", exact=True)).to_be_visible()  # JS unhides it
    return key_field.input_value()


def test_admin_hands_out_keys_once_and_the_new_user_chats(live, openai_fake, open_window, page):
    """Keys are shown once on /admin/users; the user's key logs in from another window and chats on."""
    log_in(page, live, ADMIN_KEY)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Users", exact=True).click()
    client_key = create_on_page(page, "helpdesk-bot", role="client")
    user_key = create_on_page(page, "bob")
    assert client_key != user_key
    names = page.locator("table.users tbody tr td:first-child").all_inner_texts()
    assert sorted(names) == ["admin (you)", "bob", "helpdesk-bot"]

    page.goto(live.url + "/admin/users")
    expect(page.locator("input#new-key")).to_have_count(0)
    html = page.content()
    assert client_key not in html and user_key not in html

    bob = open_window()
    log_in(bob, live, user_key)
    expect(bob.locator("p.flash")).to_have_text("Logged in as bob.")
    for number, prompt in enumerate(["Hi, I am Bob", "What did I say?", "Thanks"], start=1):
        assert send(bob, prompt) == 200
        expect(bob.locator("li.turn")).to_have_count(number)
    assert prompts(bob) == ["Hi, I am Bob", "What did I say?", "Thanks"]
    expect(bob).to_have_url(CONVERSATION_URL)
    assert [m["content"] for m in sent_messages(openai_fake)[-1]] == [
        "Hi, I am Bob",
        "echo: Hi, I am Bob",
        "What did I say?",
        "echo: What did I say?",
        "Thanks",
    ]

    bot = open_window()
    log_in(bot, live, client_key)
    expect(bot.locator("p.flash")).to_have_text("Logged in as helpdesk-bot.")


def test_client_sees_only_its_own_users(live, page):
    """A client creates a user on the page and the table lists its own users, nobody else's."""
    bot = live.create_user(ADMIN_KEY, "bot", role="client")
    other = live.create_user(ADMIN_KEY, "other-bot", role="client")
    live.create_user(ADMIN_KEY, "admins-user")
    live.create_user(other["api_key"], "others-user")
    live.create_user(bot["api_key"], "bots-earlier")

    log_in(page, live, bot["api_key"])
    page.goto(live.url + "/admin/users")
    expect(page.get_by_label("Role", exact=True)).to_have_count(0)  # a client makes plain users only
    create_on_page(page, "bots-new")
    names = page.locator("table.users tbody tr td:first-child")
    assert sorted(names.all_inner_texts()) == ["bots-earlier", "bots-new"]
    expect(page.locator("main")).to_contain_text("Your users (2)")
    for stranger in ("admin", "other-bot", "admins-user", "others-user"):
        expect(page.locator("table.users").get_by_text(stranger, exact=True)).to_have_count(0)


def test_plain_user_gets_403_on_users_page_and_no_users_link(live, page):
    """A plain user's nav has no Users link, and /admin/users answers an Error 403 page."""
    alice = live.create_user(ADMIN_KEY, "alice")
    log_in(page, live, alice["api_key"])
    main_nav = page.get_by_role("navigation", name="Main")
    expect(main_nav.get_by_role("link", name="Conversations", exact=True)).to_be_visible()
    expect(main_nav.get_by_role("link", name="Users", exact=True)).to_have_count(0)

    response = page.goto(live.url + "/admin/users")
    assert response.status == 403
    expect(page.locator("h1")).to_have_text("Error 403")
    expect(main_nav.get_by_role("link", name="Users", exact=True)).to_have_count(0)


def test_rotated_key_ends_the_other_browsers_session(live, open_window, page):
    """A key rotated from the admin's window logs the user's window out at its next page load."""
    alice = live.create_user(ADMIN_KEY, "alice")
    log_in(page, live, alice["api_key"])
    page.goto(live.url + "/conversations")
    expect(page.locator("h1")).to_have_text("Your conversations")

    admin = open_window()
    log_in(admin, live, ADMIN_KEY)
    admin.goto(live.url + "/admin/users")
    with admin.expect_navigation():
        admin.get_by_role("button", name="New key for alice", exact=True).click()
    expect(admin.locator("section.key-once h2")).to_have_text("alice was given a new key")
    new_key = admin.locator("input#new-key").input_value()
    assert new_key.startswith("cas-") and new_key != alice["api_key"]

    page.reload()
    expect(page).to_have_url(re.compile(r"/login\?next=(/|%2F)conversations$"))
    expect(page.locator("h1")).to_have_text("Log in")
    expect(page.locator("header .who").get_by_role("link", name="Log in", exact=True)).to_be_visible()


# -- safety -------------------------------------------------------------------------------


def test_form_without_csrf_token_is_refused_and_keeps_the_prompt(live, openai_fake, page):
    """A chat form posted without its CSRF token gets a 400 with the reason; the prompt stays; nothing goes upstream."""
    log_in(page, live, ADMIN_KEY)
    page.locator("#prompt").fill("Please keep this text")
    page.evaluate("document.querySelector('#ask input[name=csrf_token]').remove()")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Send", exact=True).click()
    assert answer.value.status == 400
    expect(page.locator("div.form-errors[role=alert]")).to_contain_text(CSRF_MESSAGE)
    expect(page.locator("#prompt")).to_have_value("Please keep this text")
    assert openai_fake.requests_to(COMPLETIONS) == []


XSS_REPLY = (
    "Here: <script>window.__xss=1</script>\n\n"
    'And <img src=x onerror="window.__xss=2"> too.\n\n'
    "And [click me](javascript:window.__xss=3)."
)


def test_reply_markup_is_shown_as_text_and_never_runs(live, openai_fake, page):
    """Script, img onerror and javascript: links in a reply (and a prompt) show as text and run nothing."""
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    openai_fake.reply_text = XSS_REPLY
    log_in(page, live, ADMIN_KEY)
    expect(page.get_by_label("Render markdown", exact=True)).to_be_checked()
    send(page, '<img src=x onerror="window.__xss=4">')

    bot = page.locator(".msg.bot")
    expect(bot).to_contain_text("<script>window.__xss=1</script>")
    expect(bot).to_contain_text('<img src=x onerror="window.__xss=2">')
    expect(page.locator(".msg.you .text")).to_have_text('<img src=x onerror="window.__xss=4">')
    expect(page.locator("h1#chat-title")).to_have_text('<img src=x onerror="window.__xss=4">')
    assert bot.locator("script").count() == 0 and bot.locator("img").count() == 0
    assert page.locator("main img, main script").count() == 0
    link = bot.locator("a", has_text="click me")
    expect(link).to_have_count(1)
    assert not (link.get_attribute("href") or "").strip().lower().startswith("javascript:")

    address = page.url
    bot.get_by_text("click me").click()
    page.wait_for_timeout(200)
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.url == address
    assert dialogs == []


# -- look, keyboard and labels ------------------------------------------------------------

MARKDOWN_REPLY = """# Trip plan

- Pack the **bags**
- Book the train

```python
def greet(name):
    return f"Hello, {name}! This line is deliberately long, longer than a phone screen is wide."
```
"""


def test_chat_page_screenshots_and_no_sideways_scroll_on_a_phone(live, openai_fake, open_window):
    """A markdown reply with highlighted code renders at 1280x800 and 360x740 without horizontal scrolling."""
    openai_fake.reply_text = MARKDOWN_REPLY
    page = open_window(viewport={"width": 1280, "height": 800})
    log_in(page, live, ADMIN_KEY)
    send(page, "Plan my trip")
    reply = page.locator(".msg.bot .markdown")
    expect(reply.locator("h1")).to_have_text("Trip plan")
    expect(reply.locator("ul li")).to_have_text(["Pack the bags", "Book the train"])
    keyword = reply.locator(".codehilite span.k").first
    expect(keyword).to_have_text("def")
    plain = reply.locator(".codehilite pre").evaluate("e => getComputedStyle(e).color")
    assert keyword.evaluate("e => getComputedStyle(e).color") != plain  # highlighted, not plain text

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-1280.png"), full_page=True)
    page.set_viewport_size({"width": 360, "height": 740})
    page.screenshot(path=str(ARTIFACTS / "chat-360.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360


def test_keyboard_alone_logs_in_chats_and_skips_to_content(live, page):
    """Autofocus, Enter, Ctrl+Enter and Tab are enough; "Skip to content" is the first Tab stop."""
    page.goto(live.url + "/login")
    expect(page.locator("#api_key")).to_be_focused()
    page.keyboard.type(ADMIN_KEY)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    expect(page.locator("p.flash")).to_have_text("Logged in as admin.")

    expect(page.locator("#prompt")).to_be_focused()
    page.keyboard.type("typed, not clicked")
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")
    expect(page.locator(".msg.you .text")).to_have_text(["typed, not clicked"])

    expect(page.locator("#prompt")).to_be_focused()
    page.keyboard.type("sent with the button")
    send_button = page.get_by_role("button", name="Send", exact=True)
    for _ in range(10):
        page.keyboard.press("Tab")
        if send_button.evaluate("e => e === document.activeElement"):
            break
    expect(send_button).to_be_focused()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert prompts(page) == ["typed, not clicked", "sent with the button"]

    page.goto(live.url + "/conversations")  # a page without autofocus: Tab starts at the top
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content", exact=True)
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    expect(page.locator("main#content")).to_be_focused()


def assert_all_fields_labelled(page: Page) -> None:
    assert page.evaluate(UNLABELLED_FIELDS_JS) == [], f"unlabelled fields on {page.url}"


def test_every_form_field_has_an_accessible_label(live, open_window, page):
    """Each field of /login, /chat (anonymous and logged in) and /admin/users is named by a label."""
    page.goto(live.url + "/login")
    expect(page.get_by_label("API key", exact=True)).to_have_count(1)
    assert_all_fields_labelled(page)

    page.goto(live.url + "/chat")  # anonymous: the chat form asks for the key too
    for label in ("API key", "Message", "Render markdown", "Answer with the reply text only"):
        expect(page.get_by_label(label, exact=True)).to_have_count(1)
    assert_all_fields_labelled(page)

    log_in(page, live, ADMIN_KEY)
    send(page, "label check")
    for label in (
        "Title",
        "Message",
        "Accounts",  # the admin is plus
        "Render markdown",
        "Answer with the reply text only",
        "Your own ChatGPT access token",
        "That token belongs to a Plus account",
    ):
        expect(page.get_by_label(label, exact=True)).to_have_count(1)
    assert_all_fields_labelled(page)

    page.goto(live.url + "/admin/users")
    for label in ("Name", "Role", "Plus", "Id (optional)"):
        expect(page.get_by_label(label, exact=True)).to_have_count(1)
    assert_all_fields_labelled(page)
    create_on_page(page, "labelled")
    expect(page.get_by_label("API key for labelled (user)", exact=True)).to_have_count(1)
    assert_all_fields_labelled(page)


# -- streaming ----------------------------------------------------------------------------------


def test_chat_page_shows_the_reply_while_it_streams(live, openai_fake, page):
    """With JavaScript the reply grows on the page as the upstream sends it, then the page shows it rendered."""
    openai_fake.reply_text = "one two three four five six seven eight nine ten **done**"
    openai_fake.chunk_size = 4
    openai_fake.stream_delay = 0.15  # about 2 s for the whole reply
    log_in(page, live, ADMIN_KEY)
    page.locator("#prompt").fill("count for me")
    with page.expect_navigation(timeout=15_000):  # to /chat/<id> once the stream is done
        page.get_by_role("button", name="Send", exact=True).click()
        growing = page.locator(".msg.bot .text.streaming")
        expect(growing).to_contain_text("one", timeout=5_000)
        partial = growing.inner_text()
        assert "ten" not in partial  # seen before the upstream finished
        expect(page.locator(".msg.you .text").last).to_have_text("count for me")
    assert re.search(r"/chat/[0-9a-f-]{36}$", page.url)
    expect(page.locator(".msg.bot .markdown strong")).to_have_text("done")


def test_stream_error_is_shown_and_the_prompt_given_back(live, openai_fake, page):
    """An upstream failure before the stream starts shows the error page's message with the prompt kept,
    and the prompt goes upstream once (the page is shown as it came, not posted a second time)."""
    openai_fake.fail_status = 500
    log_in(page, live, ADMIN_KEY)
    page.locator("#prompt").fill("will fail")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Send", exact=True).click()
    assert answer.value.status == 502
    expect(page.locator("div.form-errors")).to_be_visible()
    expect(page.locator("#prompt")).to_have_value("will fail")
    expect(page.locator("#prompt")).to_be_focused()
    assert len(openai_fake.requests_to(COMPLETIONS)) == 1


def test_streamed_reply_with_line_separators_completes(live, openai_fake, page):
    """A reply holding U+2028/U+2029 streams to the end and is shown whole (the page's event reader keeps up)."""
    openai_fake.reply_text = "first\u2028second\u2029third"
    log_in(page, live, ADMIN_KEY)
    send(page, "odd characters")
    assert re.search(r"/chat/[0-9a-f-]{36}$", page.url)
    expect(page.locator(".msg.bot .markdown")).to_contain_text("third")
