"""Markdown to HTML that is safe to show: model output is untrusted, so everything is sanitised.

Two layers: raw HTML in the markdown is escaped, so a reply that contains `<script>` shows those
characters as text; then nh3 removes whatever unsafe markup is left (a `javascript:` link, say).
"""

from __future__ import annotations

import functools

import markdown
import nh3
from flask import Response
from markdown.extensions import Extension

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


class EscapeRawHtml(Extension):
    """Treat HTML written in the markdown as text rather than markup."""

    def extendMarkdown(self, md):
        md.preprocessors.deregister("html_block")
        md.inlinePatterns.deregister("html")


CACHED_CHARS = 32_768  # replies up to this size are kept rendered: a page shows the same ones again and again


def render_markdown(text: str) -> str:
    """Render markdown (fenced code highlighted by class, newlines kept) and strip anything unsafe."""
    if len(text) <= CACHED_CHARS:
        return _render_cached(text)
    return _render(text)


@functools.lru_cache(maxsize=512)  # at most 512 × 32 K characters
def _render_cached(text: str) -> str:
    return _render(text)


def _render(text: str) -> str:
    html = markdown.markdown(
        text,
        extensions=[EscapeRawHtml(), "fenced_code", "nl2br", "codehilite", "tables"],
        extension_configs={"codehilite": {"guess_lang": False, "css_class": "codehilite"}},
    )
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )


def reply_only_response(reply: str, pretty: bool) -> Response:
    """Answer with the reply alone: sanitised HTML when pretty, else the text untouched."""
    if pretty:
        return Response(render_markdown(reply), mimetype="text/html")
    return Response(reply, mimetype="text/plain")
