"""A throwaway PostgreSQL 15 cluster for the tests: one per session, a fresh empty database per test.

The cluster lives in a temp folder owned by a non-root user (`postgres`, made by Debian's package, when
the tests run as root: PostgreSQL refuses to run as root), listens on 127.0.0.1 only, on a free port,
with trust authentication on loopback and fsync off. It is stopped and removed at the end of the session.
Missing binaries fail the tests that need them: run tests/setup.sh first (CI does).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "postgres"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    def __init__(self, folder: Path):
        self.folder = folder
        self.data = folder / "data"
        self.port = _free_port()
        self._as = ["runuser", "-u", USER, "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=60)
        if result.returncode:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stdout}{result.stderr}")

    def start(self) -> Cluster:
        if self._as:
            shutil.chown(self.folder, USER)
        self._run(str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off"
        options += " -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        log = str(self.folder / "log")
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", log, "-o", options, "-w", "start")
        return self

    def stop(self) -> None:
        try:
            self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """Make a fresh empty database and return its SQLAlchemy URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def pg_cluster():
    """The session's PostgreSQL cluster (started on first use)."""
    if not (BIN / "initdb").exists() or not (BIN / "pg_ctl").exists():
        pytest.fail(f"PostgreSQL 15 is not installed ({BIN}/initdb is missing): run tests/setup.sh", pytrace=False)
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.fail("running as root needs runuser to start PostgreSQL as its own user", pytrace=False)
    folder = Path(tempfile.mkdtemp(prefix="pg-"))
    cluster = Cluster(folder)
    started = time.monotonic()
    try:
        cluster.start()
    except Exception as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc}", pytrace=False)
    assert time.monotonic() - started < 60
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """A fresh, empty PostgreSQL database for this test: postgresql+psycopg://postgres@127.0.0.1:PORT/t_<hex>."""
    return pg_cluster.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request) -> dict:
    """Settings overrides for the test's database: {} (the default SQLite file) or a fresh PostgreSQL
    database's {"database_url": ...}; tests pass them on, as in make_server(**database)."""
    if request.param == "sqlite":
        return {}
    return {"database_url": request.getfixturevalue("pg_url")}
