"""linweiyuan/go-chatgpt-api's routes over real HTTP, sent as its users sent them: `Authorization: KEY` (no
Bearer), the ChatGPT web backend's JSON bodies, its event stream read line by line, and its
`{"errorMessage": ...}` errors."""

from __future__ import annotations

import json
import sqlite3
import uuid

import pytest
import requests
from conftest import start_server
from fakes.raw_sse import RawSSE
from sqlalchemy import text as sql
from test_web_pages import Browser
from upstream_fixtures import openai_account

WEB_MODEL = "text-davinci-002-render-sha"  # what the web backend's clients send; not served here


@pytest.fixture
def server(make_server, request):
    """A demo server; on PostgreSQL too for the tests that ask for `database` (tests/pg.py)."""
    database = request.getfixturevalue("database") if "database" in request.fixturenames else {}
    return make_server(**database)


def go(server, method: str, path: str, key: str | None = None, **kwargs) -> requests.Response:
    """One request as go-chatgpt-api's clients send it: the key alone in the Authorization header."""
    headers = kwargs.pop("headers", {})
    if key is not None:
        headers["Authorization"] = key
    kwargs.setdefault("timeout", 30)
    return server.session.request(method, server.url + path, headers=headers, **kwargs)


def backend_body(prompt: str, conversation_id: str | None = None, parent: str | None = None, **extra) -> dict:
    """The web backend's POST /conversation body."""
    return {
        "action": "next",
        "messages": [
            {
                "id": str(uuid.uuid4()),
                "author": {"role": "user"},
                "content": {"content_type": "text", "parts": [prompt]},
            }
        ],
        "model": WEB_MODEL,
        "parent_message_id": parent or str(uuid.uuid4()),
        "conversation_id": conversation_id,
        "timezone_offset_min": -120,
        "history_and_training_disabled": False,
        **extra,
    }


def read_events(response: requests.Response) -> list:
    """The `data:` payloads of an event stream, in order: dicts, and the closing "[DONE]"."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def ask(server, key: str, prompt: str, **kwargs) -> tuple[list, dict]:
    """POST /conversation and read its stream; return the events and the last message event."""
    response = go(server, "POST", "/conversation", key, json=backend_body(prompt, **kwargs), stream=True)
    events = read_events(response)
    assert events[-1] == "[DONE]" and isinstance(events[-2], dict), events[-3:]
    return events, events[-2]


def stored(server, user: dict, conversation_id: str) -> dict:
    response = server.get(f"/api/conversations/{conversation_id}", user["api_key"])
    assert response.status_code == 200, response.text
    return response.json()


# -- asking -----------------------------------------------------------------------------------


def test_a_new_conversation_streams_the_cumulative_text_then_done(server, user):
    """Each event holds the whole text so far, in_progress until the last, which is finished_successfully;
    every event has the stored message id and conversation id; then `data: [DONE]`."""
    events, final = ask(server, user["api_key"], "Hello there")
    progress = events[:-2]
    assert len(progress) >= 3 and all(e["message"]["status"] == "in_progress" for e in progress)
    texts = [e["message"]["content"]["parts"][0] for e in events[:-1]]
    assert all(later.startswith(earlier) and later != earlier for earlier, later in zip(texts, texts[1:], strict=False))
    message = final["message"]
    assert message["status"] == "finished_successfully" and message["end_turn"] is True
    assert message["author"] == {"role": "assistant", "name": None, "metadata": {}}
    assert message["content"]["content_type"] == "text" and message["weight"] == 1.0
    assert message["recipient"] == "all" and final["error"] is None
    assert message["metadata"]["model_slug"] == "demo"
    assert message["metadata"]["finish_details"] == {"type": "stop"}
    conv = stored(server, user, final["conversation_id"])
    [turn] = conv["messages"]
    assert turn["message_id"] == message["id"] and turn["prompt"] == "Hello there"
    assert message["content"]["parts"] == [turn["reply"]] and "You said: Hello there" in turn["reply"]
    # every event, from the first, says the ids the turn is stored under
    assert {(e["message"]["id"], e["conversation_id"]) for e in events[:-1]} == {
        (turn["message_id"], conv["conversation_id"])
    }


def test_a_follow_up_continues_the_conversation(server, user):
    """conversation_id and parent_message_id (the last event's message id) continue the same conversation."""
    _, first = ask(server, user["api_key"], "First question")
    cid, parent = first["conversation_id"], first["message"]["id"]
    events, second = ask(server, user["api_key"], "Second question", conversation_id=cid, parent=parent)
    assert second["conversation_id"] == cid
    assert all(e["conversation_id"] == cid for e in events[:-1])  # known from the first event on
    assert "1 earlier turn." in second["message"]["content"]["parts"][0]  # the history went with it
    conv = stored(server, user, cid)
    assert [m["prompt"] for m in conv["messages"]] == ["First question", "Second question"]
    assert [m["message_id"] for m in conv["messages"]] == [parent, second["message"]["id"]]
    assert conv["messages"][1]["parent_id"] == parent


def test_the_model_is_passed_only_when_it_is_served_here(make_server, admin, openai_fake):
    """A model this server lists goes to the account serving it (every time, where the default would take
    turns between the accounts); the web backend's own names, not served here, take the default instead of
    failing."""
    server = make_server([{"name": "demo", "type": "demo"}, openai_account(openai_fake, name="oa", model="gpt-x")])
    key = server.create_user(admin, "bob")["api_key"]
    for n in range(3):
        _, served = ask(server, key, f"Which model? {n}", model="gpt-x")
        assert served["message"]["metadata"]["model_slug"] == "gpt-x"
    assert [c["body"]["model"] for c in openai_fake.chats()] == ["gpt-x"] * 3
    slugs = {ask(server, key, f"And now? {n}")[1]["message"]["metadata"]["model_slug"] for n in range(2)}
    assert slugs == {"demo", "gpt-x"}  # model text-davinci-002-render-sha: the default, round robin
    unknown = server.post("/api/chat", key, json={"prompt": "hi", "model": WEB_MODEL})
    assert unknown.status_code in (400, 404)  # passed through, the same name would have been refused


def test_an_upstream_failing_before_any_text_is_a_json_error(make_server, admin, openai_fake):
    """Before the stream starts, a failure is the status with {"errorMessage": ...}, not a 200 stream."""
    server = make_server([openai_account(openai_fake)])
    key = server.create_user(admin, "bob")["api_key"]
    openai_fake.fail_status, openai_fake.fail_message = 500, "upstream exploded"
    response = go(server, "POST", "/conversation", key, json=backend_body("hello"))
    assert response.status_code == 502 and response.headers["Content-Type"].startswith("application/json")
    assert set(response.json()) == {"errorMessage"} and "500" in response.json()["errorMessage"]
    assert server.get("/api/conversations", key).json()["total"] == 0


def test_an_upstream_failing_mid_stream_ends_with_an_error_event_then_done(make_server, admin):
    """After the first byte, a failure is a last event with "error" set (and the text so far), then [DONE]."""
    chunk = json.dumps({"id": "chatcmpl-raw", "choices": [{"index": 0, "delta": {"content": "half a"}}]})
    with RawSSE([chunk], done=False) as raw:
        server = make_server([openai_account(raw)])
        key = server.create_user(admin, "bob")["api_key"]
        response = go(server, "POST", "/conversation", key, json=backend_body("hello"), stream=True)
        events = read_events(response)
    assert events[-1] == "[DONE]"
    failed = events[-2]
    assert isinstance(failed["error"], str) and failed["error"]
    assert failed["message"]["content"]["parts"] == ["half a"]
    assert failed["message"]["status"] != "finished_successfully"
    assert all(e["error"] is None for e in events[:-2])
    assert server.get("/api/conversations", key).json()["total"] == 0  # a failed turn is not kept


def test_turns_are_in_the_usage_ledger_as_go_chatgpt_api(server, user):
    """A turn through POST /conversation is recorded with front "go-chatgpt-api"."""
    ask(server, user["api_key"], "Count me")
    server.chat(user["api_key"], "And me, through /api/chat")
    server.services.usage.usage.flush()
    with server.services.store.engine.connect() as db:
        query = sql("SELECT front FROM usage_ledger WHERE user_id = :u ORDER BY at")
        fronts = [row[0] for row in db.execute(query, {"u": user["user_id"]})]
    assert fronts == ["go-chatgpt-api", "api"]


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"action": "variant"}, "action", 'action "variant" is not supported'),
        ({"action": "continue"}, "action", 'action "continue" is not supported'),
        ({"action": "jump"}, "action", 'action must be "next"'),
        ({"messages": None}, "messages", "messages is required"),
        ({"messages": []}, "messages", "messages is required"),
        ({"messages": "hello"}, "messages", "messages is required"),
        ({"messages": ["hello"]}, "messages[0]", "messages[0] must be an object"),
        ({"author": {"role": "assistant"}}, "messages[0].author.role", 'author.role must be "user"'),
        ({"author": None}, "messages[0].author.role", 'author.role must be "user"'),
        ({"content": "hello"}, "messages[0].content", "content must be an object"),
        ({"content": {"content_type": "image", "parts": ["x"]}}, "content_type", 'content_type must be "text"'),
        ({"content": {"content_type": "text", "parts": "hello"}}, "parts", "parts must be a list of strings"),
        ({"content": {"content_type": "text", "parts": [1]}}, "parts", "parts must be a list of strings"),
        ({"content": {"content_type": "text", "parts": ["  "]}}, "parts", "parts holds no text"),
        ({"id": 5}, "messages[0].id", "messages[0].id must be a string"),
        ({"conversation_id": 12}, "conversation_id", "conversation_id must be a string"),
        ({"parent_message_id": ["x"]}, "parent_message_id", "parent_message_id must be a string"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_a_bad_body_is_400_naming_the_field(server, user, change, param, words):
    body, change = backend_body("hello"), dict(change)
    message = body["messages"][0]
    for name in ("author", "content", "id"):
        if name in change:
            message[name] = change.pop(name)
    body.update(change)
    response = go(server, "POST", "/conversation", user["api_key"], json=body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"errorMessage"}
    assert words in response.json()["errorMessage"] and param in response.json()["errorMessage"]
    assert server.get("/api/conversations", user["api_key"]).json()["total"] == 0


def test_a_prompt_over_the_limit_and_invalid_json_are_400(make_server, admin):
    server = make_server(max_prompt_chars=10)
    key = server.create_user(admin, "bob")["api_key"]
    long = go(server, "POST", "/conversation", key, json=backend_body("x" * 11))
    assert long.status_code == 400 and "longer than 10 characters" in long.json()["errorMessage"]
    broken = go(server, "POST", "/conversation", key, data="{", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["errorMessage"]


# -- reading, renaming, removing ---------------------------------------------------------------


def test_the_conversation_in_the_web_backends_shape(server, user):
    """GET /conversation/<id>: a user node (<message_id>-prompt) and an assistant node (<message_id>) per
    turn, linked parent to child, current_node the last reply, epoch-second times."""
    _, first = ask(server, user["api_key"], "One")
    cid = first["conversation_id"]
    _, second = ask(server, user["api_key"], "Two", conversation_id=cid, parent=first["message"]["id"])
    a, b = first["message"]["id"], second["message"]["id"]
    response = go(server, "GET", f"/conversation/{cid}", user["api_key"])
    assert response.status_code == 200, response.text
    conv = response.json()
    assert set(conv) == {
        "title",
        "create_time",
        "update_time",
        "mapping",
        "moderation_results",
        "current_node",
        "conversation_id",
    }
    assert conv["conversation_id"] == cid and conv["title"] == "One" and conv["moderation_results"] == []
    assert isinstance(conv["create_time"], float) and conv["update_time"] >= conv["create_time"]
    assert conv["current_node"] == b
    mapping = conv["mapping"]
    assert list(mapping) == [f"{a}-prompt", a, f"{b}-prompt", b]
    chain = [(n["parent"], n["children"]) for n in mapping.values()]
    assert chain == [(None, [a]), (f"{a}-prompt", [f"{b}-prompt"]), (a, [b]), (f"{b}-prompt", [])]
    assert all(node["id"] == node["message"]["id"] == node_id for node_id, node in mapping.items())
    asked, answered = mapping[f"{b}-prompt"]["message"], mapping[b]["message"]
    assert asked["author"]["role"] == "user" and asked["content"] == {"content_type": "text", "parts": ["Two"]}
    assert answered["author"]["role"] == "assistant" and answered["status"] == "finished_successfully"
    assert answered["content"]["parts"] == second["message"]["content"]["parts"]
    assert answered["metadata"]["model_slug"] == "demo" and answered["metadata"]["rating"] is None
    assert isinstance(asked["create_time"], float) and answered["create_time"] >= asked["create_time"]


def test_list_pages_with_offset_and_limit(server, user):
    """GET /conversations?offset&limit: the newest first, {items, total, limit, offset}; limit is 1-100."""
    ids = [ask(server, user["api_key"], f"Conversation {n}")[1]["conversation_id"] for n in range(3)]
    first = go(server, "GET", "/conversations?offset=0&limit=2", user["api_key"])
    assert first.status_code == 200, first.text
    page = first.json()
    assert (page["total"], page["limit"], page["offset"], page["has_missing_conversations"]) == (3, 2, 0, False)
    assert [i["id"] for i in page["items"]] == [ids[2], ids[1]]
    assert page["items"][0]["title"] == "Conversation 2" and page["items"][0]["mapping"] is None
    rest = go(server, "GET", "/conversations", user["api_key"], params={"offset": 2, "limit": 2}).json()
    assert [i["id"] for i in rest["items"]] == [ids[0]] and rest["offset"] == 2
    assert len(go(server, "GET", "/conversations", user["api_key"]).json()["items"]) == 3  # default limit 20
    for limit in ("0", "101", "-1"):
        refused = go(server, "GET", f"/conversations?limit={limit}", user["api_key"])
        assert refused.status_code == 400 and refused.json() == {"errorMessage": "limit must be between 1 and 100"}
    word = go(server, "GET", "/conversations?offset=two", user["api_key"])
    assert word.status_code == 400 and "offset" in word.json()["errorMessage"]


def test_rename_hide_and_hide_all(server, user):
    """PATCH {title} renames, PATCH {is_visible: false} removes one, PATCH /conversations removes all:
    each answered {"success": true}; any other change is a 400 naming the field."""
    key = user["api_key"]
    keep, hide, other = (ask(server, key, p)[1]["conversation_id"] for p in ("Keep", "Hide", "Other"))
    renamed = go(server, "PATCH", f"/conversation/{keep}", key, json={"title": "  A   new title "})
    assert renamed.status_code == 200 and renamed.json() == {"success": True}
    assert go(server, "GET", f"/conversation/{keep}", key).json()["title"] == "A new title"
    for body, field in (
        ({"is_archived": True}, "is_archived"),
        ({"is_visible": True}, "is_visible"),
        ({"title": ""}, "title"),
        ({"title": 5}, "title"),
        ({}, "title"),
    ):
        refused = go(server, "PATCH", f"/conversation/{keep}", key, json=body)
        assert refused.status_code == 400 and field in refused.json()["errorMessage"], (body, refused.text)
    hidden = go(server, "PATCH", f"/conversation/{hide}", key, json={"is_visible": False})
    assert hidden.status_code == 200 and hidden.json() == {"success": True}
    gone = go(server, "GET", f"/conversation/{hide}", key)
    assert gone.status_code == 404 and set(gone.json()) == {"errorMessage"}
    assert {i["id"] for i in go(server, "GET", "/conversations", key).json()["items"]} == {keep, other}
    refused = go(server, "PATCH", "/conversations", key, json={"is_visible": True})
    assert refused.status_code == 400 and "is_visible" in refused.json()["errorMessage"]
    everything = go(server, "PATCH", "/conversations", key, json={"is_visible": False})
    assert everything.status_code == 200 and everything.json() == {"success": True}
    assert go(server, "GET", "/conversations", key).json()["total"] == 0


def test_gen_title_answers_the_conversations_title(server, user):
    """POST /conversation/gen_title/<id> {message_id, model}: {"title": ...}, made from the first prompt."""
    key = user["api_key"]
    _, final = ask(server, key, "How do   tides\nwork?")
    cid, mid = final["conversation_id"], final["message"]["id"]
    titled = go(server, "POST", f"/conversation/gen_title/{cid}", key, json={"message_id": mid, "model": WEB_MODEL})
    assert titled.status_code == 200 and titled.json() == {"title": "How do tides work?"}
    go(server, "PATCH", f"/conversation/{cid}", key, json={"title": "Tides"})
    assert go(server, "POST", f"/conversation/gen_title/{cid}", key, json={"message_id": mid}).json() == {
        "title": "Tides"
    }
    bad = go(server, "POST", f"/conversation/gen_title/{cid}", key, json={"message_id": 7})
    assert bad.status_code == 400 and "message_id" in bad.json()["errorMessage"]


# -- ratings ------------------------------------------------------------------------------------


def feedback_rows(server) -> int:
    with server.services.store.engine.connect() as db:
        return db.execute(sql("SELECT count(*) FROM message_feedback")).scalar_one()


def rate(server, key: str, cid: str, mid: str, rating) -> requests.Response:
    body = {"message_id": mid, "conversation_id": cid, "rating": rating}
    return go(server, "POST", "/conversation/message_feedback", key, json=body)


def test_feedback_is_kept_and_shown_in_the_api_the_backend_shape_and_the_page(server, user, database):
    """A rating comes back as the backend answers it, and shows in /api/conversations/<id>, in
    GET /conversation/<id>'s metadata and on the chat page; a second rating replaces the first."""
    key = user["api_key"]
    _, first = ask(server, key, "Rate this")
    cid, a = first["conversation_id"], first["message"]["id"]
    _, second = ask(server, key, "And this", conversation_id=cid, parent=a)
    b = second["message"]["id"]
    browser = Browser(server).log_in(key)
    assert "Rated" not in browser.page(f"/chat/{cid}").text
    answer = rate(server, key, cid, a, "thumbsUp")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "message_id": a,
        "conversation_id": cid,
        "user_id": user["user_id"],
        "rating": "thumbsUp",
        "content": "{}",
    }
    assert [m["rating"] for m in stored(server, user, cid)["messages"]] == ["thumbsUp", None]
    assert rate(server, key, cid, b, "thumbsDown").status_code == 200
    assert rate(server, key, cid, a, "thumbsDown").status_code == 200  # changed its mind
    assert [m["rating"] for m in stored(server, user, cid)["messages"]] == ["thumbsDown", "thumbsDown"]
    rate(server, key, cid, a, "thumbsUp")
    mapping = go(server, "GET", f"/conversation/{cid}", key).json()["mapping"]
    assert (mapping[a]["message"]["metadata"]["rating"], mapping[b]["message"]["metadata"]["rating"]) == (
        "thumbsUp",
        "thumbsDown",
    )
    assert "rating" not in mapping[f"{a}-prompt"]["message"]["metadata"]
    page = browser.page(f"/chat/{cid}")
    assert page.status == 200
    turns = page.doc.find_all("li", cls="turn")
    ratings = [" ".join(t.find("p", cls="rating").text.split()) for t in turns]
    assert ratings == ["Rated 👍", "Rated 👎"]
    assert turns[0].find("span", role="img").attrs["aria-label"] == "thumbs up"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"rating": "thumbsSideways"}, "rating must be one of thumbsUp, thumbsDown"),
        ({"rating": None}, "rating is required"),
        ({"rating": 1}, "rating must be a string, not a number"),
        ({"message_id": None}, "message_id is required"),
        ({"conversation_id": None}, "conversation_id is required"),
    ],
    ids=["unknown rating", "no rating", "number", "no message_id", "no conversation_id"],
)
def test_bad_feedback_is_400(server, user, change, words):
    _, final = ask(server, user["api_key"], "Rate me")
    body = {"message_id": final["message"]["id"], "conversation_id": final["conversation_id"], "rating": "thumbsUp"}
    body.update(change)
    response = go(server, "POST", "/conversation/message_feedback", user["api_key"], json=body)
    assert response.status_code == 400 and response.json() == {"errorMessage": words}
    assert feedback_rows(server) == 0


def test_feedback_names_a_message_of_that_conversation(server, user, database):
    """A message id from another conversation, or none at all, is a 404; nothing is kept."""
    key = user["api_key"]
    one = ask(server, key, "One")[1]
    two = ask(server, key, "Two")[1]
    crossed = rate(server, key, one["conversation_id"], two["message"]["id"], "thumbsUp")
    assert crossed.status_code == 404 and "no message" in crossed.json()["errorMessage"]
    made_up = rate(server, key, one["conversation_id"], "not-a-message", "thumbsUp")
    assert made_up.status_code == 404
    prompt_node = rate(server, key, one["conversation_id"], one["message"]["id"] + "-prompt", "thumbsUp")
    assert prompt_node.status_code == 404
    assert feedback_rows(server) == 0


def test_feedback_goes_with_its_conversation_and_its_user(server, admin, user, database):
    """Removing a rated conversation (one, all, or its user) works and takes its ratings along."""
    key = user["api_key"]
    finals = [ask(server, key, p)[1] for p in ("A", "B", "C")]
    for final in finals:
        assert rate(server, key, final["conversation_id"], final["message"]["id"], "thumbsUp").status_code == 200
    assert feedback_rows(server) == 3
    go(server, "PATCH", f"/conversation/{finals[0]['conversation_id']}", key, json={"is_visible": False})
    assert feedback_rows(server) == 2
    assert server.call("DELETE", f"/api/conversations/{finals[1]['conversation_id']}", key).status_code == 200
    assert feedback_rows(server) == 1
    bob = server.create_user(admin, "bob")
    final = ask(server, bob["api_key"], "Bob's")[1]
    rate(server, bob["api_key"], final["conversation_id"], final["message"]["id"], "thumbsDown")
    assert server.call("DELETE", f"/api/users/{user['user_id']}", admin).status_code == 200
    assert feedback_rows(server) == 1  # alice's went with her; bob's stays
    assert go(server, "PATCH", "/conversations", bob["api_key"], json={"is_visible": False}).status_code == 200
    assert feedback_rows(server) == 0


def test_a_database_from_before_ratings_keeps_working(make_server, admin, tmp_path):
    """A conversations.db made before message_feedback existed (and before migrations: no alembic_version)
    gets the table at start-up, nothing else changes."""
    server = start_server(tmp_path)
    try:
        user = server.create_user(admin, "bob")
        final = ask(server, user["api_key"], "Old conversation")[1]
    finally:
        server.stop()
    with sqlite3.connect(tmp_path / "conversations.db") as db:
        db.execute("DROP TABLE message_feedback")
        db.execute("DROP TABLE alembic_version")
    again = make_server()
    cid, mid = final["conversation_id"], final["message"]["id"]
    assert stored(again, user, cid)["messages"][0]["rating"] is None
    assert rate(again, user["api_key"], cid, mid, "thumbsUp").status_code == 200
    assert stored(again, user, cid)["messages"][0]["rating"] == "thumbsUp"


# -- who may -------------------------------------------------------------------------------------


def each_route(cid: str, mid: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", "/conversations", None),
        ("PATCH", "/conversations", {"is_visible": False}),
        ("GET", f"/conversation/{cid}", None),
        ("PATCH", f"/conversation/{cid}", {"title": "Mine now"}),
        ("PATCH", f"/conversation/{cid}", {"is_visible": False}),
        ("POST", "/conversation", backend_body("hello", conversation_id=cid, parent=mid)),
        ("POST", f"/conversation/gen_title/{cid}", {"message_id": mid}),
        ("POST", "/conversation/message_feedback", {"message_id": mid, "conversation_id": cid, "rating": "thumbsUp"}),
    ]


def test_no_key_and_a_bad_key_are_401_on_every_route(server, user):
    _, final = ask(server, user["api_key"], "Private")
    for method, path, body in each_route(final["conversation_id"], final["message"]["id"]):
        for key in (None, "cas-nobody-has-this-key"):
            headers = {"Accept": "application/json"}
            response = go(server, method, path, key, json=body, headers=headers)
            assert response.status_code == 401, (method, path, key, response.text)
            assert set(response.json()) == {"errorMessage"}, response.text
    assert [m["prompt"] for m in stored(server, user, final["conversation_id"])["messages"]] == ["Private"]
    assert feedback_rows(server) == 0


def test_someone_elses_conversation_is_404_on_every_route(server, admin, user):
    _, final = ask(server, user["api_key"], "Alice's")
    cid, mid = final["conversation_id"], final["message"]["id"]
    mallory = server.create_user(admin, "mallory")["api_key"]
    for method, path, body in each_route(cid, mid):
        if "/conversations" in path:
            continue  # the list is one's own: nothing of alice's to see or remove
        response = go(server, method, path, mallory, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json() == {"errorMessage": f"no conversation {cid!r}"}
    conv = stored(server, user, cid)
    assert conv["title"] == "Alice's" and len(conv["messages"]) == 1 and conv["messages"][0]["rating"] is None
    unknown = go(server, "GET", "/conversation/no-such-id", user["api_key"])
    assert unknown.status_code == 404 and unknown.json() == {"errorMessage": "no conversation 'no-such-id'"}
    assert go(server, "GET", "/conversations", mallory).json()["total"] == 0


def test_a_browser_gets_the_page_and_a_program_the_json(server, user):
    """GET /conversations from a browser (no Authorization, asking for HTML) is the page; with the key
    in Authorization it is the web backend's list."""
    ask(server, user["api_key"], "On both")
    browser = Browser(server).log_in(user["api_key"])
    page = browser.page("/conversations", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status == 200 and page.is_html and "On both" in page.text
    anonymous = Browser(server).page("/conversations", headers={"Accept": "text/html"})
    assert anonymous.status == 303  # the page sends a browser that is not logged in to log in
    program = go(server, "GET", "/conversations", user["api_key"], headers={"Accept": "text/html"})
    assert program.status_code == 200 and program.headers["Content-Type"].startswith("application/json")
    assert [i["title"] for i in program.json()["items"]] == ["On both"]
