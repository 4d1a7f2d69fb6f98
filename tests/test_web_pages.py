"""The browser front over real HTTP (no browser): forms, CSRF, the session cookie, roles, headers, settings.

A `Browser` keeps one cookie jar, like one person's browser; pages are parsed with the stdlib
HTML parser into a tiny tree that answers "the element with this id/class".
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import zlib
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from conftest import ADMIN_KEY, settings_for

from app import create_app
from app.errors import ConfigError

CSRF_MESSAGE = "This form was not sent from this site's own page, or it expired."
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


# -- a tiny HTML tree ------------------------------------------------------------------------


class Node:
    """One element: tag, attributes, children (Nodes and text)."""

    def __init__(self, tag: str, attrs: dict):
        self.tag, self.attrs, self.children = tag, attrs, []

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def has_class(self, name: str) -> bool:
        return name in (self.attrs.get("class") or "").split()

    def iter(self):
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs) -> list[Node]:
        """Elements matching tag, class and exact attribute values (id="x", name="y")."""
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag)
            and (cls is None or n.has_class(cls))
            and all(n.attrs.get(k.rstrip("_")) == v for k, v in attrs.items())
        ]

    def find(self, tag: str | None = None, cls: str | None = None, **attrs) -> Node | None:
        found = self.find_all(tag, cls, **attrs)
        return found[0] if found else None


class _TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: ("" if v is None else v) for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Node(tag, {k: ("" if v is None else v) for k, v in attrs}))

    def handle_endtag(self, tag):
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse_html(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def squash(text: str) -> str:
    return " ".join(text.split())


class Page:
    """A response, with its HTML parsed (when it is HTML) and its CSRF token."""

    def __init__(self, response: requests.Response):
        self.response = response
        self.status = response.status_code
        self.headers = response.headers
        self.is_html = response.headers.get("Content-Type", "").startswith("text/html")
        self.doc = parse_html(response.text) if self.is_html else Node("#empty", {})
        token = self.doc.find("input", name="csrf_token")
        self.token = token.attrs.get("value") if token else None

    @property
    def text(self) -> str:
        """The visible words of the page (entities decoded, whitespace squashed)."""
        return squash(self.doc.text)

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")

    def value(self, field_id: str) -> str | None:
        """What a form field (input, textarea or select, by id) holds as the page shows it."""
        node = self.doc.find(id=field_id)
        if node is None:
            return None
        if node.tag == "textarea":
            text = node.text.replace("\r\n", "\n")  # a browser reads CR LF as LF...
            return text.removeprefix("\n")  # ...and drops one newline right after <textarea>
        if node.tag == "select":
            chosen = [o for o in node.find_all("option") if "selected" in o.attrs]
            return chosen[0].attrs.get("value") if chosen else None
        if node.attrs.get("type") == "checkbox":
            return "checked" if "checked" in node.attrs else ""
        return node.attrs.get("value")

    def error(self, field_id: str) -> str | None:
        """The inline error next to a field (p.error#<id>-error), or None."""
        node = self.doc.find("p", cls="error", id=f"{field_id}-error")
        return squash(node.text) if node else None

    def form_errors(self) -> str:
        box = self.doc.find("div", cls="form-errors")
        return squash(box.text) if box else ""

    def flashes(self) -> list[str]:
        return [squash(n.text) for n in self.doc.find_all("p", cls="flash")]


class Browser:
    """One browser: its own cookie jar; follows no redirect by itself."""

    def __init__(self, server):
        self.server = server
        self.http = requests.Session()
        self.http.trust_env = False
        self.token: str | None = None

    def request(self, method: str, path: str, **kwargs) -> Page:
        kwargs.setdefault("allow_redirects", False)
        kwargs.setdefault("timeout", 30)
        page = Page(self.http.request(method, self.server.url + path, **kwargs))
        if page.token:
            self.token = page.token
        return page

    def page(self, path: str, **kwargs) -> Page:
        return self.request("GET", path, **kwargs)

    def submit(self, path: str, data: dict | None = None, with_csrf: bool = True, token: str | None = None) -> Page:
        """POST a form; the CSRF token is the one given, else the last one a page of this session showed."""
        data = dict(data or {})
        if with_csrf:
            data["csrf_token"] = token or self.token or self.page("/chat").token
        page = self.request("POST", path, data=data)
        if page.status == 303 and path.startswith(("/login", "/logout", "/signin")):
            self.token = None  # logging in or out starts a new session, with a new token
        return page

    def log_in(self, key: str) -> Browser:
        self.page("/login")
        landed = self.submit("/login", {"api_key": key})
        assert landed.status == 303, landed.text
        return self

    def logged_in(self) -> bool:
        page = self.page("/conversations")
        assert page.status in (200, 303)
        return page.status == 200


def set_cookies(page: Page) -> list[str]:
    return page.response.raw.headers.getlist("Set-Cookie")


def session_cookie(page: Page) -> str:
    """The Set-Cookie header of the session cookie in this response."""
    found = [h for h in set_cookies(page) if h.startswith("session=")]
    assert found, f"no session cookie set; headers: {dict(page.headers)}"
    return found[-1]


def cookie_flags(header: str) -> set[str]:
    return {part.strip().lower() for part in header.split(";")[1:]}


def cookie_payload(header: str) -> str:
    """Decode a Flask signed cookie's payload (`[.]base64.timestamp.signature`, '.' means zlib)."""
    value = header.split(";", 1)[0].split("=", 1)[1]
    compressed = value.startswith(".")
    body = value[1:] if compressed else value
    raw = base64.urlsafe_b64decode(body.split(".")[0] + "=" * (-len(body.split(".")[0]) % 4))
    return (zlib.decompress(raw) if compressed else raw).decode()


def next_of(location: str) -> str | None:
    query = parse_qs(urlsplit(location).query)
    return query.get("next", [None])[0]


def path_of(location: str) -> str:
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@pytest.fixture
def browser(server) -> Browser:
    return Browser(server)


@pytest.fixture
def admin_browser(server) -> Browser:
    return Browser(server).log_in(ADMIN_KEY)


@pytest.fixture
def user_browser(server, user) -> Browser:
    return Browser(server).log_in(user["api_key"])


def ask_on_page(browser: Browser, prompt: str, **fields) -> Page:
    """Send the chat form from the chat page, as a person would."""
    browser.page("/chat")
    return browser.submit("/chat", {"prompt": prompt, "pretty": "y", **fields})


# -- 1. CSRF -----------------------------------------------------------------------------------


@pytest.fixture
def csrf_scene(server, admin):
    """An admin logged in in a browser, with a conversation, and a plain user to act upon."""
    victim = server.create_user(admin, "victim")
    conversation = server.chat(admin, "keep me")["conversation_id"]
    stranger = Browser(server)
    stranger.page("/login")
    return {
        "server": server,
        "browser": Browser(server).log_in(admin),
        "victim": victim,
        "cid": conversation,
        "foreign_token": stranger.token,  # a genuine token, but of another browser's session
    }


def _conversation_titles(server) -> list[str]:
    return [c["title"] for c in server.get("/api/conversations", ADMIN_KEY).json()["conversations"]]


def _user_ids(server) -> set[str]:
    return {u["user_id"] for u in server.get("/api/users", ADMIN_KEY).json()["users"]}


def _unchanged_login(scene, page):
    assert not scene["anon"].logged_in()


def _unchanged_logout(scene, page):
    assert scene["browser"].logged_in()


def _unchanged_chat(scene, page):
    assert _conversation_titles(scene["server"]) == ["keep me"]
    assert page.value("prompt") == "sneaky prompt"  # what was typed stays in the form


def _unchanged_rename(scene, page):
    assert _conversation_titles(scene["server"]) == ["keep me"]


def _unchanged_conversation(scene, page):
    assert scene["server"].get(f"/api/conversations/{scene['cid']}", ADMIN_KEY).status_code == 200


def _unchanged_users(scene, page):
    assert "mallory" not in {u["username"] for u in scene["server"].get("/api/users", ADMIN_KEY).json()["users"]}


def _unchanged_key(scene, page):
    assert scene["server"].get("/api/me", scene["victim"]["api_key"]).status_code == 200


def _unchanged_victim(scene, page):
    assert scene["victim"]["user_id"] in _user_ids(scene["server"])


CSRF_FORMS = [
    ("login", "/login", {"api_key": ADMIN_KEY}, _unchanged_login),
    ("logout", "/logout", {}, _unchanged_logout),
    ("chat", "/chat", {"prompt": "sneaky prompt"}, _unchanged_chat),
    ("rename", "/chat/{cid}/rename", {"title": "hijacked"}, _unchanged_rename),
    ("delete conversation", "/chat/{cid}/delete", {}, _unchanged_conversation),
    ("delete all", "/conversations/delete", {}, _unchanged_conversation),
    ("create user", "/admin/users", {"username": "mallory", "role": "user"}, _unchanged_users),
    ("add-user page", "/admin/add-user", {"username": "mallory", "role": "user"}, _unchanged_users),
    ("rotate key", "/admin/users/{uid}/key", {}, _unchanged_key),
    ("delete user", "/admin/users/{uid}/delete", {}, _unchanged_victim),
]


@pytest.mark.parametrize("token", ["missing", "garbage", "other session's"])
@pytest.mark.parametrize(("name", "path", "data", "unchanged"), CSRF_FORMS, ids=[f[0] for f in CSRF_FORMS])
def test_page_post_without_a_valid_csrf_token_is_refused(csrf_scene, token, name, path, data, unchanged):
    """Every page form refuses a POST without its session's CSRF token (400, says why, changes nothing)."""
    scene = dict(csrf_scene)
    scene["anon"] = Browser(scene["server"])
    who = scene["anon"] if name == "login" else scene["browser"]
    if name == "login":
        who.page("/chat")  # a session of its own, with a token it does not send
    path = path.format(cid=scene["cid"], uid=scene["victim"]["user_id"])
    if token == "missing":
        page = who.submit(path, data, with_csrf=False)
    else:
        page = who.submit(path, data, token="not-a-token" if token == "garbage" else scene["foreign_token"])
    assert page.status == 400 and page.is_html
    assert CSRF_MESSAGE in page.text
    unchanged(scene, page)


def test_api_chat_needs_no_csrf_token(browser, user):
    """/api routes take a key, not the session, so they need no CSRF token."""
    browser.page("/chat")
    answer = browser.request("POST", "/api/chat", data={"prompt": "hi", "user": user["api_key"]})
    assert answer.status == 200 and answer.response.json()["status"] == "success"


def test_api_ignores_the_session_cookie(user_browser):
    """A logged-in browser's cookie alone does not authenticate /api (so a forged form cannot use it)."""
    assert user_browser.request("POST", "/api/chat", data={"prompt": "hi"}).status == 401
    assert user_browser.page("/api/me").status == 401


# -- 2. the session cookie ---------------------------------------------------------------------


def test_session_cookie_is_httponly_and_lax_but_not_secure_over_http(browser, user):
    """Over plain http the cookie is HttpOnly and SameSite=Lax, and not Secure (it would never come back)."""
    browser.page("/login")
    flags = cookie_flags(session_cookie(browser.submit("/login", {"api_key": user["api_key"]})))
    assert "httponly" in flags and "samesite=lax" in flags
    assert "secure" not in flags


def test_session_cookie_is_secure_behind_a_trusted_https_proxy(make_server):
    """With trusted_proxies=1 and X-Forwarded-Proto: https, the cookie is marked Secure."""
    server = make_server(trusted_proxies=1)
    page = Browser(server).page(f"/chat?user={ADMIN_KEY}", headers={"X-Forwarded-Proto": "https"})
    assert page.status == 303
    flags = cookie_flags(session_cookie(page))
    assert {"secure", "httponly", "samesite=lax"} <= flags


def test_forwarded_proto_is_not_believed_without_trusted_proxies(server):
    """Without trusted_proxies an X-Forwarded-Proto header does not make the server think it is https."""
    page = Browser(server).page(f"/chat?user={ADMIN_KEY}", headers={"X-Forwarded-Proto": "https"})
    assert "secure" not in cookie_flags(session_cookie(page))


def test_session_cookie_holds_neither_the_key_nor_its_hash(browser, user):
    """The signed cookie's payload names the user, never the key or its sha256."""
    key = user["api_key"]
    browser.page("/login")
    header = session_cookie(browser.submit("/login", {"api_key": key}))
    payload = cookie_payload(header)
    assert user["user_id"] in payload
    for secret in (key, hashlib.sha256(key.encode()).hexdigest()):
        assert secret not in payload and secret not in header


# -- 3. the session ends with the key ------------------------------------------------------------


def _end_by_rotation(server, user):
    assert server.post(f"/api/users/{user['user_id']}/key", ADMIN_KEY).status_code == 200


def _end_by_deletion(server, user):
    assert server.call("DELETE", f"/api/users/{user['user_id']}", ADMIN_KEY).status_code == 200


@pytest.mark.parametrize("page_path", ["/conversations", "/chat/{cid}"])
@pytest.mark.parametrize("end", [_end_by_rotation, _end_by_deletion], ids=["key rotated", "user deleted"])
def test_session_ends_when_the_key_is_rotated_or_the_user_deleted(server, user, page_path, end):
    """A key rotated or a user deleted through the API ends that user's browser session at its next request."""
    cid = server.chat(user["api_key"], "mine")["conversation_id"]
    browser = Browser(server).log_in(user["api_key"])
    path = page_path.format(cid=cid)
    assert browser.page(path).status == 200
    end(server, user)
    page = browser.page(path)
    assert page.status == 303 and urlsplit(page.location).path == "/login"
    assert next_of(page.location) == path


def test_rotating_ones_own_key_on_the_page_keeps_the_session(server, admin_browser):
    """An admin giving itself a new key on the users page stays logged in, and the page's token still works."""
    admin_browser.page("/admin/users")
    page = admin_browser.submit("/admin/users/admin/key")
    assert page.status == 200
    new_key = page.value("new-key")
    assert new_key and new_key != ADMIN_KEY
    assert server.get("/api/me", ADMIN_KEY).status_code == 401
    assert server.get("/api/me", new_key).status_code == 200
    assert admin_browser.page("/conversations").status == 200
    created = admin_browser.submit("/admin/users", {"username": "after rotation", "role": "user"}, token=page.token)
    assert created.status == 201


def test_rotating_another_users_key_on_the_page_shows_a_working_new_key(server, user, admin_browser):
    """ "New key" gives the user a key shown once; the old key stops working at once."""
    admin_browser.page("/admin/users")
    page = admin_browser.submit(f"/admin/users/{user['user_id']}/key")
    assert page.status == 200 and page.headers["Cache-Control"] == "no-store"
    assert "alice was given a new key" in page.text
    assert server.get("/api/me", user["api_key"]).status_code == 401
    assert server.get("/api/me", page.value("new-key")).json()["user_id"] == user["user_id"]


# -- 4. the original's habits: ?user=KEY and a key in the chat form -------------------------------


@pytest.mark.parametrize("param", ["user", "api_key"])
def test_key_in_the_url_is_offered_then_confirmed(browser, user, param):
    """GET /conversations?user=KEY&x=1 drops the key from the address and asks "Log in as alice?"; the POST logs in."""
    page = browser.page(f"/conversations?{param}={user['api_key']}&x=1")
    assert page.status == 303 and user["api_key"] not in page.location
    target = urlsplit(page.location)
    assert target.path == "/login" and parse_qs(target.query) == {"next": ["/conversations?x=1"]}
    assert not browser.logged_in()  # a link alone logs nobody in
    offer = browser.page(path_of(page.location))
    assert offer.status == 200 and "Log in as alice" in offer.text and user["api_key"] not in offer.text
    landed = browser.submit("/login", {"confirm": "1", "next": "/conversations?x=1"})
    assert landed.status == 303 and landed.location == "/conversations?x=1"
    assert browser.logged_in()


def test_key_in_a_link_never_replaces_a_session_without_asking(server, user_browser, admin):
    """A logged-in person opening a link with someone else's key stays who they were until they confirm."""
    user_browser.page(f"/chat?user={admin}")
    assert "alice" in user_browser.page("/conversations").text


def test_offered_login_without_an_offer_is_refused(browser):
    """Confirming a link login that was never offered (or already used) is a 400 with a plain message."""
    browser.page("/login")
    page = browser.submit("/login", {"confirm": "1"})
    assert page.status == 400 and "That login link has expired" in page.text


def test_bad_key_in_the_url_shows_the_login_page_with_401(browser):
    """An unknown key in ?user= answers 401 with the login form and a plain-words error."""
    page = browser.page("/conversations?user=cas-nope")
    assert page.status == 401
    assert "That key is not known here" in page.error("api_key")
    assert not browser.logged_in()


def test_anonymous_chat_with_a_key_in_the_form_answers_and_logs_in(server, browser, user):
    """The original habit: paste the key with the first message; the answer comes and the browser is logged in."""
    page = browser.page("/chat")
    assert page.status == 200 and page.doc.find("input", id="api_key") is not None
    answer = browser.submit("/chat", {"api_key": user["api_key"], "prompt": "hello there", "pretty": "y"})
    assert answer.status == 200
    assert "You said: hello there" in answer.text
    assert browser.logged_in()
    assert server.get("/api/conversations", user["api_key"]).json()["total"] == 1


def test_anonymous_chat_without_a_key_is_401_and_asks_for_one(browser):
    """An anonymous visitor sending a message without a key is asked for one (401), the prompt kept."""
    browser.page("/chat")
    page = browser.submit("/chat", {"prompt": "who am I?"})
    assert page.status == 401 and page.error("api_key") == "Log in first, or paste your API key here."
    assert page.value("prompt") == "who am I?"


def test_anonymous_chat_with_a_bad_key_in_the_form_is_401(browser):
    """A wrong key pasted in the chat form answers 401 with the error on the key field, the prompt kept."""
    browser.page("/chat")
    page = browser.submit("/chat", {"api_key": "cas-wrong", "prompt": "kept words"})
    assert page.status == 401
    assert "That key is not known here" in page.error("api_key")
    assert page.value("prompt") == "kept words" and page.value("api_key") in (None, "")


# -- 5. login and where it leads ----------------------------------------------------------------


def test_login_with_a_good_key_greets_by_name(browser, user):
    """A good key redirects to /chat and the next page says who is logged in."""
    landed = Browser.log_in(browser, user["api_key"])
    chat = landed.page("/chat")
    assert "Logged in as alice." in chat.flashes()
    assert chat.doc.find("input", id="api_key") is None


def test_login_with_a_bad_key_is_401_with_the_error_by_the_field(browser):
    """An unknown key answers 401 with the error next to the key field."""
    browser.page("/login")
    page = browser.submit("/login", {"api_key": "cas-unknown"})
    assert page.status == 401
    assert page.error("api_key").startswith("That key is not known here")
    assert page.doc.find(id="api_key").attrs.get("aria-invalid") == "true"


@pytest.mark.parametrize(
    ("target", "landing"),
    [
        ("/conversations?offset=0", "/conversations?offset=0"),
        ("//evil.example", "/chat"),
        ("https://evil.example", "/chat"),
        ("/\\evil.example", "/chat"),
        ("/\t/evil.example", "/chat"),
        ("/\n/evil.example", "/chat"),
    ],
    ids=["local path", "scheme-relative", "absolute", "backslash", "tab", "newline"],
)
def test_login_goes_to_next_only_when_it_is_a_local_path(browser, user, target, landing):
    """`next` is honoured only as a path on this site; anything else lands on /chat."""
    browser.page("/login")
    page = browser.submit("/login", {"api_key": user["api_key"], "next": target})
    assert page.status == 303
    assert page.location == landing


@pytest.mark.parametrize(
    ("query", "landing"),
    [
        ("next=/conversations", "/conversations"),
        ("next=//evil.example", "/chat"),
        ("next=https%3A%2F%2Fevil.example", "/chat"),
        ("next=/%5Cevil.example", "/chat"),
        ("next=/%09/evil.example", "/chat"),
    ],
    ids=["local path", "scheme-relative", "absolute", "backslash", "tab"],
)
def test_login_link_cannot_lead_off_site(browser, user, query, landing):
    """A link to /login?next=... leads, after logging in through its form, only to a page of this site."""
    form = browser.page(f"/login?{query}")
    page = browser.submit("/login", {"api_key": user["api_key"], "next": form.value("next") or ""})
    assert page.status == 303 and page.location == landing


def test_header_offers_log_in_or_log_out(browser, user):
    """Anonymous pages link to Log in; once logged in, the header has a Log out button (a POST form)."""
    header = browser.page("/chat").doc.find("header")
    assert header.find("a", href="/login").text == "Log in" and header.find("form") is None
    browser.log_in(user["api_key"])
    header = browser.page("/chat").doc.find("header")
    logout = header.find("form", action="/logout")
    assert logout.attrs["method"] == "post" and squash(logout.find("button").text) == "Log out"
    assert logout.find("input", name="csrf_token") is not None
    assert "alice" in header.find("span", cls="me").text


def test_session_lasts_session_days(make_server, admin):
    """The cookie's lifetime follows settings session_days."""
    browser = Browser(make_server(session_days=2))
    browser.page("/login")
    page = browser.submit("/login", {"api_key": admin})
    expires = re.search(r"Expires=([^;]+)", session_cookie(page)).group(1)
    left = parsedate_to_datetime(expires) - datetime.now(UTC)
    assert timedelta(days=1, hours=23) < left <= timedelta(days=2)


def test_logout_asks_then_ends_the_session(user_browser):
    """GET /logout asks; POST logs out and lands on /login."""
    confirm = user_browser.page("/logout")
    assert confirm.status == 200 and confirm.doc.find("button", type="submit") is not None
    page = user_browser.submit("/logout")
    assert page.status == 303 and page.location == "/login"
    assert not user_browser.logged_in()


# -- 6. the chat form ---------------------------------------------------------------------------


def test_chat_form_answers_with_the_conversation_and_its_json(server, user_browser, user):
    """A sent message shows the turn, and details.json holds the same JSON keys /api/chat gives."""
    page = ask_on_page(user_browser, "first words")
    assert page.status == 200
    turns = page.doc.find_all("li", cls="turn")
    assert len(turns) == 1
    assert squash(turns[0].find("div", cls="you").find("div", cls="text").text) == "first words"
    shown = json.loads(page.doc.find("details", cls="json").find("pre").text)
    api = server.chat(user["api_key"], "other words")
    assert list(shown) == list(api)
    assert shown["api_prompt"] == "first words" and shown["api_user"] == user["user_id"]
    assert page.value("prompt") == "" and page.value("conversation_id") == shown["conversation_id"]
    assert page.doc.find("section", cls="chat").attrs["data-url"] == f"/chat/{shown['conversation_id']}"


def test_chat_form_follow_up_continues_the_conversation(server, user_browser, user):
    """Sending with the page's conversation_id adds a second turn to the same conversation."""
    first = ask_on_page(user_browser, "one")
    cid = first.value("conversation_id")
    second = user_browser.submit("/chat", {"prompt": "two", "conversation_id": cid, "pretty": "y"})
    assert second.status == 200 and second.value("conversation_id") == cid
    assert len(second.doc.find_all("li", cls="turn")) == 2
    stored = server.get(f"/api/conversations/{cid}", user["api_key"]).json()
    assert [m["prompt"] for m in stored["messages"]] == ["one", "two"]
    assert server.get("/api/conversations", user["api_key"]).json()["total"] == 1


@pytest.mark.parametrize(("pretty", "mimetype"), [(False, "text/plain"), (True, "text/html")], ids=["plain", "pretty"])
def test_reply_only_answers_the_reply_alone(server, user_browser, user, pretty, mimetype):
    """reply_only answers the bare reply, like /api/chat: text/plain, or sanitised HTML with pretty."""
    user_browser.page("/chat")
    fields = {"prompt": "just the reply", "reply_only": "y", **({"pretty": "y"} if pretty else {})}
    page = user_browser.submit("/chat", fields)
    assert page.status == 200 and page.headers["Content-Type"].startswith(mimetype)
    api = server.post(
        "/api/chat", user["api_key"], json={"prompt": "just the reply", "reply_only": True, "pretty": pretty}
    )
    assert page.response.text == api.text
    if not pretty:
        assert "You said: just the reply" in page.response.text and "<" not in page.response.text


def test_empty_prompt_is_400_with_the_error_by_the_field_and_the_rest_kept(user_browser):
    """An empty prompt answers 400 with an inline error; the checkboxes stay as they were."""
    user_browser.page("/chat")
    page = user_browser.submit("/chat", {"prompt": "", "reply_only": "y", "access_token": "secret-token"})
    assert page.status == 400
    assert page.error("prompt") == "Type a message first."
    assert page.doc.find(id="prompt").attrs.get("aria-invalid") == "true"
    assert page.value("reply_only") == "checked" and page.value("pretty") == ""
    assert page.value("access_token") in (None, "")  # a password field is never sent back


def test_blank_prompt_is_400_with_the_services_message(user_browser):
    """A prompt of spaces passes the form but the service refuses it, and its words land by the field."""
    page = ask_on_page(user_browser, "   ")
    assert page.status == 400 and page.error("prompt") == "prompt is required"


def test_unknown_conversation_id_is_404_with_the_message_and_prompt_kept(user_browser):
    """A follow-up to a conversation that does not exist answers 404, says so, and keeps the prompt."""
    page = ask_on_page(user_browser, "hello?", conversation_id="no-such-conversation")
    assert page.status == 404
    assert "no conversation 'no-such-conversation'" in page.form_errors()
    assert page.value("prompt") == "hello?"


def test_someone_elses_conversation_is_404_on_the_form_and_the_page(server, admin, user_browser):
    """Another user's conversation is unknown to this user, whether asked through the form or opened."""
    cid = server.chat(admin, "admin's secret")["conversation_id"]
    assert ask_on_page(user_browser, "let me in", conversation_id=cid).status == 404
    page = user_browser.page(f"/chat/{cid}")
    assert page.status == 404 and "admin's secret" not in page.text


def test_non_plus_user_sending_plus_true_gets_the_apis_403(user_browser):
    """A user without plus has no plus field; a forged plus=true meets the same rule as /api/chat (403, shown)."""
    assert user_browser.page("/chat").doc.find("select", id="plus") is None
    page = user_browser.submit("/chat", {"prompt": "plus please", "plus": "true", "pretty": "y"})
    assert page.status == 403 and "plus" in page.text
    assert page.value("prompt") == "plus please"


def test_plus_users_choice_is_used_and_its_error_shown(admin_browser):
    """A plus user sees the plus select; asking plus accounts with only a free one configured is 503, shown."""
    assert admin_browser.page("/chat").doc.find("select", id="plus") is not None
    page = admin_browser.submit("/chat", {"prompt": "plus please", "plus": "true", "pretty": "y"})
    assert page.status == 503
    assert "no enabled plus account is configured" in page.form_errors()
    assert page.value("plus") == "true" and page.value("prompt") == "plus please"


def test_upstream_error_is_502_shown_with_the_prompt_kept(make_server, openai_fake, admin):
    """The upstream answering an error gives 502, its message on the page, and the typed prompt back."""
    server = make_server([{"name": "real", "type": "openai", "base_url": openai_fake.url}])
    openai_fake.fail_status = 500
    page = ask_on_page(Browser(server).log_in(admin), "are you there?")
    assert page.status == 502
    assert "account 'real': the upstream answered 500" in page.form_errors()
    assert page.value("prompt") == "are you there?"


def test_unreachable_upstream_is_502_shown(make_server, admin):
    """An account pointing at a closed port gives 502 and says it could not connect."""
    server = make_server([{"name": "gone", "type": "openai", "base_url": "http://127.0.0.1:9/v1"}])
    page = ask_on_page(Browser(server).log_in(admin), "anyone?")
    assert page.status == 502 and "could not connect to the upstream" in page.form_errors()
    assert page.value("prompt") == "anyone?"


def test_slow_upstream_is_504_shown(make_server, openai_fake, admin):
    """An upstream slower than the read timeout gives 504 with the message on the page."""
    server = make_server(
        [{"name": "slow", "type": "openai", "base_url": openai_fake.url}], timeouts={"connect": 2, "read": 0.3}
    )
    openai_fake.delay = 2
    page = ask_on_page(Browser(server).log_in(admin), "slowly")
    assert page.status == 504 and "account 'slow'" in page.form_errors()
    assert page.value("prompt") == "slowly"


def test_reply_markup_is_shown_as_text(make_server, openai_fake, admin):
    """Raw HTML in a reply is escaped on the page: no script element reaches the browser."""
    server = make_server([{"name": "real", "type": "openai", "base_url": openai_fake.url}])
    openai_fake.reply_text = "<script>alert(1)</script> **bold**"
    page = ask_on_page(Browser(server).log_in(admin), "be naughty")
    bot = page.doc.find("div", cls="bot").find("div", cls="markdown")
    assert bot.find("script") is None and bot.find("strong").text == "bold"
    assert "<script>alert(1)</script>" in bot.text


# -- 7. roles on the users page ---------------------------------------------------------------


def test_plain_user_gets_403_on_the_users_page_and_its_form(server, user_browser):
    """A plain user's key cannot open the users page nor create a user through it."""
    assert user_browser.page("/admin/users").status == 403
    page = user_browser.submit("/admin/users", {"username": "sneaky", "role": "user"})
    assert page.status == 403
    assert "sneaky" not in {u["username"] for u in server.get("/api/users", ADMIN_KEY).json()["users"]}


def test_client_creates_a_user_and_sees_its_key_once(server, client_role):
    """A client's new user comes back 201 with the key in input#new-key, and is listed."""
    browser = Browser(server).log_in(client_role["api_key"])
    browser.page("/admin/users")
    page = browser.submit("/admin/users", {"username": "bob", "user_id": "discord-42"})
    assert page.status == 201 and page.headers["Cache-Control"] == "no-store"
    key = page.value("new-key")
    assert key.startswith("cas-") and "readonly" in page.doc.find("input", id="new-key").attrs
    assert page.doc.find("button", **{"data-copy": "new-key"}) is not None
    assert server.get("/api/me", key).json()["username"] == "bob"
    names = [squash(tr.find("td").text) for tr in page.doc.find("table", cls="users").find("tbody").find_all("tr")]
    assert names == ["bob"]
    assert page.value("username") in (None, "")  # the form is empty again for the next one


def test_client_sees_only_its_own_users(server, client_role, user):
    """A client's page lists only the users it created, not the admin's."""
    own = server.create_user(client_role["api_key"], "carol")
    page = Browser(server).log_in(client_role["api_key"]).page("/admin/users")
    assert page.status == 200
    rows = page.doc.find("table", cls="users").find("tbody").find_all("tr")
    assert [squash(r.find("code").text) for r in rows] == [own["user_id"]]
    assert user["user_id"] not in page.response.text and "alice" not in page.text


def test_client_without_plus_has_no_plus_or_role_field(server, client_role):
    """A client without plus is offered neither plus nor a role on its create form."""
    page = Browser(server).log_in(client_role["api_key"]).page("/admin/users")
    assert page.doc.find(id="plus") is None and page.doc.find(id="role") is None
    assert page.doc.find("input", id="username") is not None


@pytest.mark.parametrize("forged", [{"plus": "y"}, {"role": "admin"}, {"role": "client"}])
def test_client_forging_fields_meets_the_apis_403(server, client_role, forged):
    """plus (without plus) or another role sent anyway by a client is refused as /api/users refuses it."""
    browser = Browser(server).log_in(client_role["api_key"])
    browser.page("/admin/users")
    page = browser.submit("/admin/users", {"username": "greedy", **forged})
    assert page.status == 403 and page.doc.find("input", id="new-key") is None
    assert "greedy" not in [u["username"] for u in server.get("/api/users", ADMIN_KEY).json()["users"]]


def test_admin_creates_a_client(server, admin_browser):
    """An admin chooses role=client; the new user is a client."""
    admin_browser.page("/admin/users")
    page = admin_browser.submit("/admin/users", {"username": "bot", "role": "client", "user_id": "bot-1"})
    assert page.status == 201 and "bot was created" in page.text
    assert server.get("/api/users/bot-1", ADMIN_KEY).json()["role"] == "client"


def test_duplicate_user_id_is_409_shown_by_the_field(server, admin_browser, user):
    """Taking an id already in use answers 409 with the error next to the id field (its details open)."""
    admin_browser.page("/admin/users")
    page = admin_browser.submit("/admin/users", {"username": "twin", "role": "user", "user_id": user["user_id"]})
    assert page.status == 409
    assert page.error("user_id") == f"user_id {user['user_id']!r} already exists"
    holder = next(d for d in page.doc.find_all("details") if d.find(id="user_id") is not None)
    assert "open" in holder.attrs
    assert page.value("username") == "twin" and page.doc.find("section", cls="key-once") is None


def test_deleting_a_client_on_the_page_deletes_its_users(server, admin, client_role):
    """The confirm page warns, and the delete takes the client's users along; the flash says how many."""
    made = server.create_user(client_role["api_key"], "bob")
    browser = Browser(server).log_in(admin)
    confirm = browser.page(f"/admin/users/{client_role['user_id']}/delete")
    assert confirm.status == 200 and "The 1 user(s) this client created are deleted with it." in confirm.text
    page = browser.submit(f"/admin/users/{client_role['user_id']}/delete")
    assert page.status == 303 and page.location == "/admin/users"
    assert "Deleted discord-bot and the 1 user(s) it created." in browser.page("/admin/users").flashes()
    assert not {client_role["user_id"], made["user_id"]} & _user_ids(server)


def test_admin_cannot_delete_the_last_admin_on_the_page(server, admin_browser):
    """Deleting oneself as the only admin answers 409 and the admin stays."""
    admin_browser.page("/admin/users/admin/delete")
    page = admin_browser.submit("/admin/users/admin/delete")
    assert page.status == 409 and "cannot delete the last admin" in page.text
    assert "admin" in _user_ids(server)


def test_client_cannot_open_the_admins_users(server, client_role, user):
    """A client asking to delete or rotate a user it did not create gets 404, and nothing changes."""
    browser = Browser(server).log_in(client_role["api_key"])
    assert browser.page(f"/admin/users/{user['user_id']}/delete").status == 404
    assert browser.submit(f"/admin/users/{user['user_id']}/key").status == 404
    assert server.get("/api/me", user["api_key"]).status_code == 200


# -- 8. anonymous visitors ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/conversations", "/chat/some-id", "/admin/users", "/admin/add-user"])
def test_anonymous_visitor_is_sent_to_login_and_back(browser, path):
    """A page that needs a user redirects (303) to /login?next=<that page>."""
    page = browser.page(path)
    assert page.status == 303
    assert urlsplit(page.location).path == "/login" and next_of(page.location) == path
    assert browser.page(path_of(page.location)).value("next") == path


def test_anonymous_chat_page_offers_the_key_field(browser):
    """GET /chat answers 200 to anyone, with an api_key field and a Log in link."""
    page = browser.page("/chat")
    assert page.status == 200
    assert page.doc.find("input", id="api_key").attrs["type"] == "password"
    assert page.doc.find("nav", cls="sidebar") is None
    assert page.doc.find("a", href="/login") is not None


# -- 9. renaming and deleting conversations ---------------------------------------------------


@pytest.fixture
def conversation(server, user) -> str:
    return server.chat(user["api_key"], "to be renamed")["conversation_id"]


def _title(server, user, cid) -> str:
    return server.get(f"/api/conversations/{cid}", user["api_key"]).json()["title"]


def test_conversation_page_shows_title_turns_and_sidebar(server, user, user_browser, conversation):
    """GET /chat/<id> shows the title, the turns, and the sidebar with this one marked current."""
    other = server.chat(user["api_key"], "newer one")["conversation_id"]
    page = user_browser.page(f"/chat/{conversation}")
    assert page.status == 200 and squash(page.doc.find("h1", id="chat-title").text) == "to be renamed"
    assert len(page.doc.find_all("li", cls="turn")) == 1
    sidebar = page.doc.find("nav", cls="sidebar")
    links = [a.attrs["href"] for a in sidebar.find("ul").find_all("a")]
    assert links == [f"/chat/{other}", f"/chat/{conversation}"]
    assert sidebar.find("a", href=f"/chat/{conversation}").attrs.get("aria-current") == "page"


@pytest.mark.parametrize(
    ("title", "message"),
    [("", "Type a title."), ("   ", "title is required"), ("x" * 201, "title must be at most 200 characters")],
    ids=["empty", "blank", "201 chars"],
)
def test_rename_refuses_a_bad_title_inline(server, user, user_browser, conversation, title, message):
    """A bad title answers 400 with the error by the title field; the title stays."""
    user_browser.page(f"/chat/{conversation}")
    page = user_browser.submit(f"/chat/{conversation}/rename", {"title": title})
    assert page.status == 400 and page.error("title") == message
    assert "open" in page.doc.find("details", cls="rename").attrs
    assert _title(server, user, conversation) == "to be renamed"


def test_rename_changes_the_title(server, user, user_browser, conversation):
    """A good title redirects back (303) with a flash, and the API sees the new title."""
    user_browser.page(f"/chat/{conversation}")
    page = user_browser.submit(f"/chat/{conversation}/rename", {"title": "  Better   name "})
    assert page.status == 303 and page.location == f"/chat/{conversation}"
    assert _title(server, user, conversation) == "Better name"
    back = user_browser.page(page.location)
    assert "Conversation renamed." in back.flashes()
    assert squash(back.doc.find("h1", id="chat-title").text) == "Better name"


def test_titles_and_names_are_shown_as_text(server, admin, user_browser, conversation):
    """Markup in a title or a user name is escaped wherever the pages show it."""
    evil = '<img src=x onerror="alert(1)">'
    user_browser.page(f"/chat/{conversation}")
    assert user_browser.submit(f"/chat/{conversation}/rename", {"title": evil}).status == 303
    server.create_user(admin, evil)
    for browser, path in ((user_browser, f"/chat/{conversation}"), (user_browser, "/conversations")):
        page = browser.page(path)
        assert page.doc.find("img") is None and evil in page.text
    users = Browser(server).log_in(admin).page("/admin/users")
    assert users.doc.find("img") is None and evil in users.text


def test_rename_of_an_unknown_conversation_is_404(user_browser):
    """Renaming a conversation that is not the user's answers 404."""
    user_browser.page("/chat")
    assert user_browser.submit("/chat/nope/rename", {"title": "x"}).status == 404


def test_delete_a_conversation_through_its_confirm_page(server, user, user_browser, conversation):
    """The confirm page names it; POST deletes it and lands on /chat with a flash."""
    confirm = user_browser.page(f"/chat/{conversation}/delete")
    assert confirm.status == 200 and "“to be renamed” and its 1 message(s)" in confirm.text
    assert confirm.doc.find("a", href=f"/chat/{conversation}").text == "Cancel"
    page = user_browser.submit(f"/chat/{conversation}/delete")
    assert page.status == 303 and page.location == "/chat"
    assert "Deleted “to be renamed”." in user_browser.page("/chat").flashes()
    assert server.get(f"/api/conversations/{conversation}", user["api_key"]).status_code == 404


def test_delete_all_conversations_through_its_confirm_page(server, user, user_browser, conversation):
    """Delete all asks with the count, then removes every conversation of this user only."""
    server.chat(user["api_key"], "second")
    kept = server.chat(ADMIN_KEY, "admin keeps this")["conversation_id"]
    listing = user_browser.page("/conversations")
    assert listing.doc.find("a", href="/conversations/delete") is not None
    assert "All 2 conversation(s)" in user_browser.page("/conversations/delete").text
    page = user_browser.submit("/conversations/delete")
    assert page.status == 303 and page.location == "/conversations"
    assert "Deleted 2 conversations." in user_browser.page("/conversations").flashes()
    assert server.get("/api/conversations", user["api_key"]).json()["total"] == 0
    assert server.get(f"/api/conversations/{kept}", ADMIN_KEY).status_code == 200


def test_conversation_list_is_newest_first(server, user, user_browser):
    """/conversations lists the user's conversations, newest first, with their message counts."""
    for prompt in ("oldest", "middle", "newest"):
        server.chat(user["api_key"], prompt)
    page = user_browser.page("/conversations")
    rows = page.doc.find("tbody").find_all("tr")
    assert [squash(r.find("a").text) for r in rows] == ["newest", "middle", "oldest"]
    assert [squash(r.find_all("td")[1].text) for r in rows] == ["1", "1", "1"]


# -- 10. old addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "landing"),
    [
        ("/recall", "/conversations"),
        ("/recall?conversation_id=abc", "/chat/abc"),
        ("/chat?conversation_id=abc", "/chat/abc"),
    ],
)
def test_old_addresses_redirect(user_browser, path, landing):
    """The original's recall page (and /chat?conversation_id=) redirect to today's pages."""
    page = user_browser.page(path)
    assert page.status == 303 and page.location == landing


def test_add_user_address_shows_the_users_page(admin_browser):
    """/admin/add-user is the users page under its old name."""
    page = admin_browser.page("/admin/add-user")
    assert page.status == 200 and page.doc.find("table", cls="users") is not None
    assert page.headers["Cache-Control"] == "no-store"


# -- 11. headers and assets ---------------------------------------------------------------------

HTML_PAGES = ["/", "/login", "/chat", "/conversations", "/logout", "/admin/users", "/admin/add-user", "/no-such"]


@pytest.mark.parametrize("path", HTML_PAGES)
def test_html_pages_carry_the_security_headers(admin_browser, path):
    """Every HTML page has a strict CSP (no inline script), nosniff and X-Frame-Options DENY."""
    page = admin_browser.page(path)
    assert page.is_html
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("path", HTML_PAGES)
def test_html_pages_use_only_local_assets_and_no_inline_script(admin_browser, path):
    """Stylesheets and scripts come from /static/ only, and no page holds inline script or handlers."""
    page = admin_browser.page(path)
    assets = [n.attrs["src"] for n in page.doc.find_all("script")] + [
        n.attrs["href"] for n in page.doc.find_all("link") if n.attrs.get("rel") == "stylesheet"
    ]
    assert assets and all(a.startswith("/static/") for a in assets), assets
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.response.text)
    assert all("src" in n.attrs and not n.text.strip() for n in page.doc.find_all("script"))
    assert not [n for n in page.doc.iter() for a in n.attrs if a.startswith("on")]
    for asset in assets:
        assert admin_browser.page(asset).status == 200


@pytest.mark.parametrize("path", ["/admin/users", "/admin/add-user"])
def test_admin_pages_are_not_cached(admin_browser, path):
    """The users pages (which show keys) say Cache-Control: no-store."""
    assert admin_browser.page(path).headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/chat", "/login", "/conversations"])
def test_demo_banner_shows_while_the_demo_is_alone(admin_browser, path):
    """Every page warns (p.banner) while only the demo account is configured."""
    assert admin_browser.page(path).doc.find("p", cls="banner") is not None


def test_no_demo_banner_with_a_real_account(make_server, openai_fake):
    """With a real account enabled the pages show no demo banner."""
    real = Browser(make_server([{"name": "real", "type": "openai", "base_url": openai_fake.url}]))
    assert real.page("/chat").doc.find("p", cls="banner") is None


def test_api_answers_do_not_get_the_page_headers(server, user):
    """JSON answers are left alone: no CSP on /api."""
    assert "Content-Security-Policy" not in server.get("/api/me", user["api_key"]).headers


# -- 12. pages at other paths -------------------------------------------------------------------


def test_pages_answer_at_the_paths_settings_give(make_server):
    """With pages moved in settings, the pages answer there and the defaults are gone."""
    server = make_server(pages={"chat": "/talk", "login": "/signin"})
    browser = Browser(server)
    assert browser.page("/talk").status == 200 and browser.page("/signin").status == 200
    assert browser.page("/chat").status == 404 and browser.page("/login").status == 404
    page = browser.page("/conversations")
    assert page.status == 303 and urlsplit(page.location).path == "/signin"
    browser.page("/signin")
    assert browser.submit("/signin", {"api_key": ADMIN_KEY}).location == "/talk"
    answer = browser.submit("/talk", {"prompt": "moved", "pretty": "y"})
    assert answer.status == 200
    assert answer.doc.find("form", id="ask").attrs["action"] == "/talk"
    assert answer.doc.find("section", cls="chat").attrs["data-url"].startswith("/talk/")


@pytest.mark.parametrize(
    ("pages", "culprit"),
    [
        ({"chat": "talk"}, "pages.chat"),
        ({"chat": "/chat/<id>"}, "pages.chat"),
        ({"conversations": "/list/"}, "pages.conversations"),
        ({"chat": "/api/chat"}, "pages.chat"),
        ({"login": "/chat"}, "pages.chat"),
        ({"nope": "/nope"}, "pages.nope"),
        ({"chat": 5}, "pages.chat"),
    ],
    ids=["no slash", "placeholder", "trailing slash", "api route", "two pages", "unknown key", "not a string"],
)
def test_bad_page_paths_stop_start_up(tmp_path, pages, culprit):
    """A page path that is malformed or taken by another route stops create_app, naming the key."""
    with pytest.raises(ConfigError, match=re.escape(culprit)):
        create_app(settings_for(tmp_path, pages=pages), base_dir=tmp_path, admin_key=ADMIN_KEY)


# -- 13. a new key is shown once, and only there -------------------------------------------------


def test_created_key_appears_only_in_its_own_response(server, admin_browser, tmp_path, caplog):
    """The new key is in the 201 page only: not on the next page, not in users.json, not in the logs."""
    caplog.set_level(logging.DEBUG)
    admin_browser.page("/admin/users")
    created = admin_browser.submit("/admin/users", {"username": "dana", "role": "user"})
    key = created.value("new-key")
    assert created.status == 201 and key.startswith("cas-")
    assert created.response.text.count(key) == 1
    for path in ("/admin/users", "/admin/add-user", "/chat", "/conversations"):
        assert key not in admin_browser.page(path).response.text
    users_file = Path(tmp_path / "users.json").read_text()
    assert "dana" in users_file and key not in users_file
    assert hashlib.sha256(key.encode()).hexdigest() in users_file  # only its hash is kept
    assert "POST /admin/users" in caplog.text  # the server's log was captured...
    assert key not in caplog.text and key not in "".join(str(r.args) for r in caplog.records)  # ...without the key


# -- findings of the review of the browser front (each failed before its fix) -----------------


@pytest.mark.parametrize("offset", ["%C2%B2", "-1", "1e3", "99999999999999999999", ""])
def test_odd_offsets_on_the_list_page_show_the_first_page(user_browser, offset):
    """A superscript digit, a sign or an overflow in ?offset= shows the first page, never a 500."""
    page = user_browser.page(f"/conversations?offset={offset}")
    assert page.status == 200 and "Your conversations" in page.text


def test_renaming_a_missing_conversation_is_a_404_that_says_so(user_browser):
    """Renaming a conversation that is not there answers the 404 page naming it, not an empty chat page."""
    user_browser.page("/chat")
    page = user_browser.submit("/chat/nope/rename", {"title": "x"})
    assert page.status == 404 and "no conversation" in page.text and "nope" in page.text


def test_plain_text_reply_is_never_sniffed_as_html(user_browser):
    """reply_only without pretty answers text/plain with nosniff, so a browser never runs markup in it."""
    page = ask_on_page(user_browser, "<script>alert(1)</script>", reply_only="y", pretty="")
    assert page.status == 200 and page.response.headers["Content-Type"].startswith("text/plain")
    assert page.response.headers["X-Content-Type-Options"] == "nosniff"


def test_destructive_buttons_do_not_take_the_focus(user_browser):
    """A confirmation page does not autofocus its Delete button, so a stray Enter deletes nothing."""
    page = user_browser.page("/conversations/delete")
    assert page.status == 200 and page.doc.find("button", type="submit").attrs.get("autofocus") is None
