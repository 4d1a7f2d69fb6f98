"""Listing, reading, renaming and removing a user's conversations."""

from __future__ import annotations

from datetime import UTC, datetime

from app.errors import BadRequest, Forbidden, NotFound
from app.services.principal import Principal
from app.store.conversations import Conversation, Message, SqlConversationStore

MAX_LIST = 100
MAX_TITLE = 200
RATINGS = ("thumbsUp", "thumbsDown")  # go-chatgpt-api's message_feedback, as the web backend names them


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def conversation_summary(conv: Conversation) -> dict:
    return {
        "conversation_id": conv.conversation_id,
        "title": conv.title,
        "created_at": iso(conv.created_at),
        "updated_at": iso(conv.updated_at),
        "message_count": conv.message_count,
    }


def message_view(message: Message, rating: str | None = None) -> dict:
    return {
        "message_id": message.message_id,
        "parent_id": message.parent_id,
        "prompt": message.prompt,
        "reply": message.reply,
        "model": message.model,
        "complete": message.complete,
        "created_at": iso(message.created_at),
        "rating": rating,
    }


class ConversationService:
    def __init__(self, store: SqlConversationStore):
        self.store = store

    def list(self, principal: Principal, offset: int = 0, limit: int = 50) -> dict:
        """Return the user's conversations, newest first, with the total count."""
        if not 1 <= limit <= MAX_LIST:
            raise BadRequest(f"limit must be between 1 and {MAX_LIST}", param="limit")
        if offset < 0:
            raise BadRequest("offset must be 0 or more", param="offset")
        owner = principal.user.user_id
        items = self.store.list(owner, offset, limit)
        return {
            "user_id": owner,
            "total": self.store.count(owner),
            "offset": offset,
            "limit": limit,
            "conversations": [conversation_summary(c) for c in items],
        }

    def all_summaries(self, principal: Principal) -> list[dict]:
        """Return every conversation of the user, newest first (the original recall's listing)."""
        return [conversation_summary(c) for c in self.store.list(principal.user.user_id, 0, None)]

    def readable(self, principal: Principal, conversation_id: str) -> Conversation:
        """Return a conversation the principal may read; NotFound for anyone else's."""
        conv = self.store.get(conversation_id) if conversation_id else None
        if conv is None:
            raise NotFound(f"no conversation {conversation_id!r}", param="conversation_id")
        if conv.owner_id == principal.user.user_id or principal.actor.role == "admin":
            return conv
        raise NotFound(f"no conversation {conversation_id!r}", param="conversation_id")

    def writable(self, principal: Principal, conversation_id: str) -> Conversation:
        """Return a conversation the principal may change; admins only read others' conversations."""
        conv = self.readable(principal, conversation_id)
        if conv.owner_id != principal.user.user_id or not principal.may_write:
            raise Forbidden("admins may read other users' conversations but not change them")
        return conv

    def get(self, principal: Principal, conversation_id: str) -> dict:
        conv = self.readable(principal, conversation_id)
        view = conversation_summary(conv)
        view["user_id"] = conv.owner_id
        ratings = self.store.ratings(conversation_id)
        view["messages"] = [message_view(m, ratings.get(m.message_id)) for m in self.store.messages(conversation_id)]
        return view

    def records(self, principal: Principal, conversation_id: str) -> tuple[Conversation, list[Message], dict]:
        """A conversation the principal may read as stored: its record, its messages oldest first and their
        ratings ({message_id: rating}), for fronts that shape it their own way (epoch times, a message tree)."""
        conv = self.readable(principal, conversation_id)
        return conv, self.store.messages(conversation_id), self.store.ratings(conversation_id)

    def rate(self, principal: Principal, conversation_id: str, message_id: str | None, rating: str | None) -> dict:
        """Keep the caller's rating (thumbsUp or thumbsDown) of one reply of a conversation it may change;
        NotFound for another's conversation or a message not in it."""
        if rating not in RATINGS:
            raise BadRequest(f"rating must be one of {', '.join(RATINGS)}", param="rating")
        if not message_id:
            raise BadRequest("message_id is required", param="message_id")
        conv = self.writable(principal, conversation_id)
        self.store.rate(conv.conversation_id, message_id, rating)
        return {
            "status": "success",
            "message_id": message_id,
            "conversation_id": conv.conversation_id,
            "user_id": conv.owner_id,
            "rating": rating,
        }

    def rename(self, principal: Principal, conversation_id: str, title: str | None) -> dict:
        title = " ".join((title or "").split())
        if not title:
            raise BadRequest("title is required", param="title")
        if len(title) > MAX_TITLE:
            raise BadRequest(f"title must be at most {MAX_TITLE} characters", param="title")
        conv = self.writable(principal, conversation_id)
        self.store.rename(conv.conversation_id, title)
        conv.title = title
        return {"status": "success", **conversation_summary(conv)}

    def delete(self, principal: Principal, conversation_id: str) -> dict:
        conv = self.writable(principal, conversation_id)
        self.store.delete([conv.conversation_id])
        return {"status": "success", "deleted": 1, "conversation_id": conv.conversation_id}

    def delete_all(self, principal: Principal) -> dict:
        if not principal.may_write:
            raise Forbidden("admins may read other users' conversations but not change them")
        deleted = self.store.delete(self.store.owned_ids(principal.user.user_id))
        return {"status": "success", "deleted": deleted}
