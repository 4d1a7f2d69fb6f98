"""The ChatGPT web backend (`POST {base_url}/conversation`), where conversations live upstream.

The answer is an event stream whose `message.content.parts[0]` grows cumulatively until
`data: [DONE]`; we pass on only what is new in each event. A follow-up names the upstream
conversation and the last assistant message as its parent, so it can only go to the account
that holds that conversation.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime

from app.errors import UpstreamError
from app.upstream.base import Delta, Done, Turn, Upstream, as_dict, as_id, as_str, ends_in_high_surrogate

TITLE_BYTES = 65536  # a title answer larger than this is not one


SESSION_COOKIE = "__Secure-next-auth.session-token"
REFRESH_AHEAD = 300.0  # seconds before its JWT `exp` an access token is renewed (with a session token)
REFUSAL_HOLDS = 5.0  # seconds a failed renewal is the answer for the requests that waited on it


def jwt_expiry(token: str) -> float | None:
    """Read the `exp` claim of a JWT without checking its signature (the upstream checks it); None if absent."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return None
    try:
        return float(exp)
    except OverflowError:  # an int too large for a float is no time
        return None


class ChatGPTWebUpstream(Upstream):
    sends_history = False  # the conversation lives upstream; a follow-up names it

    def __init__(self, account, timeouts: dict, max_line_bytes: int = 1_048_576):
        super().__init__(account, timeouts, max_line_bytes)
        self._token = account.access_token
        self._expires = jwt_expiry(self._token) if self._token else None
        self._refreshing = threading.Lock()
        self._refused: tuple[str, float, UpstreamError] | None = None  # the last failed renewal of a token

    def _headers(self) -> dict:
        return {
            "Authorization": f"Bearer {self._access_token()}",
            "Accept": "text/event-stream",
            "Content-Type": "application/json",
        }

    def _access_token(self) -> str:
        """The access token to send, renewed from the session token first when it is missing or about to expire."""
        if self.account.session_token and (
            not self._token or (self._expires is not None and self._expires - time.time() < REFRESH_AHEAD)
        ):
            self._refresh(self._token)
        return self._token

    def _refresh(self, stale: str) -> None:
        """Get a fresh access token from the session endpoint, as ChatGPT's web client does (once for many callers)."""
        with self._refreshing:
            if self._token != stale:
                return  # another request renewed it meanwhile
            refused = self._refused
            if refused and refused[0] == stale and time.monotonic() - refused[1] < REFUSAL_HOLDS:
                # the requests that queued behind a failed renewal share its answer instead of asking again
                raise UpstreamError(refused[2].message, fault=refused[2].fault)
            try:
                self._renew()
            except UpstreamError as exc:
                self._refused = (stale, time.monotonic(), exc)
                raise
            self._refused = None

    def fresh_access_token(self) -> str:
        """A new access token from the session token (the original server's /api/access-token)."""
        with self._refreshing:
            self._renew()
            return self._token

    def _renew(self) -> None:
        """Ask the session endpoint for an access token (the caller holds the lock)."""
        data = self.http.get_json(
            f"{self.account.auth_base}/api/auth/session",
            {"Cookie": f"{SESSION_COOKIE}={self.account.session_token}", "Accept": "application/json"},
        )
        token = data.get("accessToken")
        if not isinstance(token, str) or not token:
            raise UpstreamError(
                f"account {self.account.name!r}: the session endpoint gave no access token; "
                "the account's session_token needs to be renewed",
                fault="credentials",
            )
        self.http.add_secret(token)
        self._token, self._expires = token, jwt_expiry(token) or _iso_time(data.get("expires"))

    def _post(self, url: str, payload: dict):
        """POST with the current access token; on a refusal, renew it from the session token and try once more."""
        token = self._access_token()
        try:
            return self.http.post(url, payload, self._headers())
        except UpstreamError as exc:
            if exc.fault != "credentials" or not self.account.session_token:
                raise
        self._refresh(token)
        return self.http.post(url, payload, self._headers())

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
        response = self._post(f"{self.account.base_url}/conversation", payload)
        reply = _Reply(turn.upstream_conversation_id, turn.model)
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
            new = reply.take(event)
            if new:
                yield Delta(new, reply.conversation_id, reply.message_id)
        if not reply.conversation_id or not reply.message_id or not reply.said:
            raise UpstreamError(f"account {self.account.name!r}: the upstream ended without a reply")
        yield Done(
            model=reply.model,
            upstream_conversation_id=reply.conversation_id,
            upstream_message_id=reply.message_id,
            finish_reason="length" if reply.finish == "max_tokens" else "stop",
        )

    def title(self, turn: Turn, done: Done) -> str | None:
        """Ask the backend to title a new conversation; None if it cannot."""
        url = f"{self.account.base_url}/conversation/gen_title/{done.upstream_conversation_id}"
        try:
            response = self._post(url, {"message_id": done.upstream_message_id, "model": done.model})
            title = json.loads(self.http.body(response, TITLE_BYTES)).get("title")
        except Exception:  # a title is a nicety (the service falls back); never fail a reply over it
            return None
        return title.strip() if isinstance(title, str) and title.strip() else None


class _Reply:
    """Follow the assistant messages of one answer and say what text is new in each event.

    Each message's `parts[0]` is cumulative. One answer may hold several assistant messages (a
    tool call, then the answer): messages addressed to a tool (recipient other than "all") are
    skipped, and visible ones are joined by a blank line.
    """

    def __init__(self, conversation_id: str | None, model: str):
        self.conversation_id, self.model = conversation_id, model
        self.message_id: str | None = None
        self.finish = "stop"
        self._seen: dict[str, int] = {}  # message id -> characters of it passed on

    @property
    def said(self) -> bool:
        return any(self._seen.values())

    def take(self, event: dict) -> str:
        self.conversation_id = as_id(event.get("conversation_id")) or self.conversation_id
        message = as_dict(event.get("message"))
        if as_dict(message.get("author")).get("role") != "assistant" or message.get("recipient", "all") != "all":
            return ""
        message_id = as_id(message.get("id"))
        if message_id is None:
            return ""
        metadata = as_dict(message.get("metadata"))
        self.model = as_id(metadata.get("model_slug")) or self.model
        self.finish = as_str(as_dict(metadata.get("finish_details")).get("type")) or self.finish
        parts = as_dict(message.get("content")).get("parts")
        text = parts[0] if isinstance(parts, list) and parts and isinstance(parts[0], str) else ""
        joining = message_id not in self._seen and self.said
        self.message_id = message_id
        done = self._seen.setdefault(message_id, 0)
        # A text that ends in half of a surrogate pair gets the whole pair in the next event: wait for it.
        end = len(text) - 1 if ends_in_high_surrogate(text) else len(text)
        new = text[done:end]
        if not new:
            return ""
        self._seen[message_id] = end
        return "\n\n" + new if joining else new


def _iso_time(value) -> float | None:
    """Read an ISO 8601 time such as the session answer's `expires`; None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
