"""GET /api/openapi.json: a valid OpenAPI 3.1 description that matches the running server.

Every path and method in it answers, every /api and /v1 route the app registers is in it, the
documented errors occur with their documented bodies, and successful answers match their schemas.
The docs page (static/api-docs.html) renders the operations in Chromium under the site's CSP.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from conftest import ADMIN_KEY, DEMO
from openapi_spec_validator import OpenAPIV31SpecValidator

DESCRIPTION = "/api/openapi.json"
METHODS = ("get", "post", "put", "patch", "delete")
SESSION_TOKEN = "good-session-token"
ROUTE_404 = "requested URL was not found"  # Werkzeug's words for a path no rule serves
CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def described(server) -> dict:
    response = server.get(DESCRIPTION)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def operations(spec: dict):
    """(path, method, operation) for every operation in the description."""
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def check_answer(spec: dict, operation: dict, response, where: str) -> None:
    """The status is documented for the operation, and a JSON body matches its documented schema."""
    status = str(response.status_code)
    assert status in operation["responses"], f"{where}: undocumented {status}: {response.text[:300]}"
    content = operation["responses"][status].get("content", {})
    mimetype = response.headers.get("Content-Type", "").split(";")[0].strip()
    if mimetype == "application/json":
        assert "application/json" in content, f"{where}: {status} JSON is not documented"
        schema = {**content["application/json"]["schema"], "components": spec["components"]}
        jsonschema.Draft202012Validator(schema).validate(response.json())
    elif content:
        assert mimetype in content, f"{where}: {status} {mimetype} is not documented"


@pytest.fixture
def live(make_server, openai_fake, web_fake):
    """The demo account and an openai account on the fake upstream (it embeds too); /api/access-token
    trades session tokens at the fake ChatGPT web backend."""
    web_fake.sessions[SESSION_TOKEN] = "fresh-access-token-0123"
    openai_fake.models = ["fake-model", "text-embedding-3-small"]
    accounts = [
        *DEMO,
        {
            "name": "openai-1",
            "type": "openai",
            "api_key": "sk-fake-0123456789",
            "base_url": openai_fake.url,
            "model": "fake-model",
            "models": ["text-embedding-3-small"],
        },
    ]
    return make_server(accounts, byo_account={"auth_base": web_fake.base_url})


def test_the_description_is_valid_openapi_3_1_and_needs_no_key(server):
    spec = described(server)
    OpenAPIV31SpecValidator(spec).validate()
    assert spec["openapi"].startswith("3.1")
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert (schemes["userKey"]["in"], schemes["userKey"]["name"]) == ("query", "user")
    error = spec["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"status", "code", "message"} and "param" in error["properties"]
    assert spec["components"]["schemas"]["OpenAIError"]["properties"]["error"]["required"] == ["message", "type"]
    for path in ("/api/chat", "/api/recall", "/api/ask", "/api/access-token", "/v1/chat/completions"):
        assert path in spec["paths"], path
    chat = spec["paths"]["/api/chat"]["post"]
    assert {"application/json", "application/x-www-form-urlencoded"} <= set(chat["requestBody"]["content"])
    for status in ("400", "401", "403", "404", "409", "413", "429", "502", "503", "504"):
        assert status in chat["responses"], status


def test_every_route_the_app_registers_under_api_and_v1_is_described(server):
    spec = described(server)
    app = server.app
    shared = app.config["SHARED_API_VIEWS"]
    registered: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(("api.", "v1.")) or rule.rule.startswith(("/api/", "/v1/")):
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                registered.add((rule.rule, method.lower()))
    for path, (_view, methods) in shared.items():
        registered.update((path, m.lower()) for m in methods)
    from app.openapi import openapi_path

    missing = [(p, m) for p, m in sorted(registered) if m not in spec["paths"].get(openapi_path(p), {})]
    assert not missing
    assert ("/api/openapi.json", "get") in registered


def test_a_moved_route_is_described_at_its_new_path(make_server):
    server = make_server(routes={"chat": "/ask-here", "recall": "/chatgpt/recall", "openapi": "/spec.json"})
    response = server.get("/spec.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/ask-here" in paths and "/chatgpt/recall" in paths and "/spec.json" in paths
    assert "/api/chat" not in paths and "/api/recall" not in paths
    assert server.get(DESCRIPTION).status_code == 404


class Fixtures:
    """Real objects for path parameters, made fresh for each operation that needs one."""

    def __init__(self, server):
        self.server = server

    def conversation(self) -> dict:
        return self.server.chat(ADMIN_KEY, "Hello there")

    def user(self) -> dict:
        return self.server.create_user(ADMIN_KEY, "throwaway")

    def response_id(self) -> str:
        answer = self.server.post("/v1/responses", ADMIN_KEY, json={"model": "demo", "input": "Hi"})
        assert answer.status_code == 200, answer.text
        return answer.json()["id"]

    def path_value(self, name: str) -> str:
        if name == "conversation_id":
            return self.conversation()["conversation_id"]
        if name == "user_id":
            return self.user()["user_id"]
        if name == "response_id":
            return self.response_id()
        return {"name": "demo", "model_id": "demo"}[name]


def sample_body(operation_id: str, fixtures: Fixtures) -> dict | None:
    """A request that should succeed, where the operation needs a body to do anything."""
    if operation_id in ("chat_post", "gajosu_new_post", "gajosu_ask_post"):
        return {"prompt": "Hi"}
    if operation_id == "ask_post":
        return {"content": "Hi"}
    if operation_id == "users_post":
        return {"username": "made-by-openapi-test"}
    if operation_id == "user_patch":
        return {"username": "renamed"}
    if operation_id in ("conversation_patch", "go_conversation_patch"):
        return {"title": "Renamed"}
    if operation_id == "go_conversations_patch":
        return {"is_visible": False}
    if operation_id == "account_patch":
        return {"enabled": True}
    if operation_id == "acheong_users_add_post":
        return {"admin_key": ADMIN_KEY}
    if operation_id == "acheong_users_delete_post":
        return {"admin_key": ADMIN_KEY, "user_id": fixtures.user()["user_id"]}
    if operation_id == "remove_conversation_post":
        return {"conversation_id": fixtures.conversation()["conversation_id"]}
    if operation_id == "accounts_post":
        return {"name": "another", "type": "demo"}
    if operation_id == "access_token_post":
        return {"session_token": SESSION_TOKEN}
    if operation_id == "add_user_post":
        return {"username": "original-style"}
    if operation_id == "go_feedback_post":
        turn = fixtures.conversation()
        return {"conversation_id": turn["conversation_id"], "message_id": turn["message_id"], "rating": "thumbsUp"}
    if operation_id == "go_ask_post":
        message = {"author": {"role": "user"}, "content": {"content_type": "text", "parts": ["Hi"]}}
        return {"action": "next", "messages": [message], "conversation_id": None}
    if operation_id == "v1_chat_completions_post":
        return {"model": "demo", "messages": [{"role": "user", "content": "Hi"}]}
    if operation_id == "v1_responses_post":
        return {"model": "demo", "input": "Hi"}
    if operation_id == "v1_embeddings_post":
        return {"model": "text-embedding-3-small", "input": "hello"}
    return None


SAMPLE_QUERY = {
    "chat_get": {"prompt": "Hi"},
    "remove_conversation_get": "conversation_id",
    "add_user_get": {"username": "original-get"},
    "acheong_users_get": {"admin_key": ADMIN_KEY},
    "access_token_get": {"session_token": SESSION_TOKEN},
}
LAST = ("account_delete",)  # removes the demo account: the others need it


def test_every_described_operation_answers_as_documented(live):
    """Each path and method answers (never a 404 for want of a route, never 405), with a documented
    status and, for JSON, a body that matches its schema; the main operations succeed."""
    spec = described(live)
    fixtures = Fixtures(live)
    statuses = {}
    ordered = sorted(operations(spec), key=lambda o: o[2]["operationId"] in LAST)
    for path, method, operation in ordered:
        oid = operation["operationId"]
        url = path
        for name in [p["name"] for p in spec["paths"][path].get("parameters", [])]:
            url = url.replace("{" + name + "}", fixtures.path_value(name))
        query = SAMPLE_QUERY.get(oid)
        if query == "conversation_id":
            query = {"conversation_id": fixtures.conversation()["conversation_id"]}
        body = sample_body(oid, fixtures)
        response = live.call(method.upper(), url, ADMIN_KEY, params=query, json=body)
        where = f"{method.upper()} {url}"
        assert response.status_code != 405, where
        assert not (response.status_code == 404 and ROUTE_404 in response.text), where
        check_answer(spec, operation, response, where)
        statuses[oid] = response.status_code
    no_file = ("accounts_post", "account_patch", "account_delete")  # this server has no settings file: 409
    failed = {oid: s for oid, s in statuses.items() if s >= 300 and oid not in no_file}
    assert not failed  # every sample request succeeded
    assert [statuses[oid] for oid in no_file] == [409, 409, 409]


def test_no_key_is_a_documented_401_on_every_operation_that_needs_one(server):
    spec = described(server)
    seen = 0
    for path, method, operation in operations(spec):
        if operation["security"] == [] or {} in operation["security"]:
            continue  # no key needed (health, the description), or optional (metrics without metrics_token)
        url = path
        for name in [p["name"] for p in spec["paths"][path].get("parameters", [])]:
            url = url.replace("{" + name + "}", "x")
        headers = {"Accept": "application/json"}  # a browser on a shared path gets its page (docs/API.md §5.7)
        response = server.call(method.upper(), url, json={} if method != "get" else None, headers=headers)
        assert response.status_code == 401, f"{method} {url}: {response.status_code} {response.text[:200]}"
        check_answer(spec, operation, response, f"{method} {url}")
        seen += 1
    assert seen > 50


HI = [{"role": "user", "content": "Hi"}]
BAD_REQUESTS = [
    # operationId, method, path, json body or query, status
    ("chat_post", "post", "/api/chat", {"json": {}}, 400),
    ("chat_get", "get", "/api/chat", {"params": {"prompt": "Hi", "reply_only": "maybe"}}, 400),
    ("chat_post", "post", "/api/chat", {"json": {"prompt": "Hi", "plus": "true"}}, 503),
    ("chat_post", "post", "/api/chat", {"json": {"prompt": "Hi", "conversation_id": "nope"}}, 404),
    ("chat_post", "post", "/api/chat", {"data": "x" * 2_000_000}, 413),
    ("conversations_get", "get", "/api/conversations", {"params": {"limit": 0}}, 400),
    ("users_post", "post", "/api/users", {"json": {}}, 400),
    ("users_post", "post", "/api/users", {"json": {"username": "a", "user_id": "admin"}}, 409),
    ("usage_get", "get", "/api/usage", {"params": {"group_by": "weekday"}}, 400),
    ("audit_get", "get", "/api/audit", {"params": {"limit": 0}}, 400),
    ("account_get", "get", "/api/accounts/nope", {}, 404),
    ("recall_get", "get", "/api/recall", {"params": {"conversation_id": "nope"}}, 404),
    ("remove_conversation_post", "post", "/api/remove-conversation", {"json": {}}, 400),
    ("add_user_post", "post", "/api/client/add-user", {"json": {}}, 400),
    ("ask_post", "post", "/api/ask", {"json": {}}, 400),
    ("access_token_post", "post", "/api/access-token", {"json": {}}, 400),
    ("acheong_users_delete_post", "post", "/admin/users/delete", {"json": {"admin_key": ADMIN_KEY}}, 400),
    ("go_ask_post", "post", "/conversation", {"json": {"action": "next"}}, 400),
    ("go_conversation_get", "get", "/conversation/nope", {}, 404),
    ("gajosu_new_post", "post", "/conversations/new", {"json": {}}, 400),
    ("gajosu_messages_get", "get", "/conversations/nope/messages", {}, 404),
    ("v1_chat_completions_post", "post", "/v1/chat/completions", {"json": {}}, 400),
    ("v1_chat_completions_post", "post", "/v1/chat/completions", {"json": {"model": "nope", "messages": HI}}, 404),
    ("v1_models_model_id_get", "get", "/v1/models/nope", {}, 404),
    ("v1_responses_response_id_get", "get", "/v1/responses/resp_nope", {}, 404),
]


@pytest.mark.parametrize(("oid", "method", "path", "kwargs", "status"), BAD_REQUESTS, ids=lambda v: str(v)[:40])
def test_documented_errors_occur_with_the_documented_body(shared_server, oid, method, path, kwargs, status):
    spec = described(shared_server)
    by_id = {op["operationId"]: (p, m, op) for p, m, op in operations(spec)}
    described_path, described_method, operation = by_id[oid]
    assert described_method == method
    response = shared_server.call(method.upper(), path, ADMIN_KEY, **kwargs)
    assert response.status_code == status, response.text[:300]
    check_answer(spec, operation, response, f"{method} {path}")


def test_forbidden_and_upstream_errors_match_the_description(live, openai_fake):
    spec = described(live)
    by_id = {op["operationId"]: op for _p, _m, op in operations(spec)}
    alice = live.create_user(ADMIN_KEY, "alice")["api_key"]
    for oid, path in (("users_get", "/api/users"), ("accounts_get", "/api/accounts"), ("audit_get", "/api/audit")):
        response = live.get(path, alice)
        assert response.status_code == 403
        check_answer(spec, by_id[oid], response, path)
    openai_fake.fail_status = 500
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}
    response = live.post("/v1/chat/completions", ADMIN_KEY, json=body)
    assert response.status_code == 502
    check_answer(spec, by_id["v1_chat_completions_post"], response, "v1 502")
    response = live.post("/api/chat", ADMIN_KEY, json={"prompt": "Hi", "model": "fake-model"})
    assert response.status_code == 503  # the account cools down after its failure: none is left for the model
    check_answer(spec, by_id["chat_post"], response, "chat 503")


def test_too_many_wrong_keys_is_a_documented_429(make_server):
    server = make_server(key_failures_per_minute=2)
    spec = described(server)
    operation = spec["paths"]["/api/me"]["get"]
    statuses = [server.get("/api/me", "cas-wrong-key-0123456789").status_code for _ in range(4)]
    assert statuses[0] == 401 and statuses[-1] == 429
    response = server.get("/api/me", "cas-wrong-key-0123456789")
    check_answer(spec, operation, response, "429")


def test_health_answers_its_schema_without_a_key(server):
    spec = described(server)
    response = server.get("/api/health")
    assert response.status_code == 200
    check_answer(spec, spec["paths"]["/api/health"]["get"], response, "health")


# --- the docs page ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package to run the browser tests")
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as env, sync_playwright() as playwright:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            env.delenv(name, raising=False)
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


def test_the_docs_page_renders_every_operation_under_the_sites_csp(server, browser):
    spec = described(server)
    count = sum(1 for _ in operations(spec))
    context = browser.new_context()
    context.set_default_timeout(20_000)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(server.url) else outside.append(r.url))
    response = page.goto(server.url + "/static/api-docs.html")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_selector(".opblock")
    page.wait_for_function(f"document.querySelectorAll('.opblock').length >= {count}")
    assert page.locator(".opblock").count() == count
    assert page.locator(".opblock-summary-path", has_text="/api/chat").count() >= 1
    assert page.locator(".info .title", has_text="chatgpt-api-server").count() == 1
    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems
    assert not outside
    context.close()


def test_the_vendored_renderer_notes_its_version_and_licence():
    vendor = Path(__file__).parent.parent / "static" / "vendor"
    readme = (vendor / "README.md").read_text()
    assert "swagger-ui-dist" in readme and "Apache-2.0" in readme
    version = json.loads((vendor / "swagger-ui" / "package.json").read_text())["version"]
    assert version in readme


# A bad query for every GET whose description documents a 400.
BAD_QUERIES = {
    "chat_get": {},  # no prompt
    "conversations_get": {"limit": 0},
    "users_get": {"limit": 0},
    "usage_get": {"group_by": "weekday"},
    "audit_get": {"limit": 0},
    "recall_get": {"conversation_id": "x" * 65},
    "remove_conversation_get": {},  # no conversation_id
    "add_user_get": {"user_id": "not an id!"},
    "access_token_get": {},  # no session_token
    "go_conversations_get": {"limit": 0},
    "conversation_get": {"user_id": "0" * 65},
    "go_conversation_get": {"user_id": "0" * 65},
}
# Operations whose other checks come before the body's: this server has no settings file (409).
BODY_READ_LATER = {"account_delete": 409}


def test_every_documented_400_occurs_and_matches_its_schema(server):
    """Every operation documenting a 400 answers one: a JSON body that is not an object for those
    with a body, a bad parameter for GETs."""
    spec = described(server)
    conversation = server.chat(ADMIN_KEY, "Hello")["conversation_id"]
    response_id = Fixtures(server).response_id()
    values = {"conversation_id": conversation, "response_id": response_id, "name": "demo", "model_id": "demo"}
    with_400 = [(p, m, op) for p, m, op in operations(spec) if "400" in op["responses"]]
    assert {op["operationId"] for _p, m, op in with_400 if m == "get"} == set(BAD_QUERIES)
    for path, method, operation in with_400:
        oid = operation["operationId"]
        url = path.replace("{user_id}", server.create_user(ADMIN_KEY, "someone")["user_id"])
        for name, value in values.items():
            url = url.replace("{" + name + "}", value)
        if method == "get":
            response = server.get(url, ADMIN_KEY, params=BAD_QUERIES[oid])
        else:
            headers = {"Content-Type": "application/json"}
            response = server.call(method.upper(), url, ADMIN_KEY, data="[1]", headers=headers)
        assert response.status_code == BODY_READ_LATER.get(oid, 400), f"{oid}: {response.text[:200]}"
        check_answer(spec, operation, response, oid)
