"""The /api routes. Paths come from settings ("routes"); each view parses, calls, shapes."""

from __future__ import annotations

from flask import Flask, Response, current_app, jsonify, request

from app import auth
from app import metrics as app_metrics
from app.api.compat import original_answer
from app.api.params import choice, flag, json_object, number, request_params, text, token
from app.context import services
from app.errors import BadRequest, Unauthorized, under_api
from app.pool import PLUS_MODES
from app.render import reply_only_response
from app.sse import chat_stream


def chat():
    params = request_params()
    actor = auth.caller(params)  # 401 before any 400: a caller without a key learns that first
    prompt = text(params, "prompt", required=True, max_len=services().chat.max_prompt_chars)
    plus = choice(params, "plus", PLUS_MODES, "false")
    reply_only, pretty = flag(params, "reply_only"), flag(params, "pretty")
    access_token = token(params, "access_token")
    user_plus = flag(params, "user_plus")
    shape = choice(params, "shape", ("auto", "original", "default"), "auto")  # auto: as the key's record says
    principal = auth.principal(params, create=True, actor=actor)
    options = {
        "conversation_id": text(params, "conversation_id", max_len=64),
        "model": text(params, "model", max_len=128),
        "plus": plus,
        "access_token": access_token,
        "user_plus": user_plus,
    }
    if flag(params, "stream"):  # everything is checked and the account chosen before the first byte
        return chat_stream(services().chat.ask_stream(principal, prompt, **options))
    answer = services().chat.ask(principal, prompt, **options)
    if reply_only:
        return reply_only_response(answer["reply"], pretty)
    if shape == "original" or (shape == "auto" and "original" in (principal.actor.shape, principal.user.shape)):
        return jsonify(original_answer(answer))
    return jsonify(answer)


def conversations():
    params = request_params()
    principal = auth.principal(params)
    if _method(params) == "DELETE":
        return jsonify(services().conversations.delete_all(principal))
    offset, limit = number(params, "offset", 0), number(params, "limit", 50)
    return jsonify(services().conversations.list(principal, offset, limit))


def conversation(conversation_id: str):
    params = request_params()
    principal = auth.principal(params)
    method = _method(params)
    if method == "DELETE":
        return jsonify(services().conversations.delete(principal, conversation_id))
    if method == "PATCH" or (method == "POST" and "title" in params):
        title = text(params, "title", required=True, max_len=1000)
        return jsonify(services().conversations.rename(principal, conversation_id, title))
    return jsonify(services().conversations.get(principal, conversation_id))


def users():
    params = request_params()
    actor = auth.caller(params)
    if _method(params) == "POST":
        user, key = services().users.create(
            actor,
            text(params, "username", required=True, max_len=64),
            role=choice(params, "role", ("admin", "client", "user"), "user"),
            plus=flag(params, "plus"),
            user_id=text(params, "user_id", max_len=64),
        )
        return jsonify({"status": "success", **_described(user), "api_key": key}), 201
    offset, limit = number(params, "offset", 0), number(params, "limit", 100)
    page, total = services().users.search(actor, text(params, "q", max_len=200), offset, limit)
    return jsonify({"users": [_described(u) for u in page], "total": total, "offset": offset, "limit": limit})


def user(user_id: str):
    params = request_params()
    actor = auth.caller(params)
    method = _method(params)
    if method == "DELETE":
        removed = services().users.delete(actor, user_id)
        return jsonify(
            {"status": "success", "deleted": removed[0].user_id, "deleted_users": [u.user_id for u in removed[1:]]}
        )
    if method == "PATCH":
        changes = {k: params[k] for k in ("username", "plus", "limits", "role", "shape") if k in params}
        extra = sorted(set(params) - set(changes) - {"_method", *auth.KEY_PARAMS})
        if extra:
            raise BadRequest(f"{extra[0]}: cannot be changed (username, plus, limits, role, shape can)", param=extra[0])
        if not changes:
            raise BadRequest("send at least one of username, plus, limits, role, shape")
        if "plus" in changes and not isinstance(changes["plus"], bool):
            changes["plus"] = flag(params, "plus")
        updated = services().users.update(actor, user_id, changes)
        return jsonify({"status": "success", **_described(updated)})
    return jsonify(_described(services().users.visible(actor, user_id)))


def _described(user) -> dict:
    """A user as the API shows it: its fields, its own limits and the limits that apply to it."""
    return {**user.public(), "effective_limits": services().quota.limits_of(user)}


def user_key(user_id: str):
    params = request_params()
    updated, key = services().users.rotate_key(auth.caller(params), user_id)
    return jsonify({"status": "success", "user_id": updated.user_id, "api_key": key})


def me():
    params = request_params()
    user = auth.caller(params)
    return jsonify({**_described(user), "today": services().usage.today(user)})


def usage():
    params = request_params()
    actor = auth.caller(params)
    report = services().usage.report(
        actor,
        text(params, "from", max_len=10),
        text(params, "to", max_len=10),
        params.get("group_by"),
        text(params, "user_id", max_len=64),
    )
    return jsonify(report)


def audit():
    params = request_params()
    actor = auth.caller(params)
    return jsonify(
        services().audit.list(
            actor,
            who=text(params, "actor", max_len=128),
            target=text(params, "target", max_len=160),
            action=text(params, "action", max_len=64),
            since=text(params, "from", max_len=40),
            until=text(params, "to", max_len=40),
            offset=number(params, "offset", 0),
            limit=number(params, "limit", 50),
        )
    )


def health():
    """Liveness for a load balancer: 503 while no account can take a new conversation."""
    pool = services().pool
    states = pool.counts()
    up = states["ok"] > 0
    body = {"status": "ok" if up else "unavailable", "accounts": len(pool.enabled()), "demo_only": pool.demo_only()}
    return jsonify({**body, "states": states}), 200 if up else 503


def metrics():
    """Prometheus' text format (app/metrics.py): open when settings set no metrics_token, else for its bearer."""
    token = current_app.config["SETTINGS"]["metrics_token"]
    if not app_metrics.authorized(token, request.headers.get("Authorization")):
        raise Unauthorized("send the metrics_token as Authorization: Bearer <token>")
    return Response(app_metrics.exposition(services().pool), content_type=app_metrics.CONTENT_TYPE)


def accounts():
    actor = _account_admin()
    if request.method == "POST":
        report = services().accounts.add(actor, json_object())
        return jsonify({"status": "success", **report.public()}), 201
    return jsonify({"accounts": [r.public() for r in services().accounts.list(actor)]})


def account(name: str):
    actor = _account_admin()
    if request.method == "DELETE":
        services().accounts.remove(actor, name)
        return jsonify({"status": "success", "deleted": name})
    if request.method == "PATCH":
        report = services().accounts.update(actor, name, json_object())
        return jsonify({"status": "success", **report.public()})
    return jsonify(services().accounts.get(actor, name).public())


def account_test(name: str):
    return jsonify(services().accounts.test(_account_admin(), name))


def _account_admin():
    """The caller of an account route, by the Authorization header or ?user=: the JSON body holds the
    account's own fields, whose api_key is the account's key, never the caller's."""
    return auth.caller(dict(request.args))


def _method(params: dict) -> str:
    """The HTTP method, which a POST may override with "_method" for clients that only POST."""
    override = params.get("_method")
    if request.method == "POST" and isinstance(override, str) and override.upper() in ("DELETE", "PATCH"):
        return override.upper()
    return request.method


VIEWS = {
    "chat": (chat, ["GET", "POST"]),
    "conversations": (conversations, ["GET", "POST", "DELETE"]),
    "conversation": (conversation, ["GET", "POST", "PATCH", "DELETE"]),
    "users": (users, ["GET", "POST"]),
    "user": (user, ["GET", "POST", "PATCH", "DELETE"]),
    "user_key": (user_key, ["POST"]),
    "me": (me, ["GET", "POST"]),
    "health": (health, ["GET"]),
    "metrics": (metrics, ["GET"]),
    "accounts": (accounts, ["GET", "POST"]),
    "account": (account, ["GET", "PATCH", "DELETE"]),
    "account_test": (account_test, ["POST"]),
    "usage": (usage, ["GET", "POST"]),
    "audit": (audit, ["GET"]),
}


def register(app: Flask, routes: dict) -> None:
    """Add every /api view at the path settings give it."""
    from app.api import acheong, compat, gajosu, linweiyuan, openapi_view

    views = {**VIEWS, **compat.VIEWS, **acheong.VIEWS, **linweiyuan.VIEWS, **gajosu.VIEWS, **openapi_view.VIEWS}
    page_paths = set(app.config["SETTINGS"]["pages"].values())
    shared = {}  # path -> (view, methods): served from the page's own rule when a program asks (app/web/routes.py)
    for name, (view, methods) in views.items():
        path = routes[name]
        if path in page_paths:  # only the SHARES_PAGE routes (app/config.py)
            shared[path] = (view, methods)
            methods = [m for m in methods if m != "GET"]
            if not methods:
                continue
        app.add_url_rule(path, endpoint=f"api.{name}", view_func=view, methods=methods)
    app.config["SHARED_API_VIEWS"] = shared
    # Errors under a first path segment only routes use are JSON, wherever settings moved the routes.
    firsts = {"/" + path.strip("/").split("/")[0] for path in routes.values()}
    pages = {"/" + path.strip("/").split("/")[0] for path in page_paths}
    app.config["JSON_PREFIXES"] = tuple(sorted({"/api", "/v1"} | (firsts - pages)))

    @app.after_request
    def _no_store(response):
        """API answers carry keys, replies and conversations: no cache on the way may keep one."""
        if under_api(request.path) or request.headers.get("Authorization"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response
