"""The rules, one function per action, called by every front (web, api, openai_api)."""

from app.services.chat import ChatService
from app.services.conversations import ConversationService
from app.services.principal import Principal
from app.services.users import UserService

__all__ = ["ChatService", "ConversationService", "Principal", "UserService"]
