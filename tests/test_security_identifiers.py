"""Identifiers are validated where they enter (SECURITY.md: "identifiers are validated
strictly"): node names (lowercase DNS-1123 subdomain, at most 253 characters), policy names,
EK ids and enrollment ids on a real `attest-verifier serve` process, over HTTPS. Every
hostile value is answered 4xx with a stable code before anything is looked up or stored,
and the verifier stays up.
"""

from __future__ import annotations

import re
import secrets
import urllib.parse
from pathlib import Path

import httpx
import pytest

from attest.cli.main import main as attestctl
from attest.errors import UsageError
from attest.reasons import Reason
from attest.wire import valid_node_name
from tests.tlsfixtures import write_tls
from tests.verifier_process import Server, StartVerifier
from webhook.config import POLICY_NAME_PATTERN, load_settings
from webhook.errors import INVALID_REQUEST, NOT_FOUND
from webhook.routes_admin import POLICIES_PATH

HOSTILE_NAMES = [
    "../../etc/passwd",  # traversal, one encoded path segment
    "..",
    "node-1/../node-2",
    "node\x00-1",  # NUL
    "node-1\n",  # a trailing newline, which `$` in a Python pattern lets through
    "node-1\r\nX-Injected: 1",  # header / log line injection
    "n\u043ede-1",  # Cyrillic o: looks like node-1
    "node\u200b-1",  # zero-width space
    "\uff4eode-1",  # fullwidth n
    "Node-1",  # upper case is not DNS-1123
    "-node",
    "node-",
    "node..1",
    "a" * 254,  # one over the limit
    "a" * 10240,  # 10 kB
    " ",
    "%00",
    "node-1;drop table nodes",
]


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@pytest.fixture
def server(start_verifier: StartVerifier, tmp_path: Path) -> tuple[Server, str]:
    token = secrets.token_urlsafe(32)
    (tmp_path / "token").write_text(token)
    (tmp_path / "token").chmod(0o600)
    return start_verifier("--admin-token-file", str(tmp_path / "token")), token


@pytest.mark.parametrize("name", ["", *HOSTILE_NAMES], ids=range(len(HOSTILE_NAMES) + 1))
def test_a_hostile_node_name_is_not_a_node_name(name: str) -> None:
    assert not valid_node_name(name)


def test_hostile_identifiers_get_a_4xx_with_a_code_on_every_route(server: tuple[Server, str]) -> None:
    verifier, token = server
    admin = {"authorization": f"Bearer {token}"}
    with verifier.client() as client:
        assert client.get("/v1/admin/nodes/node-1", headers=admin).status_code == 404  # a good name, unknown
        answers = []
        for name in HOSTILE_NAMES:
            seg = _segment(name)
            answers += [
                ("challenge", name, client.post(f"/v1/nodes/{seg}/challenge")),
                ("evidence", name, client.post(f"/v1/nodes/{seg}/evidence", json={})),
                ("node show", name, client.get(f"/v1/admin/nodes/{seg}", headers=admin)),
                ("node revoke", name, client.post(f"/v1/admin/nodes/{seg}/revoke", headers=admin)),
                ("policy show", name, client.get(f"/v1/admin/policies/{seg}", headers=admin)),
            ]
        for ek_id in ("0", "-1", "1.5", "1e3", "0x10", "..", "%00", "9" * 40, "1" * 10240):
            answers.append(
                ("ek revoke", ek_id, client.post(f"/v1/admin/eks/{_segment(ek_id)}/revoke", headers=admin))
            )
        for enrollment in ("../../x", "\x00", "e" * 10240):
            body = {"secret": "AAAA"}
            answers.append(
                (
                    "activate",
                    enrollment,
                    client.post(f"/v1/enroll/{_segment(enrollment)}/activate", json=body),
                )
            )
        for policy_name in ("default\\n", "../default", "d\u0435fault", "a" * 10240):
            text = f'version: 1\nname: "{policy_name}"\n'
            r = client.post(POLICIES_PATH, json={"text": text}, headers=admin)
            assert (r.status_code, r.json()["code"]) == (400, Reason.POLICY_INVALID), (
                policy_name[:40],
                r.text,
            )
        assert client.get(POLICIES_PATH, headers=admin).json() == []
        # Still serving, and nothing was created.
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/admin/nodes", headers=admin).json() == []
    wrong = [
        (route, name[:40], r.status_code, r.text[:120]) for route, name, r in answers if not _refused(name, r)
    ]
    assert wrong == []


def _refused(name: str, r: httpx.Response) -> bool:
    """400 invalid_request; or, for a value with a '/' or a bare '..', 404 not_found from the
    router (no route matched: nothing was looked up); or, for a well-formed policy name that
    is not a node name ("Node-1" is one), 404 for the missing policy."""
    code = r.json().get("code") if r.headers.get("content-type") == "application/json" else None
    if "/" in name or name == "..":
        return (r.status_code, code) == (404, NOT_FOUND)
    if r.url.path.startswith(POLICIES_PATH) and re.fullmatch(POLICY_NAME_PATTERN, name):
        return (r.status_code, code) == (404, NOT_FOUND) and "no policy named" in r.text
    return (r.status_code, code) == (400, INVALID_REQUEST)


def test_attestctl_refuses_a_hostile_node_name_before_sending_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken")
    token.chmod(0o600)
    ca = write_tls(tmp_path / "tls").ca_cert
    conn = ["--verifier", "https://127.0.0.1:1", "--ca-cert", str(ca), "--token-file", str(token)]
    for name in ("../admin", "node-1\n", "n\u043ede-1", "a" * 10240):
        assert attestctl(["node", "show", name, *conn]) == 2
        err = capsys.readouterr().err
        assert "is not a Kubernetes node name" in err
        assert err.count("\n") == 1


@pytest.mark.parametrize("name", ["default\n", "../default", "d\u0435fault", "a" * 129, ""])
def test_the_verifiers_policy_name_option_is_a_policy_name(name: str) -> None:
    with pytest.raises(UsageError, match="POLICY_NAME"):
        load_settings({}, {"ATTEST_VERIFIER_POLICY_NAME": name}, None)
    assert load_settings({}, {"ATTEST_VERIFIER_POLICY_NAME": "default"}, None).policy_name == "default"
