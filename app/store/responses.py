"""Responses this server produced on /v1/responses, kept per user (OpenAI's `store: true`), so that
`previous_response_id` can continue from one and GET/DELETE /v1/responses/<id> find it."""

from __future__ import annotations

import json
import time

from sqlalchemy import Column, Float, Index, String, Table, Text, delete, insert, select

from app.store.conversations import metadata

stored_responses = Table(
    "stored_responses",
    metadata,
    Column("response_id", String(64), primary_key=True),
    Column("owner_id", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("response", Text, nullable=False),  # the response object as it was answered (JSON)
    Column("messages", Text, nullable=False),  # the Chat Completions messages so far, its output included (JSON)
)
Index("ix_stored_responses_owner", stored_responses.c.owner_id)


class SqlResponses:
    def __init__(self, store):
        self._store = store

    def keep(self, owner_id: str, response: dict, messages: list[dict]) -> None:
        values = {
            "response_id": response["id"],
            "owner_id": owner_id,
            "created_at": time.time(),
            "response": json.dumps(response, ensure_ascii=False),
            "messages": json.dumps(messages, ensure_ascii=False),
        }
        with self._store.write() as db:
            db.execute(insert(stored_responses).values(**values))

    def get(self, owner_id: str, response_id: str) -> tuple[dict, list[dict]] | None:
        """A stored response and its messages, if owner_id made it."""
        query = select(stored_responses.c.response, stored_responses.c.messages).where(
            stored_responses.c.response_id == response_id, stored_responses.c.owner_id == owner_id
        )
        with self._store.engine.connect() as db:
            row = db.execute(query).first()
        return (json.loads(row.response), json.loads(row.messages)) if row else None

    def delete(self, owner_id: str, response_id: str) -> bool:
        with self._store.write() as db:
            result = db.execute(
                delete(stored_responses).where(
                    stored_responses.c.response_id == response_id, stored_responses.c.owner_id == owner_id
                )
            )
        return result.rowcount > 0
