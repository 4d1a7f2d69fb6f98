"""A /v1 Chat Completions request as the caller sent it: checked, and what it needs of an account.

An `openai` account gets the request as it is (every field but those the server owns: `model`,
`stream`, `stream_options`); the other types answer one folded prompt, so a request that needs
what they cannot do (tools, structured output, several choices, images or audio, logprobs) never
goes to them, and when no account that serves the model can do it the answer is a 400 naming the
parameter. Fields that only tune sampling are ignored by those types.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import BadRequest
from app.upstream.base import CHOICES, EMBEDDINGS, LOGPROBS, MEDIA, STRUCTURED, TOOLS, has_surrogates

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
OWNED = ("model", "stream", "stream_options")  # the server sets these itself
TEXT_PARTS = ("text", "input_text", "refusal")


@dataclass(frozen=True)
class Completion:
    """A checked request: the caller's body, its text (for one-prompt account types) and its needs."""

    body: dict
    messages: tuple[dict, ...]  # {role, content: text} for account types that take text only
    needs: dict[str, str]  # capability -> the parameter that asks for it
    sent_chars: int
    stream: bool
    include_usage: bool


def check_completion(body: dict, max_chars: int) -> Completion:
    """Check a /v1/chat/completions body; BadRequest names what is wrong."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("model must be a string", param="model")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise BadRequest("stream_options must be an object; include_usage true or false", param="stream_options")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", param="messages")
    needs: dict[str, str] = {}
    texts, total = [], 0
    for index, message in enumerate(messages):
        text = _message(message, f"messages[{index}]", needs)
        total += len(text)
        texts.append({"role": message["role"], "content": text})
    if total > max_chars:
        raise BadRequest(f"messages hold more than {max_chars} characters", param="messages")
    if not any(m["content"].strip() for m in texts) and TOOLS not in needs and MEDIA not in needs:
        raise BadRequest("messages need at least one message with content", param="messages")
    _needs_of_fields(body, needs)
    return Completion(body, tuple(texts), needs, total, stream, bool(options.get("include_usage")))


def _message(message, where: str, needs: dict[str, str]) -> str:
    """The text of one message, noting what its shape needs."""
    if not isinstance(message, dict):
        raise BadRequest(f"{where} must be an object", param="messages")
    role = message.get("role")
    if role not in ROLES:
        raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}", param="messages")
    if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
        needs.setdefault(TOOLS, "messages")
    content = message.get("content")
    if content is None:
        if role not in ("assistant", "tool", "function"):
            raise BadRequest(f"{where}.content is required for role {role!r}", param="messages")
        return ""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = _parts(content, where, needs)
    else:
        raise BadRequest(f"{where}.content must be a string or a list of content parts", param="messages")
    if has_surrogates(text):
        raise BadRequest(f"{where}.content is not valid text (it holds an unpaired surrogate)", param="messages")
    return text


def _parts(parts: list, where: str, needs: dict[str, str]) -> str:
    texts = []
    for number, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise BadRequest(f"{where}.content[{number}] must be an object with a type", param="messages")
        if part["type"] in TEXT_PARTS:
            text = part.get("refusal" if part["type"] == "refusal" else "text")
            if not isinstance(text, str):
                raise BadRequest(f"{where}.content[{number}].text must be a string", param="messages")
            texts.append(text)
        else:  # image_url, input_audio, file, and whatever comes next: only an account that takes parts
            needs.setdefault(MEDIA, "messages")
    return "".join(texts)


def _needs_of_fields(body: dict, needs: dict[str, str]) -> None:
    if body.get("tools") or body.get("functions"):
        needs.setdefault(TOOLS, "tools" if body.get("tools") else "functions")
    choice = body.get("tool_choice")
    if choice not in (None, "none", "auto"):
        needs.setdefault(TOOLS, "tool_choice")
    kind = body.get("response_format", {}).get("type") if isinstance(body.get("response_format"), dict) else None
    if kind in ("json_schema", "json_object"):
        needs.setdefault(STRUCTURED, "response_format")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise BadRequest("n must be a whole number of 1 or more", param="n")
    if n and n > 1:
        needs.setdefault(CHOICES, "n")
    if body.get("logprobs") or body.get("top_logprobs"):
        needs.setdefault(LOGPROBS, "logprobs")
    if "audio" in (body.get("modalities") or ()) or body.get("audio"):
        needs.setdefault(MEDIA, "modalities")


def check_embedding(body: dict, max_chars: int) -> Completion:
    """Check a /v1/embeddings body: a model, and input as a string, strings, or token lists."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required: the embedding model to use", param="model")
    given = body.get("input")
    items = given if isinstance(given, list) and given else [given]
    texts = []
    for item in items:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, int) and not isinstance(item, bool) and isinstance(given, list):
            texts.append("x")  # one token of a token list
        elif isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            texts.append("x" * len(item))
        else:
            raise BadRequest("input must be a string, a list of strings, or token lists", param="input")
    total = sum(len(t) for t in texts)
    if total > max_chars:
        raise BadRequest(f"input holds more than {max_chars} characters", param="input")
    messages = ({"role": "user", "content": "".join(texts)},)
    return Completion(body, messages, {EMBEDDINGS: "model"}, total, False, False)


def upstream_body(completion: Completion, model: str) -> dict:
    """The body an openai account gets: the caller's, with the account's model and the server's streaming."""
    body = {k: v for k, v in completion.body.items() if k not in OWNED}
    body["model"] = model
    if completion.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # the ledger needs the counts; relayed only if asked
    return body
