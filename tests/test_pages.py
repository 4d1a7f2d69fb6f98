"""The landing page: says what runs, warns while only the demo account is configured."""

from __future__ import annotations


def test_landing_page_warns_while_only_the_demo_runs(server):
    """A fresh install shows the demo banner and how to call the API."""
    page = server.get("/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "Only the built-in <strong>demo</strong> account is configured" in page.text
    assert "/api/chat?prompt=Hello" in page.text
    assert server.get("/static/style.css").status_code == 200


def test_landing_page_has_no_banner_with_a_real_account(make_server, openai_fake):
    """Once a real account is enabled the banner goes away."""
    server = make_server([{"name": "real", "type": "openai", "base_url": openai_fake.url}])
    assert "demo</strong> account" not in server.get("/").text
    states = {"ok": 1, "cooling": 0, "needs_attention": 0, "disabled": 0}
    assert server.get("/api/health").json() == {"status": "ok", "accounts": 1, "demo_only": False, "states": states}


def test_unknown_page_is_an_html_404(server):
    """Outside the API an unknown path answers a plain HTML page, not JSON and not a traceback."""
    page = server.get("/no-such-page")
    assert page.status_code == 404 and page.headers["Content-Type"].startswith("text/html")
    assert "Error 404" in page.text and "Traceback" not in page.text
