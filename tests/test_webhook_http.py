"""The verifier's HTTP surface (webhook.app) through httpx against the ASGI application: status
codes and ErrorOut bodies, admin authentication, size and encoding limits, health and metrics,
and what a client sees when the database or the code fails."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from typing import Any

from starlette.types import Message

from attest.wire import PolicyIn
from tests.webhook_api import ADMIN, TOKEN, Api, error
from tests.webhook_support import SoftAk, SoftNode, TestCa, policy_text
from webhook.middleware import BodyLimit

# --- agent API ---------------------------------------------------------------------------


def test_enroll_challenge_evidence_trusted(api: Api, node: SoftNode) -> None:
    r = api.client.post(f"/v1/nodes/{node.name}/evidence", content=api.evidence_body(node))
    assert r.status_code == 200, r.text
    verdict = r.json()
    assert verdict["trusted"] is True
    assert verdict["node"] == node.name
    assert verdict["expires_at"] is not None
    assert r.headers["x-request-id"]


def test_unknown_ek_is_forbidden(api: Api) -> None:
    r = api.client.post("/v1/enroll", content=SoftNode("worker-2").enroll_request().model_dump_json())
    assert error(r, 403).code == "ek_not_enrolled"


def test_untrusted_ek_ca_is_forbidden(api: Api) -> None:
    body = SoftNode("worker-2", TestCa.create("Rogue")).enroll_request().model_dump_json()
    assert error(api.client.post("/v1/enroll", content=body), 403).code == "ek_cert_untrusted"


def test_new_tpm_for_an_enrolled_node_conflicts(api: Api, node: SoftNode) -> None:
    body = SoftNode(node.name, api.ca).enroll_request().model_dump_json()
    assert error(api.client.post("/v1/enroll", content=body), 409).code == "ek_node_conflict"


def test_malformed_ek_public_is_a_bad_request(api: Api) -> None:
    body = json.loads(SoftNode("worker-2", api.ca).enroll_request().model_dump_json())
    body["ek_public"] = base64.b64encode(b"\x00\x04junk").decode()
    assert error(api.client.post("/v1/enroll", json=body), 400).code == "ek_malformed"


def test_activation_errors(api: Api) -> None:
    r = api.client.post("/v1/enroll", content=SoftNode("worker-2", api.ca).enroll_request().model_dump_json())
    enrollment = r.json()["enrollment_id"]
    wrong = {"secret": base64.b64encode(bytes(32)).decode()}
    assert error(api.client.post(f"/v1/enroll/{enrollment}/activate", json=wrong), 403).code == (
        "credential_invalid"
    )
    assert (
        error(api.client.post(f"/v1/enroll/{enrollment}/activate", json=wrong), 410).code == "enrollment_used"
    )
    assert error(api.client.post("/v1/enroll/nope/activate", json=wrong), 404).code == "enrollment_unknown"
    assert error(api.client.post("/v1/enroll/bad!id/activate", json=wrong), 400).code == "invalid_request"


def test_challenge_for_an_unenrolled_node(api: Api) -> None:
    assert error(api.client.post("/v1/nodes/stranger/challenge"), 404).code == "ak_not_bound"


def test_node_names_are_validated(api: Api) -> None:
    assert error(api.client.post("/v1/nodes/Not_A_Node/challenge"), 400).code == "invalid_request"


def test_replayed_evidence_is_a_conflict(api: Api, node: SoftNode) -> None:
    body = api.evidence_body(node)
    assert api.client.post(f"/v1/nodes/{node.name}/evidence", content=body).status_code == 200
    assert error(api.client.post(f"/v1/nodes/{node.name}/evidence", content=body), 409).code == "nonce_reused"


def test_quote_from_another_ak_is_422_with_reasons_and_no_verdict(api: Api, node: SoftNode) -> None:
    r = api.client.post(f"/v1/nodes/{node.name}/evidence", content=api.evidence_body(node, ak=SoftAk()))
    body = error(r, 422)
    assert body.code == "quote_signature_invalid"
    assert [x.code for x in body.reasons] == ["quote_signature_invalid"]
    assert api.store.verdicts == []


def test_malformed_evidence_is_a_bad_request(api: Api, node: SoftNode) -> None:
    r = api.client.post(f"/v1/nodes/{node.name}/evidence", content=b'{"nonce": 1}')
    assert error(r, 400).code == "invalid_request"
    r = api.client.post(f"/v1/nodes/{node.name}/evidence", content=b"not json")
    assert error(r, 400).code == "invalid_request"


def test_unknown_route_and_method(api: Api) -> None:
    assert error(api.client.get("/v1/nothing"), 404).code == "not_found"
    assert error(api.client.get("/v1/enroll"), 405).code == "method_not_allowed"


# --- admin API ---------------------------------------------------------------------------


def test_admin_needs_the_token(api: Api) -> None:
    r = api.client.get("/v1/admin/nodes")
    assert error(r, 401).code == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = api.client.get("/v1/admin/nodes", headers={"Authorization": "Bearer wrong"})
    assert error(r, 401).code == "unauthorized"
    r = api.client.get("/v1/admin/nodes", headers={"Authorization": f"Basic {TOKEN}"})
    assert error(r, 401).code == "unauthorized"


def test_admin_is_disabled_without_a_token(ca: TestCa) -> None:
    api = Api(ca, admin_token=None)
    assert error(api.client.get("/v1/admin/nodes", headers=ADMIN), 403).code == "admin_disabled"


def test_admin_nodes_and_revocation(api: Api, node: SoftNode) -> None:
    r = api.client.get("/v1/admin/nodes", headers=ADMIN)
    assert [(n["name"], n["state"]) for n in r.json()] == [(node.name, "enrolled")]
    api.client.post(f"/v1/nodes/{node.name}/evidence", content=api.evidence_body(node))
    r = api.client.get(f"/v1/admin/nodes/{node.name}", headers=ADMIN)
    assert r.json()["state"] == "trusted"
    assert r.json()["policy"] == "default@1"
    r = api.client.post(f"/v1/admin/nodes/{node.name}/revoke", headers=ADMIN)
    assert r.json()["state"] == "revoked"
    assert error(api.client.post(f"/v1/nodes/{node.name}/challenge"), 403).code == "node_revoked"
    assert error(api.client.get("/v1/admin/nodes/ghost", headers=ADMIN), 404).code == "not_found"
    assert error(api.client.post("/v1/admin/nodes/ghost/revoke", headers=ADMIN), 404).code == "not_found"


def test_admin_eks(api: Api) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    worker = SoftNode("worker-9")
    pem = worker.ek_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    r = api.client.post("/v1/admin/eks", headers=ADMIN, json={"node": "worker-9", "ek_public_pem": pem})
    assert r.status_code == 200, r.text
    ek = r.json()
    assert ek["source"] == "operator"
    api.enroll(worker)  # no certificate: the operator vouched for it
    assert [e["id"] for e in api.client.get("/v1/admin/eks", headers=ADMIN).json()] == [ek["id"]]
    r = api.client.post(f"/v1/admin/eks/{ek['id']}/revoke", headers=ADMIN)
    assert r.json()["revoked_at"] is not None
    r = api.client.post("/v1/admin/eks", headers=ADMIN, json={"node": "worker-9"})
    assert error(r, 400).code == "invalid_request"
    r = api.client.post("/v1/admin/eks", headers=ADMIN, json={"node": "worker-9", "ek_public_pem": "nope"})
    assert error(r, 400).code == "ek_malformed"
    assert error(api.client.post("/v1/admin/eks/99/revoke", headers=ADMIN), 404).code == "not_found"


def test_admin_policies(api: Api) -> None:
    text = policy_text(SoftNode("x").boot, name="fleet")
    r = api.client.post("/v1/admin/policies", headers=ADMIN, content=PolicyIn(text=text).model_dump_json())
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["version"], r.json()["text"]) == ("fleet", 1, None)
    r = api.client.post("/v1/admin/policies", headers=ADMIN, json={"text": "version: 2\nname: x\n"})
    body = error(r, 400)
    assert body.code == "policy_invalid"
    assert "policy.version" in body.message
    assert [p["name"] for p in api.client.get("/v1/admin/policies", headers=ADMIN).json()] == ["fleet"]
    r = api.client.get("/v1/admin/policies/fleet?version=1", headers=ADMIN)
    assert r.json()["text"] == text
    assert error(api.client.get("/v1/admin/policies/fleet?version=2", headers=ADMIN), 404).code == "not_found"


def test_admin_audit_pages(api: Api, node: SoftNode) -> None:
    api.client.post(f"/v1/nodes/{node.name}/evidence", content=api.evidence_body(node, ak=SoftAk()))
    records = api.client.get("/v1/admin/audit?after=0&limit=2", headers=ADMIN).json()
    assert [r["seq"] for r in records] == [1, 2]
    rest = api.client.get("/v1/admin/audit?after=2", headers=ADMIN).json()
    assert rest[-1]["kind"] == "rejected-evidence"
    assert rest[-1]["subject"] == node.name
    assert error(api.client.get("/v1/admin/audit?limit=0", headers=ADMIN), 400).code == "invalid_request"


# --- limits ------------------------------------------------------------------------------


def test_declared_oversize_body_is_413_before_the_route(ca: TestCa) -> None:
    api = Api(ca, max_request_bytes=1000, max_evidence_bytes=5000)
    r = api.client.post("/v1/enroll", content=b"x" * 1001)
    assert error(r, 413).code == "request_too_large"
    r = api.client.post("/v1/nodes/worker-1/evidence", content=b"{" + b" " * 3000 + b"}")
    assert r.status_code == 400  # under the evidence limit: it reached the route
    r = api.client.post("/v1/nodes/worker-1/evidence", content=b" " * 5001)
    assert error(r, 413).code == "request_too_large"
    big_policy = json.dumps({"text": "version: 1\nname: big\n" + "#" * 2_000_000})
    r = api.client.post("/v1/admin/policies", content=big_policy, headers=ADMIN)
    assert r.status_code == 200, r.text  # policies have room for an IMA allowlist
    metrics = api.client.get("/metrics").text
    assert 'attest_requests_rejected_total{reason="too_large"} 2.0' in metrics


def test_encoded_bodies_are_refused(api: Api) -> None:
    r = api.client.post("/v1/enroll", content=b"\x1f\x8b", headers={"Content-Encoding": "gzip"})
    assert error(r, 415).code == "unsupported_content_encoding"


def test_streamed_body_is_cut_off_at_the_limit() -> None:
    """No Content-Length: the middleware counts chunks and answers 413 as soon as the count
    passes the limit; the route never gets the rest and its answer is dropped."""
    chunks = [b"a" * 400, b"b" * 400, b"c" * 400, b"d" * 400]
    read: list[bytes] = []
    sent: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            read.append(message["body"])
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: Message) -> None:
        sent.append(message)

    rejected: list[str] = []
    limited = BodyLimit(app, default_limit=1000, limits=[], on_reject=rejected.append)
    scope = {"type": "http", "method": "POST", "path": "/v1/enroll", "headers": []}
    asyncio.run(limited(scope, receive, send))
    assert read == [b"a" * 400, b"b" * 400]
    assert sent[0]["status"] == 413
    assert len(sent) == 2  # the 413 only
    assert rejected == ["too_large"]
    assert chunks == [b"d" * 400]  # never read


# --- health, metrics, failures -------------------------------------------------------------


def test_database_down(api: Api, node: SoftNode) -> None:
    api.store.down = True
    assert api.client.get("/healthz").status_code == 200
    r = api.client.get("/readyz")
    assert error(r, 503).code == "store_unavailable"
    r = api.client.post(f"/v1/nodes/{node.name}/challenge")
    assert error(r, 503).code == "store_unavailable"
    assert r.headers["retry-after"] == "5"
    assert "down (test)" not in r.text  # the store's words go to the log, not the client
    api.store.down = False
    assert api.client.get("/readyz").json() == {"status": "ready"}


def test_unexpected_error_is_500_without_a_traceback(api: Api, node: SoftNode, monkeypatch: Any) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api.store, "round_state", broken)
    r = api.client.post(f"/v1/nodes/{node.name}/challenge")
    body = error(r, 500)
    assert body.code == "internal_error"
    assert "secret internals" not in r.text
    assert r.headers["x-request-id"] in body.message


def test_metrics(api: Api, node: SoftNode) -> None:
    api.client.post(f"/v1/nodes/{node.name}/evidence", content=api.evidence_body(node))
    api.client.post(f"/v1/nodes/{node.name}/evidence", content=api.evidence_body(node, ak=SoftAk()))
    text = api.client.get("/metrics").text
    assert 'attest_attestations_total{reason="none",result="trusted"} 1.0' in text
    assert 'attest_attestations_total{reason="quote_signature_invalid",result="rejected"} 1.0' in text
    assert 'attest_nodes{state="trusted"} 1.0' in text
    assert 'attest_enrollments_total{result="activated"} 1.0' in text
    assert re.search(r"attest_appraisal_seconds_count 2\.0", text)


def test_openapi_describes_the_evidence_body(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    body = spec["paths"]["/v1/nodes/{node}/evidence"]["post"]["requestBody"]
    assert "quote" in body["content"]["application/json"]["schema"]["properties"]
