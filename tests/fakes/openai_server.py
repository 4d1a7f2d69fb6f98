"""Serve a fake OpenAI API (Chat Completions, embeddings, models) on 127.0.0.1 for tests.

The wire format follows the `openai` package's types (openai/types/chat/chat_completion*.py):
tool calls (streamed as indexed deltas), structured output from a JSON schema, several choices,
logprobs, usage details, `system_fingerprint` and `service_tier`, and OpenAI's error bodies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
import time
import uuid

from ._http import FakeHandler, FakeUpstream

FINGERPRINT = "fp_fake"
EMBEDDINGS_PATH = "/v1/embeddings"
RESPONSES_PATH = "/v1/responses"
MAX_DEPTH = 6  # past this nesting the schema sampler stops recursing (empty arrays, null options)
_FORMAT_SAMPLES = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "duration": "P1D",
    "email": "user@example.com",
    "idn-email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "iri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "hostname": "example.com",
}


def _text_of(content) -> str:
    """Return the text of a message content: a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _words(text: str) -> int:
    return len(text.split())


class FakeRequestError(Exception):
    """A request the fake refuses the way OpenAI would: status, message and the offending param."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


# -- sample values from a JSON schema ------------------------------------------------------------


def _resolve(ref: str, root: dict) -> dict:
    """Follow a local JSON pointer ("#/$defs/Name"); an unknown one resolves to {}."""
    if not ref.startswith("#"):
        return {}
    node = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return {}
    return node if isinstance(node, dict) else {}


def _bounded(value: float, schema: dict, step: float, integer: bool) -> float:
    """Move value inside the schema's minimum/maximum (exclusive ones by step)."""
    low, high = schema.get("minimum"), schema.get("maximum")
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        low = schema["exclusiveMinimum"] + step
    if isinstance(schema.get("exclusiveMaximum"), int | float):
        high = schema["exclusiveMaximum"] - step
    if isinstance(low, int | float) and value < low:
        value = math.ceil(low) if integer else low
    if isinstance(high, int | float) and value > high:
        value = math.floor(high) if integer else high
    return value


def sample_from_schema(schema, root: dict | None = None, depth: int = 0):
    """Return a sample value valid for a JSON schema (the subset tools and pydantic models use).

    object: every property; string: "x", the first enum value or a sample of its format; integer 1;
    number 1.5; boolean true; array: one sample item; null: None; anyOf/oneOf/type lists: the first
    option; allOf: the options merged; $ref: resolved against the root schema ($defs, definitions).
    """
    if not isinstance(schema, dict):
        return "x" if schema is not False else None
    root = schema if root is None else root
    if isinstance(schema.get("$ref"), str):
        return sample_from_schema(_resolve(schema["$ref"], root), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            if depth > MAX_DEPTH and {"type": "null"} in options:
                return None
            return sample_from_schema(options[0], root, depth + 1)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        parts = [sample_from_schema(s, root, depth + 1) for s in schema["allOf"]]
        if all(isinstance(p, dict) for p in parts):
            return {k: v for p in parts for k, v in p.items()}
        return parts[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0] if kind else None
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema or "prefixItems" in schema else None
    if kind == "object":
        properties = schema.get("properties")
        if isinstance(properties, dict) and properties:
            return {name: sample_from_schema(sub, root, depth + 1) for name, sub in properties.items()}
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra and depth <= MAX_DEPTH:
            return {"key": sample_from_schema(extra, root, depth + 1)}
        return {}
    if kind == "array":
        low, high = schema.get("minItems") or 0, schema.get("maxItems")
        prefix = schema.get("prefixItems") or (schema["items"] if isinstance(schema.get("items"), list) else None)
        if prefix:
            return [sample_from_schema(s, root, depth + 1) for s in prefix]
        if high == 0 or (depth > MAX_DEPTH and low == 0):
            return []
        item = sample_from_schema(schema.get("items", {}), root, depth + 1)
        return [item] * max(1, low)
    if kind == "string":
        if schema.get("format") in _FORMAT_SAMPLES:
            return _FORMAT_SAMPLES[schema["format"]]
        low, high = schema.get("minLength") or 1, schema.get("maxLength")
        return "x" * (min(low, high) if isinstance(high, int) else low)
    if kind == "integer":
        return int(_bounded(1, schema, 1, integer=True))
    if kind == "number":
        return _bounded(1.5, schema, 0.5, integer=False)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "x"


def responses_as_chat(body: dict) -> dict:
    """A Responses request read as the Chat Completions request that asks the same (for the fake's answers)."""
    given = body["input"]
    messages = [{"role": "system", "content": body["instructions"]}] if body.get("instructions") else []
    for item in [{"role": "user", "content": given}] if isinstance(given, str) else given:
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            content = item.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            messages.append({"role": item.get("role"), "content": content})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments")},
            }
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": item.get("output")})
    chat = {"messages": messages, "model": body.get("model")}
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    if tools:
        chat["tools"] = [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}} for t in tools]
    if isinstance(body.get("tool_choice"), str):
        chat["tool_choice"] = body["tool_choice"]
    form = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(form, dict) and form.get("type") == "json_schema":
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": form.get("name"), "schema": form.get("schema")},
        }
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    return chat


# -- the handler -----------------------------------------------------------------------------------


class _OpenAIHandler(FakeHandler):
    def dispatch(self) -> None:
        fake: FakeOpenAI = self.owner
        _, body = self.read_and_record()
        routes = {("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("POST", EMBEDDINGS_PATH)}
        if fake.offers_responses:
            routes.add(("POST", RESPONSES_PATH))
        if (self.command, self.route) not in routes:
            self.send_error_json(404, f"Unknown request URL: {self.command} {self.route}")
            return
        if not self.pause(fake.delay):
            return
        if fake.require_key is not None and self.bearer() != fake.require_key:
            self.send_error_json(401, "Incorrect API key provided.", code="invalid_api_key")
            return
        failure = fake.take_failure()
        if failure is not None:
            headers = dict(fake.fail_headers)
            self.send_error_json(failure, fake.fail_message, fake.fail_type, fake.fail_code, headers, fake.fail_param)
            return
        if self.command == "GET":
            self.send_json(200, {"object": "list", "data": [fake.model_entry(m) for m in fake.models]})
            return
        if self.route == EMBEDDINGS_PATH:
            self.answer_embeddings(body)
            return
        if self.route == RESPONSES_PATH:
            self.answer_responses(body)
            return
        rejection = fake.take_rejection()
        if rejection is not None:
            self.send_error_json(**rejection)
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self.send_error_json(400, "The request body must be JSON with a 'messages' list.", param="messages")
            return
        try:
            choices = fake.choices_for(body)
        except FakeRequestError as exc:
            self.send_error_json(exc.status, exc.message, code=exc.code, param=exc.param)
            return
        if body.get("stream"):
            self.stream_reply(body, choices)
        else:
            self.send_json(200, fake.completion(body, choices=choices))

    def send_error_json(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict | None = None,
        param: str | None = None,
    ) -> None:
        """Answer OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
        error = {"message": message, "type": kind, "param": param, "code": code}
        self.send_json(status, {"error": error}, headers)

    def answer_responses(self, body) -> None:
        """The Responses API: the request read as Chat Completions (the same replies, tool calls and schemas),
        answered as a response object or as its typed events (no [DONE], as OpenAI's)."""
        fake: FakeOpenAI = self.owner
        if not isinstance(body, dict) or not isinstance(body.get("input"), str | list):
            self.send_error_json(400, "Missing required parameter: 'input'.", param="input")
            return
        if "previous_response_id" in body:  # nothing is kept here: a caller must send the whole input
            self.send_error_json(400, f"Previous response with id '{body['previous_response_id']}' not found.")
            return
        chat = responses_as_chat(body)
        try:
            [choice] = fake.choices_for(chat)
        except FakeRequestError as exc:
            self.send_error_json(exc.status, exc.message, code=exc.code, param=exc.param)
            return
        rid, created, model = f"resp_{uuid.uuid4().hex}", int(time.time()), body.get("model") or "fake-model"
        output = []
        if choice["content"] is not None:
            text = [{"type": "output_text", "text": choice["content"], "annotations": []}]
            output.append(
                {
                    "type": "message",
                    "id": f"msg_{uuid.uuid4().hex[:24]}",
                    "status": "completed",
                    "role": "assistant",
                    "content": text,
                }
            )
        for call in choice["tool_calls"] or ():
            output.append(
                {
                    "type": "function_call",
                    "id": f"fc_{uuid.uuid4().hex[:24]}",
                    "call_id": call["id"],
                    "name": call["function"]["name"],
                    "arguments": call["function"]["arguments"],
                    "status": "completed",
                }
            )
        usage = fake.usage(chat, [fake.counted_text(choice)])
        response = {
            "id": rid,
            "object": "response",
            "created_at": created,
            "model": model,
            "output": output,
            "status": "incomplete" if choice["finish_reason"] == "length" else "completed",
            "usage": {
                "input_tokens": usage["prompt_tokens"],
                "output_tokens": usage["completion_tokens"],
                "total_tokens": usage["total_tokens"],
            },
            "instructions": body.get("instructions"),
            "tools": body.get("tools") or [],
        }
        if not body.get("stream"):
            self.send_json(200, response)
            return
        number = iter(range(10_000))

        def send(kind: str, **fields) -> None:
            self.send_event({"type": kind, "sequence_number": next(number), **fields}, kind)

        self.begin_stream()
        send("response.created", response={**response, "status": "in_progress", "output": [], "usage": None})
        for index, item in enumerate(output):
            send("response.output_item.added", output_index=index, item={**item, "status": "in_progress"})
            if item["type"] == "message":
                for piece in fake.pieces(item["content"][0]["text"]):
                    send(
                        "response.output_text.delta",
                        item_id=item["id"],
                        output_index=index,
                        content_index=0,
                        delta=piece,
                    )
                send(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=item["content"][0]["text"],
                )
            else:
                send(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=item["arguments"],
                )
                send(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=item["arguments"],
                )
            send("response.output_item.done", output_index=index, item=item)
        self.chat_done()
        send("response.completed", response=response)
        self.end_stream()

    def answer_embeddings(self, body) -> None:
        fake: FakeOpenAI = self.owner
        try:
            self.send_json(200, fake.embeddings_answer(body))
        except FakeRequestError as exc:
            self.send_error_json(exc.status, exc.message, code=exc.code, param=exc.param)

    def stream_reply(self, body: dict, choices) -> None:
        """Stream chat.completion.chunk events: role (and first tool call) per choice, the pieces
        of every choice in turn, a finish chunk per choice, the usage chunk if asked, [DONE]."""
        fake: FakeOpenAI = self.owner
        if isinstance(choices, str):  # the older call shape: stream_reply(body, reply_text)
            choices = [fake.text_choice(choices)]
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        model = body.get("model") or "fake-model"
        tier = fake.service_tier_for(body)

        def chunk(index: int, delta: dict, finish: str | None = None, logprobs=None, choices: bool = True) -> dict:
            data = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": tier,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
            }
            if not choices:
                data["choices"] = []
            if include_usage:
                data["usage"] = None
            return data

        heads, bodies = [], []
        for index, choice in enumerate(choices):
            head, pieces = fake.stream_plan(body, choice)
            heads.append(chunk(index, *head))
            bodies.append([chunk(index, delta, None, logprobs) for delta, logprobs in pieces])
        longest = max((len(b) for b in bodies), default=0)
        middle = [b[i] for i in range(longest) for b in bodies if i < len(b)]  # the choices in turn
        self.begin_stream()
        for head in heads:
            self.send_event(head)
        cut = fake.cut_after
        if cut is not None:
            for event in middle[: max(0, cut)]:
                if not self.pause(fake.stream_delay):
                    return
                self.send_event(event)
            self.drop_connection()
            return
        if fake.error_in_stream is not None:
            if middle:
                self.send_event(middle[0])
            self.chat_done()
            self.send_event({"error": {"message": fake.error_in_stream}})
            self.end_stream()
            self.close_connection = True
            return
        for event in middle:
            if not self.pause(fake.stream_delay):
                return
            self.send_event(event)
        self.chat_done()
        for index, choice in enumerate(choices):
            self.send_event(chunk(index, {}, choice["finish_reason"]))
        if include_usage:
            final = chunk(0, {}, choices=False)
            final["usage"] = fake.usage(body, [fake.counted_text(c) for c in choices])
            self.send_event(final)
        self.send_event("[DONE]")
        self.end_stream()


class FakeOpenAI(FakeUpstream):
    """Answer /v1/chat/completions (JSON or SSE), /v1/embeddings and /v1/models like OpenAI does.

    Knobs beyond the shared ones (reply_text, delay, fail_*, cut_after, error_in_stream, ...):
    tool_arguments (dict, or a raw str, overriding the sampled arguments of every tool call),
    parallel_tools (one call per tool when the request has several), json_output (a value
    overriding the sampled structured output), refusal (answer with this refusal instead of
    content), finish_reason (force it, e.g. "content_filter"), models (ids /v1/models lists),
    embedding_dimensions, fail_param, reject_next().
    """

    handler_class = _OpenAIHandler
    url_path = "/v1"
    chat_path = "/v1/chat/completions"
    embeddings_path = EMBEDDINGS_PATH
    default_fail_type = "invalid_request_error"

    def __init__(self) -> None:
        super().__init__()  # reply_text None echoes the last user message
        self.fail_type = self.default_fail_type
        self.fail_code: str | None = None
        self.fail_param: str | None = None
        self.require_key: str | None = None
        self.tool_arguments: dict | str | None = None
        self.parallel_tools = False
        self.json_output = None  # any JSON value: the structured output instead of the schema's sample
        self.refusal: str | None = None
        self.finish_reason: str | None = None
        self.models: list[str] = ["fake-model"]
        self.embedding_dimensions = 8
        self._rejections: list[dict] = []
        self.offers_responses = False  # answer POST /v1/responses too (else 404, as most compatible servers)

    # -- failures ----------------------------------------------------------------------------------

    def rate_limit(self, retry_after: str | None = None, times: int | None = None) -> None:
        """Answer 429 with OpenAI's rate-limit error (and Retry-After if given), times times or until heal()."""
        wait = f"Please try again in {retry_after}s." if str(retry_after).isdigit() else "Please try again later."
        message = (
            "Rate limit reached for fake-model in organization org-fake on requests per min (RPM): "
            f"Limit 3, Used 3, Requested 1. {wait} "
            "Visit https://platform.openai.com/account/rate-limits to learn more."
        )
        with self._lock:
            self.fail_message, self.fail_type, self.fail_code = message, "requests", "rate_limit_exceeded"
            self.fail_headers = self.retry_after_headers(retry_after)
            self.fail_status, self.fail_times = 429, times

    def reject_next(
        self,
        status: int = 400,
        message: str = "Invalid request: the fake upstream rejected it.",
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        """Answer the next chat request (one per call, in order) with OpenAI's error body."""
        with self._lock:
            self._rejections.append({"status": status, "message": message, "param": param, "code": code, "kind": kind})

    def take_rejection(self) -> dict | None:
        """Return the next reject_next() error, or None."""
        with self._lock:
            return self._rejections.pop(0) if self._rejections else None

    def heal(self) -> None:
        """Clear every failure knob, including the error type and code rate_limit() set."""
        super().heal()
        with self._lock:
            self.fail_type, self.fail_code, self.fail_param = self.default_fail_type, None, None
            self._rejections = []

    # -- recorded requests ------------------------------------------------------------------------

    def responses_requests(self, since: int = 0) -> list[dict]:
        """Return the recorded /v1/responses requests (offers_responses must be set for them to be answered)."""
        return self.requests_to(RESPONSES_PATH)[since:]

    def chats(self, since: int = 0) -> list[dict]:
        """Return the recorded chat-completion requests (method, path, query, headers, body)."""
        return self.requests_to(self.chat_path)[since:]

    def embeddings_requests(self, since: int = 0) -> list[dict]:
        """Return the recorded embeddings requests."""
        return self.requests_to(self.embeddings_path)[since:]

    # -- answers ----------------------------------------------------------------------------------

    @staticmethod
    def model_entry(model_id: str) -> dict:
        return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "fake"}

    @staticmethod
    def structured_format(body: dict) -> str | None:
        """Return "json_schema" or "json_object" when the request asks for structured output."""
        fmt = body.get("response_format")
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        return kind if kind in ("json_schema", "json_object") else None

    def structured_reply(self, body: dict) -> str:
        """Return the JSON text answering a response_format request."""
        if self.json_output is not None:
            return json.dumps(self.json_output)
        fmt = body["response_format"]
        if fmt["type"] == "json_object":
            return json.dumps({"ok": True})
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise FakeRequestError("Missing required parameter: 'response_format.json_schema'.", "response_format")
        schema = spec.get("schema")
        return json.dumps(sample_from_schema(schema if isinstance(schema, dict) else {"type": "object"}))

    def reply_for(self, body: dict) -> str:
        """Return the reply text for a request body (before n's suffixes, stop and max_tokens).

        Structured output: its JSON. Else reply_text (a str, or callable(body)) if set; else, after
        a tool result, "tool result: <its content>"; else "echo: <the last user message>".
        """
        if self.structured_format(body):
            return self.structured_reply(body)
        if callable(self.reply_text):
            return str(self.reply_text(body))
        if self.reply_text is not None:
            return str(self.reply_text)
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        if messages and messages[-1].get("role") == "tool":
            return f"tool result: {_text_of(messages[-1].get('content'))}"
        users = [m for m in messages if m.get("role") == "user"]
        return f"echo: {_text_of(users[-1].get('content')) if users else ''}"

    def tool_calls_for(self, body: dict) -> list[dict] | None:
        """Return the tool calls answering this request, or None when it must get text."""
        tools = [
            t
            for t in body.get("tools") or []
            if isinstance(t, dict) and t.get("type", "function") == "function" and isinstance(t.get("function"), dict)
        ]
        choice = body.get("tool_choice")
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        if not tools or choice == "none" or (messages and messages[-1].get("role") == "tool"):
            return None
        picked = tools[:1]
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            name = choice["function"].get("name")
            picked = [t for t in tools if t["function"].get("name") == name][:1]
            if not picked:
                raise FakeRequestError(
                    f"Invalid value for 'tool_choice': tool '{name}' is not in 'tools'.", "tool_choice"
                )
        elif self.parallel_tools and body.get("parallel_tool_calls") is not False:
            picked = tools
        calls = []
        for tool in picked:
            function = tool["function"]
            if isinstance(self.tool_arguments, str):
                arguments = self.tool_arguments
            elif self.tool_arguments is not None:
                arguments = json.dumps(self.tool_arguments)
            else:
                parameters = function.get("parameters")
                arguments = json.dumps(sample_from_schema(parameters) if isinstance(parameters, dict) else {})
            calls.append({"type": "function", "function": {"name": function.get("name", ""), "arguments": arguments}})
        return calls

    @staticmethod
    def _limited(text: str, body: dict) -> tuple[str, str]:
        """Apply `stop` and max_tokens/max_completion_tokens (words); return (text, finish_reason)."""
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
        cuts = [text.find(s) for s in stops if isinstance(s, str) and s and s in text]
        if cuts:
            text = text[: min(cuts)]
        limit = body.get("max_completion_tokens")
        limit = body.get("max_tokens") if limit is None else limit
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < _words(text):
            return " ".join(text.split()[:limit]), "length"
        return text, "stop"

    def text_choice(self, content: str, finish_reason: str = "stop") -> dict:
        return {"content": content, "refusal": None, "tool_calls": None, "finish_reason": finish_reason}

    def choices_for(self, body: dict) -> list[dict]:
        """Return one {content, refusal, tool_calls, finish_reason} per choice (n of them)."""
        n = body.get("n")
        n = 1 if n is None else n
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
            raise FakeRequestError(f"Invalid 'n': expected an integer from 1 to 128, got {n!r}.", "n")
        calls = self.tool_calls_for(body)
        reply = None if calls is not None or self.refusal is not None else self.reply_for(body)
        structured = self.structured_format(body) is not None
        choices = []
        for i in range(n):
            if calls is not None:
                own = [{"id": f"call_{uuid.uuid4().hex[:24]}", **c} for c in calls]
                choice = {"content": None, "refusal": None, "tool_calls": own, "finish_reason": "tool_calls"}
            elif self.refusal is not None:
                choice = {"content": None, "refusal": self.refusal, "tool_calls": None, "finish_reason": "stop"}
            else:
                text = reply if n == 1 or structured else f"{reply} #{i}"
                choice = self.text_choice(*self._limited(text, body))
            if self.finish_reason is not None:
                choice["finish_reason"] = self.finish_reason
            choices.append(choice)
        return choices

    @staticmethod
    def counted_text(choice: dict) -> str:
        """Return the text whose words count as a choice's completion tokens."""
        if choice.get("tool_calls"):
            return " ".join(c["function"]["name"] + " " + c["function"]["arguments"] for c in choice["tool_calls"])
        return choice.get("content") or choice.get("refusal") or ""

    @staticmethod
    def usage(body: dict, reply) -> dict:
        """Count tokens as whitespace-separated words; reply is a str or one str per choice."""
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        prompt = sum(_words(_text_of(m.get("content"))) for m in messages)
        completion = sum(_words(r) for r in ([reply] if isinstance(reply, str) else reply))
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    @staticmethod
    def service_tier_for(body: dict) -> str:
        asked = body.get("service_tier")
        return asked if asked in ("default", "flex", "priority", "scale") else "default"

    def pieces(self, text: str, at_least: int = 1) -> list[str]:
        """Split text into chunk_size pieces (smaller if needed to make at_least pieces)."""
        size = max(1, min(int(self.chunk_size), math.ceil(len(text) / at_least) if text else 1))
        return [text[i : i + size] for i in range(0, len(text), size)]

    @staticmethod
    def token_logprob(token: str, top: int) -> dict:
        """Return a ChatCompletionTokenLogprob for token, with top alternatives (the token first)."""
        logprob = -round(0.01 * (1 + len(token) % 7), 4)
        alternatives = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
        for k in range(1, top):
            alt = f"alt{k}"
            alternatives.append({"token": alt, "logprob": round(logprob - k, 4), "bytes": list(alt.encode())})
        return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": alternatives[:top]}

    def logprobs_of(self, body: dict, text: str | None, refusal: bool = False) -> dict | None:
        """Return a choice's logprobs ({"content", "refusal"}) if the request asked for them, else None."""
        if not body.get("logprobs"):
            return None
        top = body.get("top_logprobs") or 0
        tokens = [self.token_logprob(p, top) for p in self.pieces(text or "")]
        return {"content": None, "refusal": tokens} if refusal else {"content": tokens, "refusal": None}

    def completion(self, body: dict, reply: str | None = None, choices: list[dict] | None = None) -> dict:
        """Build a non-streamed chat.completion object (for reply alone, or for choices_for(body))."""
        if choices is None:
            choices = [self.text_choice(reply)] if reply is not None else self.choices_for(body)
        out = []
        for index, choice in enumerate(choices):
            message = {"role": "assistant", "content": choice["content"], "refusal": choice["refusal"]}
            if choice.get("tool_calls"):
                message["tool_calls"] = choice["tool_calls"]
                logprobs = self.logprobs_of(body, "")
            elif choice["refusal"] is not None:
                logprobs = self.logprobs_of(body, choice["refusal"], refusal=True)
            else:
                logprobs = self.logprobs_of(body, choice["content"])
            out.append(
                {"index": index, "message": message, "logprobs": logprobs, "finish_reason": choice["finish_reason"]}
            )
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or "fake-model",
            "choices": out,
            "usage": self.usage(body, [self.counted_text(c) for c in choices]),
            "service_tier": self.service_tier_for(body),
            "system_fingerprint": FINGERPRINT,
        }

    def stream_plan(self, body: dict, choice: dict) -> tuple[tuple, list[tuple]]:
        """Return ((first delta, its logprobs), [(delta, logprobs), ...]) streaming one choice."""
        wants = bool(body.get("logprobs"))
        top = body.get("top_logprobs") or 0
        empty = {"content": [], "refusal": None} if wants else None
        calls = choice.get("tool_calls")
        if calls:

            def header(index: int, call: dict) -> dict:
                function = {"name": call["function"]["name"], "arguments": ""}
                return {"index": index, "id": call["id"], "type": "function", "function": function}

            head = {"role": "assistant", "content": None, "tool_calls": [header(0, calls[0])], "refusal": None}
            pieces = []
            for index, call in enumerate(calls):
                if index:
                    pieces.append(({"tool_calls": [header(index, call)]}, None))
                for piece in self.pieces(call["function"]["arguments"], at_least=3):
                    pieces.append(({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}, None))
            return (head, None, empty), pieces
        if choice["refusal"] is not None:
            head = {"role": "assistant", "content": None, "refusal": ""}
            pieces = [
                ({"refusal": p}, {"content": None, "refusal": [self.token_logprob(p, top)]} if wants else None)
                for p in self.pieces(choice["refusal"])
            ]
            return (head, None, {"content": None, "refusal": []} if wants else None), pieces
        head = {"role": "assistant", "content": "", "refusal": None}
        pieces = [
            ({"content": p}, {"content": [self.token_logprob(p, top)], "refusal": None} if wants else None)
            for p in self.pieces(choice["content"] or "")
        ]
        return (head, None, empty), pieces

    # -- embeddings --------------------------------------------------------------------------------

    @staticmethod
    def embedding_for(item, dimensions: int = 8) -> list[float]:
        """Return the deterministic embedding of one input (a str or a token list).

        Every value is k/128 for an integer k, so it survives float32 (base64) exactly.
        """
        key = item if isinstance(item, str) else "tokens:" + ",".join(str(t) for t in item)
        data, counter = b"", 0
        while len(data) < dimensions:
            data += hashlib.sha256(f"{counter}:{key}".encode()).digest()
            counter += 1
        return [(b - 128) / 128 for b in data[:dimensions]]

    @staticmethod
    def embedding_inputs(value) -> list:
        """Return the inputs of an embeddings request: strings or token lists."""

        def is_tokens(v) -> bool:
            return isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)

        if isinstance(value, str):
            return [value]
        if is_tokens(value):
            return [value]
        if isinstance(value, list) and value and all(isinstance(v, str) or is_tokens(v) for v in value):
            return list(value)
        raise FakeRequestError(
            "'input' must be a string, a list of strings, a list of tokens or a list of token lists.", "input"
        )

    def embeddings_answer(self, body) -> dict:
        """Build the create-embedding response for a request body."""
        if not isinstance(body, dict) or "input" not in body:
            raise FakeRequestError("Missing required parameter: 'input'.", "input")
        inputs = self.embedding_inputs(body["input"])
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise FakeRequestError(f"Invalid value for 'encoding_format': {fmt!r}.", "encoding_format")
        dimensions = body.get("dimensions") or self.embedding_dimensions
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
            raise FakeRequestError(f"Invalid value for 'dimensions': {dimensions!r}.", "dimensions")
        data = []
        for index, item in enumerate(inputs):
            vector = self.embedding_for(item, dimensions)
            if fmt == "base64":
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens = sum(_words(i) if isinstance(i, str) else len(i) for i in inputs)
        return {
            "object": "list",
            "data": data,
            "model": body.get("model") or "fake-embedding",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
