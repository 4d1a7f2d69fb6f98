"""The one seam every account type implements: take a turn, yield reply deltas, then Done."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

from app.config import Account
from app.upstream.http import HttpClient


@dataclass(frozen=True)
class Turn:
    """What an upstream needs to answer one prompt."""

    prompt: str
    model: str
    history: list[tuple[str, str]] = field(default_factory=list)  # (prompt, reply), oldest first
    upstream_conversation_id: str | None = None
    upstream_parent_id: str | None = None
    # A /v1 caller's own message list, sent as it is where the account type takes messages (openai);
    # the others get it folded into prompt as one turn.
    messages: tuple[dict, ...] | None = None


@dataclass(frozen=True)
class Delta:
    """A new piece of reply text, with the upstream's ids as known so far (kept if the reply is cut)."""

    text: str
    upstream_conversation_id: str | None = None
    upstream_message_id: str | None = None


@dataclass(frozen=True)
class Done:
    model: str
    upstream_conversation_id: str | None = None
    upstream_message_id: str | None = None
    usage: dict | None = None
    finish_reason: str = "stop"


def as_dict(value) -> dict:
    """Return value if it is a JSON object, else an empty one: upstream JSON is never trusted to have a shape."""
    return value if isinstance(value, dict) else {}


def as_str(value) -> str | None:
    return value if isinstance(value, str) else None


class Upstream(ABC):
    """One account of one type; keeps its own HTTP session (proxy, timeouts, pooled connections)."""

    def __init__(self, account: Account, timeouts: dict):
        self.account = account
        self.http = HttpClient(account, timeouts)

    @abstractmethod
    def stream(self, turn: Turn) -> Iterator[Delta | Done]:
        """Yield the reply as text deltas, then one Done."""

    def title(self, turn: Turn, done: Done) -> str | None:
        """Return a title for a new conversation, or None to let the service make one."""
        return None

    def close(self) -> None:
        self.http.close()
