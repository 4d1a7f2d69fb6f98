"""Serve a fake OpenAI Chat Completions API on 127.0.0.1 for tests."""

from __future__ import annotations

import time
import uuid

from ._http import FakeHandler, FakeUpstream


def _text_of(content) -> str:
    """Return the text of a message content: a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _words(text: str) -> int:
    return len(text.split())


class _OpenAIHandler(FakeHandler):
    def dispatch(self) -> None:
        fake: FakeOpenAI = self.owner
        _, body = self.read_and_record()
        routes = {("POST", "/v1/chat/completions"), ("GET", "/v1/models")}
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
            self.send_error_json(failure, fake.fail_message, fake.fail_type, fake.fail_code, headers)
            return
        if self.command == "GET":
            self.send_json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self.send_error_json(400, "The request body must be JSON with a 'messages' list.")
            return
        reply = fake.reply_for(body)
        if body.get("stream"):
            self.stream_reply(body, reply)
        else:
            self.send_json(200, fake.completion(body, reply))

    def send_error_json(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict | None = None,
    ) -> None:
        error = {"message": message, "type": kind, "param": None, "code": code}
        self.send_json(status, {"error": error}, headers)

    def stream_reply(self, body: dict, reply: str) -> None:
        fake: FakeOpenAI = self.owner
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        model = body.get("model") or "fake-model"

        def chunk(delta: dict, finish: str | None = None, choices: bool = True) -> dict:
            data = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if not choices:
                data["choices"] = []
            if include_usage:
                data["usage"] = None
            return data

        size = max(1, int(fake.chunk_size))
        pieces = [reply[i : i + size] for i in range(0, len(reply), size)]
        self.begin_stream()
        self.send_event(chunk({"role": "assistant", "content": "", "refusal": None}))
        cut = fake.cut_after
        if cut is not None:
            for piece in pieces[: max(0, cut)]:
                if not self.pause(fake.stream_delay):
                    return
                self.send_event(chunk({"content": piece}))
            self.drop_connection()
            return
        if fake.error_in_stream is not None:
            if pieces:
                self.send_event(chunk({"content": pieces[0]}))
            self.chat_done()
            self.send_event({"error": {"message": fake.error_in_stream}})
            self.end_stream()
            self.close_connection = True
            return
        for piece in pieces:
            if not self.pause(fake.stream_delay):
                return
            self.send_event(chunk({"content": piece}))
        self.chat_done()
        self.send_event(chunk({}, "stop"))
        if include_usage:
            final = chunk({}, choices=False)
            final["usage"] = fake.usage(body, reply)
            self.send_event(final)
        self.send_event("[DONE]")
        self.end_stream()


class FakeOpenAI(FakeUpstream):
    """Answer /v1/chat/completions (JSON or SSE) and /v1/models like OpenAI does."""

    handler_class = _OpenAIHandler
    url_path = "/v1"
    chat_path = "/v1/chat/completions"
    default_fail_type = "invalid_request_error"

    def __init__(self) -> None:
        super().__init__()  # reply_text None echoes the last user message
        self.fail_type = self.default_fail_type
        self.fail_code: str | None = None
        self.require_key: str | None = None

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

    def heal(self) -> None:
        """Clear every failure knob, including the error type and code rate_limit() set."""
        super().heal()
        with self._lock:
            self.fail_type, self.fail_code = self.default_fail_type, None

    def reply_for(self, body: dict) -> str:
        """Return the reply text for a request body."""
        if callable(self.reply_text):
            return str(self.reply_text(body))
        if self.reply_text is not None:
            return str(self.reply_text)
        users = [m for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
        return f"echo: {_text_of(users[-1].get('content')) if users else ''}"

    @staticmethod
    def usage(body: dict, reply: str) -> dict:
        """Count tokens as whitespace-separated words."""
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        prompt = sum(_words(_text_of(m.get("content"))) for m in messages)
        completion = _words(reply)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def completion(self, body: dict, reply: str) -> dict:
        """Build a non-streamed chat.completion object."""
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or "fake-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": self.usage(body, reply),
        }
