"""Secrets at rest and in logs (SECURITY.md: "Secrets and keys on disk are 0600"; issue 7).

One run of every producer of secret files under umask 022, as a default shell has it:
`attestctl certs init` (CA and server keys, admin token), a real `attest-verifier serve`
(SQLite database, WAL and SHM) and the agent enrolling and attesting a swtpm node (AK blob,
state). Every file they created is checked, and every log line they wrote at debug level is
searched for the secrets of the run: the admin token, the credential secret the TPM released
at activation, and private key material. Nonces are not secrets (anyone gets one from the
unauthenticated challenge endpoint, and one is worthless without the node's AK), so they may
be logged; docs/security.md records that decision.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from attest.agent.client import VerifierClient
from attest.agent.daemon import AgentConfig, attest_once, make_event_log
from attest.cli.main import main as attestctl
from attest.pki import ADMIN_TOKEN, CA_KEY, SERVER_KEY
from attest.wire import ActivateRequest, EnrollResult
from swtpm.instance import SwtpmInstance
from tests.swtpm_node import SwtpmNode
from tests.verifier_process import StartVerifier


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _files(root: Path) -> dict[Path, int]:
    """Every file and directory under `root` (itself included), with its permission bits."""
    found = {root: stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        found[p] = stat.S_IMODE(p.lstat().st_mode)
    return found


def _forms(secret: bytes) -> list[str]:
    """How a secret could be written out: hex (either case), base64, base64url."""
    b64 = base64.b64encode(secret).decode()
    return [
        secret.hex(),
        secret.hex().upper(),
        b64,
        b64.rstrip("="),
        base64.urlsafe_b64encode(secret).decode(),
    ]


def test_secret_files_are_0600_under_umask_022_and_no_secret_reaches_a_debug_log(
    umask_022: None,
    start_verifier: StartVerifier,
    swtpm: SwtpmInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore in this process, at debug
    pki = tmp_path / "pki"
    assert attestctl(["certs", "init", "--dir", str(pki), "--host", "localhost", "--ip", "127.0.0.1"]) == 0
    token = (pki / ADMIN_TOKEN).read_text().strip()

    assert swtpm.ca is not None
    server = start_verifier(
        "--admin-token-file",
        str(pki / ADMIN_TOKEN),
        "--ek-roots",
        str(swtpm.ca.root_cert),
        "--ek-intermediates",
        str(swtpm.ca.intermediate_cert),
        "--no-require-policy",
        "--log-level",
        "debug",
    )

    # The secret the TPM released, as the agent sends it to activate its AK.
    released: list[bytes] = []
    activate = VerifierClient.activate

    def record(self: VerifierClient, enrollment_id: str, request: ActivateRequest) -> EnrollResult:
        released.append(request.secret)
        return activate(self, enrollment_id, request)

    monkeypatch.setattr(VerifierClient, "activate", record)
    node = SwtpmNode(swtpm, tmp_path / "node")
    node.dir.mkdir()
    node.boot()
    state = tmp_path / "agent-state"
    config = AgentConfig(
        verifier=server.url,
        ca_cert=server.tls.ca_cert,
        node="node-1",
        tcti=swtpm.tcti,
        state_dir=state,
        eventlog=node.eventlog,
        ima=node.ima,
        boot_id_file=node.boot_id,
        container_log=node.container_log,
    )
    agent_log = io.StringIO()
    for _ in range(2):  # enroll and attest, then attest again
        assert attest_once(config, make_event_log("json", "debug", agent_log)).trusted
    assert len(released) == 1

    conn = [
        "--verifier",
        server.url,
        "--ca-cert",
        str(server.tls.ca_cert),
        "--token-file",
        str(pki / ADMIN_TOKEN),
    ]
    for command in (["node", "list"], ["node", "show", "node-1"], ["ek", "list"], ["audit", "export"]):
        assert attestctl([*command, *conn]) == 0, command

    # The database files, while the verifier holds them open (WAL and SHM exist).
    database = _files(server.database.parent)
    db_files = {p: m for p, m in database.items() if p.name.startswith(server.database.name)}
    assert {p.name for p in db_files} >= {"verifier0.db", "verifier0.db-wal", "verifier0.db-shm"}
    assert server.stop() == 0

    assert {p.name: m for p, m in db_files.items() if m != 0o600} == {}
    pki_files = _files(pki)
    assert pki_files[pki] == 0o700
    for name in (CA_KEY, SERVER_KEY, ADMIN_TOKEN):
        assert pki_files[pki / name] == 0o600, name
    assert all(m & 0o022 == 0 for m in pki_files.values())  # nothing anyone else may change
    agent_files = _files(state)
    assert len(agent_files) > 2  # the directory, the AK blob, the state...
    assert {str(p): oct(m) for p, m in agent_files.items() if m != (0o700 if p.is_dir() else 0o600)} == {}

    out = capsys.readouterr()
    logs: dict[str, str] = {
        "verifier": server.log.read_text(),
        "agent": agent_log.getvalue(),
        "python logging (httpx, httpcore)": caplog.text,
        "attestctl": out.out + out.err,
    }
    assert "enrolled" in logs["agent"]
    assert "DEBUG" in logs["verifier"]
    needles = {
        "admin token": [token],
        "credential secret": _forms(released[0]),
        "private key": ["PRIVATE KEY"],
    }
    for key_file in (pki / CA_KEY, pki / SERVER_KEY, server.tls.key):
        # The base64 lines; a short last one could occur in a log by chance.
        needles["private key"] += [
            line for line in key_file.read_text().splitlines()[1:-1] if len(line) >= 32
        ]
    leaks = [
        (what, where)
        for what, forms in needles.items()
        for f in forms
        for where, text in logs.items()
        if f in text
    ]
    assert leaks == []
