"""The agent's side of key binding (`--bind-key`): which files give which fingerprints, and the
challenge request that carries them."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attest.agent import cli
from attest.agent.bindkeys import fingerprints_of, read_fingerprints
from attest.agent.client import VerifierClient
from tests.https_stub import serve
from tests.kube_apiserver import fingerprint, make_csr
from tests.test_agent_client import Pki, make_pki


def _key_pem(key: ec.EllipticCurvePrivateKey, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def _self_signed(key: ec.EllipticCurvePrivateKey) -> bytes:
    import datetime as dt

    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "system:node:node-a")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_every_kubelet_key_file_form_gives_the_spki_fingerprint() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    want = [fingerprint(key)]
    # kubelet-client.key.tmp (SEC1 "EC PRIVATE KEY"), PKCS#8, the public key, a CSR.
    assert fingerprints_of(_key_pem(key, serialization.PrivateFormat.TraditionalOpenSSL)) == want
    assert fingerprints_of(_key_pem(key, serialization.PrivateFormat.PKCS8)) == want
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert fingerprints_of(public) == want
    assert fingerprints_of(make_csr(key, "node-a")) == want
    # kubelet-client-current.pem: certificate and key of one key pair, one fingerprint.
    both = _self_signed(key) + _key_pem(key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert fingerprints_of(both) == want
    rsa_key = rsa.generate_private_key(65537, 2048)
    assert (
        len(
            fingerprints_of(
                _key_pem(key, serialization.PrivateFormat.PKCS8)
                + rsa_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        )
        == 2
    )


def test_missing_files_are_skipped_and_bad_ones_reported(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    good = tmp_path / "kubelet-client-current.pem"
    good.write_bytes(_key_pem(key, serialization.PrivateFormat.TraditionalOpenSSL))
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    found, problems = read_fingerprints([tmp_path / "kubelet-client.key.tmp", good, garbage, empty, good])
    assert found == [fingerprint(key)]
    assert set(problems) == {str(garbage), str(empty)}


def test_challenge_request_carries_the_fingerprints(tmp_path: Path) -> None:
    pki: Pki = make_pki(tmp_path)
    seen: list[bytes] = []
    answer = {"nonce": "AA==", "selection": "sha256:0-7", "expires_at": "2030-01-01T00:00:00Z"}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        body = json.loads(request.content) if request.content else {}
        return httpx.Response(200, json={**answer, "bound_keys": sorted(body.get("bind", []))})

    with (
        serve(pki.server_cert, pki.server_key, handler) as url,
        VerifierClient(url, pki.ca_cert) as client,
    ):
        keys = ["b" * 64, "a" * 64]
        assert client.challenge("node-a", keys).bound_keys == sorted(keys)
        assert client.challenge("node-a").bound_keys == []
    assert json.loads(seen[0]) == {"bind": keys}
    assert seen[1] == b""  # no binding: the body-less request every verifier understands


def test_bind_key_option_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["run", "--verifier", "https://v", "--ca-cert", "c", "--node", "node-a"]
    args = cli.build_parser().parse_args([*base, "--bind-key", "/a.pem", "--bind-key", "/b.pem"])
    config, _ = cli._config(args)
    assert config.bind_keys == (Path("/a.pem"), Path("/b.pem"))
    monkeypatch.setenv("ATTEST_AGENT_BIND_KEY", "/x.key.tmp,/y.pem")
    config, _ = cli._config(cli.build_parser().parse_args(base))
    assert config.bind_keys == (Path("/x.key.tmp"), Path("/y.pem"))
    config, _ = cli._config(cli.build_parser().parse_args([*base, "--bind-key", "/a.pem"]))
    assert config.bind_keys == (Path("/a.pem"),)
