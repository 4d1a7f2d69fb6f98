"""The ChatGPT web backend (`POST {base_url}/conversation`), where conversations live upstream.

The answer is an event stream whose `message.content.parts[0]` grows cumulatively until
`data: [DONE]`; we pass on only what is new in each event. A follow-up names the upstream
conversation and the last assistant message as its parent, so it can only go to the account
that holds that conversation.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

from app.errors import UpstreamError
from app.upstream.base import Delta, Done, Turn, Upstream


class ChatGPTWebUpstream(Upstream):
    def _headers(self) -> dict:
        return {
            "Authorization": f"Bearer {self.account.access_token}",
            "Accept": "text/event-stream",
            "Content-Type": "application/json",
        }

    def stream(self, turn: Turn) -> Iterator[Delta | Done]:
        payload = {
            "action": "next",
            "messages": [
                {
                    "id": str(uuid.uuid4()),
                    "author": {"role": "user"},
                    "content": {"content_type": "text", "parts": [turn.prompt]},
                }
            ],
            "parent_message_id": turn.upstream_parent_id or str(uuid.uuid4()),
            "model": turn.model,
            "timezone_offset_min": 0,
            "history_and_training_disabled": False,
        }
        if turn.upstream_conversation_id:
            payload["conversation_id"] = turn.upstream_conversation_id
        response = self.http.post(f"{self.account.base_url}/conversation", payload, self._headers())
        sent = ""
        conversation_id, message_id = turn.upstream_conversation_id, None
        model, finish = turn.model, "stop"
        for data in self.http.sse_data(response):
            try:
                event = json.loads(data)
            except ValueError:
                continue  # the backend interleaves non-JSON notices; they carry no reply text
            if not isinstance(event, dict):
                continue
            if event.get("error"):
                raise UpstreamError(
                    f"account {self.account.name!r}: the upstream failed mid-reply: "
                    f"{self.http.scrub(str(event['error']))[:500]}"
                )
            conversation_id = event.get("conversation_id") or conversation_id
            message = event.get("message")
            if not isinstance(message, dict) or (message.get("author") or {}).get("role") != "assistant":
                continue
            message_id = message.get("id") or message_id
            metadata = message.get("metadata") or {}
            model = metadata.get("model_slug") or model
            finish = (metadata.get("finish_details") or {}).get("type") or finish
            parts = (message.get("content") or {}).get("parts") or [""]
            text = parts[0] if isinstance(parts[0], str) else ""
            new = text[len(sent) :]  # parts[0] is cumulative; what was sent cannot be unsent
            if new:
                sent += new
                yield Delta(new)
        if not conversation_id or not message_id:
            raise UpstreamError(f"account {self.account.name!r}: the upstream ended without a reply")
        yield Done(
            model=model,
            upstream_conversation_id=conversation_id,
            upstream_message_id=message_id,
            finish_reason="length" if finish == "max_tokens" else "stop",
        )

    def title(self, turn: Turn, done: Done) -> str | None:
        """Ask the backend to title a new conversation; None if it cannot."""
        url = f"{self.account.base_url}/conversation/gen_title/{done.upstream_conversation_id}"
        try:
            response = self.http.post(
                url, {"message_id": done.upstream_message_id, "model": done.model}, self._headers(), stream=False
            )
            title = response.json().get("title")
        except Exception:  # a title is a nicety (the service falls back); never fail a reply over it
            return None
        return title.strip() if isinstance(title, str) and title.strip() else None
