"""Sharing a gevent worker: one test for "are we under gevent", and a way for long loops to let others run.

main.py patches the standard library (gevent's monkey.patch_all) before anything else is imported when
server.worker_class is gevent; then every connection of a worker is a greenlet on one OS thread, and
work that never waits on a socket holds all of them.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

PAUSE_EVERY = 0.005  # seconds of work in a loop before it lets the worker's other connections run
log = logging.getLogger(__name__)


def under_gevent() -> bool:
    """True in a gevent worker (main.py patched the standard library before the app was imported)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("socket")


def let_others_run() -> None:
    """Under gevent, wait for the event loop to poll for I/O and run what is ready (gevent.sleep(0) would
    only switch among greenlets already running: a new connection would still wait). In a thread, free
    the GIL for a moment."""
    if under_gevent():
        from gevent import idle

        idle()
    else:
        time.sleep(0)


class Pacer:
    """Called on every step of a long loop: every PAUSE_EVERY seconds it lets the worker's other
    connections have their turn."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self.last > PAUSE_EVERY:
            let_others_run()
            self.last = time.monotonic()


def later(seconds: float, work) -> None:
    """Run work once, seconds from now, beside whatever runs then (a greenlet under gevent, else a thread).
    A failure is logged, never raised."""

    def run() -> None:
        try:
            work()
        except Exception:
            log.exception("delayed work failed")

    if under_gevent():
        from gevent import spawn_later

        spawn_later(seconds, run)
    else:
        timer = threading.Timer(seconds, run)
        timer.daemon = True
        timer.start()
