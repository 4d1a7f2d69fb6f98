"""The HTTP helper every upstream shares: proxy, timeouts, pooled connections, error mapping.

Failures become the app's own errors with messages a user can act on, and never carry the
account's key or its proxy password: upstream messages are scrubbed before they are passed on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import requests

from app.errors import StreamCut, UpstreamError, UpstreamTimeout

MAX_ERROR_BODY = 4096


class HttpClient:
    def __init__(self, account, timeouts: dict):
        self.account = account
        self.timeout = (float(timeouts["connect"]), float(timeouts["read"]))
        self.session = requests.Session()
        self.session.trust_env = False  # the account's proxy, or none: never one from the environment
        if account.proxy:
            self.session.proxies = {"http": account.proxy, "https": account.proxy}
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        secrets = [account.api_key, account.access_token, *_proxy_secrets(account.proxy)]
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def close(self) -> None:
        self.session.close()

    def scrub(self, text: str) -> str:
        """Remove the account's secrets from text that came from outside."""
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    @property
    def _via(self) -> str:
        return " through its proxy" if self.account.proxy else ""

    def post(self, url: str, payload: dict, headers: dict, stream: bool = True) -> requests.Response:
        """POST JSON; return a 2xx response or raise UpstreamError / UpstreamTimeout."""
        name = self.account.name
        try:
            response = self.session.post(url, json=payload, headers=headers, timeout=self.timeout, stream=stream)
        except requests.exceptions.ReadTimeout:
            raise self._read_timeout("did not answer") from None
        except requests.exceptions.ProxyError:
            raise UpstreamError(f"account {name!r}: its proxy refused or failed the connection") from None
        except requests.exceptions.RequestException as exc:  # ConnectTimeout included
            if _is_timeout(exc):
                raise UpstreamTimeout(
                    f"account {name!r}: connecting to the upstream{self._via} timed out after {self.timeout[0]:g}s"
                ) from None
            raise UpstreamError(f"account {name!r}: could not connect to the upstream{self._via}") from None
        if response.status_code >= 400:
            detail = self._error_detail(response)
            response.close()
            raise UpstreamError(f"account {name!r}: the upstream answered {response.status_code}: {detail}")
        return response

    def _read_timeout(self, what: str) -> UpstreamTimeout:
        return UpstreamTimeout(f"account {self.account.name!r}: the upstream {what} for {self.timeout[1]:g}s")

    def _error_detail(self, response: requests.Response) -> str:
        try:
            raw = next(response.iter_content(MAX_ERROR_BODY), b"")
        except requests.exceptions.RequestException:
            raw = b""
        text = raw.decode("utf-8", "replace")
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        message = upstream_message(data) if data is not None else None
        return self.scrub(message or text.strip() or response.reason or "no details")[:500]  # scrub, then cut

    def sse_data(self, response: requests.Response) -> Iterator[str]:
        """Yield the data field of each server-sent event until [DONE] or the end of the body."""
        name = self.account.name
        try:
            for line in response.iter_lines(decode_unicode=False):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip().decode("utf-8", "replace")
                if data == "[DONE]":
                    _drain(response)
                    return
                yield data
            raise StreamCut(f"account {name!r}: the upstream ended the reply before finishing it")
        except requests.exceptions.RequestException as exc:
            if _is_timeout(exc):
                raise self._read_timeout("stopped sending") from None
            raise UpstreamError(f"account {name!r}: the upstream connection broke mid-reply") from None
        finally:
            response.close()


def _drain(response: requests.Response, limit: int = 65536) -> None:
    """Read what is left of a finished body (the closing chunk) so the connection can be reused."""
    left = limit
    for chunk in response.iter_content(8192):
        left -= len(chunk)
        if left < 0:
            return  # more than an ending: let close() drop the connection instead


def upstream_message(data) -> str | None:
    """Find the human message in the error shapes upstreams use."""
    if isinstance(data, dict):
        for key in ("error", "detail", "message", "errorMessage"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, dict):
                found = upstream_message(value)
                if found:
                    return found
    return None


def _is_timeout(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if "timeout" in type(exc).__name__.lower() or "timed out" in str(exc).lower():
            return True
        wrapped = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        exc = exc.__cause__ or exc.__context__ or wrapped
    return False


def _proxy_secrets(proxy: str | None) -> list[str]:
    """Return the proxy password as written in the URL and decoded (either may be echoed back)."""
    password = urlsplit(proxy).password if proxy else None
    return [password, unquote(password)] if password else []
