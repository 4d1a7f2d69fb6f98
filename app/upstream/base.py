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


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Done:
    model: str
    upstream_conversation_id: str | None = None
    upstream_message_id: str | None = None
    usage: dict | None = None
    finish_reason: str = "stop"


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
