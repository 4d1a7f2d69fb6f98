"""Serve a real SOCKS5 proxy (RFC 1928, RFC 1929) and a silent blackhole on 127.0.0.1 for tests."""

from __future__ import annotations

import ipaddress
import selectors
import socket
import socketserver
import struct
from urllib.parse import quote

from ._common import HOST, BackgroundServer, TrackingServerMixin

REPLY_OK, REPLY_FAILURE, REPLY_UNREACHABLE, REPLY_REFUSED = 0x00, 0x01, 0x04, 0x05
REPLY_BAD_COMMAND, REPLY_BAD_ADDRESS = 0x07, 0x08


class _TCPServer(TrackingServerMixin, socketserver.ThreadingTCPServer):
    def __init__(self, owner, handler_class) -> None:
        self.owner = owner
        self.init_tracking()
        super().__init__((HOST, 0), handler_class)


class _Closed(Exception):
    """Signal that the client went away mid-handshake."""


class _Socks5Handler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def recv_exact(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.request.recv(count - len(data))
            if not chunk:
                raise _Closed
            data += chunk
        return data

    def handle(self) -> None:
        try:
            if self.negotiate():
                upstream = self.connect()
                if upstream is not None:
                    self.relay(upstream)
        except (_Closed, OSError):
            pass

    def negotiate(self) -> bool:
        """Agree on a method and authenticate; return False if the client must be dropped."""
        owner: Socks5Server = self.server.owner
        version, count = self.recv_exact(2)
        if version != 5:
            return False
        methods = self.recv_exact(count)
        wanted = 0x02 if owner.username is not None else 0x00
        if wanted not in methods:
            if wanted == 0x02:
                owner._count_auth_failure()
            self.request.sendall(b"\x05\xff")
            return False
        self.request.sendall(bytes([5, wanted]))
        if wanted == 0x00:
            return True
        version, length = self.recv_exact(2)
        username = self.recv_exact(length).decode("utf-8", "replace")
        password = self.recv_exact(self.recv_exact(1)[0]).decode("utf-8", "replace")
        if version != 1 or (username, password) != (owner.username, owner.password):
            owner._count_auth_failure()
            self.request.sendall(b"\x01\x01")
            return False
        self.request.sendall(b"\x01\x00")
        return True

    def reply(self, status: int, bound: tuple | None = None) -> None:
        host, port = bound or ("0.0.0.0", 0)
        address = ipaddress.ip_address(host)
        atyp = 0x01 if address.version == 4 else 0x04
        self.request.sendall(bytes([5, status, 0, atyp]) + address.packed + struct.pack("!H", port))

    def connect(self) -> socket.socket | None:
        """Read the request and open the upstream connection; None after a refusal."""
        owner: Socks5Server = self.server.owner
        _, command, _, atyp = self.recv_exact(4)
        if atyp == 0x01:
            host = socket.inet_ntop(socket.AF_INET, self.recv_exact(4))
        elif atyp == 0x03:
            host = self.recv_exact(self.recv_exact(1)[0]).decode("utf-8", "replace")
        elif atyp == 0x04:
            host = socket.inet_ntop(socket.AF_INET6, self.recv_exact(16))
        else:
            self.reply(REPLY_BAD_ADDRESS)
            return None
        (port,) = struct.unpack("!H", self.recv_exact(2))
        if command != 0x01:
            self.reply(REPLY_BAD_COMMAND)
            return None
        owner._record_connection(host, port)
        try:
            upstream = socket.create_connection((host, port), timeout=owner.connect_timeout)
        except ConnectionRefusedError:
            self.reply(REPLY_REFUSED)
            return None
        except (socket.gaierror, TimeoutError, OSError):
            self.reply(REPLY_UNREACHABLE)
            return None
        upstream.settimeout(None)
        self.server.track(upstream)
        try:
            self.reply(REPLY_OK, upstream.getsockname()[:2])
        except OSError:
            self.close_upstream(upstream)
            raise
        return upstream

    def close_upstream(self, upstream: socket.socket) -> None:
        self.server.untrack(upstream)
        upstream.close()

    def relay(self, upstream: socket.socket) -> None:
        """Copy bytes both ways until either side closes or the server stops."""
        peer = {self.request: upstream, upstream: self.request}
        try:
            with selectors.DefaultSelector() as selector:
                for sock in peer:
                    selector.register(sock, selectors.EVENT_READ)
                while not self.server.stopping.is_set():
                    for key, _ in selector.select(0.2):
                        data = key.fileobj.recv(65536)
                        if not data:
                            return
                        peer[key.fileobj].sendall(data)
        except OSError:
            pass
        finally:
            self.close_upstream(upstream)


class Socks5Server(BackgroundServer):
    """Proxy CONNECT requests over SOCKS5, optionally demanding a username and password."""

    def __init__(
        self,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.username, self.password = username, password
        self.connect_timeout = connect_timeout
        self.connections: list[tuple[str, int]] = []
        self.auth_failures = 0

    def _make_server(self) -> _TCPServer:
        return _TCPServer(self, _Socks5Handler)

    def _record_connection(self, host: str, port: int) -> None:
        with self._lock:
            self.connections.append((host, port))

    def _count_auth_failure(self) -> None:
        with self._lock:
            self.auth_failures += 1

    def _url(self, scheme: str) -> str:
        credentials = ""
        if self.username is not None:
            credentials = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}@"
        return f"{scheme}://{credentials}{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return self._url("socks5")

    @property
    def url_h(self) -> str:
        return self._url("socks5h")


class _BlackholeHandler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        self.server.owner._count_accept()
        self.server.stopping.wait()


class BlackholeServer(BackgroundServer):
    """Accept TCP connections and never answer, holding them open until stop()."""

    def __init__(self) -> None:
        super().__init__()
        self.accepted = 0

    def _make_server(self) -> _TCPServer:
        return _TCPServer(self, _BlackholeHandler)

    def _count_accept(self) -> None:
        with self._lock:
            self.accepted += 1

    @property
    def url(self) -> str:
        return f"socks5://{HOST}:{self.port}"

    @property
    def url_h(self) -> str:
        return f"socks5h://{HOST}:{self.port}"
