"""What happens around a user's life: deletion takes its conversations, ids reused start clean."""

from __future__ import annotations

import pytest

from app import config
from app.errors import ConfigError


def test_deleting_a_user_deletes_its_conversations(server, admin):
    """A later user given the same id does not inherit the deleted user's conversations."""
    first = server.create_user(admin, "kim", user_id="kim")
    server.chat(first["api_key"], "private thoughts")
    assert server.call("DELETE", "/api/users/kim", admin).status_code == 200
    again = server.create_user(admin, "kim again", user_id="kim")
    listed = server.get("/api/conversations", again["api_key"]).json()
    assert listed["total"] == 0 and listed["conversations"] == []
    assert server.get("/api/conversations", admin, params={"user_id": "kim"}).json()["total"] == 0


def test_access_token_on_a_pooled_conversation_keeps_the_pinned_account(server, user):
    """A token sent with a follow-up of a pool conversation is not used; the answer names the real account."""
    first = server.chat(user["api_key"], "hello")
    follow = server.chat(user["api_key"], "again", conversation_id=first["conversation_id"], access_token="tok")
    assert follow["account"] == "demo"
    messages = server.services.store.messages(first["conversation_id"])
    assert [m.account_name for m in messages] == ["demo", "demo"]


@pytest.mark.parametrize(
    ("routes", "culprit"),
    [
        ({"conversation": "/c/<cid>"}, "routes.conversation: must contain <conversation_id>"),
        ({"user_key": "/k"}, "routes.user_key: must contain <user_id>"),
        ({"chat": "/ask/<user_id>"}, "routes.chat: must contain no placeholder"),
        ({"chat": "ask"}, "routes.chat: must start with '/'"),
    ],
)
def test_moved_routes_keep_their_placeholders(routes, culprit):
    """A route that loses or renames its placeholder stops start-up instead of failing every request."""
    with pytest.raises(ConfigError, match=culprit.replace("(", r"\(")):
        config.validate({"accounts": [], "routes": routes})


def test_conversation_database_is_owner_only(server, user, tmp_path):
    """The SQLite file (and its WAL) holding everyone's conversations is readable by its owner only."""
    server.chat(user["api_key"], "a private matter")
    for name in ("conversations.db", "conversations.db-wal"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
