"""Storage behind narrow interfaces: users (users.json) and conversations (SQL)."""

from app.store.conversations import Conversation, Message, SqlConversationStore
from app.store.users import ROLES, User, UserStore
from app.store.users_json import JsonUserStore

__all__ = [
    "ROLES",
    "Conversation",
    "JsonUserStore",
    "Message",
    "SqlConversationStore",
    "User",
    "UserStore",
]
