"""User management over real HTTP: PATCH /api/users/<id> (username, plus, limits, role) by the rules of
creation, kept in users.json; and GET /api/users paged and searchable."""

from __future__ import annotations

import json

import pytest
from conftest import ADMIN_KEY, start_server

NO_LIMITS = {"requests_per_minute": None, "requests_per_day": None, "tokens_per_day": None}


# -- helpers -----------------------------------------------------------------------------------


def patch(server, key, target: str, **changes):
    return server.call("PATCH", f"/api/users/{target}", key, json=changes)


def changed(server, key, target: str, **changes) -> dict:
    response = patch(server, key, target, **changes)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success" and body["user_id"] == target, body
    return body


def shown(server, user_id: str, key: str = ADMIN_KEY) -> dict:
    response = server.get(f"/api/users/{user_id}", key)
    assert response.status_code == 200, response.text
    return response.json()


def refused(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error", body
    if param is not None:
        assert body.get("param") == param, body
        if status == 400:
            assert param in body["message"], body
    return body


def listing(server, key, **params) -> dict:
    response = server.get("/api/users", key, params=params)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def cast(server, admin):
    """Users made by the admin, a plus client and a plain client (each with users of its own)."""
    plus_bot = server.create_user(admin, "plus-bot", role="client", plus=True)
    bot = server.create_user(admin, "bot", role="client")
    return {
        "alice": server.create_user(admin, "alice"),
        "plus_bot": plus_bot,
        "bot": bot,
        "pia": server.create_user(plus_bot["api_key"], "pia", user_id="pia-ext"),
        "bea": server.create_user(bot["api_key"], "bea", user_id="bea-ext"),
    }


# -- what an admin may change ---------------------------------------------------------------------------


def test_an_admin_changes_username_plus_limits_and_role_and_get_shows_them(server, admin, cast):
    alice = cast["alice"]
    body = changed(server, admin, alice["user_id"], username="Alice A.", plus=True)
    assert (body["username"], body["plus"], body["role"]) == ("Alice A.", True, "user")
    assert body["limits"] == {} and body["effective_limits"] == NO_LIMITS
    body = changed(server, admin, alice["user_id"], limits={"requests_per_minute": 10, "tokens_per_day": None})
    assert body["limits"] == {"requests_per_minute": 10, "tokens_per_day": None}
    assert body["effective_limits"] == {**NO_LIMITS, "requests_per_minute": 10}
    body = changed(server, admin, alice["user_id"], role="client")
    assert body["role"] == "client"
    got = shown(server, alice["user_id"])
    assert (got["username"], got["plus"], got["role"]) == ("Alice A.", True, "client")
    assert got["limits"] == {"requests_per_minute": 10, "tokens_per_day": None}
    assert "key_hash" not in got and "api_key" not in got
    assert server.get("/api/me", alice["api_key"]).json()["username"] == "Alice A."  # the same key still works
    names = {u["user_id"]: u["username"] for u in listing(server, admin)["users"]}
    assert names[alice["user_id"]] == "Alice A."
    body = changed(server, admin, alice["user_id"], limits={})  # {}: back to the role's defaults
    assert body["limits"] == {} and body["effective_limits"] == NO_LIMITS
    body = changed(server, admin, cast["bea"]["user_id"], plus=True)  # any user, whoever made it
    assert body["plus"] is True


def test_post_with_method_patch_works_as_a_form_and_as_json(server, admin, cast):
    alice = cast["alice"]
    form = server.post(f"/api/users/{alice['user_id']}", admin, data={"_method": "PATCH", "username": "via form"})
    assert form.status_code == 200, form.text
    assert form.json()["username"] == "via form"
    plus = server.post(f"/api/users/{alice['user_id']}", admin, data={"_method": "patch", "plus": "true"})
    assert plus.status_code == 200 and plus.json()["plus"] is True, plus.text
    body = {"_method": "PATCH", "limits": {"requests_per_day": 3}, "plus": False}
    posted = server.post(f"/api/users/{alice['user_id']}", admin, json=body)
    assert posted.status_code == 200, posted.text
    assert (posted.json()["limits"], posted.json()["plus"]) == ({"requests_per_day": 3}, False)
    got = shown(server, alice["user_id"])
    assert (got["username"], got["plus"], got["limits"]) == ("via form", False, {"requests_per_day": 3})
    nothing = server.post(f"/api/users/{alice['user_id']}", admin, json={"_method": "PATCH"})
    refused(nothing, 400)


# -- what a client may change ---------------------------------------------------------------------------


def test_a_client_changes_only_its_own_users(server, cast):
    bot = cast["bot"]["api_key"]
    body = changed(server, bot, cast["bea"]["user_id"], username="Bea B.")
    assert body["username"] == "Bea B."
    by_own_id = patch(server, bot, "bea-ext", username="Bea C.")  # by the client's own id for her
    assert by_own_id.status_code == 200 and by_own_id.json()["username"] == "Bea C.", by_own_id.text
    for other in ("alice", "pia", "plus_bot", "bot"):
        response = patch(server, bot, cast[other]["user_id"], username="taken over")
        refused(response, 404)
        assert shown(server, cast[other]["user_id"])["username"] != "taken over"
    refused(patch(server, bot, "pia-ext", username="x"), 404)  # another client's own id means nothing here
    refused(patch(server, bot, "admin", username="x"), 404)
    refused(patch(server, bot, "nobody", username="x"), 404)


def test_a_client_never_changes_a_role(server, cast):
    for role in ("client", "admin"):
        refused(patch(server, cast["bot"]["api_key"], cast["bea"]["user_id"], role=role), 403, "role")
    assert shown(server, cast["bea"]["user_id"])["role"] == "user"
    same = patch(server, cast["bot"]["api_key"], cast["bea"]["user_id"], role="user")  # no change asked
    assert same.status_code == 200, same.text


def test_a_client_grants_plus_only_if_it_is_plus_itself(server, cast):
    refused(patch(server, cast["bot"]["api_key"], cast["bea"]["user_id"], plus=True), 403, "plus")
    assert shown(server, cast["bea"]["user_id"])["plus"] is False
    assert changed(server, cast["plus_bot"]["api_key"], cast["pia"]["user_id"], plus=True)["plus"] is True
    assert changed(server, cast["plus_bot"]["api_key"], cast["pia"]["user_id"], plus=False)["plus"] is False
    assert changed(server, cast["bot"]["api_key"], cast["bea"]["user_id"], plus=False)["plus"] is False


def test_a_client_never_gives_more_than_its_own_limits(server, admin, cast):
    bot, bea = cast["bot"], cast["bea"]["user_id"]
    changed(server, admin, bot["user_id"], limits={"requests_per_minute": 10, "tokens_per_day": 1000})
    for limits in (
        {"requests_per_minute": 11},
        {"requests_per_minute": None},  # no limit is more than 10
        {"tokens_per_day": 1001},
        {"requests_per_minute": 5, "tokens_per_day": 2000},
    ):
        body = refused(patch(server, bot["api_key"], bea, limits=limits), 403, "limits")
        assert "own limit" in body["message"], body
    assert shown(server, bea)["limits"] == {}
    given = {"requests_per_minute": 10, "tokens_per_day": 5, "requests_per_day": 100}  # no daily request limit
    body = changed(server, bot["api_key"], bea, limits=given)
    assert body["limits"] == given and body["effective_limits"] == given
    assert changed(server, bot["api_key"], bea, limits={"requests_per_day": None})["limits"] == {
        "requests_per_day": None
    }
    assert changed(server, bot["api_key"], bea, limits={})["limits"] == {}
    refused(patch(server, bot["api_key"], bot["user_id"], limits={"requests_per_minute": 99}), 404)  # not itself


def test_a_user_changes_nobody_not_even_itself(server, cast):
    alice = cast["alice"]
    for target in (alice["user_id"], cast["bea"]["user_id"], "admin"):
        for changes in ({"username": "me"}, {"limits": {}}, {"plus": True}):
            refused(patch(server, alice["api_key"], target, **changes), 403)
    assert shown(server, alice["user_id"])["username"] == "alice"


def test_nobody_without_a_key_changes_anyone(server, cast):
    refused(patch(server, None, cast["alice"]["user_id"], username="x"), 401)
    refused(patch(server, "cas-not-a-key-0000000000000000", cast["alice"]["user_id"], username="x"), 401)


# -- conflicts ---------------------------------------------------------------------------------------


def test_the_last_admin_is_never_demoted(server, admin):
    refused(patch(server, admin, "admin", role="user"), 409, "role")
    refused(patch(server, admin, "admin", role="client"), 409, "role")
    second = server.create_user(admin, "second-admin", role="admin")
    assert changed(server, admin, second["user_id"], role="user")["role"] == "user"
    assert changed(server, admin, second["user_id"], role="admin")["role"] == "admin"
    assert changed(server, second["api_key"], "admin", role="user")["role"] == "user"  # two admins: one may go
    refused(patch(server, second["api_key"], second["user_id"], role="client"), 409, "role")
    assert shown(server, second["user_id"], second["api_key"])["role"] == "admin"
    assert shown(server, "admin", second["api_key"])["role"] == "user"
    refused(server.get("/api/users", admin), 403)  # the demoted admin's key is a user's now
    assert changed(server, second["api_key"], "admin", username="renamed")["username"] == "renamed"  # not a demotion


def test_a_client_that_still_owns_users_keeps_its_role(server, admin, cast):
    for role in ("user", "admin"):
        body = refused(patch(server, admin, cast["bot"]["user_id"], role=role), 409, "role")
        assert "1 user" in body["message"], body
    assert shown(server, cast["bot"]["user_id"])["role"] == "client"
    assert server.call("DELETE", f"/api/users/{cast['bea']['user_id']}", admin).status_code == 200
    assert changed(server, admin, cast["bot"]["user_id"], role="user")["role"] == "user"
    assert changed(server, admin, cast["alice"]["user_id"], role="client")["role"] == "client"


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["user_id", "api_key_hash", "created_by", "external_id", "password"])
def test_an_unknown_field_answers_400_naming_it(server, admin, cast, field):
    refused(patch(server, admin, cast["alice"]["user_id"], username="new", **{field: "x"}), 400, field)
    assert shown(server, cast["alice"]["user_id"])["username"] == "alice"  # nothing changed


def test_an_unknown_field_in_a_form_answers_400_too(server, admin, cast):
    """POST with _method=PATCH as a form follows the same rules as JSON: nothing unknown is ignored quietly."""
    sent = {"_method": "PATCH", "username": "new", "user_id": "hijack"}
    refused(server.post(f"/api/users/{cast['alice']['user_id']}", admin, data=sent), 400, "user_id")
    assert shown(server, cast["alice"]["user_id"])["username"] == "alice"


@pytest.mark.parametrize(
    "limits",
    [
        {"requests_per_minute": -1},
        {"requests_per_minute": "x"},
        {"requests_per_minute": "10"},
        {"requests_per_day": True},
        {"tokens_per_day": 1.5},
        {"tokens_per_day": [1]},
        {"requests_per_hour": 5},
        "x",
        [],
        5,
        None,
    ],
    ids=repr,
)
def test_bad_limits_answer_400_naming_limits(server, admin, cast, limits):
    refused(patch(server, admin, cast["alice"]["user_id"], limits=limits), 400, "limits")
    refused(patch(server, cast["bot"]["api_key"], cast["bea"]["user_id"], limits=limits), 400, "limits")
    assert shown(server, cast["alice"]["user_id"])["limits"] == {}


@pytest.mark.parametrize(
    "changes, param",
    [
        ({"username": ""}, "username"),
        ({"username": "   "}, "username"),
        ({"username": "x" * 65}, "username"),
        ({"username": 5}, "username"),
        ({"username": {"a": 1}}, "username"),
        ({"username": ["x"]}, "username"),
        ({"plus": "perhaps"}, "plus"),
        ({"role": "wizard"}, "role"),
    ],
)
def test_bad_values_answer_400_naming_them(server, admin, cast, changes, param):
    refused(patch(server, admin, cast["alice"]["user_id"], **changes), 400, param)
    got = shown(server, cast["alice"]["user_id"])
    assert (got["username"], got["plus"], got["role"]) == ("alice", False, "user")


def test_patching_an_unknown_user_is_404(server, admin):
    refused(patch(server, admin, "nobody", username="x"), 404)


# -- kept ------------------------------------------------------------------------------------------


def test_a_change_is_kept_in_users_json_and_seen_by_a_new_server(tmp_path):
    first = start_server(tmp_path)
    try:
        made = first.create_user(ADMIN_KEY, "alice")
        changed(first, ADMIN_KEY, made["user_id"], username="Alicia", plus=True, limits={"requests_per_day": 7})
        changed(first, ADMIN_KEY, made["user_id"], role="client")
    finally:
        first.stop()
    on_disk = json.loads((tmp_path / "users.json").read_text())
    assert "Alicia" in json.dumps(on_disk)
    second = start_server(tmp_path)
    try:
        got = shown(second, made["user_id"])
        assert (got["username"], got["plus"], got["role"]) == ("Alicia", True, "client")
        assert got["limits"] == {"requests_per_day": 7}
        assert got["effective_limits"] == {**NO_LIMITS, "requests_per_day": 7}
        me = second.get("/api/me", made["api_key"])
        assert me.status_code == 200 and me.json()["username"] == "Alicia", me.text
        assert [u["username"] for u in listing(second, ADMIN_KEY, q="alicia")["users"]] == ["Alicia"]
    finally:
        second.stop()


# -- listing: pages and search ---------------------------------------------------------------------------


def test_the_user_list_comes_in_pages(server, admin):
    for i in range(7):
        server.create_user(admin, f"person-{i}")
    everyone = listing(server, admin)
    assert (everyone["total"], everyone["offset"], everyone["limit"]) == (8, 0, 100)
    order = [u["user_id"] for u in everyone["users"]]
    assert order[0] == "admin" and len(order) == 8
    pages = [listing(server, admin, limit=3, offset=offset) for offset in (0, 3, 6, 9)]
    assert [len(p["users"]) for p in pages] == [3, 3, 2, 0]
    assert all(p["total"] == 8 and p["limit"] == 3 for p in pages)
    assert [u["user_id"] for p in pages for u in p["users"]] == order  # oldest first, nothing twice
    assert len(listing(server, admin, limit=1000)["users"]) == 8


@pytest.mark.parametrize(
    "params, param",
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": "-1"}, "offset"),
    ],
)
def test_bad_paging_answers_400(server, admin, params, param):
    refused(server.get("/api/users", admin, params=params), 400, param)


def test_search_matches_username_user_id_and_a_clients_own_id_in_any_case(server, admin, cast):
    server.create_user(admin, "Bob Builder", user_id="builder-7")
    bot = cast["bot"]["api_key"]
    server.create_user(bot, "Zed", user_id="discord-4242")

    def names(key, q, **params):
        return sorted(u["username"] for u in listing(server, key, q=q, **params)["users"])

    assert names(admin, "BOB") == ["Bob Builder"]
    assert names(admin, "builder-") == ["Bob Builder"]  # the user id
    assert names(admin, "bot") == ["bot", "plus-bot"]
    assert names(admin, cast["alice"]["user_id"][-6:]) == ["alice"]
    assert names(bot, "4242") == ["Zed"]  # the client's own id for its user
    assert names(bot, "DISCORD") == ["Zed"]
    assert names(bot, "bea-EXT") == ["bea"]
    assert names(bot, "alice") == []  # not the client's
    assert names(bot, "pia") == []
    assert names(admin, "nothing-like-this") == []
    assert listing(server, admin, q="e", limit=2)["total"] == len(names(admin, "e"))
    assert len(listing(server, admin, q="e", limit=2)["users"]) == 2
    refused(server.get("/api/users", cast["alice"]["api_key"], params={"q": "a"}), 403)
