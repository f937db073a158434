"""`attest-verifier serve` as a real process, for the tests that call it over TLS:

    start_verifier  (function) start_verifier(*flags, database=None, env=None, tls=None,
                               wait_for="/healthz") -> Server: HTTPS on a free 127.0.0.1 port
                               with `tls` or a throwaway CA (tests.tlsfixtures); `database`
                               is a URL (`store_url` from tests/pg.py runs a test on SQLite and
                               on PostgreSQL), a SQLite file prepared before, or None for a new
                               SQLite file under tmp_path; `env` adds environment variables (the
                               clock tests' libfaketime); returns once `wait_for` answers 200; every
                               process is killed at teardown

The flags are the caller's (--ek-roots, --admin-token-file, --admission-freshness, ...), and
ATTEST_VERIFIER_* variables of the test run never leak into the process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.tlsfixtures import TlsFiles, write_tls

VERIFIER = Path(sys.executable).with_name("attest-verifier")
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ATTEST_VERIFIER_")}


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    tls: TlsFiles
    database_url: str
    log: Path

    @property
    def database(self) -> Path:
        """The SQLite file (for the tests that damage it): a PostgreSQL verifier has none."""
        if not self.database_url.startswith("sqlite:///"):
            raise AssertionError(f"not a SQLite verifier: {self.database_url}")
        return Path(self.database_url.removeprefix("sqlite:///"))

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.tls.client_context(), timeout=30, trust_env=False)

    def stop(self) -> int:
        """SIGTERM, as Kubernetes stops a pod: uvicorn finishes what is in flight and exits 0."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"verifier ignored SIGTERM; log:\n{self.log.read_text()}") from None


StartVerifier = Callable[..., Server]


@pytest.fixture
def start_verifier(tmp_path: Path) -> Iterator[StartVerifier]:
    started: list[Server] = []

    def start(
        *flags: str,
        database: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        tls: TlsFiles | None = None,
        wait_for: str = "/healthz",
    ) -> Server:
        n = len(started)
        tls = tls or write_tls(tmp_path / f"tls{n}")
        if not isinstance(database, str):
            database = f"sqlite:///{database or tmp_path / f'verifier{n}.db'}"
        port = free_port()
        log = tmp_path / f"verifier{n}.log"
        argv = [
            str(VERIFIER),
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--tls-cert",
            str(tls.cert),
            "--tls-key",
            str(tls.key),
            "--database",
            database,
            *flags,
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env={**clean_env(), **(env or {})}
            )
        server = Server(process, f"https://127.0.0.1:{port}", tls, database, log)
        started.append(server)
        deadline = time.monotonic() + START_TIMEOUT
        with server.client() as client:
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"verifier exited {process.returncode}:\n{log.read_text()}")
                try:
                    if client.get(wait_for).status_code == 200:
                        return server
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"verifier did not start:\n{log.read_text()}")
                time.sleep(0.1)

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
