"""attestctl's operator commands without a verifier: option handling, the error mapping and
the table/detail formatting, against an httpx MockTransport; `certs init` for real.

The commands against a real verifier are tests/test_attestctl_admin_e2e.py."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import socket
import ssl
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from attest.cli import admin_client
from attest.cli._common import describe_time
from attest.cli.main import main
from attest.errors import UsageError
from attest.pki import ADMIN_TOKEN, CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY

Handler = Callable[[httpx.Request], httpx.Response]
NOW = dt.datetime.now(dt.UTC)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's usage errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki") / "tls"
    assert main(["certs", "init", "--dir", str(d), "--host", "localhost", "--ip", "127.0.0.1", "--json"]) == 0
    return d


@pytest.fixture
def conn(pki: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ATTEST_VERIFIER", "https://verifier.test:8443")
    monkeypatch.setenv("ATTEST_CA_CERT", str(pki / CA_CERT))
    monkeypatch.setenv("ATTEST_TOKEN_FILE", str(pki / ADMIN_TOKEN))
    return pki


@pytest.fixture
def serve(conn: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[Handler], list[httpx.Request]]:
    """Route the commands' client to a handler; returns the requests it saw."""

    def install(handler: Handler) -> list[httpx.Request]:
        seen: list[httpx.Request] = []

        def record(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return handler(request)

        def open_client(args: argparse.Namespace) -> admin_client.AdminClient:
            c = admin_client.connection_from_args(args)
            return admin_client.AdminClient(
                c.url,
                admin_client.load_token(c.token_file),
                admin_client.tls_context(c.ca_cert),
                transport=httpx.MockTransport(record),
            )

        monkeypatch.setattr(admin_client, "open_client", open_client)
        return seen

    return install


def _error(status: int, code: str, message: str) -> Handler:
    return lambda _req: httpx.Response(status, json={"code": code, "message": message})


def _node(name: str, state: str, reasons: int = 0, **kw: object) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "state": state,
        "reasons": [
            {"code": f"code_{i}", "message": f"message {i}", "rule": "boot/pcrs", "pcr": i}
            for i in range(reasons)
        ],
    }
    doc.update(kw)
    return doc


# --- connection options ----------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["ATTEST_VERIFIER", "ATTEST_CA_CERT", "ATTEST_TOKEN_FILE"])
def test_missing_connection_setting_is_a_one_line_usage_error(
    conn: Path, missing: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(missing)
    code, out, err = _run(capsys, "node", "list")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert missing in err


def test_options_before_or_after_the_command_override_the_environment(
    serve: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    seen = serve(lambda _req: httpx.Response(200, json=[]))
    assert _run(capsys, "--verifier", "https://before:1", "node", "list")[0] == 0
    assert _run(capsys, "node", "list", "--verifier", "https://after:2/prefix/")[0] == 0
    assert [str(r.url) for r in seen] == [
        "https://before:1/v1/admin/nodes",
        "https://after:2/prefix/v1/admin/nodes",
    ]
    token = (Path(os.environ["ATTEST_TOKEN_FILE"])).read_text().strip()
    assert all(r.headers["authorization"] == f"Bearer {token}" for r in seen)


@pytest.mark.parametrize(
    ("url", "why"),
    [("http://verifier:8080", "https://"), ("https://", "https://"), ("https://v/?x=1", "query")],
)
def test_only_https_base_urls(conn: Path, url: str, why: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "node", "list", "--verifier", url)
    assert code == 2
    assert why in err
    assert err.count("\n") == 1


def test_bad_token_file_is_refused_without_echoing_it(
    conn: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "token"
    bad.write_text("secret value with spaces\n")
    bad.chmod(0o600)
    code, _, err = _run(capsys, "node", "list", "--token-file", str(bad))
    assert code == 2
    assert "secret" not in err
    assert "does not hold one bearer token" in err


def test_loose_token_file_is_warned_about(
    serve: Callable[[Handler], list[httpx.Request]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serve(lambda _req: httpx.Response(200, json=[]))
    loose = tmp_path / "token"
    loose.write_text("abc-DEF_123\n")
    loose.chmod(0o644)
    code, _, err = _run(capsys, "node", "list", "--token-file", str(loose))
    assert code == 0
    assert "readable by others" in err


def test_ca_file_that_is_not_a_certificate(
    conn: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    code, _, err = _run(capsys, "node", "list", "--ca-cert", str(bogus))
    assert code == 2
    assert err.startswith(f"attestctl: error: CA file {bogus}")
    assert err.count("\n") == 1


def test_unreachable_verifier_is_one_line(conn: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = _run(capsys, "node", "list", "--verifier", f"https://127.0.0.1:{port}")
    assert (code, out) == (2, "")
    assert err.startswith(f"attestctl: error: cannot reach the verifier at https://127.0.0.1:{port}: ")
    assert err.count("\n") == 1


# --- error mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (
            _error(401, "unauthorized", "missing or wrong bearer token"),
            "attestctl: error: verifier: missing or wrong bearer token (check --token-file / "
            "ATTEST_TOKEN_FILE) [unauthorized, HTTP 401]\n",
        ),
        (
            _error(404, "node_not_found", "no node named\nn1"),
            "attestctl: error: verifier: no node named n1 [node_not_found, HTTP 404]\n",
        ),
        (
            _error(503, "store_unavailable", "the database is unavailable"),
            "attestctl: error: verifier: the database is unavailable [store_unavailable, HTTP 503]\n",
        ),
        (
            lambda _req: httpx.Response(502, text="<html>\n<b>Bad Gateway</b>\n</html>"),
            "attestctl: error: verifier: <html> <b>Bad Gateway</b> </html> [http_502, HTTP 502]\n",
        ),
        (
            lambda _req: httpx.Response(200, json={"name": "n1"}),
            "attestctl: error: the verifier's answer to GET /v1/admin/nodes/n1 is not what this "
            "attestctl expects: state: Field required\n",
        ),
    ],
)
def test_errors_are_one_line_with_the_servers_code(
    serve: Callable[[Handler], list[httpx.Request]],
    handler: Handler,
    expected: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    serve(handler)
    assert _run(capsys, "node", "show", "n1") == (2, "", expected)


def test_transport_errors_are_one_line(
    serve: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    serve(fail)
    assert _run(capsys, "ek", "list") == (
        2,
        "",
        "attestctl: error: the verifier at https://verifier.test:8443 did not answer within 30s\n",
    )


def test_tls_verification_failure_names_the_cause() -> None:
    request = httpx.Request("GET", "https://v/")
    cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cause.verify_message = "unable to get local issuer certificate"
    error = httpx.ConnectError("handshake", request=request)
    error.__cause__ = cause
    message = str(admin_client._transport_failure("https://v", error, 30))
    assert message.startswith("TLS: the verifier at https://v presented a certificate that does not verify: ")
    assert "unable to get local issuer certificate" in message


def test_node_names_are_validated_before_any_request(
    serve: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    seen = serve(lambda _req: httpx.Response(200, json=_node("x", "trusted")))
    code, _, err = _run(capsys, "revoke", "../eks/1")
    assert code == 2
    assert "not a Kubernetes node name" in err
    assert seen == []


def test_audit_paging_stops_on_an_empty_page_and_refuses_a_server_that_does_not_advance(
    serve: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    def record(seq: int) -> dict[str, object]:
        return {
            "seq": seq,
            "at": NOW.isoformat(),
            "kind": "ek",
            "subject": "n",
            "data": {},
            "prev": "",
            "hash": "",
        }

    # A server that caps pages at 2 records: a short page must not end the fetch.
    seen = serve(
        lambda req: httpx.Response(
            200, json=[record(s) for s in (1, 2, 3) if s > int(req.url.params["after"])][:2]
        )
    )
    code, out, _ = _run(capsys, "audit", "export")
    assert code == 0
    assert [r["seq"] for r in json.loads(out)] == [1, 2, 3]
    assert [r.url.params["after"] for r in seen] == ["0", "2", "3"]

    serve(lambda _req: httpx.Response(200, json=[record(1)]))
    code, _, err = _run(capsys, "audit", "export")
    assert code == 2
    assert "does not advance" in err


def test_node_list_walks_the_link_cursor_and_streams_pages(
    serve: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    names = [f"n{i:02d}" for i in range(7)]

    def paged(req: httpx.Request) -> httpx.Response:
        after = req.url.params.get("after", "")
        page = [n for n in names if n > after][:3]
        more = page and page[-1] != names[-1]
        headers = {"Link": f'</v1/admin/nodes?after={page[-1]}&limit=3>; rel="next"'} if more else {}
        return httpx.Response(200, json=[_node(n, "enrolled") for n in page], headers=headers)

    seen = serve(paged)
    code, out, err = _run(capsys, "node", "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split()[0] == "NAME"
    assert [line.split()[0] for line in lines[1:]] == names
    # The first request is the one a verifier without paging understands; then the cursor given.
    assert [dict(r.url.params) for r in seen] == [{}, {"after": "n02"}, {"after": "n05"}]
    assert {line.index("enrolled") for line in lines[1:]} == {lines[0].index("STATE")}  # one width

    assert [n["name"] for n in json.loads(_run(capsys, "node", "list", "--json")[1])] == names


def test_node_list_refuses_a_cursor_that_does_not_advance(
    serve: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    link = {"Link": '</v1/admin/nodes?after=a&limit=1>; rel="next"'}
    seen = serve(lambda _req: httpx.Response(200, json=[_node("a", "enrolled")], headers=link))
    code, _, err = _run(capsys, "node", "list")
    assert code == 2
    assert "does not advance" in err
    assert err.count("\n") == 1
    assert len(seen) == 2


# --- formatting ------------------------------------------------------------------------------


def test_describe_time() -> None:
    at = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert describe_time(at, at + dt.timedelta(seconds=190)) == "3m ago (2026-05-01 12:00:00Z)"
    assert describe_time(at, at - dt.timedelta(seconds=57)) == "in 57s (2026-05-01 12:00:00Z)"
    assert describe_time(at, at - dt.timedelta(days=3, hours=1)) == "in 3d (2026-05-01 12:00:00Z)"
    assert describe_time(at, at) == "now (2026-05-01 12:00:00Z)"
    assert describe_time(None) == "-"


def test_node_list_is_an_aligned_table(
    serve: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    # Relative to the moment the test runs, not the module's import: under load the two differ.
    now = dt.datetime.now(dt.UTC)
    recent = (now - dt.timedelta(minutes=3, seconds=5)).isoformat()
    later = (now + dt.timedelta(minutes=10, seconds=30)).isoformat()
    nodes = [
        _node("worker-2", "untrusted", reasons=3, last_verdict_at=recent),
        _node("w1", "trusted", last_verdict_at=recent, expires_at=later),
        _node("new-node", "enrolled"),
    ]
    serve(lambda _req: httpx.Response(200, json=nodes))
    code, out, err = _run(capsys, "node", "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "LAST", "VERDICT", "EXPIRES", "REASONS"]
    assert [line.split()[0] for line in lines[1:]] == ["new-node", "w1", "worker-2"]
    columns = [lines[0].index(h) for h in ("STATE", "LAST VERDICT", "EXPIRES", "REASONS")]
    for line in lines[1:]:
        assert all(line[c - 2 : c] == "  " and line[c] != " " for c in columns)
    assert lines[2].split()[2:4] == ["3m", "ago"]
    assert "in 10m" in lines[2]
    assert lines[3].endswith("code_0 (+2 more)")
    assert lines[1].endswith("-")

    code, out, _ = _run(capsys, "node", "list", "--json")
    assert code == 0
    assert [n["name"] for n in json.loads(out)] == ["worker-2", "w1", "new-node"]


def test_node_show_lists_every_reason_and_exits_1_unless_trusted(
    serve: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _node("w1", "untrusted", reasons=2, ek_fingerprint="ab" * 32, policy="reference@2")
    doc["reasons"].append({"code": "ima_unlisted", "message": "/usr/bin/x is not allowed", "event": 41})
    serve(lambda _req: httpx.Response(200, json=doc))
    code, out, _ = _run(capsys, "node", "show", "w1")
    assert code == 1
    assert "state         untrusted" in out
    assert f"EK            sha256:{'ab' * 32}" in out
    assert "reasons (3):" in out
    assert "  code_1: message 1\n    at rule boot/pcrs, pcr 1\n" in out
    assert "  ima_unlisted: /usr/bin/x is not allowed\n    at event 41\n" in out

    serve(lambda _req: httpx.Response(200, json=_node("w1", "trusted")))
    code, out, _ = _run(capsys, "node", "show", "w1", "--json")
    assert code == 0
    assert json.loads(out)["state"] == "trusted"


def test_a_policy_refused_locally_never_reaches_the_verifier(
    serve: Callable[[Handler], list[httpx.Request]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = serve(lambda _req: httpx.Response(500))
    bad = tmp_path / "policy.yaml"
    bad.write_text("version: 1\nname: p\nboot:\n  pcrz: {}\n")
    code, _, err = _run(capsys, "policy", "apply", str(bad))
    assert code == 2
    assert "[policy_invalid]" in err
    assert err.count("\n") == 1
    assert seen == []


# --- certs init ------------------------------------------------------------------------------


def test_certs_init_writes_a_ca_server_certificate_and_token(pki: Path) -> None:
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in pki.iterdir()}
    assert modes == {CA_CERT: 0o644, CA_KEY: 0o600, SERVER_CERT: 0o644, SERVER_KEY: 0o600, ADMIN_TOKEN: 0o600}
    assert stat.S_IMODE(pki.stat().st_mode) == 0o700
    ca = x509.load_pem_x509_certificate((pki / CA_CERT).read_bytes())
    server = x509.load_pem_x509_certificate((pki / SERVER_CERT).read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert 3649 <= (ca.not_valid_after_utc - ca.not_valid_before_utc).days <= 3651
    assert 364 <= (server.not_valid_after_utc - server.not_valid_before_utc).days <= 366
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    key = serialization.load_pem_private_key((pki / SERVER_KEY).read_bytes(), None)
    assert key.public_key() == server.public_key()
    token = (pki / ADMIN_TOKEN).read_text().strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)  # 32 bytes, urlsafe base64 unpadded


def test_certs_init_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "tls"
    assert _run(capsys, "certs", "init", "--dir", str(d), "--host", "v.example")[0] == 0
    (d / SERVER_KEY).unlink()
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    code, out, err = _run(capsys, "certs", "init", "--dir", str(d), "--host", "v.example")
    assert (code, out) == (2, "")
    assert "ca.crt, ca.key, server.crt, admin.token already exist (--force replaces them)" in err
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # not even server.key was written
    code, out, _ = _run(capsys, "certs", "init", "--dir", str(d), "--host", "v.example", "--force", "--json")
    assert code == 0
    assert {f["mode"] for f in json.loads(out)["files"]} == {"0600", "0644"}
    assert (d / CA_CERT).read_bytes() != before[CA_CERT]
    assert sorted(p.name for p in d.iterdir()) == sorted(
        [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, ADMIN_TOKEN]
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "at least one --host NAME or --ip IP"),
        (["--host", "bad_name"], "'bad_name' is not a DNS host name"),
        (["--ip", "300.1.1.1"], "does not appear to be an IPv4 or IPv6 address"),
    ],
)
def test_certs_init_bad_names(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "certs", "init", "--dir", str(tmp_path / "tls"), *argv)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "tls" / CA_KEY).exists()


def test_certs_init_takes_an_address_given_as_host_as_an_ip_san(tmp_path: Path) -> None:
    assert main(["certs", "init", "--dir", str(tmp_path), "--host", "10.0.0.7", "--host", "v"]) == 0
    server = x509.load_pem_x509_certificate((tmp_path / SERVER_CERT).read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["v"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]


# --- EK public keys --------------------------------------------------------------------------


def test_ek_public_key_formats(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from attest.cli.cmd_ek import load_ek_public
    from attest.tcg import Alg
    from attest.verify.tpmstructs import EccCurve, EccDetail, Scheme, SymDef, TpmtPublic

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    numbers = key.public_numbers()
    detail = EccDetail(
        SymDef(Alg.AES, 128, Alg.CFB),
        Scheme(Alg.NULL),
        EccCurve.NIST_P256,
        Scheme(Alg.NULL),
        numbers.x.to_bytes(32),
        numbers.y.to_bytes(32),
    )
    area = TpmtPublic(name_alg=Alg.SHA256, attributes=0x000300B2, auth_policy=b"", detail=detail)
    for data in (pem, spki, area.marshal_tpm2b()):
        assert (
            load_ek_public(data, "ek").public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            == spki
        )

    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    ed_pem = ed.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(UsageError, match="not an RSA or NIST-curve EC key"):
        load_ek_public(ed_pem, "ek")
    template = TpmtPublic(area.name_alg, area.attributes, b"", replace(detail, x=b"", y=b""))
    with pytest.raises(UsageError, match="holds no usable key"):
        load_ek_public(template.marshal_tpm2b(), "ek")
    with pytest.raises(UsageError, match="not a DER SubjectPublicKeyInfo"):
        load_ek_public(b"\x30\x03\x02\x01\x00", "ek")


def test_node_show_lists_what_ran(
    serve: Callable[[Handler], list[httpx.Request]], capsys: pytest.CaptureFixture[str]
) -> None:
    launch = {
        "index": 0, "time": "2026-11-28T12:00:00Z", "container_id": "ab" * 32, "pod": "web-1",
        "namespace": "shop", "container": "nginx", "image": "registry.example/nginx:1.27",
        "image_digest": "sha256:" + "cd" * 32, "runtime": "cri-o",
    }  # fmt: skip
    serve(lambda _req: httpx.Response(200, json=_node("w1", "trusted", containers=[launch])))
    code, out, _ = _run(capsys, "node", "show", "w1")
    assert code == 0
    assert "containers (1, as proven by the last quote):" in out
    assert (
        f"  shop/web-1 nginx: registry.example/nginx:1.27 sha256:{'cd' * 32} at 2026-11-28T12:00:00Z" in out
    )
