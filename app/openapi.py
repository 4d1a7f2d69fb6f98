"""The OpenAPI 3.1 description of every /api route, the originals' routes and /v1, built from settings.

`build(routes)` takes the configured paths (app.config["SETTINGS"]["routes"], names as in
ROUTE_DEFAULTS), so a moved route is described at the path it is served at. docs/API.md is the
prose; this is the machine-readable summary of the same parameters, answers and errors.
"""

from __future__ import annotations

import re

VERSION = "1.0.0"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"

# Statuses every operation may answer whatever it does (docs/API.md §1.2 and §1.5).
ALWAYS = (413, 429)
UPSTREAM = (502, 503, 504)

DESCRIPTIONS = {
    400: "A parameter is missing or invalid (named in `param`), or the body is not a JSON object.",
    401: "No key, or a key the server does not know.",
    403: "The key is known but its role may not do this.",
    404: "No such object, or one the caller may not see.",
    409: "Conflict: the id or name is taken, the last admin, a pinned account is gone, or a turn still running.",
    413: "The body is larger than `max_body_bytes`.",
    429: "A limit of the user or its client, wrong keys from this address, or too many connections; `Retry-After`.",
    502: "The upstream answered with an error or could not be reached.",
    503: "No account can take the turn now, or users.json/settings.json stayed locked; `Retry-After`.",
    504: "The upstream, or its proxy, did not answer in time.",
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def openapi_path(flask_path: str) -> str:
    """/api/users/<user_id> -> /api/users/{user_id}; <path:model> -> {model}."""
    return re.sub(r"<(?:[a-z]+:)?([A-Za-z_][A-Za-z0-9_]*)>", r"{\1}", flask_path)


def _path_params(path: str) -> list[dict]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in re.findall(r"{([^}]+)}", path)
    ]


# --- parameter schemas --------------------------------------------------------------------------

STR = {"type": "string"}
STR64 = {"type": "string", "maxLength": 64}
BOOL = {
    "oneOf": [
        {"type": "boolean"},
        {"type": "integer", "enum": [0, 1]},
        {"type": "string", "description": "true/1/yes/on or false/0/no/off, any case"},
    ]
}
INT = {"oneOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+$"}]}
USER_ID = {"oneOf": [{"type": "string", "maxLength": 64}, {"type": "integer"}]}
SSE = {
    "type": "object",
    "description": "One server-sent event: its `event` name and its `data` (JSON text, or [DONE]).",
    "properties": {"event": STR, "data": STR, "id": STR, "retry": {"type": "integer"}},
}
PLUS3 = {"oneOf": [{"type": "boolean"}, {"type": "string", "description": "false, true or any"}]}


def _fields(**fields) -> dict:
    """An object of the named optional fields (any key may also be missing)."""
    return {"type": "object", "properties": fields}


def _required(schema: dict, *names: str) -> dict:
    return {**schema, "required": list(names)}


# --- answers ------------------------------------------------------------------------------------

SCHEMAS: dict = {
    "Error": {
        "type": "object",
        "description": "Every error under /api (docs/API.md §1.5).",
        "required": ["status", "code", "message"],
        "properties": {
            "status": {"const": "error"},
            "code": {"type": "string"},
            "message": {"type": "string"},
            "param": {"type": ["string", "null"]},
        },
    },
    "OpenAIError": {
        "type": "object",
        "description": "Every error under /v1, in OpenAI's shape.",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "AcheongError": {
        "type": "object",
        "description": "acheong08/ChatGPT-API-server's and gajosu's error shape.",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "AccessTokenError": {"type": "object", "required": ["Error"], "properties": {"Error": {"type": "string"}}},
    "GoError": {
        "type": "object",
        "description": "linweiyuan/go-chatgpt-api's error shape.",
        "required": ["errorMessage"],
        "properties": {"errorMessage": {"type": "string"}},
    },
    "Usage": {
        "type": ["object", "null"],
        "properties": {
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"},
        },
    },
    "ChatAnswer": {
        "type": "object",
        "description": "POST /api/chat's answer (shape=original answers the original server's instead).",
        "required": ["status", "conversation_id"],
        "properties": {
            "status": {"const": "success"},
            "reply": {"type": "string"},
            "conversation_id": {"type": "string"},
            "message_id": {"type": "string"},
            "parent_id": {"type": ["string", "null"]},
            "conversation_title": {"type": ["string", "null"]},
            "model": {"type": ["string", "null"]},
            "account": {"type": ["string", "null"]},
            "finish_reason": {"type": ["string", "null"]},
            "usage": _ref("Usage"),
            "history_trimmed": {"type": "integer"},
            "api_user": {"type": "string"},
            "api_username": {"type": ["string", "null"]},
            "api_client_id": {"type": "string"},
            "api_prompt": {"type": "string"},
            "api_prompt_time_origin": {"type": "string"},
            "api_prompt_time_origin_readable": {"type": "string"},
            "api_response_time_taken": {"type": ["number", "string"]},
            "last_message_prompt": {"type": "string"},
            "last_message_reply": {"type": "string"},
        },
    },
    "ConversationSummary": {
        "type": "object",
        "required": ["conversation_id", "title", "created_at", "updated_at", "message_count"],
        "properties": {
            "conversation_id": {"type": "string"},
            "title": {"type": ["string", "null"]},
            "created_at": {"type": "string"},
            "updated_at": {"type": "string"},
            "message_count": {"type": "integer"},
        },
    },
    "ConversationList": {
        "type": "object",
        "required": ["user_id", "total", "offset", "limit", "conversations"],
        "properties": {
            "user_id": {"type": "string"},
            "total": {"type": "integer"},
            "offset": {"type": "integer"},
            "limit": {"type": "integer"},
            "conversations": {"type": "array", "items": _ref("ConversationSummary")},
        },
    },
    "Message": {
        "type": "object",
        "required": ["message_id", "prompt", "reply"],
        "properties": {
            "message_id": {"type": "string"},
            "parent_id": {"type": ["string", "null"]},
            "prompt": {"type": "string"},
            "reply": {"type": "string"},
            "model": {"type": ["string", "null"]},
            "complete": {"type": "boolean"},
            "rating": {"type": ["string", "null"]},
            "created_at": {"type": "string"},
        },
    },
    "Conversation": {
        "allOf": [
            _ref("ConversationSummary"),
            {
                "type": "object",
                "required": ["messages"],
                "properties": {
                    "user_id": {"type": "string"},
                    "messages": {"type": "array", "items": _ref("Message")},
                },
            },
        ]
    },
    "Deleted": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "success"}, "deleted": {"type": ["integer", "string"]}},
    },
    "Limits": {
        "type": "object",
        "additionalProperties": {"type": ["integer", "null"]},
        "description": "requests_per_minute, requests_per_day, tokens_per_day; null = no limit.",
    },
    "User": {
        "type": "object",
        "required": ["user_id", "username", "role", "plus"],
        "properties": {
            "user_id": {"type": "string"},
            "username": {"type": "string"},
            "role": {"enum": ["admin", "client", "user"]},
            "plus": {"type": "boolean"},
            "created_by": {"type": ["string", "null"]},
            "external_id": {"type": ["string", "null"]},
            "created_at": {"type": ["string", "null"]},
            "limits": _ref("Limits"),
            "effective_limits": _ref("Limits"),
        },
    },
    "UserList": {
        "type": "object",
        "required": ["users", "total", "offset", "limit"],
        "properties": {
            "users": {"type": "array", "items": _ref("User")},
            "total": {"type": "integer"},
            "offset": {"type": "integer"},
            "limit": {"type": "integer"},
        },
    },
    "NewUser": {
        "allOf": [
            _ref("User"),
            {"type": "object", "required": ["api_key"], "properties": {"api_key": {"type": "string"}}},
        ]
    },
    "Me": {
        "allOf": [
            _ref("User"),
            {
                "type": "object",
                "properties": {
                    "today": {
                        "type": "object",
                        "properties": {
                            "day": {"type": "string"},
                            "requests": {"type": "integer"},
                            "tokens": {"type": "integer"},
                        },
                    }
                },
            },
        ]
    },
    "NewKey": {
        "type": "object",
        "required": ["status", "user_id", "api_key"],
        "properties": {"status": {"const": "success"}, "user_id": {"type": "string"}, "api_key": {"type": "string"}},
    },
    "Health": {
        "type": "object",
        "required": ["status", "accounts"],
        "properties": {
            "status": {"enum": ["ok", "unavailable"]},
            "accounts": {"type": "integer"},
            "demo_only": {"type": "boolean"},
            "states": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "Account": {
        "type": "object",
        "required": ["name", "type", "state"],
        "properties": {
            "name": {"type": "string"},
            "type": {"enum": ["openai", "chatgpt-web", "demo"]},
            "plus": {"type": "boolean"},
            "model": {"type": ["string", "null"]},
            "base_url": {"type": ["string", "null"]},
            "enabled": {"type": "boolean"},
            "state": {"type": "string"},
            "in_flight": {"type": "integer"},
            "requests": {"type": "integer"},
            "errors": {"type": "integer"},
            "models": {"type": "array", "items": {"type": "string"}},
            "responses": {"type": "boolean"},
            "secrets": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "AccountList": {
        "type": "object",
        "required": ["accounts"],
        "properties": {"accounts": {"type": "array", "items": _ref("Account")}},
    },
    "AccountFields": {
        "type": "object",
        "description": "An account's fields as in settings.json (README, 'Adding a real account').",
        "properties": {
            "name": STR,
            "type": {"enum": ["openai", "chatgpt-web", "demo"]},
            "api_key": STR,
            "access_token": STR,
            "session_token": STR,
            "auth_base": STR,
            "base_url": STR,
            "model": STR,
            "models": {"type": "array", "items": STR},
            "plus": {"type": "boolean"},
            "proxy": {"type": ["string", "null"]},
            "enabled": {"type": "boolean"},
            "max_concurrent": {"type": ["integer", "null"]},
            "rpm": {"type": ["integer", "null"]},
            "responses": {"type": "boolean"},
        },
    },
    "AccountTest": {
        "type": "object",
        "required": ["name", "ok"],
        "properties": {
            "name": {"type": "string"},
            "ok": {"type": "boolean"},
            "reply": {"type": "string"},
            "error": {"type": "object"},
            "latency_ms": {"type": "number"},
            "account": _ref("Account"),
        },
    },
    "Usage report": {},
    "UsageReport": {
        "type": "object",
        "required": ["from", "to", "group_by", "totals"],
        "properties": {
            "from": {"type": "string"},
            "to": {"type": "string"},
            "group_by": {"type": "array", "items": {"type": "string"}},
            "user_id": {"type": ["string", "null"]},
            "groups": {"type": "array", "items": {"type": "object"}},
            "totals": {"type": "object"},
        },
    },
    "AuditLog": {
        "type": "object",
        "required": ["entries", "total", "offset", "limit"],
        "properties": {
            "entries": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "at", "action"],
                    "properties": {
                        "id": {"type": "integer"},
                        "at": {"type": "string"},
                        "actor": {"type": ["string", "null"]},
                        "actor_role": {"type": ["string", "null"]},
                        "action": {"type": "string"},
                        "target": {"type": ["string", "null"]},
                        "detail": {},
                        "address": {"type": ["string", "null"]},
                    },
                },
            },
            "total": {"type": "integer"},
            "offset": {"type": "integer"},
            "limit": {"type": "integer"},
        },
    },
    "Success": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "success"}, "message": {"type": "string"}},
    },
    "Recall": {
        "type": "object",
        "description": "Without conversation_id: {id: {title}}; with it: the conversation and its messages.",
    },
    "WebConversation": {
        "type": "object",
        "description": "A conversation as the ChatGPT web backend gives it (mapping of message nodes).",
        "required": ["mapping"],
        "properties": {
            "title": {"type": ["string", "null"]},
            "create_time": {"type": ["number", "null"]},
            "update_time": {"type": ["number", "null"]},
            "mapping": {"type": "object"},
            "moderation_results": {"type": "array"},
            "current_node": {"type": ["string", "null"]},
            "conversation_id": {"type": "string"},
        },
    },
    "WebItem": {
        "type": "object",
        "required": ["id", "title"],
        "properties": {
            "id": {"type": "string"},
            "title": {"type": ["string", "null"]},
            "create_time": {"type": ["string", "null"]},
            "update_time": {"type": ["string", "null"]},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}},
    },
    "Model": {
        "type": "object",
        "required": ["id", "object"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
        },
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object"}},
            "usage": {"type": ["object", "null"]},
        },
    },
    "Response": {
        "type": "object",
        "required": ["id", "object"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "response"},
            "status": {"type": "string"},
            "model": {"type": "string"},
            "output": {"type": "array", "items": {"type": "object"}},
            "usage": {"type": ["object", "null"]},
        },
    },
    "Embeddings": {
        "type": "object",
        "required": ["data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array"}, "model": {"type": "string"}},
    },
}
del SCHEMAS["Usage report"]


# --- operations ---------------------------------------------------------------------------------


class Family:
    """How a group of routes reads its key and words its errors."""

    def __init__(self, error: str, security: list[dict], tag: str):
        self.error = error
        self.security = security
        self.tag = tag


API = Family("Error", [{"bearer": []}, {"userKey": []}], "api")
V1 = Family("OpenAIError", [{"bearer": []}], "v1")
ACHEONG = Family("AcheongError", [{"bearer": []}, {"bareKey": []}], "acheong08")
ACHEONG_ADMIN = Family("AcheongError", [{"adminKey": []}, {"bearer": []}], "acheong08")
ACCESS = Family("AccessTokenError", [{"bearer": []}, {"userKey": []}], "originals")
GO = Family("GoError", [{"bareKey": []}, {"bearer": []}], "go-chatgpt-api")
GAJOSU = Family("AcheongError", [{"bareKey": []}, {"bearer": []}, {"userKey": []}], "gajosu")


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _body(schema: dict, form: bool = True, required: bool = False) -> dict:
    content = {JSON: {"schema": schema}}
    if form:
        content[FORM] = {"schema": schema}
        content[MULTIPART] = {"schema": schema}
    return {"required": required, "content": content}


def operation(
    family: Family,
    summary: str,
    ok: dict,
    errors: tuple[int, ...] = (400, 401),
    params: dict | None = None,
    body: dict | None = None,
    body_required: bool = False,
    form: bool = True,
    public: bool = False,
    ok_status: int = 200,
    extra: dict | None = None,
) -> dict:
    """One operation: query params (GET) or a body (others) of `params`, its answers and errors."""
    op: dict = {"summary": summary, "tags": [family.tag]}
    op["security"] = [] if public else family.security
    if params:
        op["parameters"] = [{"name": n, "in": "query", "schema": s} for n, s in params.items()]
    if body is not None:
        op["requestBody"] = _body(body, form, body_required)
    named = set(params or {}) | set((body or {}).get("properties", {}))
    if named & {"user_id", "userid"}:  # a bad id: 400; a role that may not: 403; someone else's or unknown: 404
        errors = (*errors, 400, 403, 404)
    responses = {str(ok_status): ok}
    for status, answer in (extra or {}).items():
        responses[str(status)] = answer
    for status in sorted(set(errors) | set(ALWAYS) | ({401} if not public else set())):
        responses.setdefault(str(status), _json(_ref(family.error), DESCRIPTIONS[status]))
    op["responses"] = responses
    return op


def _query_and_body(family, summary, ok, params, errors, required=(), **kw) -> dict:
    """GET with the query string and POST with a body of the same parameters (docs/API.md §1.2)."""
    fields = _fields(**params)
    if required:
        fields = _required(fields, *required)
    get = operation(family, summary, ok, errors, params=params, **kw)
    for p in get.get("parameters", []):
        p["required"] = p["name"] in required
    post = operation(family, summary, ok, errors, body=fields, body_required=bool(required), **kw)
    return {"get": get, "post": post}


CHAT_PARAMS = {
    "prompt": STR,
    "conversation_id": STR64,
    "plus": PLUS3,
    "model": STR,
    "stream": BOOL,
    "reply_only": BOOL,
    "pretty": BOOL,
    "shape": {"enum": ["default", "original"]},
    "access_token": {"type": "string", "maxLength": 8192},
    "user_plus": BOOL,
    "user_id": USER_ID,
    "username": STR64,
    "user_id_plus": BOOL,
}
CHAT_ERRORS = (400, 401, 403, 404, 409, 502, 503, 504)
CHAT_OK = {
    "description": "The reply: JSON, or text/plain / text/html with reply_only, or server-sent events with stream.",
    "content": {
        JSON: {"schema": _ref("ChatAnswer")},
        "text/plain": {"schema": STR},
        "text/html": {"schema": STR},
        "text/event-stream": {"schema": SSE},
    },
}
PAGE = {"offset": INT, "limit": INT}


def _api_operations() -> dict:
    """name (as in ROUTE_DEFAULTS) -> {method: operation}."""
    conv_list = _json(_ref("ConversationList"), "The caller's conversations, most recently updated first.")
    conversation = _json(
        {"anyOf": [_ref("Conversation"), _ref("ConversationSummary")]},
        "The conversation with its messages, or after a rename its summary.",
    )
    user_one = _json(_ref("User"), "The user (after a change: status and the user).")
    user_change = _fields(username=STR64, plus=BOOL, limits=_ref("Limits"), role={"enum": ["admin", "client", "user"]})
    user_change["properties"]["shape"] = STR
    new_user = {
        "username": STR64,
        "role": {"enum": ["admin", "client", "user"]},
        "plus": BOOL,
        "user_id": USER_ID,
    }
    ops = {
        "chat": _query_and_body(API, "Send a prompt", CHAT_OK, CHAT_PARAMS, CHAT_ERRORS, required=("prompt",)),
        "conversations": {
            **_query_and_body(API, "List conversations", conv_list, {**PAGE, "user_id": USER_ID}, (400, 401, 403, 404)),
            "delete": operation(
                API,
                "Delete all the caller's conversations",
                _json(_ref("Deleted"), "How many were deleted."),
                (400, 401, 403, 404),
                params={"user_id": USER_ID},
            ),
        },
        "conversation": {
            **_query_and_body(
                API,
                "Read (or with title, rename) a conversation",
                conversation,
                {"user_id": USER_ID, "title": STR},
                (400, 401, 403, 404),
            ),
            "patch": operation(
                API,
                "Rename a conversation",
                _json(_ref("ConversationSummary"), "status and the summary."),
                (400, 401, 403, 404),
                body=_required(_fields(title=STR, user_id=USER_ID), "title"),
                body_required=True,
            ),
            "delete": operation(
                API,
                "Delete a conversation",
                _json(_ref("Deleted"), "Deleted."),
                (400, 401, 403, 404),
                params={"user_id": USER_ID},
            ),
        },
        "users": {
            "get": operation(
                API,
                "List users",
                _json(_ref("UserList"), "Users, oldest first."),
                (400, 401, 403),
                params={**PAGE, "q": STR},
            ),
            "post": operation(
                API,
                "Create a user",
                _json(_ref("NewUser"), "The new user with its key, shown only here."),
                (400, 401, 403, 409, 503),
                body=_required(_fields(**new_user), "username"),
                body_required=True,
                ok_status=201,
            ),
        },
        "user": {
            **_query_and_body(API, "Read a user", user_one, {}, (400, 401, 403, 404)),
            "patch": operation(
                API,
                "Change a user",
                user_one,
                (400, 401, 403, 404, 409, 503),
                body=user_change,
                body_required=True,
            ),
            "delete": operation(
                API,
                "Delete a user (a client with the users it created)",
                _json(_ref("Deleted"), "The deleted user_id and deleted_users."),
                (400, 401, 403, 404, 409, 503),
            ),
        },
        "user_key": {
            "post": operation(
                API, "Rotate a user's key", _json(_ref("NewKey"), "The new key."), (400, 401, 403, 404, 503)
            )
        },
        "me": _query_and_body(API, "The caller's own record", _json(_ref("Me"), "The caller."), {}, (400, 401)),
        "health": {
            "get": operation(
                API,
                "Is the server up",
                _json(_ref("Health"), "At least one enabled account is ok."),
                (),
                public=True,
                extra={503: _json(_ref("Health"), "No enabled account is ok.")},
            )
        },
        "metrics": {
            "get": {
                **operation(
                    API,
                    "Prometheus metrics (open unless settings set metrics_token)",
                    {"description": "Prometheus' text format.", "content": {"text/plain": {"schema": STR}}},
                    (401,),
                ),
                "security": [{}, {"metricsToken": []}],
            }
        },
        "accounts": {
            "get": operation(
                API, "List accounts (admins)", _json(_ref("AccountList"), "Every account."), (400, 401, 403)
            ),
            "post": operation(
                API,
                "Add an account (admins)",
                _json(_ref("Account"), "The new account."),
                (400, 401, 403, 409, 503),
                body=_ref("AccountFields"),
                body_required=True,
                form=False,
                ok_status=201,
            ),
        },
        "account": {
            "get": operation(API, "One account (admins)", _json(_ref("Account"), "The account."), (400, 401, 403, 404)),
            "patch": operation(
                API,
                "Change an account (admins)",
                _json(_ref("Account"), "The account."),
                (400, 401, 403, 404, 409, 503),
                body=_ref("AccountFields"),
                body_required=True,
                form=False,
            ),
            "delete": operation(
                API,
                "Remove an account (admins)",
                _json(_ref("Deleted"), "The removed name."),
                (400, 401, 403, 404, 409, 503),
            ),
        },
        "account_test": {
            "post": operation(
                API,
                "Send one tiny request through an account (admins)",
                _json(_ref("AccountTest"), "How it went."),
                (400, 401, 403, 404),
            )
        },
        "usage": _query_and_body(
            API,
            "Usage totals",
            _json(_ref("UsageReport"), "Totals and groups."),
            {"from": STR, "to": STR, "group_by": {"oneOf": [STR, {"type": "array", "items": STR}]}, "user_id": USER_ID},
            (400, 401, 403, 404),
        ),
        "audit": {
            "get": operation(
                API,
                "The audit log (admins)",
                _json(_ref("AuditLog"), "Entries, newest first."),
                (400, 401, 403),
                params={"actor": STR, "target": STR, "action": STR, "from": STR, "to": STR, **PAGE},
            )
        },
        # The original chatgpt-api-server's routes (docs/API.md §5).
        "recall": _query_and_body(
            API,
            "Recall conversations (original)",
            _json(_ref("Recall"), "Conversations by id, or one conversation."),
            {"conversation_id": STR64, "user_id": USER_ID},
            (400, 401, 403, 404),
        ),
        "remove_conversation": _query_and_body(
            API,
            "Remove a conversation (original)",
            _json(_ref("Success"), "Removed."),
            {"conversation_id": STR64, "user_id": USER_ID},
            (400, 401, 403, 404),
            required=("conversation_id",),
        ),
        "add_user": _query_and_body(
            API,
            "Create a user (original)",
            _json({**_ref("Success"), "description": "status, message, user_id, api_key"}, "Created."),
            {"userid": USER_ID, "user_id": USER_ID, "username": STR64, "plus": BOOL, "is_client": BOOL},
            (400, 401, 403, 409, 503),
            ok_status=201,
        ),
        "ask": {
            "post": operation(
                ACHEONG,
                "Ask (acheong08/ChatGPT-API-server)",
                _json(
                    {
                        "type": "object",
                        "required": ["conversation_id", "content"],
                        "properties": {
                            "id": STR,
                            "response_id": STR,
                            "conversation_id": STR,
                            "content": STR,
                            "error": STR,
                        },
                    },
                    "The reply.",
                ),
                (400, 401, 403, 404, 409, *UPSTREAM),
                body=_required(_fields(content=STR, conversation_id=STR, parent_id=STR), "content"),
                body_required=True,
            )
        },
        "access_token": _query_and_body(
            ACCESS,
            "Trade a ChatGPT session token for an access token (original)",
            _json(
                {"type": "object", "required": ["Access Token"], "properties": {"Access Token": STR}},
                "A fresh access token.",
            ),
            {"session_token": STR},
            (400, 401, 502, 504),
        ),
        # acheong08/ChatGPT-API-server's user routes (docs/API.md §5.6).
        "acheong_users": {
            "get": operation(
                ACHEONG_ADMIN,
                "List users (acheong08)",
                {
                    "description": "Users (a browser without admin_key or Authorization gets the users page).",
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["users"],
                                "properties": {"users": {"type": "array"}},
                            }
                        },
                        "text/html": {"schema": STR},
                    },
                },
                (400, 401, 403),
                params={"admin_key": STR},
            )
        },
        "acheong_users_add": {
            "post": operation(
                ACHEONG_ADMIN,
                "Add a user (acheong08)",
                _json(
                    {"type": "object", "required": ["user_id", "token"], "properties": {"user_id": STR, "token": STR}},
                    "The new user and its key.",
                ),
                (400, 401, 403, 409, 503),
                body=_fields(admin_key=STR, username=STR64),
                form=False,
            )
        },
        "acheong_users_delete": {
            "post": operation(
                ACHEONG_ADMIN,
                "Delete a user (acheong08)",
                _json({"type": "object", "properties": {"message": STR}}, "User deleted."),
                (400, 401, 403, 404, 409, 503),
                body=_required(_fields(admin_key=STR, user_id=USER_ID), "user_id"),
                body_required=True,
                form=False,
            )
        },
    }
    # GETs whose only parameters are in the path answer no 400 (their POSTs may: a body not an object).
    for name in ("user", "me", "accounts", "account", "acheong_users"):
        del ops[name]["get"]["responses"]["400"]
    get = ops["conversation"]["get"]  # a GET reads; only a POST with title (or a PATCH) renames
    get["summary"] = "Read a conversation"
    get["parameters"] = [p for p in get["parameters"] if p["name"] != "title"]
    del ops["account_test"]["post"]["responses"]["400"]  # it reads no parameters
    ops.update(_go_operations())
    ops.update(_gajosu_operations())
    return ops


def _go_operations() -> dict:
    ok = _json({"type": "object", "properties": {"success": {"type": "boolean"}}}, "Done.")
    go_list = {
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {"type": "array", "items": _ref("WebItem")},
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "has_missing_conversations": {"type": "boolean"},
        },
    }
    list_ok = _json(
        {"oneOf": [go_list, {"type": "array", "items": _ref("WebItem")}]},
        "go-chatgpt-api's list, or with shape=gajosu gajosu's array (a browser gets the page).",
    )
    list_ok["content"]["text/html"] = {"schema": STR}
    message = {
        "type": "object",
        "properties": {
            "id": STR,
            "author": {"type": "object", "properties": {"role": STR}},
            "content": {"type": "object", "properties": {"content_type": STR, "parts": {"type": "array"}}},
        },
    }
    return {
        "go_conversations": {
            "get": operation(
                GO,
                "List conversations (go-chatgpt-api, gajosu)",
                list_ok,
                (400, 401),
                params={**PAGE, "shape": {"enum": ["default", "gajosu"]}, "user_id": USER_ID},
            ),
            "patch": operation(
                GO,
                "Remove all conversations (go-chatgpt-api)",
                ok,
                (400, 401, 403),
                body=_fields(is_visible={"type": "boolean"}),
                body_required=True,
                form=False,
            ),
        },
        "go_conversation": {
            "get": operation(
                GO,
                "One conversation (go-chatgpt-api)",
                _json(_ref("WebConversation"), "The conversation."),
                (401, 403, 404),
                params={"user_id": USER_ID},
            ),
            "patch": operation(
                GO,
                "Rename or remove a conversation (go-chatgpt-api)",
                ok,
                (400, 401, 403, 404),
                body=_fields(title=STR, is_visible={"type": "boolean"}),
                body_required=True,
                form=False,
            ),
        },
        "go_ask": {
            "post": operation(
                GO,
                "Ask (go-chatgpt-api): the web backend's event stream",
                {"description": "The web backend's event stream.", "content": {"text/event-stream": {"schema": SSE}}},
                (400, 401, 403, 404, 409, *UPSTREAM),
                body=_required(
                    _fields(
                        action=STR,
                        messages={"type": "array", "items": message},
                        model=STR,
                        parent_message_id=STR,
                        conversation_id={"type": ["string", "null"]},
                    ),
                    "messages",
                ),
                body_required=True,
                form=False,
            )
        },
        "go_gen_title": {
            "post": operation(
                GO,
                "A conversation's title (go-chatgpt-api)",
                _json({"type": "object", "required": ["title"], "properties": {"title": STR}}, "The title."),
                (400, 401, 403, 404),
                body=_fields(message_id=STR, model=STR),
                form=False,
            )
        },
        "go_feedback": {
            "post": operation(
                GO,
                "Rate a reply (go-chatgpt-api)",
                _json({"type": "object", "properties": {"rating": STR, "message_id": STR}}, "The rating."),
                (400, 401, 403, 404),
                body=_required(
                    _fields(message_id=STR, conversation_id=STR, rating={"enum": ["thumbsUp", "thumbsDown"]}),
                    "message_id",
                    "conversation_id",
                    "rating",
                ),
                body_required=True,
                form=False,
            )
        },
    }


def _gajosu_operations() -> dict:
    item = _json(
        {"type": "object", "required": ["response"], "properties": {"response": {"type": "object"}}},
        "revChatGPT V1's last ask() item.",
    )
    no_content = {"description": "Deleted; empty body."}
    ask = _fields(prompt=STR, parent_id=STR, model=STR, autocontinue=BOOL)
    return {
        "gajosu_new": {
            "post": operation(
                GAJOSU,
                "Start a conversation (gajosu)",
                item,
                (400, 401, 403, 404, 409, *UPSTREAM),
                body=_required(_fields(prompt=STR, title=STR, model=STR, autocontinue=BOOL), "prompt"),
                body_required=True,
            )
        },
        "gajosu_ask": {
            "post": operation(
                GAJOSU,
                "Continue a conversation (gajosu)",
                item,
                (400, 401, 403, 404, 409, *UPSTREAM),
                body=_required(ask, "prompt"),
                body_required=True,
            )
        },
        "gajosu_messages": {
            "get": operation(
                GAJOSU,
                "A conversation's messages (gajosu)",
                _json(_ref("WebConversation"), "The conversation."),
                (401, 403, 404),
            )
        },
        "gajosu_conversation": {
            "delete": operation(
                GAJOSU, "Delete a conversation (gajosu)", no_content, (400, 401, 403, 404), ok_status=204
            )
        },
        "gajosu_delete_all": {
            "delete": operation(GAJOSU, "Delete all conversations (gajosu)", no_content, (400, 401, 403), ok_status=204)
        },
    }


def _v1_operations() -> dict:
    """path -> {method: operation}; /v1 paths are fixed."""
    stream_or = lambda schema, what: {  # noqa: E731
        "description": what,
        "content": {JSON: {"schema": _ref(schema)}, "text/event-stream": {"schema": SSE}},
    }
    chat_body = {
        "type": "object",
        "required": ["messages"],
        "properties": {
            "messages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["role"],
                    "properties": {
                        "role": STR,
                        "content": {"type": ["string", "array", "null"]},
                    },
                },
            },
            "model": STR,
            "stream": {"type": ["boolean", "null"]},
            "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
        },
        "description": "OpenAI's Chat Completions request; other fields go as they are to an openai account.",
    }
    v1_errors = (400, 401, 403, 404, 409, *UPSTREAM)
    response_id = {"get": None, "delete": None}
    response_id["get"] = operation(V1, "A kept response", _json(_ref("Response"), "The response."), (401, 404))
    response_id["delete"] = operation(
        V1,
        "Delete a kept response",
        _json(
            {"type": "object", "required": ["id"], "properties": {"id": STR, "deleted": {"type": "boolean"}}},
            "Deleted.",
        ),
        (401, 404),
    )
    return {
        "/v1/chat/completions": {
            "post": operation(
                V1,
                "Chat Completions",
                stream_or("ChatCompletion", "A chat.completion, or its chunks with stream."),
                v1_errors,
                body=chat_body,
                body_required=True,
                form=False,
            )
        },
        "/v1/responses": {
            "post": operation(
                V1,
                "Responses",
                stream_or("Response", "A response object, or its typed events with stream."),
                v1_errors,
                body={
                    "type": "object",
                    "properties": {
                        "input": {"type": ["string", "array"]},
                        "model": STR,
                        "instructions": {"type": ["string", "null"]},
                        "stream": {"type": ["boolean", "null"]},
                        "store": {"type": ["boolean", "null"]},
                        "previous_response_id": {"type": ["string", "null"]},
                        "tools": {"type": ["array", "null"]},
                    },
                },
                body_required=True,
                form=False,
            )
        },
        "/v1/responses/{response_id}": response_id,
        "/v1/embeddings": {
            "post": operation(
                V1,
                "Embeddings",
                _json(_ref("Embeddings"), "The upstream's embeddings."),
                v1_errors,
                body={
                    "type": "object",
                    "required": ["model", "input"],
                    "properties": {
                        "model": STR,
                        "input": {"type": ["string", "array"]},
                        "encoding_format": STR,
                        "dimensions": {"type": "integer"},
                        "user": STR,
                    },
                },
                body_required=True,
                form=False,
            )
        },
        "/v1/models": {
            "get": operation(V1, "Models", _json(_ref("ModelList"), "The models this key may use."), (401,))
        },
        "/v1/models/{model_id}": {"get": operation(V1, "One model", _json(_ref("Model"), "The model."), (401, 404))},
    }


OPENAPI_NAME = "openapi"  # the description's own route (no key, not itself described as an operation)


def build(routes: dict) -> dict:
    """The description, with every /api route at its configured path (routes: name -> Flask path)."""
    paths: dict = {}
    for name, methods in _api_operations().items():
        if name not in routes:
            continue
        path = openapi_path(routes[name])
        item = paths.setdefault(path, {})
        for method, op in methods.items():
            item[method] = {**op, "operationId": f"{name}_{method}"}
        if _path_params(path):
            item["parameters"] = _path_params(path)
    for path, methods in _v1_operations().items():
        item = paths.setdefault(path, {})
        slug = path.strip("/").replace("/", "_").replace("{", "").replace("}", "")
        for method, op in methods.items():
            item[method] = {**op, "operationId": f"{slug}_{method}"}
        if _path_params(path):
            item["parameters"] = _path_params(path)
    if OPENAPI_NAME in routes:
        paths[openapi_path(routes[OPENAPI_NAME])] = {
            "get": {
                "operationId": "openapi_get",
                "summary": "This description",
                "tags": ["api"],
                "security": [],
                "responses": {"200": _json({"type": "object"}, "The OpenAPI 3.1 description.")},
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chatgpt-api-server",
            "version": VERSION,
            "description": "Every /api route, the original servers' routes and the OpenAI-compatible /v1. "
            "docs/API.md has the prose. GET routes read the query string; POST, PATCH and DELETE "
            "read the query string merged with a JSON or form body.",
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "api", "description": "This server's own routes (docs/API.md §4)."},
            {"name": "originals", "description": "The original chatgpt-api-server's routes (§5)."},
            {"name": "acheong08", "description": "acheong08/ChatGPT-API-server (§5.4, §5.6)."},
            {"name": "go-chatgpt-api", "description": "linweiyuan/go-chatgpt-api (§5.8)."},
            {"name": "gajosu", "description": "gajosu/chat-gpt-rest-api (§5.9)."},
            {"name": "v1", "description": "The OpenAI-compatible API (§7)."},
        ],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
                "userKey": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "user",
                    "description": "The key as the `user` parameter (also api_key, client, admin; or in the body).",
                },
                "bareKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "The key alone in the header, as the originals' clients send it.",
                },
                "metricsToken": {"type": "http", "scheme": "bearer", "description": "settings' metrics_token."},
                "adminKey": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "admin_key",
                    "description": "acheong08's admin_key.",
                },
            },
        },
    }
