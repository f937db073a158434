"""The verifier's database goes away under a running `attest-verifier serve` process, and comes
back, with a real swtpm node attesting over TLS:

    sqlite-locked      another process holds SQLite's write lock (BEGIN EXCLUSIVE), as a hung
                       writer or an operator's open `sqlite3` transaction would
    sqlite-unwritable  every write the verifier makes to a file fails (its RLIMIT_FSIZE lowered
                       to one byte while it runs: EFBIG, as ENOSPC on a full disk; tests run as
                       root, so a mode change would not stop a write)
    postgresql-stopped the PostgreSQL server stops (a failover, a restart): every connection dies

While the fault lasts /readyz answers 503 and attestation 503 with Retry-After; admission
requests are answered (no timeouts) and admit nothing on evidence the verifier could not record.
When the database is readable admission still decides from the verdicts it committed (they
expire on time); when it is not (PostgreSQL stopped) it denies everything with
admission_store_unavailable. Then the fault clears and, without a restart, /readyz is 200 and
the node attests and is admitted again.
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from attest.store.api import AuditRecord
from attest.store.audit import verify_chain
from attest.wire import AuditRecordOut, Challenge
from tests.conftest import BootedTpm
from tests.pg import PgServer
from tests.test_admission_http import APISERVER_HEADERS, code, placed_on
from tests.test_webhook_serve import ADMIN, Node, StartServer, put_policy, start_server
from tests.verifier_process import Server

__all__ = ["start_server"]  # the fixture, used by name

# The API server gives a webhook at most 10 s (deploy/base/webhook.yaml asks for 5).
APISERVER_TIMEOUT = 10.0
# Past the staleness bound of any in-memory view of node states admission may keep (1 s).
VIEW_BOUND = 1.5
# How long admission may take to see the database again once it is back.
RECOVERY_WAIT = 10.0
BINDING = "05-validate-pods-binding-CREATE-demo.json"


def admitted(client: httpx.Client, node: str) -> tuple[bool, str | None]:
    """A pod bound to `node`, as the API server asks: the request completes (no timeout) with
    an AdmissionReview; (allowed, the denial's reason code)."""
    doc = placed_on(BINDING, node)
    r = client.post(
        "/v1/admission/pods?timeout=10s",
        content=json.dumps(doc).encode(),
        headers=APISERVER_HEADERS,
        timeout=APISERVER_TIMEOUT,
    )
    assert r.status_code == 200, r.text
    response: dict[str, Any] = r.json()["response"]
    assert response["uid"] == doc["request"]["uid"]
    return bool(response["allowed"]), code(response)


def attest(client: httpx.Client, node: Node, booted: BootedTpm) -> httpx.Response:
    r = client.post(f"/v1/nodes/{node.name}/challenge")
    if r.status_code != 200:
        return r
    body = node.evidence(Challenge.model_validate_json(r.content), logs=booted)
    return client.post(
        f"/v1/nodes/{node.name}/evidence", content=body, headers={"content-type": "application/json"}
    )


class Holder:
    """Another process holding SQLite's write lock on `path` until released."""

    def __init__(self, path: Path) -> None:
        script = (
            "import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n"
            "c.execute('ROLLBACK')\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        assert self.proc.stdin is not None
        if self.proc.poll() is None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def fault(kind: str, server: Server, request: pytest.FixtureRequest) -> Iterator[None]:
    """The database unusable inside the block, and back (without touching the verifier) after."""
    if kind == "sqlite-locked":
        holder = Holder(server.database)
        try:
            yield
        finally:
            holder.release()
    elif kind == "sqlite-unwritable":
        # The verifier's file size limit lowered to one byte while it runs: every write to a
        # file fails (EFBIG), as on a full disk. Unlike a mode change (tests run as root), a
        # read-only remount (refused while files are open for writing) or chattr +i (a
        # capability and a file system containers often lack), this needs nothing but being
        # the process's parent; Python ignores SIGXFSZ, so the process lives on.
        pid = server.process.pid
        before = resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
        try:
            yield
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, before)
    else:
        pg: PgServer = request.getfixturevalue("pg_server")
        pg.stop()
        try:
            yield
        finally:
            if not pg.running:  # shared by the worker's other tests
                pg.start()


@pytest.mark.parametrize(
    ("kind", "store_url"),
    [("sqlite-locked", "sqlite"), ("sqlite-unwritable", "sqlite"), ("postgresql-stopped", "postgresql")],
    indirect=["store_url"],
)
def test_the_database_goes_away_and_comes_back(
    kind: str, start_server: StartServer, swtpm_booted: BootedTpm, request: pytest.FixtureRequest
) -> None:
    server = start_server()
    node = Node("worker-1", swtpm_booted.tpm)
    with server.client() as client:
        put_policy(client, swtpm_booted)
        assert node.enroll(client).status_code == 200
        r = attest(client, node, swtpm_booted)
        assert r.status_code == 200, r.text
        assert r.json()["trusted"]
        assert admitted(client, "worker-1") == (True, None)
        assert admitted(client, "never-attested") == (False, "admission_node_unattested")

        with fault(kind, server, request):
            time.sleep(VIEW_BOUND)
            r = client.get("/readyz")
            assert (r.status_code, r.json()["code"]) == (503, "store_unavailable"), r.text
            r = attest(client, node, swtpm_booted)
            assert (r.status_code, r.json()["code"]) == (503, "store_unavailable"), r.text
            assert r.headers["retry-after"]
            assert client.get("/healthz").status_code == 200
            if kind == "postgresql-stopped":
                # Nothing can be read: every request is refused, saying why.
                assert admitted(client, "worker-1") == (False, "admission_store_unavailable")
            else:
                # Readable: the verdict committed before the fault still holds until it expires.
                assert admitted(client, "worker-1") == (True, None)
            assert admitted(client, "never-attested")[0] is False

        r = client.get("/readyz")
        assert r.status_code == 200, r.text
        r = attest(client, node, swtpm_booted)
        assert r.status_code == 200, r.text
        assert r.json()["trusted"]
        # Within the bound of any view of node states admission keeps (1 s), with room for a slow CI.
        deadline = time.monotonic() + RECOVERY_WAIT
        while (answer := admitted(client, "worker-1")) != (True, None) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert answer == (True, None)
        records = [
            AuditRecordOut.model_validate(a) for a in client.get("/v1/admin/audit", headers=ADMIN).json()
        ]
        chain = [AuditRecord(a.seq, a.at, a.kind, a.subject, a.data, a.prev, a.hash) for a in records]
        assert verify_chain(chain) == []
        # The refused rounds left nothing: two verdicts, both acknowledged.
        assert [a.kind for a in chain].count("verdict") == 2
    assert server.stop() == 0
