"""Database fixtures: a private PostgreSQL server for the session, and stores over it and SQLite.

    pg_server   (session)  PgServer: a real server of Debian's postgresql package, on a Unix socket
                           in a temp directory only; .create_database() -> URL, .stop(), .start()
    pg_url      (function) URL of a fresh, empty database on pg_server (dropped at teardown)
    sqlite_url  (function) URL of a new SQLite file under tmp_path
    store_url   (function) parametrized: "sqlite" and "postgresql", so one test body runs on both
    store       (function) SqlStore.open(store_url), closed at teardown

The server starts only when a test asks for it (about 2 s), once per pytest-xdist worker, and
stops at the end of the session. PostgreSQL refuses to run as root: as root (CI), its data
directory belongs to the `postgres` user the package creates and its programs run through
`runuser`. Missing binaries fail the tests: scripts/setup.sh installs them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from attest.store.sql import SqlStore

_MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: scripts/setup.sh installs Debian's postgresql"
)


def find_bindir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin (Debian keeps them off PATH), else PATH's."""
    versions = []
    for pg_ctl in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"):
        match = re.fullmatch(r"\d+(\.\d+)?", pg_ctl.parent.parent.name)
        if match and (pg_ctl.parent / "initdb").exists():
            versions.append((float(match.group(0)), pg_ctl.parent))
    if versions:
        return max(versions)[1]
    on_path = shutil.which("pg_ctl")
    if on_path and (Path(on_path).resolve().parent / "initdb").exists():
        return Path(on_path).resolve().parent
    raise FileNotFoundError(_MISSING)


class PgServer:
    """One PostgreSQL cluster in a temp directory, reachable only through its Unix socket."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # Not under pytest's tmp_path: that is 0700 root, which the postgres user cannot enter;
        # and short, since a Unix socket path is limited to 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="attest-pg-"))
        self.data = self.root / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self.running = False

    def _run(self, program: str, *args: str) -> None:
        argv = [*self._as, str(self.bindir / program), *args]
        done = subprocess.run(argv, cwd=self.root, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")

    def init(self) -> None:
        # fsync off: a test server that dies loses nothing anyone needs, and tests run faster.
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync", "--no-instructions")  # fmt: skip

    def start(self) -> None:
        options = f"-k {self.root} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                  "-o", options, "start")  # fmt: skip
        self.running = True

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        self.running = False

    def destroy(self) -> None:
        try:
            if self.running:
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.root}"

    def _admin(self, statement: str, database: str) -> None:
        import psycopg
        from psycopg import sql

        query = sql.SQL(statement).format(sql.Identifier(database))
        with psycopg.connect(
            host=str(self.root), user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(query)

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex}"
        self._admin("CREATE DATABASE {}", name)
        return name

    def drop_database(self, name: str) -> None:
        self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        bindir = find_bindir()
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)
    server = PgServer(bindir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    name = pg_server.create_database()
    yield pg_server.url(name)
    if pg_server.running:
        pg_server.drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'attest.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    # Looked up lazily: a run that selects only SQLite tests never starts PostgreSQL.
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[SqlStore]:
    from attest.store.sql import SqlStore

    opened = SqlStore.open(store_url)
    yield opened
    opened.close()
