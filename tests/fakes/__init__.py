"""Provide real, standard-library-only fake upstream servers for the test suite."""

from .chatgpt_web_server import FakeChatGPTWeb
from .jwt import jwt_payload, make_jwt
from .openai_server import FakeOpenAI
from .socks5 import BlackholeServer, Socks5Server
from .webhook import FakeWebhook

__all__ = [
    "BlackholeServer",
    "FakeChatGPTWeb",
    "FakeOpenAI",
    "FakeWebhook",
    "Socks5Server",
    "jwt_payload",
    "make_jwt",
]
