"""Admission decisions (webhook.admission) on the AdmissionReview requests kube-apiserver sent
(tests/data/k8s/admission), against NodeRecords built here for every node state: no HTTP, no
store. The same requests over TLS to a real verifier: test_admission_http.py."""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import ipaddress
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from attest.errors import ParseError, UsageError
from attest.reasons import Reason
from attest.store.api import NodeRecord, StoreUnavailable, VerdictRecord
from attest.verify.policy import Policy, load_policy
from attest.wire import (
    ADMISSION_CSRS,
    ADMISSION_NODES,
    ADMISSION_PATHS,
    ADMISSION_PODS,
    AdmissionRequest,
    AdmissionReview,
)
from webhook.admission import Context, Decision, Options, decide, review_response
from webhook.config import Settings, default_text, load_settings

FIXTURES = Path(__file__).parent / "data" / "k8s" / "admission"
FILES = sorted(p.name for p in FIXTURES.glob("[0-9]*.json"))
NOW = dt.datetime(2026, 11, 28, 16, 30, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)
DIGEST = "sha256:" + "0" * 64
APP = f"registry.example.com/app@{DIGEST}"  # the image of every pod fixture
OTHER = "registry.example.com/other@sha256:" + "1" * 64
STATES = ("trusted", "stale", "untrusted", "revoked", "enrolled", "unknown")
LABEL = "node-restriction.kubernetes.io/attested"
UNVERIFIED = {"key": "unverified", "effect": "NoSchedule"}
PATH_OF = {
    "nodes": ADMISSION_NODES,
    "certificatesigningrequests": ADMISSION_CSRS,
    "pods": ADMISSION_PODS,
    "configmaps": ADMISSION_PODS,  # what the pods webhook would get if its rules were widened
}

Doc = dict[str, Any]


def fixture(name: str) -> Doc:
    doc: Doc = json.loads((FIXTURES / name).read_text())
    return doc


def request_of(doc: Doc) -> AdmissionRequest:
    return AdmissionReview.model_validate(doc).request


def node_record(name: str, state: str, *, appraised: dt.datetime | None = None) -> NodeRecord | None:
    """A node as the store returns it in each state (admin.node_state's words)."""
    if state == "unknown":
        return None
    at = appraised or NOW - MINUTE
    verdicts = {
        "trusted": VerdictRecord(name, True, at, NOW + 4 * MINUTE, [], {}, "default@1"),
        "revoked": VerdictRecord(name, True, at, NOW + 4 * MINUTE, [], {}, "default@1"),
        "stale": VerdictRecord(name, True, NOW - 10 * MINUTE, NOW - 5 * MINUTE, [], {}, "default@1"),
        "untrusted": VerdictRecord(
            name,
            False,
            at,
            None,
            [
                {"code": "policy_event_not_allowed", "message": "boot application not allowed"},
                {"code": "policy_kernel_cmdline", "message": "kernel command line"},
            ],
            {},
            "default@1",
        ),
    }
    return NodeRecord(
        name=name,
        ek_fingerprint="ab" * 32,
        ak_public=b"\x00\x00",
        ak_name=b"\x00\x0b" + b"\x01" * 32,
        enrolled_at=NOW - dt.timedelta(days=1),
        revoked_at=NOW - MINUTE if state == "revoked" else None,
        last_verdict=verdicts.get(state),
        revoke_reason="revoked by an operator" if state == "revoked" else None,
    )


def policy(*images: str) -> Policy:
    section = "containers:\n  images: [" + ", ".join(json.dumps(i) for i in images) + "]\n" if images else ""
    return load_policy(f"version: 1\nname: default\n{section}")


@dataclasses.dataclass
class Lookups:
    """The two lookups a decision may make, counted."""

    nodes: dict[str, NodeRecord | None] = dataclasses.field(default_factory=dict)
    active: Policy | None = None
    node_calls: list[str] = dataclasses.field(default_factory=list)
    policy_calls: int = 0
    down: bool = False

    def node(self, name: str) -> NodeRecord | None:
        self.node_calls.append(name)
        if self.down:
            raise StoreUnavailable("database is down (test)")
        return self.nodes.get(name)

    def policy(self) -> Policy | None:
        self.policy_calls += 1
        if self.down:
            raise StoreUnavailable("database is down (test)")
        return self.active

    def context(self, **options: Any) -> Context:
        return Context(self.node, self.policy, NOW, dataclasses.replace(Options.of(Settings()), **options))


def judge(doc: Doc, lookups: Lookups | None = None, path: str | None = None, **options: Any) -> Decision:
    request = request_of(doc)
    where = path or PATH_OF[request.resource.resource]
    return decide(where, request, (lookups or Lookups()).context(**options))


def codes(decision: Decision) -> list[str]:
    return [d.code.value for d in decision.denials]


def in_state(state: str, node: str = "node2", active: Policy | None = None) -> Lookups:
    return Lookups(nodes={node: node_record(node, state)}, active=active)


# --- every fixture, every node state --------------------------------------------------------

PLACEMENT = {
    "trusted": None,
    "stale": "admission_node_stale",
    "untrusted": "admission_node_untrusted",
    "revoked": "node_revoked",
    "enrolled": "admission_node_unattested",
    "unknown": "admission_node_unattested",
}
# The first code of each fixture's decision (None: allowed), whatever node2's state, except
# where a node placement depends on it.
EXPECTED: dict[str, str | dict[str, str | None] | None] = {
    # A kubelet registering without the unverified taint (the recording cluster had no
    # registration policy, so it got this far).
    "01-validate-nodes-CREATE-node1.json": "admission_taint_missing",
    "03-validate-pods-CREATE-demo.json": None,  # no nodeName: the binding is judged
    # node1's kubelet annotating its Node; the attested label the verifier set stays as it was.
    "04-validate-nodes-UPDATE-node1.json": None,
    "05-validate-certificatesigningrequests-CREATE-node-csr-node3.json": None,
    "05-validate-pods-binding-CREATE-demo.json": PLACEMENT,
    "08-validate-pods-CREATE-pinned.json": PLACEMENT,
    "14-validate-configmaps-CREATE-cm-dryrun.json": "admission_request_unexpected",
}


def test_every_fixture_has_an_expectation() -> None:
    assert set(EXPECTED) == set(FILES)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("with_policy", [False, True])
def test_fixture_decisions(name: str, state: str, with_policy: bool) -> None:
    expected = EXPECTED[name]
    want = expected[state] if isinstance(expected, dict) else expected
    active = policy("registry.example.com/*") if with_policy else None
    decision = judge(fixture(name), in_state(state, active=active))
    assert (decision.code, decision.allowed) == (want, want is None), decision
    out = review_response(request_of(fixture(name)), decision)
    assert out.response.uid == fixture(name)["request"]["uid"]
    assert out.response.allowed is (want is None)


def test_fixture_decisions_explain_themselves() -> None:
    binding = fixture("05-validate-pods-binding-CREATE-demo.json")
    messages = {s: judge(binding, in_state(s)).denials for s in STATES if s != "trusted"}
    assert "node node2 is not enrolled" in messages["unknown"][0].message
    assert "not attested yet" in messages["enrolled"][0].message
    assert "policy_event_not_allowed, policy_kernel_cmdline" in messages["untrusted"][0].message
    assert "expired at 2026-11-28T16:25:00Z (5m ago)" in messages["stale"][0].message
    assert "revoked at 2026-11-28T16:29:00Z (revoked by an operator)" in messages["revoked"][0].message
    assert {d[0].field for d in messages.values()} == {"target.name"}

    csr = judge(fixture("05-validate-certificatesigningrequests-CREATE-node-csr-node3.json"))
    assert csr.warnings == ("approval waits for a trusted attestation of node node3",)


def test_each_node_is_looked_up_once_and_the_policy_only_for_images() -> None:
    lookups = in_state("trusted", active=policy("registry.example.com/*"))
    assert judge(fixture("08-validate-pods-CREATE-pinned.json"), lookups).allowed
    assert (lookups.node_calls, lookups.policy_calls) == (["node2"], 1)

    lookups = in_state("trusted")
    assert judge(fixture("05-validate-pods-binding-CREATE-demo.json"), lookups).allowed
    assert (lookups.node_calls, lookups.policy_calls) == (["node2"], 0)

    for name in FILES:
        if "nodes" in name or "certificatesigningrequests" in name or "configmaps" in name:
            lookups = Lookups(down=True)  # no lookup at all: these work with the database down
            judge(fixture(name), lookups)
            assert (lookups.node_calls, lookups.policy_calls) == ([], 0)


# --- the response -----------------------------------------------------------------------------


def test_review_response_is_what_the_api_server_accepts() -> None:
    doc = fixture("08-validate-pods-CREATE-pinned.json")
    denied = review_response(request_of(doc), judge(doc, in_state("stale")))
    body = json.loads(denied.model_dump_json(by_alias=True, exclude_none=True))
    assert body["apiVersion"] == "admission.k8s.io/v1"
    assert body["kind"] == "AdmissionReview"
    response = body["response"]
    assert set(response) == {"uid", "allowed", "status"}  # never patch / patchType
    assert response["uid"] == doc["request"]["uid"]
    assert response["allowed"] is False
    status = response["status"]
    assert (status["status"], status["code"], status["reason"]) == ("Failure", 403, "Forbidden")
    assert status["message"].startswith("admission_node_stale: node node2's trusted verdict expired")
    assert status["details"]["causes"] == [
        {
            "reason": "admission_node_stale",
            "message": status["message"].split(": ", 1)[1],
            "field": "spec.nodeName",
        }
    ]

    allowed = review_response(request_of(doc), judge(doc, in_state("trusted")))
    body = json.loads(allowed.model_dump_json(by_alias=True, exclude_none=True))
    assert body["response"] == {"uid": doc["request"]["uid"], "allowed": True}


def test_several_problems_are_all_listed() -> None:
    doc = fixture("08-validate-pods-CREATE-pinned.json")
    spec = doc["request"]["object"]["spec"]
    spec["containers"].append({"name": "d", "image": "busybox:latest"})
    spec["initContainers"] = [{"name": "i", "image": OTHER}]
    decision = judge(doc, in_state("untrusted", active=policy(APP)))
    assert codes(decision) == [
        "admission_node_untrusted",
        "admission_image_not_pinned",
        "admission_image_not_allowed",
    ]
    status = review_response(request_of(doc), decision).response.status
    assert status is not None
    assert status.details is not None
    assert status.message.endswith("(and 2 more: admission_image_not_allowed, admission_image_not_pinned)")
    assert [c.field for c in status.details.causes] == [
        "spec.nodeName",
        "spec.containers[1].image",
        "spec.initContainers[0].image",
    ]


# --- Nodes ----------------------------------------------------------------------------------


def node_create(labels: dict[str, str] | None = None, taints: Sequence[Doc] = (UNVERIFIED,)) -> Doc:
    doc = fixture("01-validate-nodes-CREATE-node1.json")
    node = doc["request"]["object"]
    node["spec"]["taints"] = [*node["spec"]["taints"], *taints]
    node["metadata"]["labels"].update(labels or {})
    return doc


def node_update(
    old: Callable[[Doc], None] = lambda n: None, new: Callable[[Doc], None] = lambda n: None
) -> Doc:
    doc = fixture("04-validate-nodes-UPDATE-node1.json")
    old(doc["request"]["oldObject"])
    new(doc["request"]["object"])
    return doc


def test_a_kubelet_registering_with_the_taint_is_admitted() -> None:
    assert judge(node_create()).allowed


def test_the_taint_must_be_unverified_no_schedule() -> None:
    for taints in (
        [],
        [{"key": "unverified", "effect": "PreferNoSchedule"}],
        [{"key": "other", "effect": "NoSchedule"}],
    ):
        decision = judge(node_create(taints=taints))
        assert codes(decision) == ["admission_taint_missing"]
        assert "--register-with-taints=unverified:NoSchedule" in decision.denials[0].message


def test_a_kubelet_cannot_act_on_another_nodes_object() -> None:
    for doc in (node_create(), fixture("04-validate-nodes-UPDATE-node1.json")):
        doc["request"]["userInfo"]["username"] = "system:node:node9"
        decision = judge(doc)
        assert codes(decision) == ["admission_node_mismatch"]
        assert "system:node:node9 may only" in decision.denials[0].message
        assert "not Node node1" in decision.denials[0].message

    # The old object is another node's: an UPDATE that renames is refused too.
    doc = node_update(old=lambda n: n["metadata"].update(name="node7"))
    assert codes(judge(doc)) == ["admission_node_mismatch"]


def test_a_kubelet_cannot_label_itself_attested() -> None:
    assert codes(judge(node_create({LABEL: "true"}))) == ["admission_label_forbidden"]
    # Any label of the domain, and of its subdomains, as NodeRestriction has it.
    assert codes(judge(node_create({"team.node-restriction.kubernetes.io/x": "y"}))) == [
        "admission_label_forbidden"
    ]
    assert judge(node_create({"example.com/node-restriction.kubernetes.io": "y"})).allowed

    def unlabel(n: Doc) -> None:
        del n["metadata"]["labels"][LABEL]

    def flip(n: Doc) -> None:
        n["metadata"]["labels"][LABEL] = "false"

    set_it = node_update(old=unlabel)
    assert codes(judge(set_it)) == ["admission_label_forbidden"]
    assert "may not set the label" in judge(set_it).denials[0].message
    assert "may not change" in judge(node_update(new=flip)).denials[0].message
    assert "may not remove" in judge(node_update(new=unlabel)).denials[0].message
    # Other labels are the kubelet's own business.
    assert judge(
        node_update(new=lambda n: n["metadata"]["labels"].update({"example.com/rack": "r2"}))
    ).allowed


def test_a_kubelet_cannot_remove_its_unverified_taint() -> None:
    def taint(n: Doc) -> None:
        n["spec"]["taints"].append(UNVERIFIED)

    assert codes(judge(node_update(old=taint))) == ["admission_taint_removed"]
    assert judge(node_update(old=taint, new=taint)).allowed
    # Adding it is fine; so is an update of a node the verifier already untainted (fixture 04).
    assert judge(node_update(new=taint)).allowed


def test_node_requests_from_others_than_kubelets_are_left_to_the_registration_policy() -> None:
    doc = node_create({LABEL: "true"}, taints=[])
    doc["request"]["userInfo"] = {"username": "system:serviceaccount:attest-system:attest-verifier"}
    assert judge(doc).allowed


# --- CertificateSigningRequests -------------------------------------------------------------


def make_csr(
    cn: str = "system:node:node3",
    orgs: Sequence[str] = ("system:nodes",),
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    sans: Sequence[x509.GeneralName] = (),
    extra: Sequence[x509.NameAttribute[str]] = (),
) -> bytes:
    names = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    names += [x509.NameAttribute(NameOID.COMMON_NAME, cn), *extra]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    signed = builder.sign(key or ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    return signed.public_bytes(serialization.Encoding.PEM)


def csr_review(
    pem: bytes,
    *,
    signer: str = "kubernetes.io/kube-apiserver-client-kubelet",
    usages: Sequence[str] = ("digital signature", "client auth"),
    username: str = "system:bootstrap:abcdef",
) -> Doc:
    doc = fixture("05-validate-certificatesigningrequests-CREATE-node-csr-node3.json")
    spec = doc["request"]["object"]["spec"]
    spec.update(
        request=base64.b64encode(pem).decode(), signerName=signer, usages=list(usages), username=username
    )
    doc["request"]["userInfo"]["username"] = username
    return doc


def csr_problem(doc: Doc) -> str:
    decision = judge(doc)
    assert codes(decision) == ["admission_csr_malformed"], decision
    return decision.denials[0].message


def test_the_recorded_bootstrap_csr_is_what_a_kubelet_files() -> None:
    doc = fixture("05-validate-certificatesigningrequests-CREATE-node-csr-node3.json")
    pem = base64.b64decode(doc["request"]["object"]["spec"]["request"])
    csr = x509.load_pem_x509_csr(pem)
    assert csr.subject.rfc4514_string() == "CN=system:node:node3,O=system:nodes"
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)


def test_kubelet_client_csrs() -> None:
    assert judge(csr_review(make_csr())).allowed
    # A renewal, filed by the node itself.
    assert judge(csr_review(make_csr(), username="system:node:node3")).allowed
    rsa_key = rsa.generate_private_key(65537, 2048)
    rsa_usages = ("digital signature", "key encipherment", "client auth")
    assert judge(csr_review(make_csr(key=rsa_key), usages=rsa_usages)).allowed


def test_malformed_kubelet_csrs_are_refused_early() -> None:
    assert "not a PEM certificate request" in csr_problem(csr_review(b"garbage"))
    pem = make_csr()
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    tampered = x509.load_der_x509_csr(der[:-1] + bytes([der[-1] ^ 1])).public_bytes(
        serialization.Encoding.PEM
    )
    assert "not signed by the key it names" in csr_problem(csr_review(tampered))

    for subject in (
        make_csr(cn="admin"),
        make_csr(cn="system:node:"),
        make_csr(cn="system:node:Node_3"),
        make_csr(orgs=()),
        make_csr(orgs=("system:masters",)),
        make_csr(orgs=("system:nodes", "system:masters")),
        make_csr(extra=[x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "x")]),
    ):
        assert "not exactly O=system:nodes, CN=system:node:<node name>" in csr_problem(csr_review(subject))

    weak = rsa.generate_private_key(65537, 1024)
    usages = ("digital signature", "key encipherment", "client auth")
    assert "RSA key of 1024 bits" in csr_problem(csr_review(make_csr(key=weak), usages=usages))
    p384 = make_csr(key=ec.generate_private_key(ec.SECP384R1()))
    assert "neither EC P-256 nor RSA" in csr_problem(csr_review(p384))

    for wrong in (
        ("client auth",),
        ("digital signature", "client auth", "server auth"),
        ("digital signature", "key encipherment", "client auth"),  # an EC key cannot encipher
        ("digital signature", "client auth", "client auth"),
    ):
        assert "are not what a kubelet asks" in csr_problem(csr_review(make_csr(), usages=wrong))

    with_san = make_csr(sans=[x509.DNSName("node3")])
    assert "names no subject alternative names" in csr_problem(csr_review(with_san))


SERVING = "kubernetes.io/kubelet-serving"


def serving_review(
    pem: bytes,
    usages: Sequence[str] = ("digital signature", "server auth"),
    username: str = "system:node:node3",
) -> Doc:
    return csr_review(pem, signer=SERVING, usages=usages, username=username)


def test_kubelet_serving_csrs() -> None:
    sans = [x509.DNSName("node3"), x509.IPAddress(ipaddress.ip_address("10.0.0.3"))]
    ok = judge(serving_review(make_csr(sans=sans)))
    assert ok.allowed
    assert ok.warnings == (
        "approval waits for a trusted attestation of node node3 and for every SAN to be one of its addresses",
    )
    assert "DNS names or IP addresses, and only those" in csr_problem(serving_review(make_csr()))
    email = serving_review(make_csr(sans=[x509.RFC822Name("a@b.c")]))
    assert "DNS names or IP addresses, and only those" in csr_problem(email)
    client_usage = serving_review(make_csr(sans=sans), usages=("digital signature", "client auth"))
    assert "are not what a kubelet asks" in csr_problem(client_usage)


def test_a_node_cannot_ask_for_another_nodes_certificate() -> None:
    decision = judge(csr_review(make_csr(), username="system:node:node4"))
    assert codes(decision) == ["admission_node_mismatch"]
    assert "system:node:node4 filed a CSR in the name of node node3" in decision.denials[0].message
    # Serving certificates come from the node itself only, never from a bootstrap token.
    serving = serving_review(make_csr(sans=[x509.DNSName("node3")]), username="system:bootstrap:abcdef")
    assert codes(judge(serving)) == ["admission_node_mismatch"]


def test_csrs_of_other_signers_are_not_judged() -> None:
    doc = csr_review(b"not even a CSR", signer="example.com/internal", usages=("server auth",))
    decision = judge(doc)
    assert decision.allowed
    assert decision.warnings == ()


# --- Pods -----------------------------------------------------------------------------------


def pod(name: str = "08-validate-pods-CREATE-pinned.json", **spec: Any) -> Doc:
    doc = fixture(name)
    doc["request"]["object"]["spec"].update(spec)
    return doc


def test_images_must_be_pinned_and_allowed_when_the_policy_judges_them() -> None:
    strict = policy(APP)

    def trusted() -> Lookups:
        return in_state("trusted", active=strict)

    assert judge(pod(), trusted()).allowed

    unpinned = pod(containers=[{"name": "c", "image": "registry.example.com/app:1.0"}])
    decision = judge(unpinned, trusted())
    assert codes(decision) == ["admission_image_not_pinned"]
    assert "write it as REPO@sha256:DIGEST" in decision.denials[0].message
    tagged_and_pinned = pod(containers=[{"name": "c", "image": f"registry.example.com/app:1.0@{DIGEST}"}])
    assert judge(tagged_and_pinned, trusted()).allowed

    decision = judge(pod(containers=[{"name": "c", "image": OTHER}]), trusted())
    assert codes(decision) == ["admission_image_not_allowed"]
    assert "not allowed by policy 'default' (containers.images)" in decision.denials[0].message

    # Every place an image comes from: init and ephemeral containers, image volumes.
    for spec in (
        {"initContainers": [{"name": "i", "image": OTHER}]},
        {"ephemeralContainers": [{"name": "e", "image": OTHER}]},
        {"volumes": [{"name": "v", "image": {"reference": OTHER}}]},
    ):
        assert codes(judge(pod(**spec), trusted())) == ["admission_image_not_allowed"]


def test_without_a_containers_section_unpinned_images_only_warn() -> None:
    doc = pod("03-validate-pods-CREATE-demo.json", containers=[{"name": "c", "image": "nginx:1.27"}])
    for active in (None, policy()):
        decision = judge(doc, Lookups(active=active))
        assert decision.allowed
        assert decision.warnings == (
            "spec.containers[0].image 'nginx:1.27' is not pinned by digest: "
            "which content ran cannot be verified",
        )


def test_an_unpinned_pod_without_a_node_is_refused_before_it_is_scheduled() -> None:
    doc = pod("03-validate-pods-CREATE-demo.json", containers=[{"name": "c", "image": "nginx:1.27"}])
    lookups = Lookups(active=policy(APP))
    assert codes(judge(doc, lookups)) == ["admission_image_not_pinned"]
    assert lookups.node_calls == []


def pod_update(change: Callable[[Doc], None], node: str = "node2", ephemeral: bool = False) -> Doc:
    doc = fixture("08-validate-pods-CREATE-pinned.json")
    request = doc["request"]
    request["operation"] = "UPDATE"
    request["oldObject"] = copy.deepcopy(request["object"])
    request["object"]["spec"]["nodeName"] = request["oldObject"]["spec"]["nodeName"] = node
    if ephemeral:
        request["subResource"] = request["requestSubResource"] = "ephemeralcontainers"
    change(request["object"]["spec"])
    return doc


def test_pod_updates_are_judged_on_what_they_change() -> None:
    strict = policy(APP)

    def relabel(spec: Doc) -> None:
        spec["tolerations"] = []

    def swap(image: str) -> Callable[[Doc], None]:
        return lambda spec: spec["containers"][0].update(image=image)

    # Unchanged images pass even when the policy or the node no longer would: a finalizer
    # removed at deletion must not fail.
    assert judge(pod_update(relabel), in_state("stale", active=policy(OTHER))).allowed
    assert codes(judge(pod_update(swap(OTHER)), in_state("trusted", active=strict))) == [
        "admission_image_not_allowed"
    ]
    assert judge(
        pod_update(swap(f"registry.example.com/app:v2@{DIGEST}")), in_state("trusted", active=strict)
    ).allowed
    # A new image starts on the pod's node now: the node must be fit.
    swapped = pod_update(swap(f"registry.example.com/app:v2@{DIGEST}"))
    assert codes(judge(swapped, in_state("stale", active=strict))) == ["admission_node_stale"]


def test_ephemeral_containers_need_a_fit_node_and_allowed_images() -> None:
    strict = policy(APP)

    def add(image: str) -> Callable[[Doc], None]:
        return lambda spec: spec.setdefault("ephemeralContainers", []).append(
            {"name": "debug", "image": image}
        )

    assert judge(pod_update(add(APP), ephemeral=True), in_state("trusted", active=strict)).allowed
    assert codes(judge(pod_update(add(APP), ephemeral=True), in_state("stale", active=strict))) == [
        "admission_node_stale"
    ]
    decision = judge(pod_update(add(OTHER), ephemeral=True), in_state("trusted", active=strict))
    assert codes(decision) == ["admission_image_not_allowed"]
    assert decision.denials[0].field == "spec.ephemeralContainers[0].image"
    # Nothing added: nothing starts, nothing to look up.
    lookups = in_state("unknown", active=strict)
    assert judge(pod_update(lambda spec: None, ephemeral=True), lookups).allowed
    assert lookups.node_calls == []


def test_exempt_namespaces_are_not_judged() -> None:
    for name in ("08-validate-pods-CREATE-pinned.json", "05-validate-pods-binding-CREATE-demo.json"):
        for namespace in ("kube-system", "attest-system"):
            doc = fixture(name)
            doc["request"]["namespace"] = namespace
            lookups = in_state("unknown")
            assert judge(doc, lookups).allowed
            assert lookups.node_calls == []
            # A namespace is exempt by configuration, not by name.
            assert codes(judge(doc, in_state("unknown"), exempt_namespaces=frozenset())) == [
                "admission_node_unattested"
            ]


def test_freshness_max_age_is_stricter_than_the_expiry() -> None:
    doc = fixture("05-validate-pods-binding-CREATE-demo.json")
    ten_minutes_old = Lookups(nodes={"node2": node_record("node2", "trusted", appraised=NOW - 10 * MINUTE)})
    assert judge(doc, ten_minutes_old).allowed
    decision = judge(doc, ten_minutes_old, max_age=5 * MINUTE)
    assert codes(decision) == ["admission_node_stale"]
    assert "longer ago than the admission freshness of 300s" in decision.denials[0].message
    assert judge(doc, ten_minutes_old, max_age=11 * MINUTE).allowed


def test_a_verdict_appraised_ahead_of_the_clock_admits_only_within_the_skew() -> None:
    doc = fixture("05-validate-pods-binding-CREATE-demo.json")

    def appraised(at: dt.datetime) -> Lookups:
        return Lookups(nodes={"node2": node_record("node2", "trusted", appraised=at)})

    # Another replica's clock a little ahead: fine. A clock set back by minutes: not fresh.
    assert judge(doc, appraised(NOW + dt.timedelta(seconds=5))).allowed
    decision = judge(doc, appraised(NOW + 10 * MINUTE))
    assert codes(decision) == ["admission_node_stale"]
    assert "10m after this verifier's clock reads: a clock was set back" in decision.denials[0].message


def test_a_verdict_expiring_now_is_stale() -> None:
    record = node_record("node2", "trusted")
    assert record is not None
    assert record.last_verdict is not None
    expiring = dataclasses.replace(
        record, last_verdict=dataclasses.replace(record.last_verdict, expires_at=NOW)
    )
    decision = judge(fixture("05-validate-pods-binding-CREATE-demo.json"), Lookups(nodes={"node2": expiring}))
    assert codes(decision) == ["admission_node_stale"]


# --- dry run, failures, what is not the webhook's -------------------------------------------


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("name", FILES)
def test_dry_run_is_judged_like_a_real_request(name: str, state: str) -> None:
    real, dry = fixture(name), fixture(name)
    real["request"]["dryRun"], dry["request"]["dryRun"] = False, True
    dry["request"]["options"]["dryRun"] = ["All"]
    assert judge(dry, in_state(state)) == judge(real, in_state(state))


def test_database_down_refuses_placement_with_a_reason() -> None:
    for name in ("08-validate-pods-CREATE-pinned.json", "05-validate-pods-binding-CREATE-demo.json"):
        decision = judge(fixture(name), Lookups(down=True))
        assert codes(decision) == ["admission_store_unavailable"]
        status = review_response(request_of(fixture(name)), decision).response.status
        assert status is not None
        assert (status.code, status.reason) == (503, "ServiceUnavailable")
        assert "database is unavailable" in status.message
    # Kubelets and CSRs need no lookup: they are judged with the database down.
    assert judge(node_create(), Lookups(down=True)).allowed


@pytest.mark.parametrize("path", ADMISSION_PATHS)
def test_requests_a_path_does_not_judge_are_refused(path: str) -> None:
    judged = {ADMISSION_NODES: "nodes", ADMISSION_CSRS: "certificatesigningrequests", ADMISSION_PODS: "pods"}
    for name in FILES:
        doc = fixture(name)
        if doc["request"]["resource"]["resource"] == judged[path]:
            continue
        decision = judge(doc, path=path)
        assert codes(decision) == ["admission_request_unexpected"]
        assert decision.resource == "other"  # a fixed metrics label, whatever is sent
        assert "re-apply deploy/base/webhook.yaml" in decision.denials[0].message

    for change in (
        {"operation": "DELETE"},
        {"operation": "CONNECT"},
        {"resource": {"group": "", "version": "v1beta1", "resource": "pods"}},
        {"subResource": "status"},
    ):
        doc = fixture("08-validate-pods-CREATE-pinned.json")
        doc["request"].update(change)
        assert codes(judge(doc, path=ADMISSION_PODS)) == ["admission_request_unexpected"]


def _malformed() -> Iterator[Doc]:
    doc = fixture("05-validate-pods-binding-CREATE-demo.json")
    doc["request"]["object"] = None
    yield doc
    doc = fixture("05-validate-pods-binding-CREATE-demo.json")
    doc["request"]["object"]["target"] = {"kind": "Pod", "name": "x"}
    yield doc
    doc = fixture("04-validate-nodes-UPDATE-node1.json")
    doc["request"]["oldObject"] = None
    yield doc
    doc = fixture("08-validate-pods-CREATE-pinned.json")
    doc["request"]["object"]["spec"]["containers"] = "busybox"
    yield doc


def test_objects_that_are_not_what_the_api_server_sends_are_parse_errors() -> None:
    for doc in _malformed():
        with pytest.raises(ParseError) as raised:
            judge(doc, in_state("trusted"))
        assert raised.value.code is Reason.ADMISSION_REVIEW_MALFORMED


def test_reviews_the_api_server_never_sends_do_not_parse() -> None:
    for change in ({"apiVersion": "admission.k8s.io/v1beta1"}, {"kind": "Review"}):
        doc = fixture("08-validate-pods-CREATE-pinned.json")
        doc.update(change)
        with pytest.raises(ValidationError):
            request_of(doc)
    doc = fixture("08-validate-pods-CREATE-pinned.json")
    del doc["request"]["uid"]
    with pytest.raises(ValidationError):
        request_of(doc)
    # Fields a newer API server adds are ignored, not refused.
    doc = fixture("08-validate-pods-CREATE-pinned.json")
    doc["request"]["somethingNew"] = {"x": 1}
    doc["newTopLevel"] = True
    assert request_of(doc).uid == "d0f4ba4e-408f-4ed3-ad01-942fbe16c790"


# --- configuration ----------------------------------------------------------------------------


def test_admission_options() -> None:
    env = {
        "ATTEST_VERIFIER_ADMISSION_FRESHNESS": "90",
        "ATTEST_VERIFIER_ADMISSION_EXEMPT_NAMESPACES": "kube-system,infra,kube-system",
    }
    settings = load_settings({}, env)
    assert settings.admission_freshness == dt.timedelta(seconds=90)
    assert settings.admission_exempt_namespaces == ("kube-system", "infra")
    assert load_settings({"admission_freshness": "expiry"}, env).admission_freshness is None
    defaults = load_settings({}, {})
    assert (defaults.admission_freshness, defaults.admission_exempt_namespaces) == (
        None,
        ("kube-system", "attest-system"),
    )
    assert default_text("admission_freshness") == "expiry"
    assert default_text("admission_exempt_namespaces") == "kube-system,attest-system"
    for flags, message in (
        ({"admission_freshness": "0"}, "--admission-freshness: '0' is neither 'expiry' nor a positive"),
        ({"admission_freshness": "soon"}, "--admission-freshness: 'soon' is neither"),
        ({"admission_exempt_namespaces": ["Kube_System"]}, "'Kube_System' is not a namespace name"),
    ):
        with pytest.raises(UsageError, match=message):
            load_settings(flags, {})
