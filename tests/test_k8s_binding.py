"""The challenge that binds keys (docs/kubernetes.md): the nonce is SHA-256 of a domain tag, a
random salt and the sorted fingerprints, the quote over it is the node's word for those keys,
and the stored verdict lists them for the CSR approver. Through the verifier's HTTP API."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.webhook_api import Api, error
from tests.webhook_support import SoftNode
from webhook.service import BIND_DOMAIN, bind_nonce, bound_keys

KEY_A = hashlib.sha256(b"kubelet client key").hexdigest()
KEY_B = hashlib.sha256(b"kubelet serving key").hexdigest()


def test_bound_challenge_commits_to_the_keys_and_the_verdict_lists_them(api: Api, node: SoftNode) -> None:
    r = api.client.post(f"/v1/nodes/{node.name}/challenge", json={"bind": [KEY_B, KEY_A, KEY_B]})
    assert r.status_code == 200, r.text
    challenge = r.json()
    assert challenge["bound_keys"] == sorted([KEY_A, KEY_B])
    nonce = base64.b64decode(challenge["nonce"])
    salt = api.secrets.last
    preimage = salt + bytes.fromhex(min(KEY_A, KEY_B)) + bytes.fromhex(max(KEY_A, KEY_B))
    assert nonce == hashlib.sha256(BIND_DOMAIN + preimage).digest()

    evidence = node.evidence(nonce, challenge["selection"]).model_dump_json()
    r = api.client.post(f"/v1/nodes/{node.name}/evidence", content=evidence)
    assert r.status_code == 200, r.text
    assert r.json()["trusted"] is True
    stored = api.store.get_node(node.name)
    assert stored is not None
    assert stored.last_verdict is not None
    assert stored.last_verdict.detail["bound_keys"] == sorted([KEY_A, KEY_B])


def test_challenge_without_a_body_binds_nothing(api: Api, node: SoftNode) -> None:
    challenge = api.challenge(node)  # POST with no body, as agents before binding send it
    assert challenge["bound_keys"] == []
    assert base64.b64decode(challenge["nonce"]) == api.secrets.last  # the plain random nonce
    r = api.client.post(f"/v1/nodes/{node.name}/challenge", json={"bind": []})
    assert r.json()["bound_keys"] == []
    evidence = node.evidence(base64.b64decode(r.json()["nonce"]), r.json()["selection"]).model_dump_json()
    assert api.client.post(f"/v1/nodes/{node.name}/evidence", content=evidence).status_code == 200
    stored = api.store.get_node(node.name)
    assert stored is not None
    assert stored.last_verdict is not None
    assert stored.last_verdict.detail["bound_keys"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"bind": ["ABCD" * 16]},  # uppercase
        {"bind": ["ab" * 31]},  # short
        {"bind": [hashlib.sha256(bytes([i])).hexdigest() for i in range(9)]},  # too many
        {"bind": [KEY_A], "extra": 1},  # unknown field
    ],
)
def test_bad_bindings_are_refused(api: Api, node: SoftNode, body: dict[str, object]) -> None:
    assert (
        error(api.client.post(f"/v1/nodes/{node.name}/challenge", json=body), 400).code == "invalid_request"
    )


def test_a_binding_that_does_not_hash_to_its_nonce_binds_nothing() -> None:
    nonce, binding = bind_nonce(b"\x01" * 32, [KEY_A])
    assert bound_keys(nonce, binding) == (KEY_A,)
    assert bound_keys(nonce, binding[:-1] + b"\x00") == ()  # a row edited in the database
    assert bound_keys(nonce, binding[:40]) == ()
    assert bound_keys(nonce, None) == ()
