"""The verifier's TLS against a real `attest-verifier serve` process: versions and TLS 1.2
suites (attest.tlspolicy), a renewed certificate picked up without a restart (webhook.tls),
and the agent and attestctl refusing old protocol versions and expired or not-yet-valid
server certificates with one line and a non-zero exit.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from attest.agent.client import VerifierClient, VerifierTlsError
from attest.cli.main import main as attestctl
from swtpm.instance import SwtpmInstance
from tests.swtpm_node import SwtpmNode
from tests.tlsfixtures import TlsFiles, renew, write_tls
from tests.verifier_process import Server, StartVerifier

AGENT = [sys.executable, "-m", "attest.agent.cli"]
PICKUP_SECONDS = 15
TLS12 = ssl.TLSVersion.TLSv1_2
# Speaking the old versions on purpose, to show they are refused.
pytestmark = pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _client(
    ca: Path | None, version: ssl.TLSVersion | None = None, ciphers: str | None = None
) -> ssl.SSLContext:
    """A client willing to speak exactly `version` with exactly `ciphers` (security level 0,
    so that whatever is refused is refused by the server); without `ca`, one that accepts any
    certificate, to look at one no real client would accept."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile=ca)
    if ciphers is not None:
        ctx.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def _handshake(port: int, ctx: ssl.SSLContext) -> tuple[str, str, int]:
    """The negotiated version, suite and the server certificate's serial."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        version, cipher, der = tls.version(), tls.cipher(), tls.getpeercert(binary_form=True)
    assert version is not None
    assert cipher is not None
    assert der is not None
    return version, cipher[0], x509.load_der_x509_certificate(der).serial_number


def _refused(port: int, ctx: ssl.SSLContext) -> None:
    """The handshake fails (the reason is the server's alert, or an EOF where uvloop closes
    the connection before its alert is flushed)."""
    with pytest.raises(ssl.SSLError):
        _handshake(port, ctx)


def _wait_for_serial(server: Server, serial: int, ca: Path | None) -> None:
    deadline = time.monotonic() + PICKUP_SECONDS
    while _handshake(_port(server.url), _client(ca))[2] != serial:
        if time.monotonic() > deadline:
            raise AssertionError(f"the verifier never served serial {serial:x}:\n{server.log.read_text()}")
        time.sleep(0.05)


class OldTlsServer:
    """A TLS 1.0/1.1-only server: what a downgraded or misconfigured endpoint would offer.
    Counts the handshakes it completed and keeps the errors of the others."""

    def __init__(self, tls: TlsFiles) -> None:
        self.ca = tls.ca_cert
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(tls.cert, tls.key)
        self.ctx.set_ciphers("ALL:@SECLEVEL=0")
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1
        self.ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}"
        self.completed = 0
        self.errors: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True):
                    self.completed += 1
            except (ssl.SSLError, OSError) as e:
                self.errors.append(str(e))
            finally:
                conn.close()


@pytest.fixture
def old_tls_server(tmp_path: Path) -> Iterator[OldTlsServer]:
    server = OldTlsServer(write_tls(tmp_path / "old-tls"))
    yield server
    server.sock.close()


def test_the_verifier_refuses_tls_1_0_and_1_1_and_speaks_1_2_and_1_3(
    start_verifier: StartVerifier, old_tls_server: OldTlsServer
) -> None:
    server = start_verifier()
    port, ca = _port(server.url), server.tls.ca_cert
    for old, name in ((ssl.TLSVersion.TLSv1, "TLSv1"), (ssl.TLSVersion.TLSv1_1, "TLSv1.1")):
        # This client speaks the old version to a server willing to, and the verifier refuses it.
        assert _handshake(_port(old_tls_server.url), _client(old_tls_server.ca, old, "ALL"))[0] == name
        _refused(port, _client(ca, old, "ALL"))
    assert _handshake(port, _client(ca, ssl.TLSVersion.TLSv1_3))[0] == "TLSv1.3"
    suite = "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert _handshake(port, _client(ca, TLS12, suite))[:2] == ("TLSv1.2", suite)


def test_tls_1_2_offers_only_ecdhe_with_aead_for_ec_and_rsa_keys(
    start_verifier: StartVerifier, tmp_path: Path
) -> None:
    server = start_verifier()
    port, ca = _port(server.url), server.tls.ca_cert
    for suite in (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ):
        assert _handshake(port, _client(ca, TLS12, suite))[1] == suite
    for suite in ("ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA"):
        _refused(port, _client(ca, TLS12, suite))

    # An RSA certificate makes the RSA key exchange and finite-field DHE possible at all.
    rsa = write_tls(tmp_path / "rsa", key_type="rsa")
    serial = x509.load_pem_x509_certificate(rsa.cert.read_bytes()).serial_number
    os.replace(rsa.key, server.tls.key)
    os.replace(rsa.cert, server.tls.cert)
    _wait_for_serial(server, serial, rsa.ca_cert)
    for suite in (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ):
        assert _handshake(port, _client(rsa.ca_cert, TLS12, suite))[1] == suite
    for suite in (
        "AES128-GCM-SHA256",  # RSA key exchange: no forward secrecy
        "AES256-SHA256",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES128-SHA256",  # CBC
        "ECDHE-RSA-AES256-SHA",
    ):
        _refused(port, _client(rsa.ca_cert, TLS12, suite))


def test_a_certificate_renewed_in_place_or_by_symlink_swap_is_served_without_a_restart(
    start_verifier: StartVerifier, tmp_path: Path
) -> None:
    server = start_verifier()
    ca = server.tls.ca_cert
    first = _handshake(_port(server.url), _client(ca))[2]

    # cert-manager style: the same files rewritten.
    second = renew(server.tls)
    assert second != first
    _wait_for_serial(server, second, ca)

    # kubelet style: the mounted names become links into a new directory, swapped atomically.
    data = tmp_path / "..2026_11_28_data"
    data.mkdir()
    third = renew(server.tls, cert=data / "tls.crt", key=data / "tls.key")
    for name in ("tls.crt", "tls.key"):
        link = tmp_path / f"{name}.new"
        link.symlink_to(data / name)
        os.replace(link, server.tls.cert.with_name(name))
    _wait_for_serial(server, third, ca)

    # Still the same process, and it said what it loaded.
    assert server.process.poll() is None
    assert f"renewed: serial {third:x}" in server.log.read_text()


def test_a_renewed_key_that_does_not_match_keeps_the_previous_pair_and_logs_an_error(
    start_verifier: StartVerifier, tmp_path: Path
) -> None:
    server = start_verifier()
    ca = server.tls.ca_cert
    serving = _handshake(_port(server.url), _client(ca))[2]
    os.replace(write_tls(tmp_path / "other").key, server.tls.key)  # a key without its certificate
    deadline = time.monotonic() + PICKUP_SECONDS
    while "do not load" not in server.log.read_text():
        assert _handshake(_port(server.url), _client(ca))[2] == serving
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.05)
    assert "KEY_VALUES_MISMATCH" in server.log.read_text()
    assert _handshake(_port(server.url), _client(ca))[2] == serving
    assert server.process.poll() is None
    # The renewal completing later is picked up.
    _wait_for_serial(server, renew(server.tls), ca)


def test_the_agent_and_attestctl_refuse_tls_below_1_2(
    old_tls_server: OldTlsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (
        VerifierClient(old_tls_server.url, old_tls_server.ca) as client,
        pytest.raises(VerifierTlsError) as e,
    ):
        client.challenge("node-1")
    assert "TLS failed" in str(e.value)

    token = tmp_path / "token"
    token.write_text(secrets.token_urlsafe(32))
    token.chmod(0o600)
    conn = ["--verifier", old_tls_server.url, "--ca-cert", str(old_tls_server.ca), "--token-file", str(token)]
    assert attestctl(["node", "list", *conn]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "TLS handshake with the verifier" in err
    assert old_tls_server.completed == 0
    # Both offered TLS 1.2 or later only: the old server found no version in common.
    assert len(old_tls_server.errors) == 2
    assert all("UNSUPPORTED_PROTOCOL" in e for e in old_tls_server.errors), old_tls_server.errors


@pytest.mark.parametrize(
    ("valid_from", "message"),
    [
        (dt.timedelta(days=-2), "certificate has expired"),
        (dt.timedelta(days=1), "certificate is not yet valid"),
    ],
)
def test_an_expired_or_not_yet_valid_server_certificate_is_refused_in_one_line_and_nothing_is_trusted(
    start_verifier: StartVerifier,
    swtpm: SwtpmInstance,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    valid_from: dt.timedelta,
    message: str,
) -> None:
    token = tmp_path / "admin-token"
    token.write_text(secrets.token_urlsafe(32))
    token.chmod(0o600)
    server = start_verifier("--admin-token-file", str(token))
    _wait_for_serial(server, renew(server.tls, valid_from=valid_from), None)

    conn = ["--verifier", server.url, "--ca-cert", str(server.tls.ca_cert), "--token-file", str(token)]
    assert attestctl(["node", "list", *conn]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert message in err

    node = SwtpmNode(swtpm, tmp_path / "node")
    node.dir.mkdir()
    node.boot()
    agent = [*AGENT, "once", "--verifier", server.url, "--ca-cert", str(server.tls.ca_cert)]
    agent += ["--node", "node-1", "--tcti", swtpm.tcti, "--state-dir", str(tmp_path / "agent-state")]
    agent += ["--eventlog", str(node.eventlog), "--ima", str(node.ima), "--boot-id-file", str(node.boot_id)]
    result = subprocess.run(agent, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"TLS failed: {message}" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""

    # Back on a valid certificate: the verifier holds no enrollment and no verdict for the node.
    _wait_for_serial(server, renew(server.tls), server.tls.ca_cert)
    with server.client() as client:
        nodes = client.get("/v1/admin/nodes", headers={"authorization": f"Bearer {token.read_text()}"})
    assert nodes.status_code == 200
    assert nodes.json() == []
