"""/api/chat over real HTTP: the answer's shape, follow-ups, boolean spellings, keys and rendered replies."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest
from conftest import ADMIN_KEY, LiveServer, start_server
from fakes import FakeOpenAI

READABLE = re.compile(r"^\d{4}-\d{2}-\d{2} \| \d{2}:\d{2}:\d{2}$")
DANGEROUS_REPLY = (
    "Hello <script>alert(1)</script> there.\n\n"
    "An image: <img src=x onerror=alert(1)>\n\n"
    "A [link](javascript:alert(1)) to click.\n\n"
    "```python\nprint('hi')\n```\n"
)
TRUTHY = ["true", "True", "TRUE", "1", "yes", "YES", "on"]
FALSY = ["false", "False", "0", "no", "NO", "off"]


def send(server, method, path, key=None, how="json", params=None):
    """Send params as a query string, a form body or a JSON body."""
    if how == "query":
        return server.call(method, path, key, params=params)
    if how == "form":
        return server.call(method, path, key, data=params)
    return server.call(method, path, key, json=params)


def ok_json(response) -> dict:
    """Assert a 200 JSON success answer and return it."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["status"] == "success", body
    return body


def live(tmp_path_factory, accounts=None) -> LiveServer:
    """Start a live server for the whole module (stopping one costs half a second)."""
    tmp = tmp_path_factory.mktemp("chat")
    return start_server(tmp, accounts)


def ok_json_list(response) -> list:
    """Return the users of a 200 /api/users answer."""
    assert response.status_code == 200, response.text
    return response.json()["users"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One demo server shared by this module; every test starts its own conversations."""
    shared = live(tmp_path_factory)
    yield shared
    shared.stop()


@pytest.fixture(scope="module")
def user(server):
    """A plain user on the shared server."""
    return server.create_user(ADMIN_KEY, "alice")


@pytest.fixture(scope="module")
def client_role(server):
    """A client (like a Discord bot) on the shared server."""
    return server.create_user(ADMIN_KEY, "discord-bot", role="client")


@pytest.fixture(scope="module")
def fake_openai():
    """A started fake OpenAI-compatible upstream."""
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory, fake_openai):
    """A live server whose only account is the fake OpenAI upstream."""
    account = {"name": "fake", "type": "openai", "base_url": fake_openai.url, "api_key": "sk-fake"}
    shared = live(tmp_path_factory, [account])
    yield shared
    shared.stop()


@pytest.fixture
def fake_reply(fake_openai):
    """Make the fake upstream answer the dangerous markdown, then restore its echo."""
    fake_openai.reply_text = DANGEROUS_REPLY
    yield fake_openai
    fake_openai.reply_text = None


@pytest.mark.parametrize(("method", "how"), [("GET", "query"), ("POST", "json"), ("POST", "form")])
def test_chat_answer_has_every_field(server, user, method, how):
    """A first prompt answers every documented field with the right type and format."""
    before = datetime.now(UTC)
    body = ok_json(send(server, method, "/api/chat", user["api_key"], how, {"prompt": "hello there"}))

    assert "You said: hello there" in body["reply"]
    for name in ("conversation_id", "message_id", "conversation_title", "model"):
        assert isinstance(body[name], str) and body[name], name
    assert body["conversation_id"] != body["message_id"]
    assert body["parent_id"] is None
    assert body["model"] == "demo"
    assert body["account"] == "demo"
    assert body["finish_reason"] == "stop"
    assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert body["api_username"] == user["username"]
    assert body["api_user"] == user["user_id"]
    assert body["api_client_id"] == "self"
    assert body["api_prompt"] == "hello there"
    assert "last_message_prompt" not in body and "last_message_reply" not in body

    origin = datetime.fromisoformat(body["api_prompt_time_origin"].replace("Z", "+00:00"))
    assert origin.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=2) <= origin <= datetime.now(UTC) + timedelta(seconds=2)
    assert READABLE.match(body["api_prompt_time_origin_readable"])
    assert body["api_prompt_time_origin_readable"] == origin.strftime("%Y-%m-%d | %H:%M:%S")
    taken = body["api_response_time_taken"]
    assert isinstance(taken, (int, float)) and not isinstance(taken, bool) and 0 <= taken < 30


def test_follow_ups_chain_parent_ids_and_report_the_last_turn(server, user):
    """Each follow-up names its parent and repeats the previous prompt and reply."""
    key = user["api_key"]
    first = server.chat(key, "first question")
    second = ok_json(
        server.get("/api/chat", key, params={"prompt": "second question", "conversation_id": first["conversation_id"]})
    )
    third = ok_json(
        server.post("/api/chat", key, data={"prompt": "third question", "conversation_id": first["conversation_id"]})
    )

    assert second["conversation_id"] == third["conversation_id"] == first["conversation_id"]
    assert second["parent_id"] == first["message_id"]
    assert third["parent_id"] == second["message_id"]
    assert len({first["message_id"], second["message_id"], third["message_id"]}) == 3
    assert second["last_message_prompt"] == "first question"
    assert second["last_message_reply"] == first["reply"]
    assert third["last_message_prompt"] == "second question"
    assert third["last_message_reply"] == second["reply"]
    assert "2 earlier turns" in third["reply"]  # the demo saw the stored history
    assert third["conversation_title"] == first["conversation_title"]


@pytest.mark.parametrize(
    ("how", "value"),
    [("query", v) for v in TRUTHY] + [("form", "Yes"), ("json", True), ("json", 1), ("json", "yes")],
)
def test_reply_only_true_spellings_answer_plain_text(server, user, how, value):
    """Every spelling of true for reply_only answers the bare reply as text/plain."""
    method = "GET" if how == "query" else "POST"
    response = send(server, method, "/api/chat", user["api_key"], how, {"prompt": "ping", "reply_only": value})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "You said: ping" in response.text
    assert not response.text.lstrip().startswith("{")


@pytest.mark.parametrize(
    ("how", "value"),
    [("query", v) for v in FALSY] + [("form", "No"), ("json", False), ("json", 0), ("json", "FALSE")],
)
def test_reply_only_false_spellings_answer_json(server, user, how, value):
    """Every spelling of false for reply_only keeps the full JSON answer."""
    method = "GET" if how == "query" else "POST"
    body = ok_json(send(server, method, "/api/chat", user["api_key"], how, {"prompt": "ping", "reply_only": value}))
    assert "You said: ping" in body["reply"]


@pytest.mark.parametrize("plus", ["false", "FALSE", "no", "0", "any", "Any", False])
def test_plus_accepts_false_and_any_for_a_plain_user(server, user, plus):
    """plus=false (any spelling) and plus=any both reach the free demo account."""
    body = server.chat(user["api_key"], "hi", plus=plus)
    assert body["model"] == "demo"


@pytest.mark.parametrize(("method", "how"), [("header", None), ("GET", "query"), ("POST", "json"), ("POST", "form")])
def test_key_comes_from_header_or_user_parameter(server, user, method, how):
    """The key works from the Bearer header and from the `user` parameter in query, JSON or form."""
    if method == "header":
        response = server.post("/api/chat", user["api_key"], json={"prompt": "who am I"})
    else:
        response = send(server, method, "/api/chat", None, how, {"prompt": "who am I", "user": user["api_key"]})
    body = ok_json(response)
    assert body["api_user"] == user["user_id"]
    assert body["api_client_id"] == "self"


def test_reply_only_plain_text_is_the_raw_reply(fake_server, fake_reply, admin):
    """reply_only without pretty answers the upstream's text untouched."""
    response = fake_server.post("/api/chat", admin, json={"prompt": "x", "reply_only": "true"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text == DANGEROUS_REPLY


def markup_tags(html: str) -> list[tuple[str, list]]:
    """Return every real element (tag, attributes) in html; escaped text does not count."""
    found = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, attrs))

    Collect().feed(html)
    return found


@pytest.mark.parametrize("how", ["query", "json", "form"])
def test_pretty_reply_is_sanitised_html(fake_server, fake_reply, admin, how):
    """reply_only+pretty renders markdown to HTML: raw tags shown as text, javascript: links removed."""
    before = len(fake_reply.requests_to("/v1/chat/completions"))
    method = "GET" if how == "query" else "POST"
    response = send(fake_server, method, "/api/chat", admin, how, {"prompt": "x", "reply_only": "1", "pretty": "yes"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/html")
    html = response.text.lower()
    tags = markup_tags(html)
    assert not {"script", "img"} & {tag for tag, _ in tags}
    assert not [name for _, attrs in tags for name, _ in attrs if name.startswith("on")]
    assert "&lt;script&gt;" in html and "&lt;img" in html  # the model's text is shown, not run
    assert "javascript:" not in html
    assert "<pre" in html and "<code" in html
    assert "print" in html and "hello" in html and "link" in html
    assert len(fake_reply.requests_to("/v1/chat/completions")) == before + 1


def test_client_speaking_for_a_user_is_named_in_the_answer(server, client_role):
    """A client chatting with user_id/username gets its own id as api_client_id, and the user is kept."""
    key = client_role["api_key"]
    first = server.chat(key, "hello from discord", user_id="discord-42", username="Dana")
    assert first["api_client_id"] == client_role["user_id"]
    assert isinstance(first["api_user"], str) and first["api_user"] != client_role["user_id"]

    again = server.chat(key, "and again", user_id="discord-42", conversation_id=first["conversation_id"])
    assert again["api_client_id"] == client_role["user_id"]
    assert again["api_user"] == first["api_user"]
    assert again["parent_id"] == first["message_id"]

    own = server.chat(key, "as myself")
    assert own["api_client_id"] == "self"
    assert own["api_user"] == client_role["user_id"]

    listed = ok_json_list(server.get("/api/users", key))
    dana = [u for u in listed if u["username"] == "Dana"]
    assert len(dana) == 1 and dana[0]["user_id"] == first["api_user"]


def test_client_user_conversations_are_separate_from_the_clients(server, client_role):
    """A conversation started for a client's user cannot be continued as another of its users."""
    key = client_role["api_key"]
    first = server.chat(key, "for user one", user_id="one")
    response = server.post(
        "/api/chat", key, json={"prompt": "hijack", "user_id": "two", "conversation_id": first["conversation_id"]}
    )
    assert response.status_code == 404, response.text
    assert response.json()["status"] == "error"
