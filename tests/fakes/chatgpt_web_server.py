"""Serve a fake ChatGPT web backend (/backend-api) on 127.0.0.1 for tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from http.cookies import CookieError, SimpleCookie

from ._http import FakeHandler, FakeUpstream

TITLE_PREFIX = "/backend-api/conversation/gen_title/"
SESSION_PATH = "/api/auth/session"
SESSION_COOKIE = "__Secure-next-auth.session-token"
RATE_LIMIT_DETAIL = "Too many requests in 1 hour. Try again later."


def iso_time(moment: datetime) -> str:
    """Format a moment as next-auth does: 2026-12-31T00:00:00.000Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def session_token_of(cookie_header: str) -> str | None:
    """Return the next-auth session token of a Cookie header, joining the .0, .1, ... parts of a split one."""
    cookies = SimpleCookie()
    try:
        cookies.load(cookie_header)
    except CookieError:
        return None
    if SESSION_COOKIE in cookies:
        return cookies[SESSION_COOKIE].value
    parts = []
    while f"{SESSION_COOKIE}.{len(parts)}" in cookies:
        parts.append(cookies[f"{SESSION_COOKIE}.{len(parts)}"].value)
    return "".join(parts) or None


def _prompt_of(body) -> str | None:
    """Return the text of the last (user) message of a conversation request, or None if malformed."""
    if not isinstance(body, dict) or body.get("action") != "next":
        return None
    if not isinstance(body.get("messages"), list):
        return None
    try:
        message = body["messages"][-1]
        if message["author"]["role"] != "user":
            return None
        return "".join(p for p in message["content"]["parts"] if isinstance(p, str))
    except (KeyError, IndexError, TypeError):
        return None


class _WebHandler(FakeHandler):
    def dispatch(self) -> None:
        fake: FakeChatGPTWeb = self.owner
        _, body = self.read_and_record()
        if self.command == "GET" and self.route == SESSION_PATH:
            self.session()
            return
        is_title = self.route.startswith(TITLE_PREFIX)
        if self.command != "POST" or not (self.route == "/backend-api/conversation" or is_title):
            self.send_json(404, {"detail": "Not Found"})
            return
        if not self.pause(fake.delay):
            return
        token = self.bearer()
        if not token or (fake.tokens is not None and token not in fake.tokens):
            self.send_json(401, {"detail": "invalid token"})
            return
        if is_title:
            self.gen_title(token, self.route[len(TITLE_PREFIX) :], body)
            return
        failure = fake.take_failure()
        if failure is not None:
            self.send_json(failure, {"detail": fake.fail_message}, dict(fake.fail_headers))
            return
        self.conversation(token, body)

    def session(self) -> None:
        fake: FakeChatGPTWeb = self.owner
        status = fake.session_fail_status
        if status is not None:
            self.send_json(status, {"detail": "session lookup failed"})
            return
        answer = fake.session_for(session_token_of(self.headers.get("Cookie", "")))
        self.send_json(200, answer, {"Cache-Control": "private, no-cache, no-store"})

    def gen_title(self, token: str, cid: str, body) -> None:
        fake: FakeChatGPTWeb = self.owner
        if fake.title_fail:
            self.send_json(500, {"detail": "title generation failed"})
            return
        with fake._lock:
            turns = fake.conversations.get(cid)
            if turns is None or fake.owners.get(cid) != token:
                status, answer = 404, {"detail": "Conversation not found"}
            elif not isinstance(body, dict) or body.get("message_id") not in fake.assistant_ids[cid]:
                status, answer = 400, {"detail": "message_id is not a message of this conversation"}
            else:
                fake.titles[cid] = fake.title_text if fake.title_text is not None else f"Title: {turns[0][0][:20]}"
                status, answer = 200, {"title": fake.titles[cid]}
        self.send_json(status, answer)

    def conversation(self, token: str, body) -> None:
        fake: FakeChatGPTWeb = self.owner
        prompt = _prompt_of(body)
        if prompt is None:
            self.send_json(400, {"detail": "malformed conversation request"})
            return
        reply = fake.reply_for(body, prompt)
        msg_id, cid = str(uuid.uuid4()), body.get("conversation_id")
        status = 200
        with fake._lock:
            if not cid:
                cid = str(uuid.uuid4())
            elif cid not in fake.conversations or fake.owners.get(cid) != token:
                status = 404
            elif body.get("parent_message_id") != fake.last_message_ids.get(cid):
                status = 409
            if status == 200 and fake.error_in_stream is None and fake.cut_after is None:
                fake.conversations.setdefault(cid, []).append((prompt, reply))
                fake.owners[cid] = token
                fake.assistant_ids.setdefault(cid, set()).add(msg_id)
                fake.last_message_ids[cid] = msg_id
        if status == 404:
            self.send_json(404, {"detail": "Conversation not found"})
        elif status == 409:
            self.send_json(409, {"detail": "parent_message_id is not the last message of the conversation"})
        else:
            self.stream_reply(cid, msg_id, body.get("model") or "auto", reply)

    def stream_reply(self, cid: str, msg_id: str, model: str, reply: str) -> None:
        fake: FakeChatGPTWeb = self.owner

        def event(text: str, done: bool) -> dict:
            metadata = {"model_slug": model}
            if done:
                metadata["finish_details"] = {"type": "stop"}
            message = {
                "id": msg_id,
                "author": {"role": "assistant"},
                "content": {"content_type": "text", "parts": [text]},
                "status": "finished_successfully" if done else "in_progress",
                "end_turn": True if done else None,
                "metadata": metadata,
            }
            return {"message": message, "conversation_id": cid, "error": None}

        size = max(1, int(fake.chunk_size))
        events = [event(reply[:end], False) for end in range(size, len(reply), size)]
        events.append(event(reply, True))
        self.begin_stream()
        cut = fake.cut_after
        if cut is not None:
            events = events[: max(0, cut)]
        if fake.error_in_stream is not None and cut is None:
            self.send_event(event(reply[:size], False))
            self.chat_done()
            self.send_event({"message": None, "conversation_id": cid, "error": fake.error_in_stream})
        else:
            for index, data in enumerate(events):
                if index and not self.pause(fake.stream_delay):
                    return
                if index == len(events) - 1 and cut is None:
                    self.chat_done()
                self.send_event(data)
                if index == 0:
                    moderation = {
                        "type": "moderation",
                        "conversation_id": cid,
                        "message_id": msg_id,
                        "moderation_response": {"flagged": False, "blocked": False},
                    }
                    self.send_event(moderation, event="ping")
        if cut is not None:
            self.drop_connection()
            return
        self.send_event("[DONE]")
        self.end_stream()


class FakeChatGPTWeb(FakeUpstream):
    """Answer /backend-api/conversation, gen_title and /api/auth/session, keeping state like chatgpt.com."""

    handler_class = _WebHandler
    url_path = "/backend-api"
    chat_path = "/backend-api/conversation"

    def __init__(self) -> None:
        super().__init__()  # reply_text None answers "web echo: <prompt>"
        self.tokens: set[str] | None = None  # None: accept any non-empty bearer token
        self.sessions: dict[str, str] = {}  # session token (cookie) -> access token that /api/auth/session hands out
        self.session_expires = iso_time(datetime.now(UTC) + timedelta(days=30))
        self.session_fail_status: int | None = None
        self.title_fail = False
        self.title_text: str | None = None  # None: "Title: <the first prompt's first 20 characters>"
        self.conversations: dict[str, list[tuple[str, str]]] = {}
        self.owners: dict[str, str] = {}
        self.assistant_ids: dict[str, set[str]] = {}
        self.last_message_ids: dict[str, str] = {}
        self.titles: dict[str, str] = {}

    def rate_limit(self, retry_after: str | None = None, times: int | None = None) -> None:
        """Answer conversations 429 as chatgpt.com does (and Retry-After if given), times times or until heal()."""
        with self._lock:
            self.fail_message = RATE_LIMIT_DETAIL
            self.fail_headers = self.retry_after_headers(retry_after)
            self.fail_status, self.fail_times = 429, times

    def heal(self) -> None:
        """Clear every failure knob, including session_fail_status and title_fail."""
        super().heal()
        with self._lock:
            self.session_fail_status, self.title_fail = None, False

    def session_for(self, session_token: str | None) -> dict:
        """Return the /api/auth/session answer for a session token, accepting its access token from now on."""
        with self._lock:
            access = self.sessions.get(session_token) if session_token else None
            if access is None:
                return {}
            if isinstance(self.tokens, set):
                self.tokens.add(access)
        return {
            "user": {"id": "user-fake", "name": "Fake", "email": "fake@example.com"},
            "expires": self.session_expires,
            "accessToken": access,
            "authProvider": "auth0",
        }

    def reply_for(self, body: dict, prompt: str) -> str:
        """Return the reply text for a request body."""
        if callable(self.reply_text):
            return str(self.reply_text(body))
        if self.reply_text is not None:
            return str(self.reply_text)
        return f"web echo: {prompt}"
