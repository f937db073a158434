"""The verifier client over real TLS: answers mapped to typed errors, certificates checked."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email.utils
import ipaddress
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attest.agent.client import (
    DEFAULT_TIMEOUT,
    NotEnrolled,
    ProtocolError,
    VerifierClient,
    VerifierRejected,
    VerifierTlsError,
    VerifierUnavailable,
    VerifierUnreachable,
)
from attest.errors import UsageError
from attest.wire import ActivateRequest, Challenge, EnrollRequest, Evidence
from tests.https_stub import Handler, serve

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CHALLENGE = {
    "nonce": base64.b64encode(b"n" * 32).decode(),
    "selection": "sha256:0-7,10",
    "expires_at": NOW.isoformat(),
    "ima_offset": 4,
}


# --- test PKI ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(directory: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Pki:
    """A CA and a server certificate for `hosts` (DNS names or IP addresses), as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test CA"))
        .issuer_name(_name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    pki.server_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@contextlib.contextmanager
def _client(
    pki: Pki, handler: Handler, timeout: float = DEFAULT_TIMEOUT, idle_timeout: float | None = None
) -> Iterator[VerifierClient]:
    """A client of a real HTTPS server on loopback that answers with `handler`."""
    with (
        serve(pki.server_cert, pki.server_key, handler, idle_timeout) as url,
        VerifierClient(url, pki.ca_cert, timeout=timeout) as client,
    ):
        yield client


def _answer(
    status: int, body: object, headers: dict[str, str] | None = None
) -> Callable[..., httpx.Response]:
    return lambda request: httpx.Response(status, json=body, headers=headers)


# --- requests and answers ---------------------------------------------------------------------


def test_requests_go_to_the_v1_routes_with_the_wire_models(pki: Pki) -> None:
    seen: list[httpx.Request] = []
    enroll_answer = {
        "enrollment_id": "e/1",
        "credential_blob": base64.b64encode(b"blob").decode(),
        "encrypted_secret": base64.b64encode(b"secret").decode(),
        "expires_at": NOW.isoformat(),
    }
    verdict = {
        "node": "node-1",
        "trusted": True,
        "reasons": [],
        "appraised_at": NOW.isoformat(),
        "expires_at": NOW.isoformat(),
    }
    answers = {
        "/v1/enroll": enroll_answer,
        "/v1/enroll/e%2F1/activate": {
            "node": "node-1",
            "ak_name": "000b" + "aa" * 32,
            "enrolled_at": NOW.isoformat(),
        },
        "/v1/nodes/node-1/challenge": CHALLENGE,
        "/v1/nodes/node-1/evidence": verdict,
    }

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answers[request.url.raw_path.decode()])

    with _client(pki, handler) as client:
        got = client.enroll(EnrollRequest(node="node-1", ek_public=b"ek", ak_public=b"ak"))
        assert got.enrollment_id == "e/1"
        assert got.credential_blob == b"blob"
        client.activate("e/1", ActivateRequest(secret=b"s" * 16))
        challenge = client.challenge("node-1")
        assert challenge.nonce == b"n" * 32
        assert challenge.ima_offset == 4
        out = client.evidence(
            "node-1",
            Evidence(
                nonce=b"n", quote=b"q", signature=b"s", pcrs={"sha256": {0: "00"}}, ima=b"", ima_offset=4
            ),
        )
        assert out.trusted
    assert [r.method for r in seen] == ["POST"] * 4
    assert json.loads(seen[0].content) == {
        "node": "node-1",
        "ek_certificate": None,
        "ek_public": base64.b64encode(b"ek").decode(),
        "ak_public": base64.b64encode(b"ak").decode(),
    }
    assert json.loads(seen[3].content)["ima"] == ""
    assert seen[3].headers["content-type"] == "application/json"
    assert seen[0].headers["user-agent"].startswith("attest-agent/")


@pytest.mark.parametrize(
    ("status", "body", "error", "code"),
    [
        (404, {"code": "ak_not_bound", "message": "enroll first"}, NotEnrolled, "ak_not_bound"),
        (404, {"code": "enrollment_unknown", "message": "no such"}, VerifierRejected, "enrollment_unknown"),
        (403, {"code": "node_revoked", "message": "revoked"}, VerifierRejected, "node_revoked"),
        (409, {"code": "nonce_reused", "message": "used"}, VerifierRejected, "nonce_reused"),
        (413, {"code": "too_large", "message": "body too large"}, VerifierRejected, "too_large"),
        (400, "<html>bad request</html>", VerifierRejected, "http_400"),
    ],
)
def test_refusals_carry_the_verifiers_code(
    pki: Pki, status: int, body: object, error: type[VerifierRejected], code: str
) -> None:
    with _client(pki, _answer(status, body)) as client, pytest.raises(error) as info:
        client.challenge("node-1")
    assert type(info.value) is error
    assert info.value.code == code
    assert info.value.status == status
    assert not info.value.transient


def test_a_refused_quote_carries_every_reason(pki: Pki) -> None:
    body = {
        "code": "quote_signature_invalid",
        "message": "signature does not verify",
        "reasons": [
            {"code": "quote_signature_invalid", "message": "signature does not verify"},
            {"code": "pcr_digest_mismatch", "message": "PCR values do not match", "pcr": 7},
        ],
    }
    with _client(pki, _answer(422, body)) as client, pytest.raises(VerifierRejected) as info:
        client.evidence("node-1", Evidence(nonce=b"n", quote=b"q", signature=b"s", pcrs={}))
    assert [r.code for r in info.value.reasons] == ["quote_signature_invalid", "pcr_digest_mismatch"]
    assert info.value.reasons[1].pcr == 7


@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [
        ({"retry-after": "7"}, 7.0),
        ({}, None),
        ({"retry-after": "soon"}, None),
    ],
)
def test_unavailable_is_transient_and_says_when_to_retry(
    pki: Pki, headers: dict[str, str], retry_after: float | None
) -> None:
    body = {"code": "store_unavailable", "message": "database down"}
    with _client(pki, _answer(503, body, headers)) as client, pytest.raises(VerifierUnavailable) as info:
        client.challenge("node-1")
    assert info.value.transient
    assert info.value.retry_after == retry_after
    assert "database down" in str(info.value)


def test_retry_after_as_an_http_date(pki: Pki) -> None:
    when = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120), usegmt=True)
    with (
        _client(pki, _answer(503, {}, {"retry-after": when})) as client,
        pytest.raises(VerifierUnavailable) as info,
    ):
        client.challenge("node-1")
    assert info.value.retry_after is not None
    assert 100 < info.value.retry_after <= 120


@pytest.mark.parametrize("status", [500, 502, 429])
def test_server_errors_are_transient(pki: Pki, status: int) -> None:
    with (
        _client(pki, lambda r: httpx.Response(status, text="upstream exploded")) as client,
        pytest.raises(VerifierUnavailable, match="upstream exploded"),
    ):
        client.challenge("node-1")


@pytest.mark.parametrize(
    "body",
    [b"not json", b"{}", json.dumps({**CHALLENGE, "selection": "sha256:0-7;rm -rf"}).encode()],
)
def test_an_answer_that_is_not_the_promised_model_is_a_protocol_error(pki: Pki, body: bytes) -> None:
    with (
        _client(pki, lambda r: httpx.Response(200, content=body)) as client,
        pytest.raises(ProtocolError, match="not a Challenge"),
    ):
        client.challenge("node-1")


def _hang_up(request: httpx.Request) -> httpx.Response:
    raise ConnectionAbortedError("the server closes the connection without answering")


def _too_slow(request: httpx.Request) -> httpx.Response:
    time.sleep(2)  # past the client's 0.5 s timeout
    return httpx.Response(200, json=CHALLENGE)


@pytest.mark.parametrize(("handler", "message"), [(_hang_up, "closed connection"), (_too_slow, "timed out")])
def test_transport_failures_are_unreachable(pki: Pki, handler: Handler, message: str) -> None:
    with _client(pki, handler, timeout=0.5) as client, pytest.raises(VerifierUnreachable) as info:
        client.challenge("node-1")
    assert info.value.transient
    assert message in str(info.value)


def test_the_connection_is_kept_between_requests_and_replaced_once_the_server_closes_it(pki: Pki) -> None:
    with _client(pki, _answer(200, CHALLENGE), idle_timeout=0.3) as client:
        client.challenge("node-1")
        first = client._conn
        client.challenge("node-1")
        assert client._conn is first  # kept alive
        time.sleep(1)  # the server's idle timeout passes and it closes the connection
        assert isinstance(client.challenge("node-1"), Challenge)
        assert client._conn is not first


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://verifier:8080",
        "verifier:8443",
        "https://",
        "https://v:8443?x=1",
        "https://u:p@v",
        "https://v:99999",
    ],
)
def test_only_plain_https_urls(pki: Pki, url: str) -> None:
    with pytest.raises(UsageError):
        VerifierClient(url, pki.ca_cert)


def test_the_ca_must_be_a_readable_certificate(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        VerifierClient("https://v", tmp_path / "missing.crt")
    (tmp_path / "bad.crt").write_text("not a certificate")
    with pytest.raises(UsageError, match="not a readable PEM CA"):
        VerifierClient("https://v", tmp_path / "bad.crt")


# --- real TLS ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _serve(pki: Pki) -> Iterator[int]:
    """A real HTTPS server on loopback with `pki`'s server certificate, answering a challenge."""
    with serve(pki.server_cert, pki.server_key, _answer(200, CHALLENGE)) as url:
        yield int(url.rpartition(":")[2])


def test_tls_to_a_server_certified_by_the_configured_ca(pki: Pki) -> None:
    with _serve(pki) as port:
        for host in ("127.0.0.1", "localhost"):
            with VerifierClient(f"https://{host}:{port}", pki.ca_cert) as client:
                assert isinstance(client.challenge("node-1"), Challenge)


def test_tls_to_a_server_certified_by_another_ca_fails(pki: Pki, tmp_path: Path) -> None:
    """Only the configured CA is trusted, never the system roots as well."""
    other = make_pki(tmp_path / "other")
    with (
        _serve(pki) as port,
        VerifierClient(f"https://127.0.0.1:{port}", other.ca_cert) as client,
        pytest.raises(VerifierTlsError, match="unable to get local issuer certificate"),
    ):
        client.challenge("node-1")


def test_tls_to_a_name_the_certificate_does_not_hold_fails(tmp_path: Path) -> None:
    elsewhere = make_pki(tmp_path / "elsewhere", hosts=("verifier.example",))
    with (
        _serve(elsewhere) as port,
        VerifierClient(f"https://127.0.0.1:{port}", elsewhere.ca_cert) as client,
        pytest.raises(VerifierTlsError, match=r"Hostname mismatch|IP address mismatch"),
    ):
        client.challenge("node-1")


def test_nothing_listening_is_unreachable(pki: Pki) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        VerifierClient(f"https://127.0.0.1:{port}", pki.ca_cert, timeout=2) as client,
        pytest.raises(VerifierUnreachable),
    ):
        client.challenge("node-1")
