"""gajosu/chat-gpt-rest-api's routes, sent as its users send them: form-encoded bodies and a bare
`Authorization: KEY` header. Answers in its shapes ({"response": revChatGPT's last ask() item}, the web
backend's conversation, 204 for removals), errors as {"error": message} with the status."""

from __future__ import annotations

import pytest
import requests
from fakes import FakeOpenAI
from sqlalchemy import select
from test_web_pages import Browser
from upstream_fixtures import FAST, chat_requests, openai_account

from app.store.usage import usage_ledger

ITEM_KEYS = {
    "author",
    "message",
    "conversation_id",
    "parent_id",
    "model",
    "finish_details",
    "end_turn",
    "recipient",
    "citations",
}


def send(server, method: str, path: str, key: str | None, **kwargs) -> requests.Response:
    """A request with the key alone in Authorization, as gajosu's clients send it (no Bearer)."""
    headers = kwargs.pop("headers", {})
    if key is not None:
        headers["Authorization"] = key
    return server.session.request(method, server.url + path, headers=headers, timeout=30, **kwargs)


def new(server, key: str, **form) -> requests.Response:
    return send(server, "POST", "/conversations/new", key, data=form)


def started(server, key: str, **form) -> dict:
    """POST /conversations/new and return its "response", asserting success."""
    answer = new(server, key, **form)
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"response"}
    return answer.json()["response"]


def stored(server, key: str, conversation_id: str) -> dict:
    """The conversation as our own /api/conversations/<id> keeps it."""
    answer = server.get(f"/api/conversations/{conversation_id}", key)
    assert answer.status_code == 200, answer.text
    return answer.json()


def ledger_fronts(server) -> list[str]:
    server.services.store.flush()
    with server.services.store.engine.connect() as db:
        return [row.front for row in db.execute(select(usage_ledger.c.front))]


# -- POST /conversations/new ------------------------------------------------------------------------------


def test_new_answers_revchatgpts_last_ask_item_and_records_a_gajosu_turn(server, user):
    """{"response": {author, message (the whole reply), conversation_id, parent_id (the reply's message id),
    model, finish_details, end_turn, recipient, citations}}; the turn is in the ledger with front gajosu."""
    item = started(server, user["api_key"], prompt="Hello there")
    assert set(item) == ITEM_KEYS
    assert item["author"] == {"role": "assistant", "name": None, "metadata": {}}
    assert "demo" in item["message"].lower()
    assert item["model"] == "demo" and item["finish_details"] == "stop"
    assert item["end_turn"] is True and item["recipient"] == "all" and item["citations"] == []
    kept = stored(server, user["api_key"], item["conversation_id"])
    assert [m["prompt"] for m in kept["messages"]] == ["Hello there"]
    assert kept["messages"][0]["message_id"] == item["parent_id"]
    assert kept["messages"][0]["reply"] == item["message"]
    assert kept["title"] != "My title"
    assert ledger_fronts(server) == ["gajosu"]


def test_new_with_a_title_renames_the_conversation(server, user):
    item = started(server, user["api_key"], prompt="Hello", title="My title")
    assert stored(server, user["api_key"], item["conversation_id"])["title"] == "My title"
    listed = server.get("/api/conversations", user["api_key"]).json()["conversations"]
    assert [c["title"] for c in listed] == ["My title"]


def test_a_title_too_long_is_refused_before_anything_is_asked(server, user):
    answer = new(server, user["api_key"], prompt="Hello", title="x" * 201)
    assert answer.status_code == 400 and "title" in answer.json()["error"], answer.text
    assert server.get("/api/conversations", user["api_key"]).json()["total"] == 0
    assert ledger_fronts(server) == []


def test_model_is_passed_on_when_listed_and_otherwise_the_default(make_server, admin):
    """A model the caller's accounts serve goes upstream; one they do not (revChatGPT's names) is the default."""
    with FakeOpenAI() as fake:
        server = make_server([openai_account(fake, model="m-default", models=["m-other"])], timeouts=FAST)
        key = server.create_user(admin, "alice")["api_key"]
        chosen = started(server, key, prompt="one", model="m-other")
        unknown = started(server, key, prompt="two", model="text-davinci-002-render-sha")
        plain = started(server, key, prompt="three")
        assert (chosen["model"], unknown["model"], plain["model"]) == ("m-other", "m-default", "m-default")
        assert [r["body"]["model"] for r in chat_requests(fake)] == ["m-other", "m-default", "m-default"]
        fake.finish_reason = "length"
        cut_short = started(server, key, prompt="four")
        assert cut_short["finish_details"] == "max_tokens"


# -- POST /conversations/<id>/ask -------------------------------------------------------------------------


def test_ask_continues_the_conversation(server, user):
    """The same shape; the follow-up is stored in the same conversation, parent_id its message id."""
    key = user["api_key"]
    first = started(server, key, prompt="Hello there")
    path = f"/conversations/{first['conversation_id']}/ask"
    answer = send(server, "POST", path, key, data={"prompt": "And again", "parent_id": first["parent_id"]})
    assert answer.status_code == 200, answer.text
    again = answer.json()["response"]
    assert set(again) == ITEM_KEYS and again["conversation_id"] == first["conversation_id"]
    kept = stored(server, key, first["conversation_id"])
    assert [m["prompt"] for m in kept["messages"]] == ["Hello there", "And again"]
    assert kept["messages"][1]["message_id"] == again["parent_id"] != first["parent_id"]
    assert kept["messages"][1]["parent_id"] == first["parent_id"]
    without_parent = send(server, "POST", path, key, data={"prompt": "Third"})
    assert without_parent.status_code == 200, without_parent.text
    assert len(stored(server, key, first["conversation_id"])["messages"]) == 3
    assert ledger_fronts(server) == ["gajosu"] * 3


def test_a_json_body_is_accepted_too_and_a_wrong_type_is_named(server, user):
    """Scripts that send JSON instead of a form get the same answer; a prompt that is not a string is a 400."""
    answer = send(server, "POST", "/conversations/new", user["api_key"], json={"prompt": "Hello", "title": "JSON"})
    assert answer.status_code == 200, answer.text
    item = answer.json()["response"]
    assert stored(server, user["api_key"], item["conversation_id"])["title"] == "JSON"
    wrong = send(server, "POST", f"/conversations/{item['conversation_id']}/ask", user["api_key"], json={"prompt": 5})
    assert wrong.status_code == 400 and wrong.json() == {"error": "prompt must be a string, not a number"}


# -- GET /conversations/<id>/messages ---------------------------------------------------------------------


def test_messages_answer_the_web_backends_conversation(server, user):
    """revChatGPT's get_msg_history: the web backend's conversation (go-chatgpt-api's GET /conversation/<id>):
    title, epoch times, mapping through each prompt and reply (ids, parents, children), current_node the
    last reply; the same ids on every read."""
    key = user["api_key"]
    first = started(server, key, prompt="Hello there", title="Greeting")
    cid = first["conversation_id"]
    second = send(server, "POST", f"/conversations/{cid}/ask", key, data={"prompt": "And again"}).json()["response"]
    answer = send(server, "GET", f"/conversations/{cid}/messages", key)
    assert answer.status_code == 200, answer.text
    conv = answer.json()
    assert conv["title"] == "Greeting" and conv["conversation_id"] == cid
    assert isinstance(conv["create_time"], float) and conv["update_time"] >= conv["create_time"]
    assert conv["current_node"] == second["parent_id"]
    mapping = conv["mapping"]
    (top,) = [n for n in mapping.values() if n["parent"] is None]
    chain, node = [top["message"]], top
    while node["children"]:
        (child,) = node["children"]
        assert mapping[child]["parent"] == node["id"] == mapping[node["id"]]["id"]
        node = mapping[child]
        chain.append(node["message"])
    chain = [m for m in chain if m is not None]  # a root node without a message, if there is one
    assert len(chain) == len(mapping) - (len(chain) < len(mapping))
    assert [(m["author"]["role"], m["content"]["parts"][0]) for m in chain] == [
        ("user", "Hello there"),
        ("assistant", first["message"]),
        ("user", "And again"),
        ("assistant", second["message"]),
    ]
    assert [chain[1]["id"], chain[3]["id"]] == [first["parent_id"], second["parent_id"]]
    assert chain[3]["metadata"]["model_slug"] == "demo" and chain[3]["content"]["content_type"] == "text"
    assert all(isinstance(m["create_time"], float) and m["status"] == "finished_successfully" for m in chain)
    assert send(server, "GET", f"/conversations/{cid}/messages", key).json() == conv


# -- DELETE /conversations/<id>, DELETE /conversations/all --------------------------------------------------


def test_delete_one_answers_204_and_the_conversation_is_gone(server, user):
    key = user["api_key"]
    gone, kept = started(server, key, prompt="one"), started(server, key, prompt="two")
    answer = send(server, "DELETE", f"/conversations/{gone['conversation_id']}", key)
    assert answer.status_code == 204 and answer.content == b""
    after = send(server, "POST", f"/conversations/{gone['conversation_id']}/ask", key, data={"prompt": "still?"})
    assert after.status_code == 404 and set(after.json()) == {"error"}, after.text
    again = send(server, "DELETE", f"/conversations/{gone['conversation_id']}", key)
    assert again.status_code == 404 and "error" in again.json()
    left = server.get("/api/conversations", key).json()["conversations"]
    assert [c["conversation_id"] for c in left] == [kept["conversation_id"]]


def test_delete_all_answers_204_and_only_the_callers_go(server, admin, user):
    key, other = user["api_key"], server.create_user(admin, "bob")["api_key"]
    for prompt in ("one", "two"):
        started(server, key, prompt=prompt)
    theirs = started(server, other, prompt="bob's")
    answer = send(server, "DELETE", "/conversations/all", key)
    assert answer.status_code == 204 and answer.content == b""
    listed = send(server, "GET", "/conversations", key, params={"shape": "gajosu"})
    assert listed.status_code == 200 and listed.json() == []
    still = server.get("/api/conversations", other).json()["conversations"]
    assert [c["conversation_id"] for c in still] == [theirs["conversation_id"]]


def test_the_pages_under_conversations_still_work_for_a_browser(server, user):
    """/conversations and /conversations/delete stay pages for a browser (its delete-all form still
    removes); the DELETE routes below /conversations take only DELETE."""
    key = user["api_key"]
    started(server, key, prompt="one")
    browser = Browser(server).log_in(key)
    listing = browser.page("/conversations")
    assert listing.status == 200 and "text/html" in listing.headers["Content-Type"]
    confirm = browser.page("/conversations/delete")
    assert confirm.status == 200 and "text/html" in confirm.headers["Content-Type"]
    assert send(server, "GET", "/conversations/all", key).status_code == 405
    assert server.get("/api/conversations", key).json()["total"] == 1
    removed = browser.submit("/conversations/delete", {}, token=confirm.token)
    assert removed.status == 303, removed.text
    assert server.get("/api/conversations", key).json()["total"] == 0


# -- GET /conversations in its shape ----------------------------------------------------------------------


def test_the_list_is_a_plain_array_by_shape_or_by_the_users_record(server, admin, user):
    """GET /conversations?limit&offset: a JSON array of the web backend's items (limit default 10), for
    shape=gajosu or a user whose record says "shape": "gajosu"; others get go-chatgpt-api's object."""
    key = user["api_key"]
    ids = [started(server, key, prompt=f"turn {n}")["conversation_id"] for n in range(12)]
    newest_first = ids[::-1]
    whole = send(server, "GET", "/conversations", key, params={"shape": "gajosu"})
    assert whole.status_code == 200, whole.text
    assert isinstance(whole.json(), list) and [c["id"] for c in whole.json()] == newest_first[:10]
    assert {"id", "title", "create_time", "update_time"} <= set(whole.json()[0])
    page = send(server, "GET", "/conversations", key, params={"shape": "gajosu", "limit": 3, "offset": 2})
    assert [c["id"] for c in page.json()] == newest_first[2:5]
    unshaped = send(server, "GET", "/conversations", key)
    assert isinstance(unshaped.json(), dict) and "items" in unshaped.json()
    patched = server.call("PATCH", f"/api/users/{user['user_id']}", admin, json={"shape": "gajosu"})
    assert patched.status_code == 200 and patched.json()["shape"] == "gajosu"
    by_record = send(server, "GET", "/conversations", key, params={"limit": 2, "offset": 10})
    assert by_record.status_code == 200 and [c["id"] for c in by_record.json()] == newest_first[10:12]
    asked_otherwise = send(server, "GET", "/conversations", key, params={"shape": "default"})
    assert "items" in asked_otherwise.json()


# -- errors -----------------------------------------------------------------------------------------------


def test_a_missing_prompt_is_400_naming_it(server, user):
    cid = started(server, user["api_key"], prompt="hi")["conversation_id"]
    for path in ("/conversations/new", f"/conversations/{cid}/ask"):
        for form in ({}, {"prompt": ""}, {"title": "only a title"}):
            answer = send(server, "POST", path, user["api_key"], data=form)
            assert answer.status_code == 400 and answer.json() == {"error": "prompt is required"}, (path, form)
    assert len(stored(server, user["api_key"], cid)["messages"]) == 1


ROUTES = [
    ("POST", "/conversations/new", {"prompt": "hi"}),
    ("POST", "/conversations/{cid}/ask", {"prompt": "hi"}),
    ("GET", "/conversations/{cid}/messages", None),
    ("DELETE", "/conversations/{cid}", None),
    ("DELETE", "/conversations/all", None),
]


@pytest.mark.parametrize(("method", "path", "form"), ROUTES)
def test_no_key_and_a_bad_key_are_401(server, user, method, path, form):
    cid = started(server, user["api_key"], prompt="hi")["conversation_id"]
    where = path.format(cid=cid)
    for key, says in ((None, "no API key"), ("cas-nobody-has-this-key", "unknown API key")):
        answer = send(server, method, where, key, data=form)
        assert answer.status_code == 401, answer.text
        assert set(answer.json()) == {"error"} and says in answer.json()["error"]
    assert len(stored(server, user["api_key"], cid)["messages"]) == 1  # nothing was asked or removed


@pytest.mark.parametrize(("method", "path", "form"), ROUTES[1:4])
def test_someone_elses_conversation_is_404(server, admin, user, method, path, form):
    cid = started(server, user["api_key"], prompt="hi")["conversation_id"]
    stranger = server.create_user(admin, "mallory")["api_key"]
    answer = send(server, method, path.format(cid=cid), stranger, data=form)
    assert answer.status_code == 404, answer.text
    assert set(answer.json()) == {"error"} and cid in answer.json()["error"]
    unknown = send(server, method, path.format(cid="no-such-conversation"), user["api_key"], data=form)
    assert unknown.status_code == 404 and set(unknown.json()) == {"error"}
    assert len(stored(server, user["api_key"], cid)["messages"]) == 1


def test_over_a_limit_is_429_with_retry_after(server, admin, user):
    limited = server.call("PATCH", f"/api/users/{user['user_id']}", admin, json={"limits": {"requests_per_minute": 1}})
    assert limited.status_code == 200, limited.text
    started(server, user["api_key"], prompt="one")
    answer = new(server, user["api_key"], prompt="two")
    assert answer.status_code == 429, answer.text
    assert set(answer.json()) == {"error"} and int(answer.headers["Retry-After"]) >= 1
