"""Chat Completions (`POST {base_url}/chat/completions`): OpenAI and every compatible server.

Stateless: the stored history goes up with each new prompt. The reply is always streamed from
the upstream, so the first piece can be passed on as soon as it arrives.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from app.errors import StreamCut, UpstreamError
from app.upstream.base import CAPABILITIES, Delta, Done, Turn, Upstream, as_dict, as_id, as_str
from app.upstream.http import upstream_message


def chat_messages(turn: Turn) -> list[dict]:
    """Turn stored history and the new prompt into Chat Completions messages (a /v1 caller's go as they are)."""
    if turn.messages is not None:
        return list(turn.messages)
    messages = []
    for prompt, reply in turn.history:
        messages.append({"role": "user", "content": prompt})
        messages.append({"role": "assistant", "content": reply})
    messages.append({"role": "user", "content": turn.prompt})
    return messages


def _said(choice: dict) -> str:
    """What one choice of a chunk (its delta) or of an answer (its message) says, for counting: text, refusal
    and tool call arguments."""
    part = as_dict(choice.get("delta") or choice.get("message"))
    said = [as_str(part.get("content")) or "", as_str(part.get("refusal")) or ""]
    calls = part.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = as_dict(as_dict(call).get("function"))
        said.append((as_str(function.get("name")) or "") + (as_str(function.get("arguments")) or ""))
    return "".join(said)


class OpenAIUpstream(Upstream):
    capabilities = CAPABILITIES  # the caller's request goes as it is: tools, schemas, n, parts, logprobs

    def stream(self, turn: Turn) -> Iterator[Delta | Done]:
        if turn.responses_request is not None and self.account.responses:
            yield from self._responses(turn)
            return
        if turn.request is not None:
            yield from self._relay(turn)
            return
        payload = {
            "model": turn.model,
            "messages": chat_messages(turn),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        response = self.http.post(f"{self.account.base_url}/chat/completions", payload, self._headers())
        if "text/event-stream" not in response.headers.get("Content-Type", ""):
            yield from self._whole(response)  # a server that ignored "stream": one JSON answer
            return
        model, usage, finish, reply_id, said = turn.model, None, None, None, False
        try:
            for data in self.http.sse_data(response):
                chunk = self._parse(data)
                model = as_id(chunk.get("model")) or model
                reply_id = as_id(chunk.get("id")) or reply_id
                usage = as_dict(chunk.get("usage")) or usage
                choices = chunk.get("choices")
                for choice in choices if isinstance(choices, list) else ():
                    choice = as_dict(choice)
                    text = as_str(as_dict(choice.get("delta")).get("content"))
                    if text:
                        said = True
                        yield Delta(text)
                    finish = as_str(choice.get("finish_reason")) or finish
        except StreamCut:
            if finish is None:  # no [DONE] and no finish_reason: the reply really was cut
                raise
        if not said and finish is None:  # nothing usable came, not even a reason for saying nothing
            raise UpstreamError(f"account {self.account.name!r}: the upstream ended without a reply")
        yield Done(model=model, upstream_message_id=reply_id, usage=usage, finish_reason=finish or "stop")

    def _headers(self) -> dict:
        headers = {"Accept": "text/event-stream"}
        if self.account.api_key:
            headers["Authorization"] = f"Bearer {self.account.api_key}"
        return headers

    def _relay(self, turn: Turn) -> Iterator[Delta | Done]:
        """A /v1 caller's request as it is (with this account's model): each chunk passed on as the upstream
        sent it (Delta.raw), or the whole answer (Done.raw) when the caller did not ask for a stream."""
        payload = {**turn.request, "model": turn.model}
        response = self.http.post(f"{self.account.base_url}/{turn.endpoint}", payload, self._headers())
        if not payload.get("stream") or "text/event-stream" not in response.headers.get("Content-Type", ""):
            body = self._parse(self.http.body(response, self.http.max_line_bytes).decode("utf-8", "replace"))
            choices = body.get("choices")
            said = "".join(_said(as_dict(c)) for c in (choices if isinstance(choices, list) else ()))
            # A stream asked of a server that answered with one JSON: that answer as the stream's one chunk.
            chunk = {**body, "object": "chat.completion.chunk"} if payload.get("stream") else body
            yield Delta(said, raw=chunk)
            usage = as_dict(body.get("usage")) or None
            if usage is not None and turn.endpoint == "embeddings":  # an embedding's tokens are all the prompt's
                usage = {"completion_tokens": 0, **usage}
            yield Done(
                model=as_id(body.get("model")) or turn.model,
                upstream_message_id=as_id(body.get("id")),
                usage=usage,
                finish_reason=_first_finish(choices) or "stop",
                raw=body,
            )
            return
        usage, finish, chunks = None, None, 0
        try:
            for data in self.http.sse_data(response):
                chunk = self._parse(data)
                usage = as_dict(chunk.get("usage")) or usage
                choices = chunk.get("choices")
                choices = choices if isinstance(choices, list) else []
                finish = _first_finish(choices, finish)
                chunks += 1
                yield Delta("".join(_said(as_dict(c)) for c in choices), raw=chunk)
        except StreamCut:
            if finish is None:
                raise
        if not chunks:
            raise UpstreamError(f"account {self.account.name!r}: the upstream ended without a reply")
        yield Done(model=turn.model, usage=usage, finish_reason=finish or "stop")

    def _responses(self, turn: Turn) -> Iterator[Delta | Done]:
        """A /v1/responses request as it is (with this account's model) to an upstream that offers /responses:
        its typed events passed on as they came (Delta.raw), or its response object (Done.raw)."""
        payload = {**turn.responses_request, "model": turn.model}
        response = self.http.post(f"{self.account.base_url}/responses", payload, self._headers())
        if not payload.get("stream") or "text/event-stream" not in response.headers.get("Content-Type", ""):
            body = self._parse(self.http.body(response, self.http.max_line_bytes).decode("utf-8", "replace"))
            yield Delta(_output_text(body.get("output")), raw=body)
            yield _response_done(body, turn.model)
            return
        final, events = None, 0
        try:
            for data in self.http.sse_data(response):
                event = self._parse(data)
                events += 1
                if event.get("type") in ("response.completed", "response.incomplete", "response.failed"):
                    final = as_dict(event.get("response"))
                delta = event.get("delta") if str(event.get("type", "")).endswith(".delta") else None
                yield Delta(delta if isinstance(delta, str) else "", raw=event)
        except StreamCut:  # a Responses stream ends after its last event, without [DONE]
            if final is None:
                raise
        if not events or final is None:
            raise UpstreamError(f"account {self.account.name!r}: the upstream ended the response before finishing it")
        yield _response_done(final, turn.model)

    def _parse(self, data: str) -> dict:
        try:
            chunk = json.loads(data)
        except ValueError:
            raise UpstreamError(f"account {self.account.name!r}: the upstream sent a malformed event") from None
        if not isinstance(chunk, dict):
            raise UpstreamError(f"account {self.account.name!r}: the upstream sent a malformed event")
        if chunk.get("error"):
            message = upstream_message(chunk) or "unknown error"
            raise UpstreamError(
                f"account {self.account.name!r}: the upstream failed mid-reply: {self.http.scrub(message)}"
            )
        return chunk

    def _whole(self, response) -> Iterator[Delta | Done]:
        # A reply of max_upstream_line_bytes is as much as a stream's one line may carry, so as much here.
        body = self._parse(self.http.body(response, self.http.max_line_bytes).decode("utf-8", "replace"))
        choices = body.get("choices")
        choice = as_dict(choices[0] if isinstance(choices, list) and choices else None)
        text = as_str(as_dict(choice.get("message")).get("content")) or ""
        if text:
            yield Delta(text)
        yield Done(
            model=as_id(body.get("model")) or self.account.model,
            upstream_message_id=as_id(body.get("id")),
            usage=as_dict(body.get("usage")) or None,
            finish_reason=as_str(choice.get("finish_reason")) or "stop",
        )


def _output_text(output) -> str:
    """What a Responses output says (its text and its function calls' arguments), for counting."""
    said = []
    for item in output if isinstance(output, list) else ():
        item = as_dict(item)
        said.append((as_str(item.get("name")) or "") + (as_str(item.get("arguments")) or ""))
        content = item.get("content")
        for part in content if isinstance(content, list) else ():
            said.append(as_str(as_dict(part).get("text")) or "")
    return "".join(said)


def _response_done(response: dict, model: str) -> Done:
    """The end of a Responses answer: its response object, with its usage in the ledger's words."""
    return Done(
        model=as_id(response.get("model")) or model,
        upstream_message_id=as_id(response.get("id")),
        usage=_chat_usage(response.get("usage")),
        finish_reason="length" if response.get("status") == "incomplete" else "stop",
        raw=response,
    )


def _chat_usage(usage) -> dict | None:
    """A Responses usage (input/output tokens) in Chat Completions' words, as the ledger counts."""
    usage = as_dict(usage)
    if not usage:
        return None
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _first_finish(choices, found: str | None = None) -> str | None:
    """The first choice's finish_reason, once one is given."""
    for choice in choices if isinstance(choices, list) else ():
        reason = as_str(as_dict(choice).get("finish_reason"))
        if reason:
            return found or reason
    return found
