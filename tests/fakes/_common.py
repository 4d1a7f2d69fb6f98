"""Provide the start/stop plumbing shared by every fake server."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import sys
import threading
import time

HOST = "127.0.0.1"


class TrackingServerMixin:
    """Track connections and handler threads so that stop() can end them all."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def init_tracking(self) -> None:
        """Create the bookkeeping; call before the base server's __init__."""
        self.stopping = threading.Event()
        self._track_lock = threading.Lock()
        self._tracked_sockets: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()

    def track(self, sock: socket.socket) -> None:
        """Remember a socket to be shut down on stop."""
        with self._track_lock:
            self._tracked_sockets.add(sock)

    def untrack(self, sock: socket.socket) -> None:
        """Forget a socket that its handler has closed."""
        with self._track_lock:
            self._tracked_sockets.discard(sock)

    def process_request(self, request, client_address) -> None:
        """Handle the connection in a tracked daemon thread."""
        thread = threading.Thread(target=self._run_request, args=(request, client_address), daemon=True)
        with self._track_lock:
            self._tracked_sockets.add(request)
            self._handler_threads.add(thread)
        thread.start()

    def _run_request(self, request, client_address) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._track_lock:
                self._tracked_sockets.discard(request)
                self._handler_threads.discard(threading.current_thread())

    def handle_error(self, request, client_address) -> None:
        """Stay quiet about dropped connections; report real bugs."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def stop_all(self, join_timeout: float = 3.0) -> None:
        """Stop serving, wake every handler, close the listener and wait for the handlers."""
        self.stopping.set()
        self.shutdown()
        with self._track_lock:
            sockets = list(self._tracked_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.server_close()
        deadline = time.monotonic() + join_timeout
        with self._track_lock:
            threads = list(self._handler_threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class BackgroundServer:
    """Run a socketserver in a daemon thread; subclasses implement _make_server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: socketserver.BaseServer | None = None
        self._thread: threading.Thread | None = None

    def _make_server(self) -> socketserver.BaseServer:
        raise NotImplementedError

    def start(self):
        """Bind to 127.0.0.1 on an ephemeral port and serve in the background."""
        if self._server is None:
            self._server = self._make_server()
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"{type(self).__name__}-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop_all()
        if self._thread is not None:
            self._thread.join(3.0)
            self._thread = None

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._server.server_address[1]

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
