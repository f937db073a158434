"""The CEL in deploy/ (the node registration policy and the webhooks' matchConditions), evaluated
with cel-python on the AdmissionReview requests a real kube-apiserver sent.

cel-python is not the API server's CEL (no Kubernetes extension libraries, eager variables), but
the expressions use only standard CEL (has, in, exists, startsWith, the conditional), so this
checks their logic: who may register, label and untaint a Node.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from deploy.lint import NAMESPACE, VERIFIER

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "deploy" / "base"
ADMISSION = REPO / "tests" / "data" / "k8s" / "admission"
LABEL = "node-restriction.kubernetes.io/attested"
TAINT = {"key": "unverified", "effect": "NoSchedule"}
KUBELET = {"username": "system:node:node1", "groups": ["system:nodes", "system:authenticated"]}
VERIFIER_USER = {"username": f"system:serviceaccount:{NAMESPACE}:{VERIFIER}", "groups": []}
ADMIN = {"username": "e2e-admin", "groups": ["system:masters", "system:authenticated"]}

Obj = dict[str, Any]
ENV = celpy.Environment()


def _objects(name: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]


POLICY = next(
    d for d in _objects("node-registration-policy.yaml") if d["kind"] == "ValidatingAdmissionPolicy"
)
WEBHOOKS = {h["name"].split(".")[0]: h for h in _objects("webhook.yaml")[0]["webhooks"]}


def _eval(expression: str, activation: dict[str, Any]) -> Any:
    return ENV.program(ENV.compile(expression)).evaluate(activation)


def denials(operation: str, user: Obj, obj: Obj, old: Obj | None = None) -> list[str]:
    """The messages of the policy's failed validations for this request (empty: admitted)."""
    activation: dict[str, Any] = {
        "request": celpy.json_to_cel({"operation": operation, "userInfo": user}),
        "object": celpy.json_to_cel(obj),
        "oldObject": celpy.json_to_cel(old),
    }
    # Each variable sees the ones before it, as in the API server (which evaluates them lazily).
    variables = celpy.celtypes.MapType()
    for v in POLICY["spec"]["variables"]:
        activation["variables"] = variables
        variables[celpy.celtypes.StringType(v["name"])] = _eval(v["expression"], activation)
    out = []
    for rule in POLICY["spec"]["validations"]:
        result = _eval(rule["expression"], activation)
        assert isinstance(result, celpy.celtypes.BoolType), f"{rule['expression']} -> {result!r}"
        if not result:
            message = _eval(rule["messageExpression"], activation)
            assert isinstance(message, str)
            out.append(str(message))
    return out


def _fixture(name: str) -> Obj:
    request: Obj = json.loads((ADMISSION / name).read_text())["request"]
    return request


def _node(labels: dict[str, str] | None = None, taints: list[Obj] | None = None) -> Obj:
    node: Obj = copy.deepcopy(_fixture("01-validate-nodes-CREATE-node1.json")["object"])
    node["metadata"]["labels"] = {**node["metadata"]["labels"], **(labels or {})}
    node["spec"]["taints"] = node["spec"]["taints"] + (taints or [])
    return node


def test_real_kubelet_registration_without_the_taint_is_refused() -> None:
    request = _fixture("01-validate-nodes-CREATE-node1.json")
    (message,) = denials(request["operation"], request["userInfo"], request["object"])
    assert message == (
        "Node node1: a kubelet must register with the taint unverified:NoSchedule "
        "(--register-with-taints=unverified:NoSchedule)"
    )


def test_kubelet_registration_with_the_taint_is_admitted() -> None:
    assert denials("CREATE", KUBELET, _node(taints=[TAINT])) == []


def test_the_taint_must_be_NoSchedule() -> None:
    assert denials("CREATE", KUBELET, _node(taints=[{"key": "unverified", "effect": "PreferNoSchedule"}]))


def test_a_node_with_no_taints_at_all_is_refused() -> None:
    node = _node()
    del node["spec"]["taints"]
    assert denials("CREATE", KUBELET, node)


def test_kubelet_cannot_register_as_attested() -> None:
    (message,) = denials("CREATE", KUBELET, _node(labels={LABEL: "true"}, taints=[TAINT]))
    assert LABEL in message


def test_real_kubelet_update_keeping_the_label_is_admitted() -> None:
    request = _fixture("04-validate-nodes-UPDATE-node1.json")
    assert denials(request["operation"], request["userInfo"], request["object"], request["oldObject"]) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (None, "true"),  # adds it
        ("false", "true"),  # flips it
        ("true", None),  # removes it
        (None, ""),  # an empty value is still setting it
    ],
)
@pytest.mark.parametrize("user", [KUBELET, ADMIN], ids=["kubelet", "admin"])
def test_only_the_verifier_changes_the_attested_label(user: Obj, old: str | None, new: str | None) -> None:
    before = _node(labels={LABEL: old} if old is not None else None)
    after = _node(labels={LABEL: new} if new is not None else None)
    assert any(LABEL in m for m in denials("UPDATE", user, after, before))
    assert denials("UPDATE", VERIFIER_USER, after, before) == []


def test_only_the_verifier_removes_the_taint() -> None:
    tainted, clean = _node(taints=[TAINT]), _node()
    for user in (KUBELET, ADMIN):
        (message,) = denials("UPDATE", user, clean, tainted)
        assert "only the attestation verifier may remove the taint" in message
    assert denials("UPDATE", VERIFIER_USER, _node(labels={LABEL: "true"}), tainted) == []
    # Anyone may put a node back in quarantine.
    assert denials("UPDATE", ADMIN, tainted, clean) == []


def test_other_users_create_nodes_without_the_taint() -> None:
    """Rule 1 is about kubelets registering; an administrator's Node is not refused."""
    assert denials("CREATE", ADMIN, _node()) == []


def test_the_policy_names_the_verifier_service_account() -> None:
    sa = next(d for d in _objects("verifier-rbac.yaml") if d["kind"] == "ServiceAccount")
    dep = _objects("verifier-deployment.yaml")[0]
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"] == VERIFIER
    assert sa["metadata"]["namespace"] == NAMESPACE
    assert any(VERIFIER_USER["username"] in v["expression"] for v in POLICY["spec"]["variables"])


@pytest.mark.parametrize(
    ("webhook", "fixture", "expected"),
    [
        ("nodes", "01-validate-nodes-CREATE-node1.json", True),
        ("nodes", "04-validate-nodes-UPDATE-node1.json", True),
        ("csrs", "05-validate-certificatesigningrequests-CREATE-node-csr-node3.json", True),
    ],
)
def test_match_conditions_on_real_requests(webhook: str, fixture: str, expected: bool) -> None:
    request = _fixture(fixture)
    activation = {"request": celpy.json_to_cel(request), "object": celpy.json_to_cel(request["object"])}
    results = [bool(_eval(c["expression"], activation)) for c in WEBHOOKS[webhook]["matchConditions"]]
    assert all(results) is expected


def test_match_conditions_skip_what_is_not_the_verifiers_business() -> None:
    node_update = _fixture("04-validate-nodes-UPDATE-node1.json")
    by_controller = {
        **node_update,
        "userInfo": {"username": "system:serviceaccount:kube-system:node-controller"},
    }
    (node_condition,) = WEBHOOKS["nodes"]["matchConditions"]
    assert not _eval(node_condition["expression"], {"request": celpy.json_to_cel(by_controller)})

    csr = _fixture("05-validate-certificatesigningrequests-CREATE-node-csr-node3.json")["object"]
    other = {**csr, "spec": {**csr["spec"], "signerName": "cert-manager.io/my-issuer"}}
    (csr_condition,) = WEBHOOKS["csrs"]["matchConditions"]
    assert not _eval(csr_condition["expression"], {"object": celpy.json_to_cel(other)})
