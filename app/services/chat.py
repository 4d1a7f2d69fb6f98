"""Asking: admit the turn under its user's limits, pick or pin the account, send the turn, store it,
record it in the usage ledger, and answer in the original's shape."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from app import metrics
from app.errors import AppError, BadRequest, Conflict, Forbidden, NoAccountAvailable, UpstreamError, UpstreamTimeout
from app.pool import PLUS_MODES, Lease, Pool, back_in, class_of, token_hash
from app.services.completions import Completion, check_completion, check_embedding, upstream_body
from app.services.conversations import MAX_TITLE, ConversationService
from app.services.principal import Principal
from app.services.quota import Admit, QuotaService, Ticket
from app.services.usage import UsageService
from app.store.conversations import Conversation, Message, SqlConversationStore
from app.upstream import Delta, Done, Turn, Upstream
from app.upstream.base import checked, clean_text

TITLE_CHARS = 60
RENEW_EVERY = 10.0  # seconds between renewals of a running turn's claim on its conversation
log = logging.getLogger(__name__)

MAX_SESSION_TOKEN = 16384  # a next-auth session cookie, even split in parts, is a few kilobytes
TOKEN_TEXT = re.compile(r"[\x21-\x7e]+")  # it travels in a Cookie header


def short_title(text: str, most: int) -> str:
    """Collapse whitespace and cut to at most `most` characters (an ellipsis marks the cut)."""
    words = " ".join(clean_text(text).split())
    return words if len(words) <= most else words[: most - 1].rstrip() + "…"


def fallback_title(prompt: str) -> str:
    """Make a title from the first prompt when the upstream gives none."""
    return short_title(prompt, TITLE_CHARS)


def trim_history(history: list[tuple[str, str]], max_chars: int) -> list[tuple[str, str]]:
    """Keep the most recent turns whose prompts and replies fit in max_chars; the oldest go first."""
    kept, total = 0, 0
    for prompt, reply in reversed(history):
        total += len(prompt) + len(reply)
        if total > max_chars:
            break
        kept += 1
    return history[len(history) - kept :] if kept else []


def _sent_chars(turn: Turn) -> int:
    """How much text a turn sent upstream: its messages, or its prompt and the history sent with it."""
    if turn.messages:
        return sum(len(m["content"]) for m in turn.messages)
    return len(turn.prompt) + sum(len(p) + len(r) for p, r in turn.history)


def fold_messages(messages: list[dict]) -> str:
    """Fold a message list into one prompt, for account types that take a single turn."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


@dataclass
class Plan:
    """Where a turn goes and what it carries, decided before any byte leaves."""

    lease: Lease
    turn: Turn
    conversation: Conversation | None
    last: Message | None
    token_hash: str | None
    history_trimmed: int = 0  # earlier turns left out of what was sent upstream
    # Another account for this turn if its own fails before the first byte (None: it has nowhere else to go).
    replace: Callable[[list[str]], Lease] | None = None
    account_changed: bool = False  # a follow-up moved off the account its conversation was pinned to
    # The ids the turn is stored under (a new conversation's too), known before it runs so a stream can say them.
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    new_conversation_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def upstream(self) -> Upstream:
        return self.lease.upstream


class ChatService:
    def __init__(
        self,
        store: SqlConversationStore,
        pool: Pool,
        conversations: ConversationService,
        settings: dict,
        *,
        quota: QuotaService | None = None,
        usage: UsageService | None = None,
        on_admit: Callable[[Ticket | None], None] | None = None,
    ):
        self.store = store
        self.pool = pool
        self.conversations = conversations
        self.quota = quota  # per-user limits, checked before any upstream is asked
        self.usage = usage  # the ledger every turn is recorded in
        self.on_admit = on_admit  # told of each admitted turn (the fronts put its limits in their headers)
        self.max_prompt_chars = settings["max_prompt_chars"]
        self.max_reply_chars = settings["max_reply_chars"]
        self.max_history_chars = settings["max_history_chars"]
        # A running turn renews its claim while text flows; one that died lets go after this long. The upstream
        # stays silent for at most the read timeout before the turn ends, so the claim outlives any live turn.
        self.claim_seconds = float(settings["timeouts"]["read"]) + 30.0
        # A turn may move to another account only while it is young: one connect and one read timeout.
        self.failover_seconds = float(settings["timeouts"]["connect"]) + float(settings["timeouts"]["read"])

    def ask(self, principal: Principal, prompt: str | None, **options) -> dict:
        """Ask and wait for the whole reply; return the answer JSON."""
        result = None
        for event in self.ask_stream(principal, prompt, **options):
            if isinstance(event, dict):
                result = event
        return result

    def ask_stream(
        self,
        principal: Principal,
        prompt: str | None,
        conversation_id: str | None = None,
        plus: str = "false",
        access_token: str | None = None,
        user_plus: bool = False,
        front: str = "api",
        model: str | None = None,
        ids: tuple[str, str] | None = None,
    ) -> Iterator[Delta | dict]:
        """Check everything, then return a generator of Delta events ending with the answer JSON.

        model: for a new conversation, among the accounts serving it (an alias names the model it stands for);
        a follow-up stays on its conversation's account, which must serve it. ids: (message id, a new
        conversation's id) for the turn, chosen by a front that shows them while the reply comes.
        """
        admit, plan = self._admission(principal), None
        try:
            plan = self._plan(principal, prompt, conversation_id, plus, access_token, user_plus, admit, model)
            if ids is not None:
                plan.message_id, plan.new_conversation_id = ids
            ticket = self._admitted(admit)
        except BaseException as exc:
            if plan is not None:
                self.pool.released(plan.lease)
            self._turned_away(principal, admit.ticket if admit else None, exc, front)
            raise
        return self._run(principal, plan, ticket, front)

    def access_token(self, session_token: str) -> str:
        """A fresh ChatGPT access token for a session token (the original's /api/access-token and its page),
        fetched through byo_account's proxy. A refused session token is the caller's to fix (400); the rest is
        the upstream's."""
        if len(session_token) > MAX_SESSION_TOKEN or not TOKEN_TEXT.fullmatch(session_token):
            raise BadRequest(
                f"session_token must be one line of printable ASCII, at most {MAX_SESSION_TOKEN} characters",
                param="session_token",
            )
        try:
            return self.pool.access_token_for(session_token)
        except (UpstreamError, UpstreamTimeout) as exc:
            if getattr(exc, "fault", None) != "credentials":  # say whose trouble it is, not an account's
                where = f"the ChatGPT session endpoint ({self.pool.byo['auth_base']})"
                exc.message = exc.message.replace("account 'session'", where, 1)
                raise
            raise BadRequest(
                "the session endpoint did not accept this session token (it expired or was signed out): sign in "
                "to ChatGPT again and copy the new __Secure-next-auth.session-token cookie",
                param="session_token",
            ) from None

    def embed(self, principal: Principal, body: dict, front: str = "v1") -> dict:
        """Answer a /v1/embeddings request from an account serving its model (openai type), as the upstream did."""
        done = None
        for event in self.complete_stream(principal, body, front, embedding=True)[2]:
            done = event if isinstance(event, Done) else done
        return done.raw

    def complete_stream(
        self,
        principal: Principal,
        body: dict,
        front: str = "v1",
        embedding: bool = False,
        responses_request: dict | None = None,
    ) -> tuple[Completion, Upstream, Iterator[Delta | Done]]:
        """Answer a stateless /v1 Chat Completions request: check it, pick an account serving its model that can
        do what it asks (app/services/completions.py), stream.

        An openai account gets the request as it is and its events carry the upstream's own chunks (Delta.raw,
        Done.raw); other types answer its messages folded into one prompt. Nothing is stored but the turn's line
        in the usage ledger: the caller sends the whole history each time. With responses_request (a
        /v1/responses body), an openai account whose upstream offers /responses gets that instead.
        """
        if not principal.may_write:
            raise Forbidden("admins may read other users' conversations but not chat as them")
        check = check_embedding if embedding else check_completion
        completion = check(body, self.max_prompt_chars)
        model, user_plus, needs = body.get("model"), principal.user.plus, completion.needs
        admit, lease = self._admission(principal), None
        try:
            lease = self.pool.pick_model(model, user_plus, first=admit, needs=needs)
            ticket = self._admitted(admit)
        except BaseException as exc:
            if lease is not None:
                self.pool.released(lease)
            self._turned_away(principal, admit.ticket if admit else None, exc, front)
            raise
        turn = Turn(
            prompt=fold_messages(list(completion.messages)),
            model=lease.serving,
            messages=completion.messages,
            request=upstream_body(completion, lease.serving),
            endpoint="embeddings" if embedding else "chat/completions",
            responses_request=responses_request,
        )

        def replace_(tried: list[str]) -> Lease:
            return self.pool.pick_model(model, user_plus, tried, needs=needs)

        plan = Plan(lease, turn, None, None, None, replace=replace_)
        return completion, lease.upstream, self._metered(ticket, front, plan, self._attempts(plan))

    def _reply(self, upstream: Upstream, turn: Turn) -> Iterator[Delta | Done]:
        """The upstream's reply as valid text, stopped with a 502 past max_reply_chars."""
        return checked(upstream.stream(turn), self.max_reply_chars, upstream.account.name)

    def served(self, principal: Principal, model: str | None) -> str | None:
        """model if this caller's accounts serve it, else None (the default): the originals' clients send the
        web backend's names (text-davinci-002-render-sha ...), which mean nothing to other accounts."""
        return model if model and model in self.models(principal) else None

    def models(self, principal: Principal) -> list[str]:
        """Return the models of the accounts this caller may use (plus accounts only for plus users)."""
        return self.pool.models(principal.user.plus)

    # -- limits and the ledger -----------------------------------------------------------

    def _admission(self, principal: Principal) -> Admit | None:
        """The turn's admission under its user's limits (RateLimited, 429, past one), done in the transaction
        that chooses its account (the pool's `first`), so that a limited turn costs no transaction more."""
        return self.quota.admitting(principal) if self.quota is not None else None

    def _admitted(self, admit: Admit | None) -> Ticket | None:
        """The turn's ticket, admitting it now if no choice did (its own access token, say)."""
        if admit is None:
            return None
        ticket = admit.ensure()
        if self.on_admit is not None:
            self.on_admit(ticket)
        return ticket

    def _turned_away(self, principal: Principal, ticket: Ticket | None, exc: BaseException, front: str) -> None:
        """A turn that ended before any upstream was asked: it does not count against the user's limits
        (ticket: what its admission counted, None if it was not admitted). The server's own trouble (no
        account could take it) is still in the ledger, as an error."""
        if self.quota is None:
            return
        if ticket is not None:
            self.quota.take_back(ticket)
        if self.on_admit is not None:
            self.on_admit(None)  # its answer reports no request of a limit it did not use
        status = getattr(exc, "status", 500) if isinstance(exc, Exception) else None
        if status is not None and status >= 500 and self.usage is not None:
            self.usage.record(
                ticket or self.quota.ticket(principal),
                front=front,
                account=None,
                model=None,
                usage={"prompt_tokens": 0, "completion_tokens": 0},  # nothing was sent: no estimate either
                sent_chars=0,
                reply_chars=0,
                outcome="error",
                status=status,
                counts=False,
            )

    def _metered(self, ticket: Ticket | None, front: str, plan: Plan, events: Iterator) -> Iterator[Delta | Done]:
        """Pass the reply's events on, and record the turn in the ledger however it ends."""
        if ticket is None or self.usage is None:
            yield from events
            return
        reply_chars, done, outcome, status = 0, None, "error", 500
        try:
            for event in events:
                if isinstance(event, Done):
                    done = event
                else:
                    reply_chars += len(event.text)
                yield event
            outcome, status = "ok", None
        except GeneratorExit:
            outcome, status = "cut", None
            raise
        except AppError as exc:
            status = exc.status
            raise
        finally:
            events.close()
            self.usage.record(
                ticket,
                front=front,
                account="own access token" if plan.token_hash else plan.lease.name,
                model=done.model if done else plan.turn.model,
                usage=done.usage if done else None,
                sent_chars=_sent_chars(plan.turn),
                reply_chars=reply_chars,
                outcome=outcome,
                status=status,
            )

    # -- deciding ------------------------------------------------------------------------

    def _plan(self, principal, prompt, conversation_id, plus, access_token, user_plus, admit=None, model=None) -> Plan:
        prompt = (prompt or "").strip()
        if not prompt:
            raise BadRequest("prompt is required", param="prompt")
        if len(prompt) > self.max_prompt_chars:
            raise BadRequest(f"prompt is longer than {self.max_prompt_chars} characters", param="prompt")
        if plus not in PLUS_MODES:
            raise BadRequest("plus must be true, false or any", param="plus")
        if not principal.may_write:
            raise Forbidden("admins may read other users' conversations but not chat as them")
        if user_plus and access_token is None:
            raise BadRequest("user_plus goes with access_token", param="user_plus")
        digest = token_hash(access_token) if access_token else None
        if not conversation_id:
            if access_token:
                lease = self.pool.own_token(access_token, user_plus)
                return Plan(lease, Turn(prompt=prompt, model=lease.upstream.account.model), None, None, digest)
            user = principal.user.plus
            lease = self.pool.pick(plus, user, first=admit, model=model)
            turn = Turn(prompt=prompt, model=lease.serving)

            def replace_(tried: list[str]) -> Lease:
                return self.pool.pick(plus, user, tried, model=model)

            return Plan(lease, turn, None, None, None, replace=replace_)
        conv = self.conversations.writable(principal, conversation_id)
        if conv.token_hash:
            if not access_token:
                raise Conflict("this conversation runs on your own access token; send the same access_token")
            if digest != conv.token_hash:
                raise Forbidden("this access_token is not the one this conversation started with", param="access_token")
            lease, replace_ = self.pool.own_token(access_token, user_plus), None
        else:
            lease, replace_ = self._follow_up_lease(principal, conv, admit)
        try:
            if model and not lease.upstream.account.serves(self.pool.resolve(model)):
                raise BadRequest(
                    f"this conversation stays on its account, which does not serve the model {model!r}", param="model"
                )
            if model:
                lease = replace(lease, model=self.pool.resolve(model))
            return self._follow_up(conv, prompt, lease, replace_)
        except BaseException:
            self.pool.released(lease)
            raise

    def _follow_up_lease(self, principal: Principal, conv: Conversation, admit=None):
        """The account a follow-up goes to, and where it may go instead.

        A conversation whose history is kept here (no upstream conversation id) may move to another
        account of the same class when its own is unusable or fails before the first byte; one that
        lives upstream (chatgpt-web) can only wait for its account.
        """
        account = self.pool.accounts.get(conv.account_name)
        if account is not None and account.plus and not principal.user.plus:  # plus taken away since it began
            raise Forbidden("this conversation runs on a plus account, and this key is not plus", param="plus")
        user_plus = principal.user.plus
        klass = class_of(account) if account else ("any" if user_plus else "free")
        stateless = conv.upstream_conversation_id is None
        replace_ = (lambda tried: self.pool.replacement(klass, user_plus, tried, first=admit)) if stateless else None
        lease = self.pool.take_pinned(conv.account_name, first=admit)
        if lease is not None:
            return lease, replace_
        state, health = self.pool.pinned(conv.account_name)
        if replace_ is not None:
            try:
                return replace_([conv.account_name]), replace_
            except NoAccountAvailable as nowhere:  # nothing else can carry it: say when its own is back
                if nowhere.retry_after is None:  # when its own is back, or a fair guess (as Pool._take makes)
                    nowhere.retry_after = back_in(health) or 30
                raise
        if state == "ok":  # it came back between the two looks
            lease = self.pool.take_pinned(conv.account_name)
            if lease is not None:
                return lease, replace_
            raise NoAccountAvailable("this conversation's account is changing state; try again", retry_after=1)
        if state == "cooling":
            wait = max(1.0, health.cooling_until - time.time())
            raise NoAccountAvailable(
                f"this conversation lives on account {conv.account_name!r}, which is cooling down after an error; "
                f"try again in {wait:.0f} s",
                retry_after=wait,
                rate_limited=health.backoff == 0,
            )
        if state == "needs_attention":
            raise NoAccountAvailable(
                f"this conversation lives on account {conv.account_name!r}, whose credentials the upstream refused; "
                "an admin needs to renew them (or start a new conversation)"
            )
        raise self.pool.gone(conv.account_name, state)

    def _follow_up(self, conv: Conversation, prompt: str, lease: Lease, replace_) -> Plan:
        history = self.store.messages(conv.conversation_id)
        last = history[-1] if history else None
        parent = next((m.upstream_message_id for m in reversed(history) if m.upstream_message_id), None)
        pairs = [(m.prompt, m.reply) for m in history] if lease.upstream.sends_history else []
        sent = trim_history(pairs, self.max_history_chars)
        turn = Turn(
            prompt=prompt,
            model=lease.serving,
            history=sent,
            upstream_conversation_id=conv.upstream_conversation_id,
            upstream_parent_id=parent,
        )
        plan = Plan(lease, turn, conv, last, conv.token_hash, len(pairs) - len(sent), replace_)
        plan.account_changed = not conv.token_hash and lease.name != conv.account_name
        return plan

    # -- doing ---------------------------------------------------------------------------

    def _run(self, principal: Principal, plan: Plan, ticket: Ticket | None, front: str) -> Iterator[Delta | dict]:
        started, started_clock = time.time(), time.monotonic()
        try:
            claim = self._claim(plan)
        except BaseException as exc:
            self.pool.released(plan.lease)
            self._turned_away(principal, ticket, exc, front)
            raise
        pieces: list[str] = []
        done: Done | None = None
        last: Delta | None = None
        renewed = time.monotonic()
        events = self._metered(ticket, front, plan, self._attempts(plan))
        try:
            for event in events:
                if isinstance(event, Done):
                    done = event
                else:
                    pieces.append(event.text)
                    last = event
                    if claim and time.monotonic() - renewed > RENEW_EVERY:
                        self.store.renew_turn(plan.conversation.conversation_id, claim, self.claim_seconds)
                        renewed = time.monotonic()
                    yield event
            message, conv = self._store(principal, plan, "".join(pieces), done, started, complete=True)
        except GeneratorExit:  # the caller went away mid-reply: keep what came, marked cut short
            if done is None and last is not None:
                cut = Done(plan.turn.model, last.upstream_conversation_id, last.upstream_message_id, None, "cut")
                try:
                    self._store(principal, plan, "".join(pieces), cut, started, complete=False)
                except AppError as exc:  # nobody is left to tell: the user or conversation went meanwhile
                    log.info("partial reply not kept: %s", exc.message)
            raise
        finally:
            events.close()  # closes the upstream connection at once, not when garbage is collected
            if claim:
                self.store.release_turn(plan.conversation.conversation_id, claim)
        yield self._answer(principal, plan, message, conv, done, started, started_clock)

    def _attempts(self, plan: Plan) -> Iterator[Delta | Done]:
        """The reply from the plan's account, or, if it fails before its first byte, from the next one.

        Each attempt holds its account's lease and says how it went (app/pool.py): a success, a
        failure counted against the account, or neither (the caller left, or it was the caller's
        fault). At most every eligible account is tried once, within the turn's time budget.
        """
        deadline, tried = time.monotonic() + self.failover_seconds, []
        while True:
            lease = plan.lease
            tried.append(lease.name)
            events, said, renewed = self._reply(lease.upstream, plan.turn), False, time.monotonic()
            events = metrics.upstream(metrics.OWN_TOKEN if plan.token_hash else lease.name, events)  # timed, in flight
            try:
                for event in events:
                    if isinstance(event, Delta):
                        said = True
                        if time.monotonic() - renewed > RENEW_EVERY:
                            self.pool.renew(lease)
                            renewed = time.monotonic()
                    yield event
            except (UpstreamError, UpstreamTimeout) as exc:
                exc.retry_after = self.pool.failed(lease, exc)  # when this account is back, if it rests
                if said or plan.replace is None or exc.fault == "caller" or time.monotonic() > deadline:
                    raise
                plan.lease = self._instead(plan, tried, exc)
                continue
            except BaseException:  # the caller left, or something that says nothing of the account
                self.pool.released(lease)
                raise
            finally:
                events.close()
            self.pool.succeeded(lease)
            return

    def _instead(self, plan: Plan, tried: list[str], failure: AppError) -> Lease:
        """The next account for a turn whose account failed before its first byte; the failure if none is left."""
        try:
            lease = plan.replace(tried)
        except NoAccountAvailable as nothing:  # the caller learns what failed, and when to come back
            known = [t for t in (nothing.retry_after, failure.retry_after) if t is not None]
            failure.retry_after = min(known) if known else None
            raise failure from None
        log.info("account %r failed before its first byte; the turn goes to %r", tried[-1], lease.name)
        plan.turn = replace(plan.turn, model=lease.serving)
        if plan.conversation is not None:
            plan.account_changed = lease.name != plan.conversation.account_name
        return lease

    def _claim(self, plan: Plan) -> str | None:
        """Hold a follow-up's conversation for this turn: a second turn meanwhile is a 409, never a fork."""
        if plan.conversation is None:
            return None  # a new conversation: nobody else knows its id yet
        holder = uuid.uuid4().hex
        last_id = plan.last.message_id if plan.last else None
        self.store.claim_turn(plan.conversation.conversation_id, holder, self.claim_seconds, last_id)
        return holder

    def _store(
        self, principal, plan: Plan, reply: str, done: Done, started: float, complete: bool
    ) -> tuple[Message, Conversation]:
        finished = time.time()
        account = plan.upstream.account
        message = Message(
            message_id=plan.message_id,
            conversation_id=plan.conversation.conversation_id if plan.conversation else plan.new_conversation_id,
            parent_id=plan.last.message_id if plan.last else None,
            prompt=plan.turn.prompt,
            reply=reply,
            model=done.model,
            account_name=None if plan.token_hash else account.name,
            upstream_message_id=done.upstream_message_id,
            complete=complete,
            created_at=started,
            completed_at=finished,
        )
        upstream_conv = done.upstream_conversation_id
        if plan.conversation:
            moved_to = account.name if plan.account_changed else None
            self.store.add_message(message, plan.conversation.owner_id, principal.arrived, upstream_conv, moved_to)
            if moved_to:
                plan.conversation.account_name = moved_to
            return message, plan.conversation
        title = (plan.upstream.title(plan.turn, done) if complete else None) or ""
        title = short_title(title, MAX_TITLE) or fallback_title(plan.turn.prompt)
        conv = Conversation(
            conversation_id=message.conversation_id,
            owner_id=principal.user.user_id,
            title=title,
            account_name=message.account_name,
            token_hash=plan.token_hash,
            upstream_conversation_id=upstream_conv,
            created_at=started,
            updated_at=finished,
            message_count=1,
        )
        self.store.create(conv, message, principal.arrived)
        return message, conv

    def _answer(
        self,
        principal,
        plan: Plan,
        message: Message,
        conv: Conversation,
        done: Done,
        started: float,
        started_clock: float,
    ) -> dict:
        origin = datetime.fromtimestamp(started, UTC)
        answer = {
            "status": "success",
            "reply": message.reply,
            "conversation_id": conv.conversation_id,
            "message_id": message.message_id,
            "parent_id": message.parent_id,
            "conversation_title": conv.title,
            "model": message.model,
            "account": plan.upstream.account.name if not plan.token_hash else "own access token",
            "account_changed": plan.account_changed,
            "finish_reason": done.finish_reason,
            "usage": done.usage,
            "history_trimmed": plan.history_trimmed,
            "api_user": principal.user.user_id,
            "api_username": principal.user.username,
            "api_client_id": principal.client_id,
            "api_prompt": plan.turn.prompt,
            "api_prompt_time_origin": origin.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "api_prompt_time_origin_readable": origin.strftime("%Y-%m-%d | %H:%M:%S"),
            "api_response_time_taken": round(time.monotonic() - started_clock, 3),
        }
        if plan.last:
            answer["last_message_prompt"] = plan.last.prompt
            answer["last_message_reply"] = plan.last.reply
        return answer
