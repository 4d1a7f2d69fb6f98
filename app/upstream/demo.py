"""The built-in demo account: answers in-process so a fresh install works end to end."""

from __future__ import annotations

import re
from collections.abc import Iterator

from app.upstream.base import Delta, Done, Turn, Upstream

DEMO_NOTICE = "[demo account] This reply comes from the built-in demo, not a real model."


class DemoUpstream(Upstream):
    def stream(self, turn: Turn) -> Iterator[Delta | Done]:
        earlier = len(turn.history)
        reply = (
            f"{DEMO_NOTICE}\n\nYou said: {turn.prompt}\n\n"
            f"(This conversation has {earlier} earlier turn{'s' if earlier != 1 else ''}. "
            "Add a real account to settings.json to talk to a model.)"
        )
        for piece in re.findall(r"\S+\s*|\s+", reply):
            yield Delta(piece)
        words = len(reply.split())
        yield Done(
            model="demo",
            usage={
                "prompt_tokens": len(turn.prompt.split()),
                "completion_tokens": words,
                "total_tokens": len(turn.prompt.split()) + words,
            },
        )
