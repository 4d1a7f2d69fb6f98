"""Bad input on every /api route answers the right JSON error, never a 500 and never an error with 200."""

from __future__ import annotations

import json
import logging
from urllib.parse import urlencode

import pytest
from conftest import ADMIN_KEY, start_server

MAX_PROMPT, MAX_BODY = 50, 4096


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """One server (small prompt and body limits) with a user, a client, a conversation and a taken id."""
    tmp = tmp_path_factory.mktemp("bad-input")
    server = start_server(tmp, max_prompt_chars=MAX_PROMPT, max_body_bytes=MAX_BODY)
    user = server.create_user(ADMIN_KEY, "alice")
    client = server.create_user(ADMIN_KEY, "bot", role="client")
    server.create_user(ADMIN_KEY, "taken", user_id="taken")
    conversation = server.chat(user["api_key"], "hello")
    yield {
        "server": server,
        "keys": {"admin": ADMIN_KEY, "user": user["api_key"], "client": client["api_key"], "bad": "cas-not-a-key"},
        "fill": {"cid": conversation["conversation_id"], "uid": user["user_id"]},
    }
    server.stop()


def fill(world, text: str) -> str:
    """Put the real conversation and user ids in place of {cid} and {uid}."""
    return text.replace("{cid}", world["fill"]["cid"]).replace("{uid}", world["fill"]["uid"])


def send(world, who, method, path, how, params):
    """Send params as query, form, JSON, raw JSON text or a chunked JSON/form body, with who's key (or none)."""
    path = fill(world, path)
    if isinstance(params, dict):
        params = {k: fill(world, v) if isinstance(v, str) else v for k, v in params.items()}
    kwargs = {"params": params} if how == "query" else {"data": params} if how in ("form", "raw") else {"json": params}
    if how == "raw":
        kwargs["headers"] = {"Content-Type": "application/json"}
    if how.startswith("chunked"):  # no Content-Length: the limit must hold while the body streams in
        form = how == "chunked-form"
        raw = (urlencode(params) if form else json.dumps(params)).encode()
        kind = "application/x-www-form-urlencoded" if form else "application/json"
        kwargs = {
            "data": iter([raw[i : i + 1024] for i in range(0, len(raw), 1024)]),
            "headers": {"Content-Type": kind},
        }
    return world["server"].call(method, path, world["keys"].get(who), **kwargs)


def assert_error(response, status: int, param: str | None = None) -> dict:
    """Assert the exact status and the JSON error body; a 400 names its parameter in the message."""
    assert response.status_code == status, f"{response.status_code}: {response.text[:300]}"
    assert response.headers.get("Content-Type", "").startswith("application/json"), response.text[:200]
    body = response.json()
    assert body["status"] == "error"
    assert isinstance(body["code"], str) and body["code"]
    assert isinstance(body["message"], str) and body["message"]
    if param:
        assert body.get("param") == param, body
        if status == 400:
            assert param in body["message"], body
    return body


def case(name, who, method, path, how, params, status, param=None):
    """One row of the table: who sends what how, and the error it must answer."""
    return pytest.param(who, method, path, how, params, status, param, id=name)


HI, CID = {"prompt": "hi"}, "conversation_id"
CHAT, CONVS, CONV = "/api/chat", "/api/conversations", "/api/conversations/{cid}"
USERS, ADD_USER = "/api/users", "/api/client/add-user"
CASES = [
    # /api/chat parameters
    case("missing prompt", "user", "POST", CHAT, "json", {}, 400, "prompt"),
    case("empty prompt", "user", "GET", CHAT, "query", {"prompt": ""}, 400, "prompt"),
    case("blank prompt", "user", "POST", CHAT, "form", {"prompt": "   "}, 400, "prompt"),
    case("prompt too long", "user", "POST", CHAT, "json", {"prompt": "x" * (MAX_PROMPT + 1)}, 400, "prompt"),
    case("prompt object", "user", "POST", CHAT, "json", {"prompt": {"a": 1}}, 400, "prompt"),
    case("prompt list", "user", "POST", CHAT, "json", {"prompt": ["hi"]}, 400, "prompt"),
    case("prompt boolean", "user", "POST", CHAT, "json", {"prompt": True}, 400, "prompt"),
    case("prompt lone surrogate", "user", "POST", CHAT, "raw", '{"prompt": "\\ud800"}', 400, "prompt"),
    case("plus maybe", "user", "GET", CHAT, "query", {**HI, "plus": "maybe"}, 400, "plus"),
    case("plus list", "user", "POST", CHAT, "json", {**HI, "plus": [True]}, 400, "plus"),
    case("reply_only perhaps", "user", "GET", CHAT, "query", {**HI, "reply_only": "perhaps"}, 400, "reply_only"),
    case("reply_only 2", "user", "POST", CHAT, "json", {**HI, "reply_only": 2}, 400, "reply_only"),
    case("pretty object", "user", "POST", CHAT, "json", {**HI, "pretty": {}}, 400, "pretty"),
    case("conversation_id object", "user", "POST", CHAT, "json", {**HI, CID: {}}, 400, CID),
    case("conversation_id too long", "user", "GET", CHAT, "query", {**HI, CID: "c" * 65}, 400, CID),
    case("access_token list", "user", "POST", CHAT, "json", {**HI, "access_token": ["t"]}, 400, "access_token"),
    case("user_plus alone", "user", "POST", CHAT, "json", {**HI, "user_plus": True}, 400, "user_plus"),
    case("unknown conversation", "user", "POST", CHAT, "json", {**HI, CID: "nope"}, 404, CID),
    case("plus for a plain user", "user", "POST", CHAT, "json", {**HI, "plus": "true"}, 403, "plus"),
    case("user passes user_id", "user", "POST", CHAT, "json", {**HI, "user_id": "admin"}, 403, "user_id"),
    case("admin chats as a user", "admin", "POST", CHAT, "json", {**HI, "user_id": "{uid}"}, 403),
    case("client user_id spaces", "client", "POST", CHAT, "json", {**HI, "user_id": "a b"}, 400, "user_id"),
    case("client grants plus", "client", "POST", CHAT, "json", {**HI, "user_id": "p", "user_id_plus": 1}, 403),
    # bodies
    case("json array body", "user", "POST", CHAT, "raw", '["hi"]', 400),
    case("json string body", "user", "POST", USERS, "raw", '"hi"', 400),
    case("invalid json body", "user", "POST", CHAT, "raw", '{"prompt": ', 400),
    case("invalid json on patch", "user", "PATCH", CONV, "raw", "{title}", 400),
    case("body over limit json", "user", "POST", CHAT, "json", {"prompt": "x" * MAX_BODY}, 413),
    case("body over limit form", "admin", "POST", USERS, "form", {"username": "x" * MAX_BODY}, 413),
    case("chunked body over limit json", "user", "POST", CHAT, "chunked", {"prompt": "x" * MAX_BODY}, 413),
    case("chunked body over limit form", "user", "POST", CHAT, "chunked-form", {"prompt": "x" * MAX_BODY}, 413),
    case("body over limit patch", "user", "PATCH", CONV, "json", {"title": "x" * MAX_BODY}, 413),
    # listing and conversations
    case("limit 0", "user", "GET", CONVS, "query", {"limit": "0"}, 400, "limit"),
    case("limit 101", "user", "GET", CONVS, "query", {"limit": "101"}, 400, "limit"),
    case("limit abc", "user", "GET", CONVS, "query", {"limit": "abc"}, 400, "limit"),
    case("limit boolean", "user", "POST", CONVS, "json", {"limit": True}, 400, "limit"),
    case("limit Infinity", "user", "POST", CONVS, "raw", '{"limit": Infinity}', 400, "limit"),
    case("offset -1", "user", "GET", CONVS, "query", {"offset": "-1"}, 400, "offset"),
    case("offset 1e999", "user", "POST", CONVS, "raw", '{"offset": 1e999}', 400, "offset"),
    case("offset huge", "user", "GET", CONVS, "query", {"offset": "9" * 30}, 400, "offset"),
    case("get unknown conversation", "user", "GET", "/api/conversations/nope", "query", {}, 404, CID),
    case("rename unknown", "user", "PATCH", "/api/conversations/nope", "json", {"title": "t"}, 404, CID),
    case("delete unknown", "user", "DELETE", "/api/conversations/nope", "json", None, 404, CID),
    case("title empty", "user", "PATCH", CONV, "json", {"title": ""}, 400, "title"),
    case("title blank by POST", "user", "POST", CONV, "form", {"title": "  "}, 400, "title"),
    case("title missing", "user", "PATCH", CONV, "json", {}, 400, "title"),
    case("title object", "user", "PATCH", CONV, "json", {"title": {"a": 1}}, 400, "title"),
    case("title lone surrogate", "user", "PATCH", CONV, "raw", '{"title": "\\udfff"}', 400, "title"),
    case("title too long", "user", "PATCH", CONV, "json", {"title": "t" * 201}, 400, "title"),
    case("title far too long", "user", "PATCH", CONV, "json", {"title": "t" * 1001}, 400, "title"),
    case("admin deletes a user's", "admin", "DELETE", CONV, "json", None, 403),
    case("admin lists unknown user", "admin", "GET", CONVS, "query", {"user_id": "nobody"}, 404, "user_id"),
    case("client lists unknown user", "client", "GET", CONVS, "query", {"user_id": "nobody"}, 404, "user_id"),
    # users
    case("unknown user get", "admin", "GET", "/api/users/nobody", "query", {}, 404, "user_id"),
    case("unknown user delete", "admin", "DELETE", "/api/users/nobody", "json", None, 404, "user_id"),
    case("unknown user rotate", "admin", "POST", "/api/users/nobody/key", "json", None, 404, "user_id"),
    case("bad role", "admin", "POST", USERS, "json", {"username": "x", "role": "root"}, 400, "role"),
    case("missing username", "admin", "POST", USERS, "json", {"role": "user"}, 400, "username"),
    case("username object", "admin", "POST", USERS, "json", {"username": {"a": 1}}, 400, "username"),
    case("username too long", "admin", "POST", USERS, "form", {"username": "u" * 65}, 400, "username"),
    case("user_id with spaces", "admin", "POST", USERS, "json", {"username": "x", "user_id": "a b"}, 400, "user_id"),
    case("plus maybe on create", "admin", "POST", USERS, "json", {"username": "x", "plus": "maybe"}, 400, "plus"),
    case("duplicate user_id", "admin", "POST", USERS, "json", {"username": "x", "user_id": "taken"}, 409),
    case("last admin", "admin", "DELETE", "/api/users/admin", "json", None, 409),
    case("user lists users", "user", "GET", USERS, "query", {}, 403),
    case("user creates a user", "user", "POST", USERS, "json", {"username": "x"}, 403),
    case("user reads another user", "user", "GET", "/api/users/admin", "query", {}, 403),
    case("client creates an admin", "client", "POST", USERS, "json", {"username": "x", "role": "admin"}, 403, "role"),
    case("client reads a stranger", "client", "GET", "/api/users/{uid}", "query", {}, 404, "user_id"),
    # the original server's routes
    case("recall unknown", "user", "GET", "/api/recall", "query", {CID: "nope"}, 404, CID),
    case("remove missing id", "user", "POST", "/api/remove-conversation", "json", {}, 400, CID),
    case("remove unknown", "user", "GET", "/api/remove-conversation", "query", {CID: "x"}, 404, CID),
    case("add-user no name", "none", "POST", ADD_USER, "json", {"admin": ADMIN_KEY}, 400, "username"),
    case("is_client maybe", "admin", "POST", ADD_USER, "form", {"userid": "z", "is_client": "?"}, 400, "is_client"),
    case("add-user by a user", "user", "POST", ADD_USER, "json", {"userid": "z"}, 403),
    # keys
    *[case(f"no key {m} {p}", "none", m, p, "json", dict(HI), 401) for m, p in [
        ("POST", CHAT), ("GET", CONVS), ("GET", CONV),
        ("GET", USERS), ("GET", "/api/users/{uid}"), ("POST", "/api/users/{uid}/key"), ("GET", "/api/me"),
        ("GET", "/api/recall"), ("POST", "/api/remove-conversation"), ("POST", ADD_USER),
    ]],  # fmt: skip
    case("bad key header", "bad", "POST", CHAT, "json", HI, 401),
    case("bad key user param", "none", "GET", CHAT, "query", {**HI, "user": "cas-wrong"}, 401),
    case("bad key admin param", "none", "POST", ADD_USER, "form", {"admin": "cas-wrong", "userid": "q"}, 401),
    # methods and paths
    case("PUT chat", "user", "PUT", CHAT, "json", HI, 405),
    case("PUT conversations", "user", "PUT", CONVS, "json", {}, 405),
    case("DELETE me", "user", "DELETE", "/api/me", "json", None, 405),
    case("PATCH users", "admin", "PATCH", USERS, "json", {}, 405),
    case("GET user key", "admin", "GET", "/api/users/{uid}/key", "query", {}, 405),
    case("DELETE recall", "user", "DELETE", "/api/recall", "json", None, 405),
    case("unknown api path", "user", "GET", "/api/nope", "query", {}, 404),
    case("unknown api subpath", "user", "POST", "/api/chat/extra", "json", HI, 404),
    case("bare api", "user", "GET", "/api", "query", {}, 404),
]  # fmt: skip


@pytest.mark.parametrize(("who", "method", "path", "how", "params", "status", "param"), CASES)
def test_bad_input_answers_the_right_error(world, who, method, path, how, params, status, param):
    """Each bad request answers its exact status and a JSON error naming the parameter."""
    assert_error(send(world, who, method, path, how, params), status, param)


def test_a_refused_request_changes_nothing(world):
    """After refused renames, deletes and a duplicate id, the conversation and the user are untouched."""
    server, key, cid = world["server"], world["keys"]["user"], world["fill"]["cid"]
    assert server.call("PATCH", f"/api/conversations/{cid}", key, json={"title": ""}).status_code == 400
    assert server.call("DELETE", f"/api/conversations/{cid}", ADMIN_KEY).status_code == 403
    assert server.call("DELETE", f"/api/conversations/{cid}", "cas-wrong").status_code == 401
    duplicate = server.post("/api/users", ADMIN_KEY, json={"username": "impostor", "user_id": "taken"})
    assert duplicate.status_code == 409
    body = server.get(f"/api/conversations/{cid}", key).json()
    assert body["title"] == "hello" and body["message_count"] == 1
    assert server.get("/api/users/taken", ADMIN_KEY).json()["username"] == "taken"


GARBAGE = [
    ("raw", "[1, 2]"),
    ("raw", "null"),
    ("raw", '{"prompt": '),
    ("raw", '{"prompt": "\\ud800", "title": "\\udfff", "username": "\\ud800"}'),
    ("raw", '{"limit": 1e999, "offset": -1e999}'),
    ("raw", b"\xff\xfe\x00garbage"),
    ("form", {"prompt": "\x00", "limit": "9" * 40, "offset": "9" * 40, "title": "\x00", "username": "\x00"}),
    ("query", {"prompt": "%", "plus": "[]", "reply_only": "{}", "user_id": "../..", "conversation_id": "' OR 1=1"}),
    ("json", {k: {"$gt": ""} for k in ("prompt", "conversation_id", "title", "username", "user_id", "role")}),
    ("json", {k: [1] for k in ("limit", "offset", "plus", "reply_only", "pretty", "user_plus", "is_client", "userid")}),
]
PATHS = [  # the user's conversation first: a later DELETE /api/conversations removes it
    "/api/conversations/{cid}", "/api/chat", "/api/conversations", "/api/conversations/%00", "/api/users",
    "/api/users/{uid}", "/api/users/nobody/key", "/api/me", "/api/health", "/api/recall",
    "/api/remove-conversation", "/api/client/add-user", "/api/nothing-here",
]  # fmt: skip


def test_garbage_sweep_never_500_and_never_error_with_200(make_server, admin, caplog):
    """Every route, method and garbage body: no 500, every error is JSON with a 4xx status, no error with 200."""
    caplog.set_level(logging.WARNING, logger="werkzeug")  # two thousand request lines would drown the report
    server = make_server(max_body_bytes=MAX_BODY)
    person = server.create_user(admin, "sweeper")
    fill = {"cid": server.chat(person["api_key"], "hi")["conversation_id"], "uid": person["user_id"]}
    world = {"server": server, "fill": fill, "keys": {"user": person["api_key"], "admin": admin, "bad": "cas-x"}}
    problems = []
    for path in PATHS:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            for how, payload in GARBAGE:
                for who in ("user", "none", "bad"):
                    response = send(world, who, method, path, how, payload)
                    where = f"{who} {method} {path} {how} {str(payload)[:40]} -> {response.status_code}"
                    if response.status_code >= 500:
                        problems.append(f"{where}: {response.text[:120]}")
                        continue
                    is_json = response.headers.get("Content-Type", "").startswith("application/json")
                    body = response.json() if is_json else None
                    is_error = isinstance(body, dict) and body.get("status") == "error"
                    if response.status_code >= 400 and not is_error:
                        problems.append(f"{where}: not a JSON error: {response.text[:80]}")
                    if response.status_code < 400 and is_error:
                        problems.append(f"{where}: an error with a success status")
    assert not problems, f"{len(problems)} bad answers:\n" + "\n".join(problems[:40])


def test_a_field_without_a_name_is_left_out(server, admin):
    """Found by schemathesis: a multipart part whose name Werkzeug cannot parse came through as the key None,
    and PATCH /api/users/<id> sorted it with the other names (a 500)."""
    body = (
        b'--XX\r\nContent-Disposition: form-data; name="a\\"\r\n\r\n1\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="zzz"\r\n\r\nbob\r\n--XX--\r\n'
    )
    headers = {"Authorization": f"Bearer {admin}", "Content-Type": "multipart/form-data; boundary=XX"}
    answer = server.session.patch(server.url + "/api/users/admin", data=body, headers=headers, timeout=30)
    assert answer.status_code == 400, answer.text  # the unnamed part is left out; the unknown field is named
    assert answer.json()["param"] == "zzz" and answer.json()["message"].startswith("zzz: cannot be changed")
    nameless = server.session.get(server.url + "/api/me?=x&%3D=y", headers={"Authorization": f"Bearer {admin}"})
    assert nameless.status_code == 200, nameless.text
