"""The Responses API (/v1/responses) over Chat Completions: a request is translated to one, sent through
ChatService.complete_stream (the same admission, accounts, failover and ledger as /v1/chat/completions),
and its answer translated back, whole or as the Responses stream's typed events.

Responses are kept for their user unless `store` is false, with the Chat Completions messages that led to
them, so `previous_response_id` continues from one (its `instructions` are not carried over, as OpenAI's
are not) and GET/DELETE /v1/responses/<id> find it.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator

from app.errors import BadRequest, NotFound
from app.services.principal import Principal
from app.store.responses import SqlResponses
from app.upstream import Delta, Done

ROLES = ("user", "assistant", "system", "developer")
PASSED = ("temperature", "top_p", "parallel_tool_calls", "user", "seed", "reasoning_effort", "top_logprobs")


def _new(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponseService:
    def __init__(self, chat, stored: SqlResponses):
        self.chat = chat
        self.stored = stored

    def create(self, principal: Principal, body: dict) -> Run:
        """Check and translate a request, send it, and return the Run that turns its answer into a response."""
        history = []
        previous = body.get("previous_response_id")
        if previous is not None:
            if not isinstance(previous, str):
                raise BadRequest("previous_response_id must be a string", param="previous_response_id")
            found = self.stored.get(principal.user.user_id, previous)
            if found is None:
                raise NotFound(f"no response {previous!r} (responses are kept per user)", param="previous_response_id")
            history = found[1]
        given = input_messages(body.get("input"))
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise BadRequest("instructions must be a string", param="instructions")
        system = [{"role": "system", "content": instructions}] if instructions else []
        chat_body = chat_request(body, [*system, *history, *given])
        completion, upstream, events = self.chat.complete_stream(
            principal, chat_body, front="v1-responses", responses_request=native_request(body, history)
        )
        model = body.get("model") or upstream.account.model
        keep = None if body.get("store") is False else (principal.user.user_id, [*history, *given])
        return Run(self, body, model, events, keep)


def native_request(body: dict, history: list[dict]) -> dict:
    """The body an upstream offering /responses gets: the caller's, with the response it continues (kept
    here, not there) spelled out as input items before its own."""
    native = {k: v for k, v in body.items() if k != "previous_response_id"}
    if history:
        given = body["input"]
        given = [{"role": "user", "content": given}] if isinstance(given, str) else list(given)
        native["input"] = [*response_items(history), *given]
    return native


def response_items(messages: list[dict]) -> list[dict]:
    """Chat Completions messages (a kept conversation) as Responses input items."""
    items: list[dict] = []
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role == "tool":
            items.append({"type": "function_call_output", "call_id": message.get("tool_call_id"), "output": content})
            continue
        if isinstance(content, list):
            content = [_item_part(part, role) for part in content]
        if content:
            items.append({"role": role, "content": content})
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            items.append(
                {
                    "type": "function_call",
                    "call_id": call.get("id"),
                    "name": function.get("name"),
                    "arguments": function.get("arguments") or "{}",
                }
            )
    return items


def _item_part(part: dict, role: str) -> dict:
    kind = part.get("type")
    if kind == "text":
        return {"type": "output_text" if role == "assistant" else "input_text", "text": part.get("text", "")}
    if kind == "image_url":
        return {"type": "input_image", "image_url": (part.get("image_url") or {}).get("url")}
    if kind == "file":
        return {"type": "input_file", **(part.get("file") or {})}
    return part


def assistant_message(output) -> dict:
    """A Responses output as the Chat Completions assistant message a follow-up sends back."""
    text, calls = [], []
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call":
            function = {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}
            calls.append({"id": item.get("call_id"), "type": "function", "function": function})
        elif item.get("type") == "message":
            parts = item.get("content")
            text += [p.get("text", "") for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []
    message = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _relayed(item) -> bool:
    """Whether an event is an upstream's own Responses answer (an account offering /responses)."""
    raw = item.raw if isinstance(item, Delta | Done) else None
    if not isinstance(raw, dict):
        return False
    return raw.get("object") == "response" or str(raw.get("type", "")).startswith("response.")


def input_messages(given) -> list[dict]:
    """The Responses `input` (a string, or items) as Chat Completions messages."""
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    if not isinstance(given, list) or not given:
        raise BadRequest("input must be a string or a non-empty list of items", param="input")
    messages: list[dict] = []
    for number, item in enumerate(given):
        where = f"input[{number}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be an object", param="input")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function"}
            call["function"] = {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and "tool_calls" in last:  # parallel calls: one message
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            output = output if isinstance(output, str) else json.dumps(output)
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": output})
        elif kind != "reasoning":  # reasoning items mean nothing to Chat Completions
            raise BadRequest(f"{where}.type {kind!r} is not supported here", param="input")
    return messages


def _message(item: dict, where: str) -> dict:
    role = item.get("role")
    if role not in ROLES:
        raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}", param="input")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of parts", param="input")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "input_image":
            parts.append({"type": "image_url", "image_url": {"url": part.get("image_url") or part.get("file_id")}})
        elif kind == "input_file":
            parts.append({"type": "file", "file": {k: v for k, v in part.items() if k != "type"}})
        else:
            raise BadRequest(f"{where}.content: parts of type {kind!r} are not supported here", param="input")
    if role != "user" and all(p["type"] == "text" for p in parts):
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    return {"role": role, "content": parts}


def chat_request(body: dict, messages: list[dict]) -> dict:
    """The Chat Completions body a Responses request becomes."""
    chat = {"messages": messages, "stream": bool(body.get("stream"))}
    if body.get("model") is not None:
        chat["model"] = body["model"]
    if chat["stream"]:
        chat["stream_options"] = {"include_usage": True}
    chat.update({k: body[k] for k in PASSED if k in body})
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type") == "function" for t in tools):
            raise BadRequest("tools: only function tools are supported here", param="tools")
        chat["tools"] = [{"type": "function", "function": _function(t)} for t in tools]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif choice is not None:
        chat["tool_choice"] = choice
    form = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(form, dict) and form.get("type") == "json_schema":
        schema = {k: form[k] for k in ("name", "schema", "strict", "description") if k in form}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif isinstance(form, dict) and form.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    return chat


def _function(tool: dict) -> dict:
    return {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}


class Run:
    """One response in the making: the Chat Completions events in, the Responses events (or object) out."""

    def __init__(self, service: ResponseService, body: dict, model: str, events: Iterator, keep):
        self.service, self.body, self.model, self.events, self.keep = service, body, model, events, keep
        self.id, self.created = _new("resp"), int(time.time())
        self.sequence = 0
        self.text_item: dict | None = None  # {"id", "index", "text"}
        self.calls: dict[int, dict] = {}  # chat tool call index -> {"id", "index", "call_id", "name", "arguments"}
        self.outputs = 0
        self.usage: dict | None = None
        self.finish: str | None = None
        self.relayed: dict | None = None  # an upstream's own response object, when it offers /responses

    # -- out -----------------------------------------------------------------------------

    def whole(self) -> dict:
        """The finished response object."""
        for _ in self.stream():
            pass
        return self.relayed if self.relayed is not None else self.response("completed")

    def stream(self) -> Iterator[dict]:
        """The Responses stream's events, response.created to response.completed."""
        try:
            first = next(self.events, None)  # the account answers first: a refusal is an HTTP error, not an event
            if first is not None and _relayed(first):
                yield from self._relay(first)
                return
            yield self._event("response.created", response=self.response("in_progress"))
            yield self._event("response.in_progress", response=self.response("in_progress"))
            for item in itertools.chain([first] if first is not None else [], self.events):
                if isinstance(item, Done):
                    yield from self._done(item)
                elif isinstance(item, Delta):
                    yield from self._delta(item)
            yield from self._close()
            final = self.response("completed")
            if self.keep is not None:
                owner, messages = self.keep
                self.service.stored.keep(owner, final, [*messages, self._assistant_message()])
            yield self._event("response.completed", response=final)
        finally:
            self.events.close()

    def _relay(self, first) -> Iterator[dict]:
        """An upstream's own Responses events, passed on as they came; its final response is kept."""
        final = None
        for item in itertools.chain([first], self.events):
            raw = item.raw
            if isinstance(item, Done) or raw is None:
                final = raw if isinstance(raw, dict) else final
                continue
            if raw.get("object") == "response":  # a whole answer: the response itself
                final = raw
                if self.body.get("stream"):  # asked for a stream, answered whole: its one event
                    yield {"type": "response.completed", "sequence_number": 0, "response": raw}
                continue
            if raw.get("type") in ("response.completed", "response.incomplete", "response.failed"):
                final = raw.get("response") if isinstance(raw.get("response"), dict) else final
            yield raw
        if final is None:
            return
        if not (isinstance(final.get("id"), str) and 0 < len(final["id"]) <= 64):
            final = {**final, "id": self.id}
        self.relayed = final
        if self.keep is not None:
            owner, messages = self.keep
            self.service.stored.keep(owner, final, [*messages, assistant_message(final.get("output"))])

    def response(self, status: str) -> dict:
        body = self.body
        incomplete = status == "completed" and self.finish == "length"
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": "incomplete" if incomplete else status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": self.model,
            "output": self._output() if status == "completed" else [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "temperature": body.get("temperature"),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p"),
            "store": body.get("store", True),
            "metadata": body.get("metadata") or {},
            "usage": self._usage() if status == "completed" else None,
        }

    # -- in ------------------------------------------------------------------------------

    def _delta(self, item: Delta) -> Iterator[dict]:
        if item.raw is None:  # an account that answers text only
            yield from self._text(item.text)
            return
        chunk = item.raw
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        self.finish = choice.get("finish_reason") or self.finish
        part = choice.get("delta") or choice.get("message") or {}
        if isinstance(part.get("content"), str) and part["content"]:
            yield from self._text(part["content"])
        for number, call in enumerate(part.get("tool_calls") or ()):
            yield from self._call(call, number)

    def _done(self, done: Done) -> Iterator[dict]:
        """The end of the reply (a whole chat.completion came as a relayed Delta before it)."""
        self.usage = done.usage or self.usage
        self.finish = self.finish or done.finish_reason
        yield from ()

    def _text(self, text: str) -> Iterator[dict]:
        if self.text_item is None:
            self.text_item = {"id": _new("msg"), "index": self._next_output(), "text": ""}
            yield self._event("response.output_item.added", output_index=self.text_item["index"], item=self._message())
            yield self._event(
                "response.content_part.added", **self._at(), part={"type": "output_text", "text": "", "annotations": []}
            )
        self.text_item["text"] += text
        yield self._event("response.output_text.delta", **self._at(), delta=text, logprobs=[])

    def _call(self, call: dict, number: int) -> Iterator[dict]:
        index = call.get("index", number)  # a stream's calls say their index; a whole message's are in order
        function = call.get("function") or {}
        known = self.calls.get(index)
        if known is None:
            known = self.calls[index] = {
                "id": _new("fc"),
                "index": self._next_output(),
                "call_id": call.get("id") or _new("call"),
                "name": function.get("name") or "",
                "arguments": "",
            }
            yield self._event("response.output_item.added", output_index=known["index"], item=self._function(known))
        if function.get("arguments"):
            known["arguments"] += function["arguments"]
            yield self._event(
                "response.function_call_arguments.delta",
                item_id=known["id"],
                output_index=known["index"],
                delta=function["arguments"],
            )

    def _close(self) -> Iterator[dict]:
        if self.text_item is not None:
            text, part = (
                self.text_item["text"],
                {"type": "output_text", "text": self.text_item["text"], "annotations": []},
            )
            yield self._event("response.output_text.done", **self._at(), text=text, logprobs=[])
            yield self._event("response.content_part.done", **self._at(), part=part)
            item = self._message("completed")
            yield self._event("response.output_item.done", output_index=self.text_item["index"], item=item)
        for call in self.calls.values():
            yield self._event(
                "response.function_call_arguments.done",
                item_id=call["id"],
                output_index=call["index"],
                arguments=call["arguments"],
            )
            yield self._event("response.output_item.done", output_index=call["index"], item=self._function(call, True))

    # -- shapes --------------------------------------------------------------------------

    def _event(self, kind: str, **fields) -> dict:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def _next_output(self) -> int:
        self.outputs += 1
        return self.outputs - 1

    def _at(self) -> dict:
        return {"item_id": self.text_item["id"], "output_index": self.text_item["index"], "content_index": 0}

    def _message(self, status: str = "in_progress") -> dict:
        text = self.text_item["text"] if status == "completed" else ""
        content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
        return {
            "type": "message",
            "id": self.text_item["id"],
            "status": status,
            "role": "assistant",
            "content": content,
        }

    @staticmethod
    def _function(call: dict, done: bool = False) -> dict:
        return {
            "type": "function_call",
            "id": call["id"],
            "call_id": call["call_id"],
            "name": call["name"],
            "arguments": call["arguments"] if done else "",
            "status": "completed" if done else "in_progress",
        }

    def _output(self) -> list[dict]:
        items = []
        if self.text_item is not None:
            items.append((self.text_item["index"], self._message("completed")))
        items += [(c["index"], self._function(c, True)) for c in self.calls.values()]
        return [item for _, item in sorted(items, key=lambda pair: pair[0])]

    def _usage(self) -> dict:
        usage = self.usage or {}
        prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        return {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        }

    def _assistant_message(self) -> dict:
        """This response's output as the Chat Completions message a follow-up sends back."""
        message = {"role": "assistant", "content": self.text_item["text"] if self.text_item else None}
        if self.calls:
            message["tool_calls"] = [
                {"id": c["call_id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in self.calls.values()
            ]
        return message
