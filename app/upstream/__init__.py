"""Account types, registered by name: a new type is a new module and one line here."""

from app.config import Account
from app.upstream.base import Delta, Done, Turn, Upstream
from app.upstream.chatgpt_web import ChatGPTWebUpstream
from app.upstream.demo import DemoUpstream
from app.upstream.openai import OpenAIUpstream

UPSTREAMS: dict[str, type[Upstream]] = {
    "openai": OpenAIUpstream,
    "chatgpt-web": ChatGPTWebUpstream,
    "demo": DemoUpstream,
}


def build(account: Account, timeouts: dict, max_line_bytes: int = 1_048_576) -> Upstream:
    """Make the upstream client for one account."""
    return UPSTREAMS[account.type](account, timeouts, max_line_bytes)


__all__ = ["UPSTREAMS", "Delta", "Done", "Turn", "Upstream", "build"]
