"""Provide real, standard-library-only fake upstream servers for the test suite."""

from .chatgpt_web_server import FakeChatGPTWeb
from .openai_server import FakeOpenAI
from .socks5 import BlackholeServer, Socks5Server

__all__ = ["BlackholeServer", "FakeChatGPTWeb", "FakeOpenAI", "Socks5Server"]
