"""Measure what the browser pages cost next to the JSON routes that do the same work.

    python bench/pages.py [--requests 300]

Starts a fake OpenAI-compatible upstream and the real server (gunicorn) on 127.0.0.1, logs a
browser session in, builds a five-turn conversation whose replies hold markdown and a code block,
then times at concurrency 1: reading it as JSON (/api/conversations/<id>) vs as the page
(/chat/<id>, markdown rendered and sanitised, sidebar listed), and a new chat through /api/chat
vs through the chat form. The page/JSON ratio is the cost of rendering.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ADMIN_KEY, FakeOpenAI, load, start_server  # noqa: E402

REPLY = (
    "## Plan\n\n- one **bold** point\n- a [link](https://example.com)\n\n```python\ndef f(x):\n    return x * 2\n```\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    fake = FakeOpenAI().start()
    fake.reply_text = REPLY
    with tempfile.TemporaryDirectory() as folder:
        proc, url = start_server(Path(folder), fake.url)
        try:
            browser = requests.Session()
            login = browser.get(url + "/login").text  # a key in a link only offers a login now: post the form
            login_token = re.search(r'name="csrf_token" value="([^"]+)"', login).group(1)
            browser.post(url + "/login", data={"csrf_token": login_token, "api_key": ADMIN_KEY}).raise_for_status()
            token = re.search(r'name="csrf_token" value="([^"]+)"', browser.get(url + "/chat").text).group(1)
            form = {"csrf_token": token, "prompt": "plan it", "pretty": "y"}
            first = browser.post(url + "/chat", data=form)
            conv = re.search(r'name="conversation_id" type="hidden" value="([^"]+)"', first.text).group(1)
            for _ in range(4):
                browser.post(url + "/chat", data={**form, "conversation_id": conv}).raise_for_status()
            bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}
            cookies = browser.cookies

            cases = [
                ("read: /api/conversations/<id>", lambda s: s.get(f"{url}/api/conversations/{conv}", headers=bearer)),
                ("read: /chat/<id> page", lambda s: s.get(f"{url}/chat/{conv}", cookies=cookies)),
                ("chat: /api/chat", lambda s: s.post(f"{url}/api/chat", json={"prompt": "x"}, headers=bearer)),
                ("chat: /chat form", lambda s: s.post(f"{url}/chat", data=form, cookies=cookies)),
            ]
            load(cases[1][1], 20, 1)  # warm up
            print(f"{'what':<32}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}")
            results = {}
            for name, send in cases:
                results[name] = load(send, args.requests, 1)
                r = results[name]
                print(f"{name:<32}{r['rps']:>8.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}")
            names = [name for name, _ in cases]
            print(
                f"page/JSON p50 ratio: read {results[names[1]]['p50'] / results[names[0]]['p50']:.2f}x, "
                f"chat {results[names[3]]['p50'] / results[names[2]]['p50']:.2f}x"
            )
        finally:
            proc.terminate()
            proc.wait(10)
            fake.stop()


if __name__ == "__main__":
    main()
