"""Markdown rendering (app/render.py): safe output, linear time on pathological input, never blocking a worker."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from app import render
from app.render import render_markdown

ROOT = Path(__file__).resolve().parent.parent
KEY_PATTERN = re.compile(r"cas-[A-Za-z0-9_-]{20,}")


def repeat(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


# Inputs that made Python-Markdown (or nh3 behind it) quadratic or worse, by the size they are cut to.
PATHOLOGICAL = {
    "brackets": lambda n: repeat("[", n),
    "images": lambda n: repeat("![", n),
    "image-brackets": lambda n: "!" + repeat("[", n - 1),
    "closed-brackets": lambda n: repeat("[a]", n),
    "unclosed-links": lambda n: repeat("[a](", n),
    "angle-destinations": lambda n: repeat("[a](<", n),
    "nested-emphasis": lambda n: repeat("*a **b ", n),
    "stars": lambda n: repeat("*", n),
    "word-stars": lambda n: repeat("a*", n),
    "underscores": lambda n: repeat("_", n),
    "word-underscores": lambda n: repeat("a_ ", n),
    "tildes": lambda n: repeat("~", n),
    "backticks": lambda n: repeat("`", n),
    "backtick-runs": lambda n: "".join("`" * i + "a" for i in range(1, 2000))[:n],
    "less-thans": lambda n: repeat("<", n),
    "open-tags": lambda n: repeat("<a ", n),
    "autolinks": lambda n: repeat("<http://", n),
    "table-rows": lambda n: ("|a|b|\n|-|-|\n" + repeat("|x|y|\n", n))[:n],
    "table-pipes": lambda n: ("|a|b|\n|-|-|\n" + repeat("|", n))[:n],
    "table-columns": lambda n: (repeat("|a", n // 3) + "\n" + repeat("|-", n // 3) + "\n" + repeat("|x\n", n))[:n],
    "list-markers": lambda n: repeat("- ", n),
    "nested-lists": lambda n: "".join("  " * i + "- a\n" for i in range(2000))[:n],
    "ordered-markers": lambda n: repeat("1. ", n),
    "blockquote-markers": lambda n: repeat("> ", n),
    "nested-blockquotes": lambda n: "".join("> " * i + "a\n" for i in range(1, 2000))[:n],
    "many-links": lambda n: repeat("[a](http://x.y/z) ", n),
    "reference-links": lambda n: repeat("[a]: http://x\n", n // 2) + repeat("[a] ", n // 2),
    "fenced-code": lambda n: ("```python\n" + repeat("def f(x):\n    return x * 2  # hi\n", n))[:n],
    "fences": lambda n: repeat("```\n", n),
    "backslashes": lambda n: repeat("\\", n),
    "entities": lambda n: repeat("&#", n),
    "line-breaks": lambda n: repeat("a\n", n),
    "headings": lambda n: repeat("# a\n", n),
    "setext-headings": lambda n: repeat("a\n=\n", n),
    "mixed-punctuation": lambda n: repeat("[*_`<", n),
    "non-ascii": lambda n: repeat("é漢😀*[_ ", n),
}
SECONDS = 2.0  # for 200,000 characters (the max_render_chars default) on a 2-core machine


def within(seconds: float, work, *args):
    """Run work(*args) on a daemon thread; fail if it is not done in time (a quadratic renderer never
    returns, and must not hang the test run). Returns (result or raised exception, seconds taken)."""
    outcome: list = []

    def run():
        try:
            outcome.append(work(*args))
        except Exception as exc:
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    took = time.monotonic() - started
    assert outcome, f"still rendering after {took:.1f} s"
    return outcome[0], took


@pytest.mark.parametrize("kind", list(PATHOLOGICAL))
def test_pathological_markdown_renders_in_linear_time(kind):
    """Each pathological input of 200,000 characters is rendered (or deliberately refused) within 2 s.

    The bare render is timed, without the time budget that would hide a slow renderer.
    """
    outcome, took = within(SECONDS * 2, render._render, PATHOLOGICAL[kind](200_000))
    assert took < SECONDS, f"{kind}: {took:.2f} s"
    if isinstance(outcome, Exception):  # TooBig: HTML too large or deep to show; the reader gets plain text
        assert type(outcome).__name__ == "TooBig", repr(outcome)


def test_too_large_or_deep_html_is_shown_as_plain_text():
    """A table that pads thousands of columns into every row, or 100,000 nested quotes, comes back as text."""
    for kind in ("table-columns", "blockquote-markers", "nested-lists"):
        shown, took = within(SECONDS * 2, render_markdown, PATHOLOGICAL[kind](100_000))
        assert took < SECONDS
        assert shown.startswith("<p>") and "<table" not in shown and "<blockquote" not in shown and "<ul" not in shown


def test_text_over_max_render_chars_is_escaped_not_rendered(make_server):
    """Over max_render_chars (a setting) the reply is escaped text in paragraphs, line breaks kept."""
    text = "**not bold** <script>alert(1)</script>\nsecond line\n\nnext paragraph " + "x" * 300
    assert "<strong>" in render_markdown(text)  # outside a request: the default limit, 200,000
    server = make_server(max_render_chars=100)
    with server.app.app_context():
        shown = render_markdown(text)
    assert shown.startswith("<p>**not bold** &lt;script&gt;alert(1)&lt;/script&gt;<br>\nsecond line</p>\n<p>next")
    assert "<strong>" not in shown and "<script" not in shown


def test_a_render_over_its_budget_answers_plain_text(monkeypatch):
    """Past the time budget the caller gets the escaped text at once (and the render thread gives up)."""
    monkeypatch.setattr(render, "BUDGET_SECONDS", 0.0)
    text = "budget **test** <b>x</b> " + "y" * 40_000  # over CACHED_CHARS: not served from the cache
    assert render_markdown(text) == f"<p>budget **test** &lt;b&gt;x&lt;/b&gt; {'y' * 40_000}</p>\n"


# -- what the renderer writes ---------------------------------------------------------------------


def test_markdown_features_render_like_before():
    """Headings, lists, emphasis, tables (with alignment), strikethrough, line breaks and code by class."""
    text = (
        "# Title\n\n- one\n- **two**\n\n1. first\n\nline one\nline two *em* `x<y`\n\n"
        "| a | b |\n|:--|--:|\n| 1 | 2 |\n\n~~gone~~ ~kept~\n\n> quoted\n\n---\n\n"
        '```python\ndef f(a):\n    return a < 1 and "s"\n```\n\n```nosuchlanguage\nplain <b>\n```\n\n    indented\n'
    )
    shown = render_markdown(text)
    for piece in (
        "<h1>Title</h1>",
        "<li><strong>two</strong></li>",
        "<ol>\n<li>first</li>\n</ol>",
        "line one<br>\nline two <em>em</em> <code>x&lt;y</code>",
        '<th align="left">a</th>',
        '<td align="right">2</td>',
        "<del>gone</del> ~kept~",
        "<blockquote>\n<p>quoted</p>\n</blockquote>",
        "<hr>",
        '<div class="codehilite"><pre><span></span><code><span class="k">def</span>',
        '<span class="o">&lt;</span>',
        '<div class="codehilite"><pre><span></span><code>plain &lt;b&gt;\n</code></pre></div>',
        '<div class="codehilite"><pre><span></span><code>indented\n</code></pre></div>',
    ):
        assert piece in shown, piece


def test_links_keep_safe_schemes_only():
    """http, https and mailto links (and autolinks) stay, with rel=nofollow; every other scheme loses its href."""
    shown = render_markdown(
        '[w](https://example.com/a?b=1&c=2 "t") <http://auto.example> <me@example.com> [m](mailto:a@b.c)\n\n'
        "[j](javascript:alert(1)) [J](JaVaScRiPt:alert(1)) [e](&#106;avascript:alert(1)) [s]( javascript:alert(1))\n\n"
        "[d](data:text/html;base64,PHNjcmlwdD4=) [v](vbscript:msgbox) [f](file:///etc/passwd) <javascript:alert(1)>\n\n"
        '![i](data:image/png;base64,AAAA) ![x](javascript:alert(1)) [q](http://a "x\\" onclick=\\"alert(1)")'
    )
    hrefs = re.findall(r'href="([^"]*)"', shown)
    assert hrefs == ["https://example.com/a?b=1&amp;c=2", "http://auto.example", "mailto:me@example.com"] + [
        "mailto:a@b.c",
        "http://a",
    ]
    assert shown.count('rel="noopener noreferrer nofollow"') == shown.count("<a ")
    assert "<img" not in shown and "onclick=" not in shown.replace("onclick=&quot;", "")
    for text in ("j", "J", "e", "s", "d", "v", "f"):
        assert f'<a rel="noopener noreferrer nofollow">{text}</a>' in shown


@pytest.mark.parametrize(
    "payload",
    [
        "<script>alert(1)</script>",
        '<img src=x onerror="alert(1)">',
        "<svg onload=alert(1)>",
        '<a href="javascript:alert(1)">x</a>',
        "<iframe src=javascript:alert(1)></iframe>",
        "<div>\n<script>alert(1)</script>\n</div>",
        "<!-- <script>alert(1)</script> -->",
        "<style>*{}</style>",
        "`<script>alert(1)</script>`",
        "```html\n<script>alert(1)</script>\n```",
        "| <script>alert(1)</script> |\n|---|\n| <img src=x onerror=alert(1)> |",
        "[<img src=x onerror=alert(1)>](http://x)",
        "**<script>alert(1)</script>**",
        '<http://x" onmouseover="alert(1)>',
        "\ue000script>alert(1)\ue000/script>",
    ],
)
def test_raw_html_is_shown_as_text_and_never_markup(payload):
    """Raw HTML anywhere (text, code, tables, link text) comes out escaped: no element or handler survives."""
    shown = render_markdown(payload)
    assert not re.search(r"<(script|img|svg|iframe|style|div>\s*<script)", shown)
    assert not re.search(r"<[^>]*\son[a-z]+=", shown)
    assert "javascript:" not in "".join(re.findall(r'<a [^>]*href="([^"]*)"', shown))
    visible = html.unescape(re.sub(r"<[^>]*>", "", shown))
    assert all(tag in visible for tag in re.findall(r"<[^<>]*>", payload))


def test_odd_characters_do_not_break_rendering():
    """NUL, a lone surrogate (JSON allows one) and the private character used inside still render."""
    shown = render_markdown("a\x00b \ud800 c\ue000d **e**")
    assert "<strong>e</strong>" in shown and "\ue000" not in shown


# -- a real server: rendering never stalls the other connections ---------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def main_py(tmp_path_factory):
    """`python main.py` on a fresh folder (demo account, default gevent workers): (base url, admin key)."""
    folder = tmp_path_factory.mktemp("render-site")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "ADMIN_API_KEY"}
    env["PYTHONUNBUFFERED"] = "1"
    out = open(folder / "out.log", "w")  # noqa: SIM115 (closed at the end of the module)
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--settings", str(folder / "settings.json"), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the workers are stopped with it
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (folder / "out.log").read_text()
            try:
                if requests.get(url + "/api/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, (folder / "out.log").read_text()
            time.sleep(0.1)
        keys = KEY_PATTERN.findall((folder / "out.log").read_text())
        assert len(keys) == 1
        yield url, keys[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        out.close()


# The slowest kinds for the renderer at the largest prompt allowed (max_prompt_chars, 100,000).
# Prompts without spaces: the demo account sends a reply word by word, and thousands of words would
# measure its own loop (on the hub) rather than the renderer.
WORST_PROMPTS = [
    PATHOLOGICAL["brackets"](100_000),
    PATHOLOGICAL["word-stars"](100_000),
    PATHOLOGICAL["mixed-punctuation"](100_000),
    PATHOLOGICAL["less-thans"](100_000),
]


# Sends the chats from its own process, so that reading four large answers does not compete for the
# test process's GIL with the health probes it times. Reads {"url", "key", "prompts"} on stdin.
CHATS = """
import json, sys
from concurrent.futures import ThreadPoolExecutor
import requests

job = json.load(sys.stdin)

def chat(prompt):
    http = requests.Session()
    http.trust_env = False
    body = {"prompt": prompt, "reply_only": True, "pretty": True}
    auth = {"Authorization": "Bearer " + job["key"]}
    answer = http.post(job["url"] + "/api/chat", json=body, headers=auth, timeout=15)
    return answer.status_code, answer.headers.get("Content-Type", ""), answer.text.count("<em>"), answer.text[:200]

with ThreadPoolExecutor(len(job["prompts"])) as pool:
    print(json.dumps(list(pool.map(chat, job["prompts"]))))
"""


def test_rendering_never_stalls_health_checks(main_py):
    """Four /api/chat reply_only+pretty requests with 100,000-character pathological prompts (the demo
    quotes the prompt, so it is the reply) while /api/health is asked every 20 ms: every health answer
    comes in under 100 ms and every chat answers 200 with HTML."""
    url, key = main_py
    http = requests.Session()
    http.trust_env = False
    for _ in range(5):  # warm up both workers (imports, the first highlight) before timing anything
        assert requests.get(url + "/api/health", timeout=5).status_code == 200
    warm = {"prompt": "warm **up**\n\n```python\nx = 1\n```", "reply_only": True, "pretty": True}
    assert http.post(url + "/api/chat", json=warm, headers={"Authorization": f"Bearer {key}"}, timeout=10).ok

    chats = subprocess.Popen([sys.executable, "-c", CHATS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    chats.stdin.write(json.dumps({"url": url, "key": key, "prompts": WORST_PROMPTS}))
    chats.stdin.close()
    probes: list[float] = []
    started = time.monotonic()
    try:
        while chats.poll() is None or time.monotonic() - started < 0.5:
            before = time.monotonic()
            # A new connection each time, so the probes reach both workers.
            assert requests.get(url + "/api/health", timeout=5, headers={"Connection": "close"}).status_code == 200
            probes.append(time.monotonic() - before)
            time.sleep(max(0.0, 0.02 - (time.monotonic() - before)))
            assert time.monotonic() - started < 15, "the chats did not finish in 15 s"
        answers = json.loads(chats.stdout.read())
    finally:
        if chats.poll() is None:
            chats.kill()
        chats.wait()
    took = time.monotonic() - started
    for status, content_type, _ems, start in answers:
        assert status == 200, start
        assert content_type.startswith("text/html") and "You said:" in start
    assert answers[1][2] > 10_000  # "a*a*a*…" came back with its <em>s: rendered, not the plain-text fallback
    slowest = max(probes)
    print(f"health probes: {len(probes)}, slowest {slowest * 1000:.1f} ms, chats took {took:.2f} s")
    assert len(probes) >= 10
    assert slowest < 0.1, f"slowest health answer {slowest * 1000:.0f} ms; the 5 slowest: {sorted(probes)[-5:]}"


def test_conversation_page_with_a_pathological_reply_is_fast(server, admin):
    """A stored reply of 100,000 "[" shows on its /chat/<id> page quickly, every time it is viewed."""
    answer = server.chat(admin, PATHOLOGICAL["brackets"](100_000))
    http = requests.Session()
    http.trust_env = False
    login = http.get(server.url + "/login", timeout=10).text
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', login)[1]
    assert http.post(server.url + "/login", data={"api_key": admin, "csrf_token": token}, timeout=10).ok
    for _ in range(2):
        started = time.monotonic()
        page = http.get(f"{server.url}/chat/{answer['conversation_id']}", timeout=30)
        took = time.monotonic() - started
        assert page.status_code == 200 and "[[[[[[[[" in page.text
        assert took < 1.0, f"/chat/<id> took {took:.2f} s"


@pytest.mark.parametrize("opener", ["<!--x@a>", "<?x@a>", "</x@a>", "<!x@a>"])
def test_an_autolink_look_alike_cannot_hide_the_rest_of_a_reply(opener):
    """Found in review: "<!--x@a>" passed as an e-mail autolink, and cmark then opened an HTML block
    (dropped in safe mode) that swallowed everything after it."""
    html = render_markdown(f"{opener}\nsecret text\n\nmore")
    assert "secret text" in html and "more" in html
    assert "&lt;" in html
