"""The one seam every account type implements: take a turn, yield reply deltas, then Done."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from app.config import Account
from app.cooperative import Pacer
from app.errors import UpstreamError
from app.upstream.http import HttpClient

MAX_ID = 200  # an upstream id or model name longer than this is not one


# What a /v1 request may need of an account beyond one prompt's text (Upstream.capabilities).
TOOLS, STRUCTURED, CHOICES = "tools", "structured output", "n > 1"
MEDIA, LOGPROBS, EMBEDDINGS = "images, audio or files", "logprobs", "embeddings"
CAPABILITIES = frozenset((TOOLS, STRUCTURED, CHOICES, MEDIA, LOGPROBS, EMBEDDINGS))


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
    # A /v1 caller's whole Chat Completions body (app/services/completions.py), for account types that
    # relay it (openai): sent as it is but for the model, and answered with the upstream's own chunks.
    request: dict | None = None
    endpoint: str = "chat/completions"  # where a relayed request goes (embeddings: "embeddings")
    # A /v1/responses caller's body (previous_response_id expanded into input), for an openai account whose
    # upstream offers /responses: sent there as it is and answered with its own events. Others use `request`.
    responses_request: dict | None = None


@dataclass(frozen=True)
class Delta:
    """A new piece of reply text, with the upstream's ids as known so far (kept if the reply is cut)."""

    text: str
    upstream_conversation_id: str | None = None
    upstream_message_id: str | None = None
    raw: dict | None = None  # a relayed request's chunk, as the upstream sent it (text: its content, for counting)


@dataclass(frozen=True)
class Done:
    model: str
    upstream_conversation_id: str | None = None
    upstream_message_id: str | None = None
    usage: dict | None = None
    finish_reason: str = "stop"
    raw: dict | None = None  # a relayed request's whole answer, as the upstream sent it (when not streamed)


def as_dict(value) -> dict:
    """Return value if it is a JSON object, else an empty one: upstream JSON is never trusted to have a shape."""
    return value if isinstance(value, dict) else {}


def as_str(value) -> str | None:
    return value if isinstance(value, str) else None


def as_id(value) -> str | None:
    """Return value if it can be an id or a model name (a short, printable string), else None."""
    if isinstance(value, str) and 0 < len(value) <= MAX_ID and value.isprintable() and not has_surrogates(value):
        return value
    return None


def has_surrogates(text: str) -> bool:
    """True if text holds a surrogate code point (cannot be UTF-8); linear, and fast in C."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def ends_in_high_surrogate(text: str) -> bool:
    """True if text ends with the first half of a surrogate pair (the other half may come next)."""
    return bool(text) and "\ud800" <= text[-1] <= "\udbff"


def clean_text(text: str) -> str:
    """Join surrogate pairs that JSON escapes split apart, and replace lone surrogates with U+FFFD.

    Upstream text may hold them ("\\ud83d" in one event, "\\ude00" in the next); they cannot be stored
    or sent as UTF-8.
    """
    if not has_surrogates(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def checked(events: Iterator, max_chars: int, account_name: str) -> Iterator:
    """Pass an upstream's events on as valid text, and stop a reply longer than max_chars with a 502.

    A high surrogate that ends one delta waits for the next, so an emoji split across events arrives whole.
    Every few milliseconds the worker's other connections get their turn.
    """
    held, total, pace, held_raw = "", 0, Pacer(), {}
    try:
        for event in events:
            pace()  # a reply of many small pieces (or a fast upstream) must not hold the worker
            if isinstance(event, Delta) and event.raw is not None:  # relayed as it came: counted, text made valid
                total += len(event.text)
                if total > max_chars:
                    raise UpstreamError(
                        f"account {account_name!r}: the reply grew longer than {max_chars} characters and was stopped",
                        fault="caller",
                    )
                yield replace(event, raw=valid_chunk(event.raw, held_raw))
            elif isinstance(event, Delta):
                text = held + event.text
                held = ""
                if ends_in_high_surrogate(text):
                    text, held = text[:-1], text[-1]
                text = clean_text(text)
                total += len(text)
                if total > max_chars:
                    raise UpstreamError(
                        f"account {account_name!r}: the reply grew longer than {max_chars} characters and was stopped",
                        fault="caller",  # our limit, not the account's failing
                    )
                if text:
                    yield event if text is event.text else replace(event, text=text)
            else:
                if held:
                    yield Delta("\ufffd")
                    held = ""
                yield event
    finally:
        events.close()


def valid_chunk(chunk: dict, held: dict) -> dict:
    """A relayed chunk whose choices' content is valid text: a high surrogate that ends one chunk's content
    waits in held (by choice index) for the next, and a lone one becomes U+FFFD (as checked() does for text)."""
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return chunk
    contents = [_content(choice) for choice in choices]
    if not held and not any(c is not None and has_surrogates(c) for c in contents):
        return chunk  # the common case: nothing to do, nothing copied
    fixed = []
    for choice, content in zip(choices, contents, strict=True):
        if content is None:
            fixed.append(choice)
            continue
        index = choice.get("index", 0)
        text = held.pop(index, "") + content
        if ends_in_high_surrogate(text):
            text, held[index] = text[:-1], text[-1]
        fixed.append({**choice, "delta": {**choice["delta"], "content": clean_text(text)}})
    return {**chunk, "choices": fixed}


def _content(choice) -> str | None:
    delta = choice.get("delta") if isinstance(choice, dict) else None
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else None


class Upstream(ABC):
    """One account of one type; keeps its own HTTP session (proxy, timeouts, pooled connections)."""

    sends_history = True  # False where the upstream keeps the conversation itself (chatgpt-web)
    capabilities: frozenset[str] = frozenset()  # what a /v1 request may need of it (CAPABILITIES)

    def __init__(self, account: Account, timeouts: dict, max_line_bytes: int = 1_048_576):
        self.account = account
        self.http = HttpClient(account, timeouts, max_line_bytes)

    @abstractmethod
    def stream(self, turn: Turn) -> Iterator[Delta | Done]:
        """Yield the reply as text deltas, then one Done."""

    def title(self, turn: Turn, done: Done) -> str | None:
        """Return a title for a new conversation, or None to let the service make one."""
        return None

    def close(self) -> None:
        self.http.close()
