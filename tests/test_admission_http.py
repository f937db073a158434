"""The admission webhook as kube-apiserver calls it: `attest-verifier serve` as a process over
TLS (tests/verifier_process.py), a SQLite store prepared through the Store API, and each
recorded AdmissionReview posted with the API server's headers and `?timeout=5s`. Every answer
gets the checks the API server applies to a webhook's response (k8s.io/apiserver,
admission/plugin/webhook/request: VerifyAdmissionResponse) before its decision is looked at."""

from __future__ import annotations

import copy
import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from attest.store.sql import SqlStore
from attest.wire import ADMISSION_CSRS, ADMISSION_NODES, ADMISSION_PODS
from bench.admission import seed_node
from tests.verifier_process import Server, StartVerifier

FIXTURES = Path(__file__).parent / "data" / "k8s" / "admission"
RECORDED = json.loads((FIXTURES / "request-headers.json").read_text())
# What the API server sent, but for what every request computes itself.
APISERVER_HEADERS = {k: v for k, v in RECORDED["headers"].items() if k not in ("host", "content-length")}
POLICY = """\
version: 1
name: default
containers:
  images: ["registry.example.com/app@sha256:0000000000000000000000000000000000000000000000000000000000000000"]
"""
# node2 is the node of the recorded binding and pinned pod; the others stand in for it.
NODES = {
    "node2": "trusted",
    "stale-node": "stale",
    "untrusted-node": "untrusted",
    "revoked-node": "revoked",
    "enrolled-node": "enrolled",
}
PATH_OF = {
    "nodes": ADMISSION_NODES,
    "certificatesigningrequests": ADMISSION_CSRS,
    "pods": ADMISSION_PODS,
    "configmaps": ADMISSION_PODS,
}
Doc = dict[str, Any]


def fixture(name: str) -> Doc:
    doc: Doc = json.loads((FIXTURES / name).read_text())
    return doc


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "admission.db"
    store = SqlStore.open(f"sqlite:///{path}")
    try:
        store.put_policy("default", POLICY)
        now = dt.datetime.now(dt.UTC)
        for name, state in NODES.items():
            seed_node(store, name, state, now)
        seed_node(store, "two-minutes-old", "trusted", now, appraised_ago=120)
    finally:
        store.close()
    return path


@pytest.fixture
def server(start_verifier: StartVerifier, database: Path) -> Server:
    return start_verifier(database=database)


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def post(
    client: httpx.Client, path: str, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return client.post(f"{path}?timeout=5s", content=body, headers=headers or APISERVER_HEADERS)


def admit(client: httpx.Client, doc: Doc, path: str | None = None) -> Doc:
    """POST the review as the API server does and apply its checks to the answer."""
    where = path or PATH_OF[doc["request"]["resource"]["resource"]]
    r = post(client, where, json.dumps(doc).encode())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    review = r.json()
    assert (review["apiVersion"], review["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
    response: Doc = review["response"]
    assert response["uid"] == doc["request"]["uid"]
    assert "patch" not in response
    assert "patchType" not in response  # a validating webhook's patch fails the request
    assert isinstance(response["allowed"], bool)
    if not response["allowed"]:
        assert response["status"]["message"]
        assert response["status"]["code"] >= 400
    return response


def code(response: Doc) -> str | None:
    return None if response["allowed"] else str(response["status"]["message"].split(":", 1)[0])


def placed_on(name: str, node: str) -> Doc:
    doc = fixture(name)
    obj = doc["request"]["object"]
    if "target" in obj:
        obj["target"]["name"] = node
    else:
        obj["spec"]["nodeName"] = node
    return doc


def test_every_recorded_request_over_tls(client: httpx.Client) -> None:
    expected = {
        "01-validate-nodes-CREATE-node1.json": "admission_taint_missing",
        "03-validate-pods-CREATE-demo.json": None,
        "04-validate-nodes-UPDATE-node1.json": None,
        "05-validate-certificatesigningrequests-CREATE-node-csr-node3.json": None,
        "05-validate-pods-binding-CREATE-demo.json": None,
        "08-validate-pods-CREATE-pinned.json": None,
        "14-validate-configmaps-CREATE-cm-dryrun.json": "admission_request_unexpected",
    }
    assert set(expected) == {p.name for p in FIXTURES.glob("[0-9]*.json")}
    for name, want in expected.items():
        response = admit(client, fixture(name))
        assert code(response) == want, (name, response)
    csr = admit(client, fixture("05-validate-certificatesigningrequests-CREATE-node-csr-node3.json"))
    assert csr["warnings"] == ["approval waits for a trusted attestation of node node3"]


@pytest.mark.parametrize(
    "name", ["05-validate-pods-binding-CREATE-demo.json", "08-validate-pods-CREATE-pinned.json"]
)
def test_placement_on_each_kind_of_node(client: httpx.Client, name: str) -> None:
    expected = {
        "node2": None,
        "stale-node": "admission_node_stale",
        "untrusted-node": "admission_node_untrusted",
        "revoked-node": "node_revoked",
        "enrolled-node": "admission_node_unattested",
        "never-seen": "admission_node_unattested",
    }
    for node, want in expected.items():
        response = admit(client, placed_on(name, node))
        assert code(response) == want, (node, response)
        if want:
            assert response["status"]["reason"] == "Forbidden"
            assert response["status"]["details"]["causes"][0]["reason"] == want
    untrusted = admit(client, placed_on(name, "untrusted-node"))
    assert "(policy_pcr_mismatch)" in untrusted["status"]["message"]


def test_kubelets_on_their_own_node_only(client: httpx.Client) -> None:
    create = fixture("01-validate-nodes-CREATE-node1.json")
    create["request"]["object"]["spec"]["taints"].append({"key": "unverified", "effect": "NoSchedule"})
    assert admit(client, create)["allowed"]

    other = copy.deepcopy(create)
    other["request"]["userInfo"]["username"] = "system:node:node2"
    assert code(admit(client, other)) == "admission_node_mismatch"

    labelled = copy.deepcopy(create)
    labelled["request"]["object"]["metadata"]["labels"]["node-restriction.kubernetes.io/attested"] = "true"
    assert code(admit(client, labelled)) == "admission_label_forbidden"


def test_images_against_the_stored_policy(client: httpx.Client) -> None:
    doc = fixture("03-validate-pods-CREATE-demo.json")
    doc["request"]["object"]["spec"]["containers"][0]["image"] = "registry.example.com/app:latest"
    assert code(admit(client, doc)) == "admission_image_not_pinned"
    doc["request"]["object"]["spec"]["containers"][0]["image"] = "registry.example.com/app@sha256:" + "1" * 64
    assert code(admit(client, doc)) == "admission_image_not_allowed"


def test_dry_runs_and_decisions_write_nothing(client: httpx.Client, server: Server) -> None:
    store = SqlStore.open(f"sqlite:///{server.database}")
    try:
        before = store.audit_records()
        nodes = {n.name: n for n in store.list_nodes()}
        for name in sorted(p.name for p in FIXTURES.glob("[0-9]*.json")):
            dry = fixture(name)
            dry["request"]["dryRun"] = True
            assert admit(client, dry) == admit(client, fixture(name))
        assert store.audit_records() == before
        assert {n.name: n for n in store.list_nodes()} == nodes
    finally:
        store.close()
    metrics = client.get("/metrics").text
    assert 'attest_admission_decisions_total{allowed="true",reason="none",resource="pods/binding"}' in metrics
    assert (
        'attest_admission_decisions_total{allowed="false",reason="admission_request_unexpected",resource="other"}'
        in metrics
    )
    assert 'attest_admission_seconds_count{resource="nodes"}' in metrics


def test_what_the_api_server_never_sends_is_a_400(client: httpx.Client) -> None:
    pinned = fixture("08-validate-pods-CREATE-pinned.json")
    beta = {**pinned, "apiVersion": "admission.k8s.io/v1beta1"}
    no_uid = copy.deepcopy(pinned)
    del no_uid["request"]["uid"]
    no_object = copy.deepcopy(pinned)
    no_object["request"]["object"] = None
    for body, error in (
        (json.dumps(beta).encode(), "invalid_request"),
        (json.dumps(no_uid).encode(), "invalid_request"),
        (b"{not json", "invalid_request"),
        (json.dumps(no_object).encode(), "admission_review_malformed"),
    ):
        r = post(client, ADMISSION_PODS, body)
        assert (r.status_code, r.json()["code"]) == (400, error), r.text
    r = post(client, ADMISSION_PODS, json.dumps(pinned).encode(), {"content-type": "text/plain"})
    assert r.status_code == 400


def test_large_pods_fit_and_the_limit_holds(client: httpx.Client) -> None:
    # A pod near the API server's 3 MiB request limit, as an UPDATE carries it twice.
    doc = fixture("08-validate-pods-CREATE-pinned.json")
    doc["request"]["object"]["metadata"]["annotations"] = {"example.com/big": "x" * (2 * 1024 * 1024)}
    doc["request"]["operation"] = "UPDATE"
    doc["request"]["oldObject"] = copy.deepcopy(doc["request"]["object"])
    assert admit(client, doc)["allowed"]
    r = post(client, ADMISSION_PODS, b" " * (7 * 1024 * 1024))
    assert (r.status_code, r.json()["code"]) == (413, "request_too_large")


def test_freshness_and_exemptions_are_configurable(start_verifier: StartVerifier, database: Path) -> None:
    recent = placed_on("05-validate-pods-binding-CREATE-demo.json", "two-minutes-old")
    in_attest_system = placed_on("08-validate-pods-CREATE-pinned.json", "never-seen")
    in_attest_system["request"]["namespace"] = "attest-system"
    default = start_verifier(database=database)
    with default.client() as c:
        assert admit(c, recent)["allowed"]
        assert admit(c, in_attest_system)["allowed"]
    strict = start_verifier(
        "--admission-freshness", "60", "--admission-exempt-namespaces", "kube-system", database=database
    )
    with strict.client() as c:
        response = admit(c, recent)
        assert code(response) == "admission_node_stale"
        assert "longer ago than the admission freshness of 60s" in response["status"]["message"]
        assert code(admit(c, in_attest_system)) == "admission_node_unattested"


@pytest.mark.parametrize("cache", ["0", "1"])
def test_database_down_is_a_refusal_kubectl_can_print(
    start_verifier: StartVerifier, database: Path, cache: str
) -> None:
    server = start_verifier("--admission-cache-seconds", cache, database=database)
    binding = fixture("05-validate-pods-binding-CREATE-demo.json")
    with server.client() as client:
        assert admit(client, binding)["allowed"]
        # What a lost volume or a corrupted file looks like to SQLite.
        for path in server.database.parent.glob(server.database.name + "*"):
            path.write_bytes(b"not a database " * 512)
        response = admit(client, binding)
        # Read through: refused at once. From the node view: once it is past its bound (1 s),
        # its syncs failing; tests/test_admission_nodestate.py checks the bound itself.
        deadline = time.monotonic() + 30
        while cache != "0" and response["allowed"] and time.monotonic() < deadline:
            time.sleep(0.05)
            response = admit(client, binding)
        assert code(response) == "admission_store_unavailable"
        assert (response["status"]["code"], response["status"]["reason"]) == (503, "ServiceUnavailable")
        assert "database is unavailable" in response["status"]["message"]
        # What needs no stored verdict is still judged.
        csr = fixture("05-validate-certificatesigningrequests-CREATE-node-csr-node3.json")
        assert admit(client, csr)["allowed"]
        assert admit(client, fixture("04-validate-nodes-UPDATE-node1.json"))["allowed"]
