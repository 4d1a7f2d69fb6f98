"""Markdown to HTML that is safe to show: model output is untrusted, so everything is sanitised.

Raw HTML in the markdown is escaped, so a reply that contains `<script>` shows those characters as
text (every "<" but an autolink's is hidden from the parser); the parser's safe mode empties unsafe
link targets; then nh3 removes whatever unsafe markup is left.

A reply is chosen by whoever writes the prompt, so rendering must stay cheap whatever the text:

- The parser is cmark-gfm (GitHub's C CommonMark parser, through cmarkgfm): linear in its input,
  including the inputs that made Python-Markdown quadratic (`[[[[`, `*a **b *c`, `> > >`, …),
  and it lets go of the GIL while it works, as nh3 does.
- What can still blow up is checked before nh3 sees it: HTML much larger than the text (a table
  header with thousands of columns pads every row) or blocks nested deeper than `MAX_DEPTH` (nh3
  takes time quadratic in that depth) is shown as plain text instead. Pygments colours at most
  `HIGHLIGHT_CHARS` of code per reply.
- Text longer than the `max_render_chars` setting is shown as plain text without being parsed.
- The work runs on `RENDER_THREADS` OS thread(s) per process, never on the gevent hub, and is
  waited for at most `BUDGET_SECONDS`; past that the reader gets the plain text and the thread
  gives up at its next check. The thread's pure-Python stretches are kept short (see `_Job`), so
  the hub gets the GIL back within a millisecond or so.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import html
import os
import re
import threading
import time

import cmarkgfm.cmark as cmark
import nh3
from flask import Response, current_app, has_app_context
from pygments import format as format_tokens
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.lexers.special import TextLexer
from pygments.util import ClassNotFound

from app.config import DEFAULTS
from app.cooperative import under_gevent

ALLOWED_TAGS = {
    "p",
    "br",
    "hr",
    "pre",
    "code",
    "span",
    "div",
    "blockquote",
    "em",
    "strong",
    "del",
    "a",
    "ul",
    "ol",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "span": {"class"},
    "div": {"class"},
    "code": {"class"},
    "pre": {"class"},
    "th": {"align"},
    "td": {"align"},
}

CACHED_CHARS = 32_768  # replies up to this size are kept rendered: a page shows the same ones again and again
BUDGET_SECONDS = 2.0  # a render not done by then (queue wait included) is answered as plain text
RENDER_THREADS = 1  # per worker process: renders in flight at once; more wait their turn (within the budget)
MAX_DEPTH = 256  # deeper nesting is shown as plain text: nh3 is quadratic in depth, browsers flatten it anyway
MAX_GROWTH = 10  # HTML longer than this many times the text (plus SLACK) is shown as plain text
SLACK = 100_000

# cmark never sees a "<" that is not an autolink, so no raw HTML can exist for it: each one becomes
# this private-use character and comes back as "&lt;" at the end (cmark's own safe mode would drop
# raw HTML instead of showing it). The character itself, if a text has it, is shown as U+FFFD.
LT = "\ue000"
LT_IN_URL = "%EE%80%80"
AUTOLINK = re.compile(  # CommonMark's autolinks, after LT: no other "<" can start one
    LT + r"([A-Za-z][A-Za-z0-9+.-]{1,31}:[^\x00-\x20<>\ue000]*>"  # <scheme:…>
    # <name@host>; a name may not start with ! ? or /, or "<!--x@a>" would open an HTML block that hides the rest
    r"|[A-Za-z0-9.#$%&'*+=^_`{|}~-][A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]*@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*>)"  # <name@host>
)
CMARK_OPTIONS = cmark.Options.CMARK_OPT_HARDBREAKS | cmark.Options.CMARK_OPT_STRIKETHROUGH_DOUBLE_TILDE
CMARK_EXTENSIONS = ["table", "strikethrough"]
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
AFTER_WORD = re.compile(r"\S")  # a cut just after one: a paragraph break is only whitespace
PLAIN_PIECE_CHARS = 65_536
NOT_MARKS = bytes(b for b in range(256) if b not in (1, 2))
CODE_BLOCK = re.compile(r'<pre><code(?: class="language-([^"]*)")?>(.*?)</code></pre>', re.DOTALL)
FORMATTER = HtmlFormatter(cssclass="codehilite", wrapcode=True)
HIGHLIGHT_CHARS = 20_000  # code coloured per reply (Pygments, ~10 µs a character, is the slowest step)
STEPS_BETWEEN_PAUSES = 32  # Pygments tokens or code blocks (well under a millisecond of work)
PAUSE_SECONDS = 0.00001  # long enough for a thread waiting on the GIL to take it


class RenderTimeout(Exception):
    """The render's time budget ran out; the caller shows plain text."""


class TooBig(Exception):
    """The HTML would be too large or too deep to sanitise and show; the caller shows plain text."""


def render_markdown(text: str) -> str:
    """Render markdown (fenced code highlighted by class, newlines kept) and strip anything unsafe."""
    too_long = len(text) > max_render_chars()
    try:
        if len(text) <= CACHED_CHARS and not too_long:
            return _render_cached(text)
        return _in_budget(text, too_long)
    except RenderTimeout:
        return plain_html(text)  # on the caller's thread, but only string operations done in C


def max_render_chars() -> int:
    if has_app_context():
        return current_app.config["SETTINGS"].get("max_render_chars", DEFAULTS["max_render_chars"])
    return DEFAULTS["max_render_chars"]


def plain_html(text: str, job: _Job | None = None) -> str:
    """The text escaped, as paragraphs keeping its line breaks: what a reader gets when it is not rendered.

    String operations done in C, a piece at a time (cut after a non-space character, so no paragraph break is split),
    with a pause between pieces on a render thread.
    """
    text, pieces, start = text.strip().replace("\x00", "\ufffd"), [], 0
    while start < len(text):
        cut = AFTER_WORD.search(text, start + PLAIN_PIECE_CHARS)
        end = cut.end() if cut else len(text)
        piece = PARAGRAPH_BREAK.sub("\x00", html.escape(text[start:end], quote=False))
        pieces.append(piece.replace("\n", "<br>\n").replace("\x00", "</p>\n<p>"))
        start = end
        if job:
            job.check()
    return f"<p>{''.join(pieces)}</p>\n" if pieces else ""


@functools.lru_cache(maxsize=512)  # at most 512 × 32 K characters; a timeout is not kept
def _render_cached(text: str) -> str:
    return _in_budget(text, False)


def _in_budget(text: str, too_long: bool) -> str:
    """Render on a render thread (never on the gevent hub); RenderTimeout if not done within the budget."""
    deadline = time.monotonic() + BUDGET_SECONDS
    if under_gevent():
        import gevent

        try:
            with gevent.Timeout(BUDGET_SECONDS):
                done = _gevent_pool().spawn(_render_or_plain, text, too_long, deadline).get()
        except gevent.Timeout:
            raise RenderTimeout from None
    else:
        try:
            done = _executor().submit(_render_or_plain, text, too_long, deadline).result(timeout=BUDGET_SECONDS)
        except concurrent.futures.TimeoutError:
            raise RenderTimeout from None
    if done is None:
        raise RenderTimeout
    return done


def _render_or_plain(text: str, too_long: bool, deadline: float) -> str | None:
    """The job a render thread runs: the HTML, or None once past the deadline (the caller has gone by then)."""
    try:
        if not too_long:
            with contextlib.suppress(TooBig):
                return _render(text, deadline)
        return plain_html(text, _Job(deadline))
    except RenderTimeout:
        return None


_pools: dict = {}
_pools_lock = threading.Lock()


def _gevent_pool():
    """This process's render threads (made after gunicorn's fork, in the worker that renders)."""
    from gevent.threadpool import ThreadPool

    key = ("gevent", os.getpid())
    if key not in _pools:  # only the hub's own thread gets here, so no lock is needed
        _pools[key] = ThreadPool(RENDER_THREADS)
    return _pools[key]


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    key = ("threads", os.getpid())
    with _pools_lock:
        if key not in _pools:
            _pools[key] = concurrent.futures.ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="render")
        return _pools[key]


class _Job:
    """One render's deadline, and the pauses that let other threads in.

    A thread running Python code keeps the GIL until another thread has waited the switch interval
    (5 ms) for it, and the gevent hub needs the GIL again after each socket call: so every 5 ms of
    pure-Python work in a render thread can cost the hub 5 ms per syscall. The slow pure-Python parts
    (Pygments, the code-block loop) therefore call step(), which every so often sleeps for a moment:
    a blocking call, so the GIL goes straight to whoever waits for it.
    """

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.highlight_left = HIGHLIGHT_CHARS  # code still to colour in this reply; later blocks stay plain
        self.steps = 0

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderTimeout
        time.sleep(PAUSE_SECONDS)

    def step(self) -> None:
        self.steps += 1
        if self.steps % STEPS_BETWEEN_PAUSES == 0:
            self.check()


def _render(text: str, deadline: float = float("inf")) -> str:
    """Markdown to sanitised HTML; raises RenderTimeout past deadline and TooBig for HTML not worth cleaning."""
    job = _Job(deadline)
    job.check()  # a job that waited out its budget in the queue does no work
    # A lone surrogate (JSON allows "\ud800") cannot be encoded for cmark: it becomes "?".
    source = _escape_lt(text.encode("utf-8", "replace").decode("utf-8"))
    markup = cmark.markdown_to_html_with_extensions(source, CMARK_OPTIONS, CMARK_EXTENSIONS)  # lets go of the GIL
    if len(markup) > MAX_GROWTH * len(text) + SLACK or _too_deep(markup):
        raise TooBig
    job.check()
    markup = CODE_BLOCK.sub(lambda match: _code_block(match[1], match[2], job), markup)
    # An unsafe link (javascript:, data:, …) comes out of cmark as href="": drop it, or a click reloads the page.
    markup = markup.replace(LT, "&lt;").replace(LT_IN_URL, "%3C").replace('<a href=""', "<a")
    job.check()
    return nh3.clean(  # lets go of the GIL
        markup,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )


def _escape_lt(source: str) -> str:
    """Every "<" but an autolink's becomes LT: str.replace for all, then a regex puts back the few autolinks
    (cheap: in C, and the regex only stops at an LT)."""
    return AUTOLINK.sub(r"<\1", source.replace(LT, "\ufffd").replace("<", LT))


def _too_deep(markup: str) -> bool:
    """Whether cmark's HTML nests blockquote, ul and ol deeper than MAX_DEPTH (nh3's cost grows with the square
    of that depth; inline elements it handles in linear time). All in C string operations, not a Python loop
    over tags, so the render thread holds the GIL as little as possible."""
    if sum(markup.count(tag) for tag in ("<blockquote", "<ul", "<ol")) <= MAX_DEPTH:
        return False
    marks = markup.replace("\x01", "").replace("\x02", "")
    for tag in ("blockquote", "ul", "ol"):
        marks = marks.replace("</" + tag, "\x02").replace("<" + tag, "\x01")
    parens = marks.encode().translate(None, NOT_MARKS)  # "\x01" opens, "\x02" closes
    for _ in range(MAX_DEPTH):  # each pass removes the innermost pairs: the passes needed are the depth
        if not parens:
            return False
        parens = parens.replace(b"\x01\x02", b"")
    return bool(parens)


def _code_block(language: str | None, escaped_code: str, job: _Job) -> str:
    """One code block, as Python-Markdown's codehilite wrote it: Pygments classes in a div.codehilite."""
    job.step()
    lexer = None
    if language and len(escaped_code) <= job.highlight_left:
        with contextlib.suppress(ClassNotFound):  # an unknown language is shown plain, never guessed
            lexer = get_lexer_by_name(html.unescape(language).replace(LT, "<"))
    if lexer is None or isinstance(lexer, TextLexer):  # no colours: what Pygments' TextLexer writes, minus its cost
        code = escaped_code.strip("\n")
        return f'<div class="codehilite"><pre><span></span><code>{code}{chr(10) if code else ""}</code></pre></div>\n'
    job.highlight_left -= len(escaped_code)
    code = html.unescape(escaped_code).replace(LT, "<")
    return format_tokens(_stepping(lexer.get_tokens(code), job), FORMATTER)


def _stepping(tokens, job: _Job):
    for token in tokens:
        job.step()
        yield token


def reply_only_response(reply: str, pretty: bool) -> Response:
    """Answer with the reply alone: sanitised HTML when pretty, else the text untouched."""
    if pretty:
        return Response(render_markdown(reply), mimetype="text/html")
    return Response(reply, mimetype="text/plain")
