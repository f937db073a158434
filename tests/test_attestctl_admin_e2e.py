"""attestctl's operator commands end to end: a real `attest-verifier serve` (subprocess, HTTPS
with the material `attestctl certs init` made, its store on SQLite and on PostgreSQL: every
test runs on both, `store_url` of tests/pg.py), real swtpm nodes enrolled and attested by
`attest-agent once`, and every admin command driven through attestctl's main().
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import ssl
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attest.agent.cli import main as agent_main
from attest.cli.main import main
from attest.pki import ADMIN_TOKEN, CA_CERT, SERVER_CERT, SERVER_KEY
from attest.store.api import Enrollment
from attest.store.sql import SqlStore
from attest.tpm import Tpm, create_ek, read_ek_certificates
from tests.conftest import BootedTpm, SwtpmFactory
from tests.tlsfixtures import TlsFiles
from tests.verifier_process import StartVerifier

ATTESTCTL = Path(sys.executable).with_name("attestctl")


@dataclass(frozen=True)
class Verifier:
    url: str
    tls: Path
    log: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("verifier") / "tls"
    assert main(["certs", "init", "--dir", str(d), "--host", "localhost", "--ip", "127.0.0.1"]) == 0
    return d


@pytest.fixture
def verifier(
    tls: Path, monkeypatch: pytest.MonkeyPatch, store_url: str, start_verifier: StartVerifier
) -> Verifier:
    """A fresh verifier (empty database at `store_url`) with `attestctl certs init`'s files, ready,
    and attestctl's environment set for it."""
    files = TlsFiles(tls / CA_CERT, tls / SERVER_CERT, tls / SERVER_KEY)
    flags = ("--admin-token-file", str(tls / ADMIN_TOKEN), "--log-level", "warning")
    server = start_verifier(*flags, database=store_url, tls=files, wait_for="/readyz")
    monkeypatch.setenv("ATTEST_VERIFIER", server.url)
    monkeypatch.setenv("ATTEST_CA_CERT", str(tls / CA_CERT))
    monkeypatch.setenv("ATTEST_TOKEN_FILE", str(tls / ADMIN_TOKEN))
    return Verifier(server.url, tls, server.log)


def ctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def ctl_json(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> Any:
    exit_code, out, err = ctl(capsys, *argv, "--json")
    assert exit_code == code, err
    return json.loads(out)


def _software_ek(tmp_path: Path, name: str, kind: str = "ec") -> tuple[Path, str]:
    """An EK public key as PEM, and its fingerprint: the verifier takes any RSA/EC key as one."""
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / f"{name}.pem"
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path, hashlib.sha256(spki).hexdigest()


def _agent_once(booted: BootedTpm, verifier: Verifier, node: str, state: Path) -> int:
    boot_id = state.parent / f"{node}.boot_id"
    boot_id.write_text("6b1a4f0e-2d6c-4b7a-9a57-0d6d5f2b8a11\n")
    argv = [
        "once",
        "--verifier",
        verifier.url,
        "--ca-cert",
        str(verifier.tls / CA_CERT),
        "--node",
        node,
        "--tcti",
        booted.tpm.tcti,
        "--state-dir",
        str(state),
        "--eventlog",
        str(booted.eventlog_path),
        "--ima",
        str(booted.ima_path),
        "--boot-id-file",
        str(boot_id),
        "--json",
    ]
    return agent_main(argv)


# --- connection, TLS, authentication ---------------------------------------------------------


def test_admin_without_the_token_is_refused_with_the_401_message(verifier: Verifier, tmp_path: Path) -> None:
    def attestctl(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ATTESTCTL), "node", "list"], capture_output=True, text=True, env=env, timeout=60, check=False
        )

    wrong = tmp_path / "token"
    wrong.write_text("not-the-admin-token-at-all\n")
    wrong.chmod(0o600)
    out = attestctl({**os.environ, "ATTEST_TOKEN_FILE": str(wrong)})
    assert (out.returncode, out.stdout) == (2, "")
    # The verifier's own sentence, on one line, with its code and attestctl's hint.
    assert out.stderr.startswith("attestctl: error: verifier: ")
    assert out.stderr.endswith("(check --token-file / ATTEST_TOKEN_FILE) [unauthorized, HTTP 401]\n")
    assert out.stderr.count("\n") == 1
    # No token at all never leaves attestctl: a usage error, not an unauthenticated request.
    out = attestctl({k: v for k, v in os.environ.items() if k != "ATTEST_TOKEN_FILE"})
    assert (out.returncode, out.stdout) == (2, "")
    assert (
        out.stderr
        == "attestctl: error: no --token-file FILE given (or set ATTEST_TOKEN_FILE); see `attestctl --help`\n"
    )
    # And the verifier refuses a request without one.
    trust = ssl.create_default_context(cafile=verifier.tls / CA_CERT)
    response = httpx.get(f"{verifier.url}/v1/admin/nodes", verify=trust)
    assert response.status_code == 401


def test_a_verifier_certificate_from_another_ca_is_refused(
    verifier: Verifier, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    assert main(["certs", "init", "--dir", str(other), "--host", "localhost"]) == 0
    capsys.readouterr()
    code, out, err = ctl(capsys, "node", "list", "--ca-cert", str(other / CA_CERT))
    assert (code, out) == (2, "")
    assert err.startswith(f"attestctl: error: TLS: the verifier at {verifier.url} presented a certificate")
    assert err.count("\n") == 1


def test_empty_verifier(verifier: Verifier, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(capsys, "node", "list") == (0, "no nodes enrolled\n", "")
    assert ctl_json(capsys, "node", "list") == []
    assert ctl(capsys, "ek", "list") == (0, "no EKs enrolled\n", "")
    assert ctl(capsys, "policy", "list") == (0, "no policies stored\n", "")
    code, out, err = ctl(capsys, "node", "show", "nowhere")
    assert (code, out) == (2, "")
    assert "HTTP 404]" in err
    assert err.count("\n") == 1
    code, _, err = ctl(capsys, "revoke", "nowhere")
    assert code == 2
    assert "HTTP 404]" in err
    assert ctl(capsys, "audit", "verify") == (0, "audit trail intact: no records yet\n", "")


# --- endorsement keys ------------------------------------------------------------------------


def test_ek_enroll_list_revoke(
    verifier: Verifier, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pem, fingerprint = _software_ek(tmp_path, "ek-a", "ec")
    code, out, err = ctl(capsys, "ek", "enroll", "--node", "node-a", "--ek-pub", str(pem))
    assert (code, err) == (0, "")
    assert out == f"enrolled EK 1 for node node-a\nfingerprint sha256:{fingerprint}\n"

    rsa_pem, rsa_fingerprint = _software_ek(tmp_path, "ek-b", "rsa")
    doc = ctl_json(capsys, "ek", "enroll", "--node", "node-b", "--ek-pub", str(rsa_pem))
    assert isinstance(doc, dict)
    assert (doc["id"], doc["node"], doc["fingerprint"], doc["source"]) == (
        2,
        "node-b",
        rsa_fingerprint,
        "operator",
    )

    code, out, _ = ctl(capsys, "ek", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NODE", "FINGERPRINT", "SOURCE", "CREATED", "REVOKED"]
    assert lines[1].split()[:4] == ["1", "node-a", fingerprint[:16], "operator"]
    assert lines[2].split()[:4] == ["2", "node-b", rsa_fingerprint[:16], "operator"]
    assert lines[1].endswith("  -")

    code, out, _ = ctl(capsys, "ek", "revoke", "1")
    assert code == 0
    assert out.startswith(f"revoked EK 1 of node node-a (sha256:{fingerprint}) ")
    listed = ctl_json(capsys, "ek", "list")
    assert isinstance(listed, list)
    assert [e["revoked_at"] is not None for e in listed] == [True, False]

    code, _, err = ctl(capsys, "ek", "revoke", "99")
    assert code == 2
    assert "HTTP 404]" in err

    # Refused before any request: not a node name, not a key.
    code, _, err = ctl(capsys, "ek", "enroll", "--node", "Node_A", "--ek-pub", str(pem))
    assert code == 2
    assert "not a Kubernetes node name" in err
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\x05hello")
    code, _, err = ctl(capsys, "ek", "enroll", "--node", "node-c", "--ek-pub", str(junk))
    assert code == 2
    assert err.startswith(f"attestctl: error: {junk}: not a PEM/DER public key or TPM2B_PUBLIC")
    assert len(ctl_json(capsys, "ek", "list")) == 2


def test_ek_enroll_from_a_tpm_certificate_and_tpm2b_public(
    verifier: Verifier, swtpm_factory: SwtpmFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tpm_a, tpm_b = swtpm_factory(2, distinct=True)
    with Tpm(tpm_a.tcti) as tpm:
        cert = read_ek_certificates(tpm)[0]
        with create_ek(tpm, cert.kind) as ek:
            expected_a = hashlib.sha256(
                serialization.load_pem_public_key(ek.public_pem).public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            ).hexdigest()
    with Tpm(tpm_b.tcti) as tpm, create_ek(tpm) as ek:
        (tmp_path / "ek-b.pub").write_bytes(ek.public)  # TPM2B_PUBLIC, as tpm2_createek -u writes
        expected_b = hashlib.sha256(
            serialization.load_pem_public_key(ek.public_pem).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).hexdigest()
    # DER straight from NV, with the padding an oversized NV index leaves after it.
    (tmp_path / "ek-a.der").write_bytes(cert.der + b"\x00" * 16)

    code, out, err = ctl(capsys, "ek", "enroll", "--node", "tpm-a", "--ek-cert", str(tmp_path / "ek-a.der"))
    assert (code, err) == (0, "")
    assert out.endswith(f"fingerprint sha256:{expected_a}\n")
    code, out, err = ctl(capsys, "ek", "enroll", "--node", "tpm-b", "--ek-pub", str(tmp_path / "ek-b.pub"))
    assert (code, err) == (0, "")
    assert out.endswith(f"fingerprint sha256:{expected_b}\n")


# --- policies --------------------------------------------------------------------------------


def _policy(tmp_path: Path, booted: BootedTpm, name: str, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / f"{name}.yaml"
    code, _, err = ctl(
        capsys, "policy", "create", "--name", name, "--eventlog", str(booted.eventlog_path), "-o", str(out)
    )
    assert code == 0, err
    return out


def test_policy_apply_list_show(
    verifier: Verifier, swtpm_booted: BootedTpm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _policy(tmp_path, swtpm_booted, "workers", capsys)
    text_v1 = path.read_text()
    code, out, err = ctl(capsys, "policy", "apply", str(path))
    assert (code, err) == (0, "")
    assert out == f"applied workers@1 sha256:{hashlib.sha256(text_v1.encode()).hexdigest()}\n"

    text_v2 = text_v1 + "# reviewed\n"
    path.write_text(text_v2)
    doc = ctl_json(capsys, "policy", "apply", str(path))
    assert isinstance(doc, dict)
    assert (doc["name"], doc["version"]) == ("workers", 2)

    code, out, _ = ctl(capsys, "policy", "list")
    assert out.splitlines()[0].split() == ["NAME", "VERSION", "DIGEST", "CREATED"]
    assert out.splitlines()[1].split()[:3] == [
        "workers",
        "2",
        hashlib.sha256(text_v2.encode()).hexdigest()[:16],
    ]
    assert ctl(capsys, "policy", "show", "workers") == (0, text_v2, "")
    assert ctl(capsys, "policy", "show", "workers", "--version", "1") == (0, text_v1, "")
    shown = ctl_json(capsys, "policy", "show", "workers", "--version", "1")
    assert isinstance(shown, dict)
    assert (shown["version"], shown["text"]) == (1, text_v1)
    code, _, err = ctl(capsys, "policy", "show", "workers", "--version", "7")
    assert code == 2
    assert "HTTP 404]" in err

    # Refused locally: the verifier never sees it (its list is unchanged).
    bad = tmp_path / "bad.yaml"
    bad.write_text(text_v1.replace("boot:", "boot:\n  pcrz: {}", 1))
    code, out, err = ctl(capsys, "policy", "apply", str(bad))
    assert (code, out) == (2, "")
    assert err.startswith("attestctl: error: boot: unknown key")
    assert err.rstrip().endswith("[policy_invalid]")
    # Valid YAML policy whose name the verifier does not accept as a policy name: its refusal.
    odd = tmp_path / "odd.yaml"
    odd.write_text(text_v1.replace("name: workers", "name: 'two words'", 1))
    code, out, err = ctl(capsys, "policy", "apply", str(odd))
    assert (code, out) == (2, "")
    assert "HTTP 400]" in err
    assert err.count("\n") == 1
    listed = ctl_json(capsys, "policy", "list")
    assert [(p["name"], p["version"]) for p in listed] == [("workers", 2)]


# --- nodes, verdicts, revocation -------------------------------------------------------------


def test_node_lifecycle_with_a_real_tpm(
    verifier: Verifier, swtpm_booted: BootedTpm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "agent"
    # The verifier trusts no manufacturer root here: the node enrolls because an operator
    # vouched for its EK.
    code = _agent_once(swtpm_booted, verifier, "worker-1", state)
    assert code == 2
    capsys.readouterr()
    with Tpm(swtpm_booted.tpm.tcti) as tpm:
        cert = read_ek_certificates(tpm)[0]
    (tmp_path / "ek.der").write_bytes(cert.der)
    assert ctl(capsys, "ek", "enroll", "--node", "worker-1", "--ek-cert", str(tmp_path / "ek.der"))[0] == 0

    assert ctl(capsys, "policy", "apply", str(_policy(tmp_path, swtpm_booted, "default", capsys)))[0] == 0
    code = _agent_once(swtpm_booted, verifier, "worker-1", state)
    capsys.readouterr()
    assert code == 0

    code, out, _ = ctl(capsys, "node", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "LAST", "VERDICT", "EXPIRES", "REASONS"]
    row = lines[1]
    assert row.split()[:2] == ["worker-1", "trusted"]
    assert re.fullmatch(r"worker-1  trusted  (now|\d+s ago) \(\S+ \S+Z\)  in 4m \(\S+ \S+Z\)  -", row)
    code, out, _ = ctl(capsys, "node", "show", "worker-1")
    assert code == 0
    assert "state         trusted" in out
    assert "policy        default@1" in out

    # A policy the node does not meet: the next round is untrusted, with every reason listed.
    strict = tmp_path / "strict.yaml"
    text = (tmp_path / "default.yaml").read_text()
    strict.write_text(text.replace("name: default", "name: default\n# stricter", 1))
    _tighten(strict)
    assert ctl(capsys, "policy", "apply", str(strict))[0] == 0
    code = _agent_once(swtpm_booted, verifier, "worker-1", state)
    capsys.readouterr()
    assert code == 1
    node = ctl_json(capsys, "node", "show", "worker-1", code=1)
    assert isinstance(node, dict)
    assert node["state"] == "untrusted"
    reasons = node["reasons"]
    assert isinstance(reasons, list)
    assert reasons
    code, out, _ = ctl(capsys, "node", "show", "worker-1")
    assert code == 1
    assert f"reasons ({len(reasons)}):" in out
    for reason in reasons:
        assert f"  {reason['code']}: {reason['message']}\n" in out
    assert "    at rule " in out
    code, out, _ = ctl(capsys, "node", "list")
    more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
    assert out.splitlines()[1].endswith(f"{reasons[0]['code']}{more}")

    code, out, err = ctl(capsys, "revoke", "worker-1")
    assert (code, out, err) == (0, "revoked node worker-1: state revoked\n", "")
    code, out, _ = ctl(capsys, "node", "show", "worker-1")
    assert code == 1
    assert "state         revoked" in out


def _tighten(policy: Path) -> None:
    """Pin PCR 0 to a value no boot produces."""
    import yaml

    doc = yaml.safe_load(policy.read_text())
    doc["boot"]["pcrs"][0] = ["00" * 32]
    policy.write_text(yaml.safe_dump(doc, sort_keys=False))


# --- audit -----------------------------------------------------------------------------------


def test_audit_export_verify_and_tampering(
    verifier: Verifier, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(4):
        pem, _ = _software_ek(tmp_path, f"ek-{i}")
        assert ctl(capsys, "ek", "enroll", "--node", f"node-{i}", "--ek-pub", str(pem))[0] == 0
    assert ctl(capsys, "ek", "revoke", "2")[0] == 0

    code, out, err = ctl(capsys, "audit", "verify")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("audit trail intact: ")
    head = lines[1].removeprefix("head ")
    seq, _, digest = head.partition(":")
    assert len(digest) == 64

    export = tmp_path / "audit.json"
    code, out, _ = ctl(capsys, "audit", "export", "-o", str(export))
    assert code == 0
    assert out == f"wrote {seq} audit records to {export}, head {head}\n"
    records = json.loads(export.read_text())
    assert [r["seq"] for r in records] == list(range(1, int(seq) + 1))
    assert ctl_json(capsys, "audit", "verify", "--file", str(export), "--known-head", head) == {
        "intact": True,
        "records": int(seq),
        "head": {"seq": int(seq), "hash": digest},
        "problems": [],
    }
    code, out, _ = ctl(capsys, "audit", "export")
    assert json.loads(out) == records

    def broken(name: str, changed: list[dict[str, object]], *extra: str) -> list[str]:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(changed))
        code, out, err = ctl(capsys, "audit", "verify", "--file", str(path), *extra)
        assert (code, err) == (1, "")
        assert out.startswith("audit trail BROKEN: ")
        doc = ctl_json(capsys, "audit", "verify", "--file", str(path), *extra, code=1)
        problems: list[str] = doc["problems"]
        assert out.splitlines()[1:] == [f"  {p}" for p in problems]
        return problems

    edited = json.loads(export.read_text())
    edited[1]["subject"] = "someone-else"
    assert broken("edited", edited) == ["record 2: hash does not match its content: edited"]

    removed = [r for r in records if r["seq"] != 3]
    assert broken("removed", removed) == [
        "record 4: record(s) 3 missing: removed",
        "record 4: prev does not match record 2's hash",
    ]

    reordered = [records[0], records[2], records[1], *records[3:]]
    problems = broken("reordered", reordered)
    assert "record 2: comes after record 3: reordered" in problems

    truncated = records[:-1]
    assert broken("truncated", truncated, "--known-head", head) == [
        f"known head {head}: the trail has no record {seq}"
    ]


# --- paging ----------------------------------------------------------------------------------


def _admin_get(verifier: Verifier, path: str, **params: str | int) -> httpx.Response:
    token = (verifier.tls / ADMIN_TOKEN).read_text().strip()
    trust = ssl.create_default_context(cafile=verifier.tls / CA_CERT)
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.get(f"{verifier.url}{path}", params=params, headers=headers, verify=trust, timeout=30)


def _enroll_in_store(store: SqlStore, name: str) -> None:
    """A node bound straight through the store (the verifier reads the same database)."""
    ident = hashlib.sha256(name.encode()).hexdigest()
    secret = b"s" * 32
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    store.create_enrollment(
        Enrollment(
            ident, name, ident, b"pub", b"name:" + name.encode(), hashlib.sha256(secret).digest(), expires
        )
    )
    store.complete_enrollment(ident, secret, dt.datetime.now(dt.UTC))


def test_node_pages_over_http_see_every_node_once_despite_enrollments_between_pages(
    verifier: Verifier, store_url: str
) -> None:
    store = SqlStore.open(store_url)
    try:
        for i in range(5):
            _enroll_in_store(store, f"node-{i}")
        seen: list[str] = []
        params: dict[str, str | int] = {"limit": 2}
        while True:
            response = _admin_get(verifier, "/v1/admin/nodes", **params)
            assert response.status_code == 200
            seen += [n["name"] for n in response.json()]
            if seen[-1] == "node-1":  # between the first and second page
                _enroll_in_store(store, "node-1a")  # after the cursor: must be listed
                _enroll_in_store(store, "a-node")  # before it: already passed
            link = response.links.get("next")
            if link is None:
                break
            assert link["url"].startswith("/v1/admin/nodes?")
            params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(link["url"]).query))
            assert params == {"after": seen[-1], "limit": "2"}
    finally:
        store.close()
    assert seen == ["node-0", "node-1", "node-1a", "node-2", "node-3", "node-4"]
    # The page that ends the listing has no next link, even when it is full.
    last = _admin_get(verifier, "/v1/admin/nodes", after="node-3", limit=1)
    assert [n["name"] for n in last.json()] == ["node-4"]
    assert "link" not in last.headers


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/admin/nodes", {"limit": 0}),
        ("/v1/admin/nodes", {"limit": -1}),
        ("/v1/admin/nodes", {"limit": 1001}),
        ("/v1/admin/nodes", {"limit": "many"}),
        ("/v1/admin/nodes", {"after": "n" * 254}),
        ("/v1/admin/eks", {"limit": 0}),
        ("/v1/admin/eks", {"limit": 10**30}),
        ("/v1/admin/eks", {"after": -1}),
        ("/v1/admin/eks", {"after": "node-1"}),
    ],
)
def test_page_bounds_are_a_400(verifier: Verifier, path: str, params: dict[str, str | int]) -> None:
    response = _admin_get(verifier, path, **params)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


def test_attestctl_streams_more_nodes_and_records_than_a_page(
    verifier: Verifier, store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.size import seed

    names = seed(store_url, 1005, b"", 0)  # one page of 1,000 and a few more
    code, out, err = ctl(capsys, "node", "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NAME", "STATE"]
    assert [line.split()[0] for line in lines[1:]] == names
    assert all(line.split()[1] == "trusted" for line in lines[1:])
    assert [n["name"] for n in ctl_json(capsys, "node", "list")] == names

    export = tmp_path / "audit.json"
    records = 1 + 2 * len(names)  # the policy, then each node's enrollment and verdict
    code, out, _ = ctl(capsys, "audit", "export", "-o", str(export))
    assert code == 0
    assert out.startswith(f"wrote {records} audit records to {export}, head {records}:")
    assert [r["seq"] for r in json.loads(export.read_text())] == list(range(1, records + 1))
    assert ctl_json(capsys, "audit", "verify")["records"] == records
    assert ctl_json(capsys, "audit", "verify", "--file", str(export))["records"] == records
