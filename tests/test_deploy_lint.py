"""deploy/: the shipped manifests pass the lint, and the lint catches each way of breaking them.

Every broken case is a copy of deploy/ in tmp_path with one change, linted as a whole (files
and kustomize renders), so a rule is proven on the manifests operators actually apply.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from attest.wire import ADMISSION_CSRS, ADMISSION_NODES, ADMISSION_PATHS, ADMISSION_PODS
from deploy import lint

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
BASE = DEPLOY / "base"
ADMISSION = REPO / "tests" / "data" / "k8s" / "admission"
# One version keeps the mutation tests quick; the shipped manifests are checked against the defaults.
VERSIONS = ["1.30"]

Obj = dict[str, Any]


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "deploy"
    shutil.copytree(DEPLOY, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return root


def _edit(root: Path, relpath: str, kind: str, name: str, change: Callable[[Obj], None]) -> None:
    """Apply `change` to the object kind/name in root/relpath (comments are not kept)."""
    path = root / relpath
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name} not in {relpath}"
    change(hits[0])
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def _hook(cfg: Obj, path: str) -> Obj:
    return next(h for h in cfg["webhooks"] if h["clientConfig"]["service"]["path"] == path)


def _container(obj: Obj) -> Obj:
    return obj["spec"]["template"]["spec"]["containers"][0]


def _rules(root: Path) -> set[str]:
    return {v.rule for v in lint.lint(root, VERSIONS)}


# --- the shipped manifests -------------------------------------------------------------------


def test_shipped_manifests_pass_every_rule_and_schema() -> None:
    assert lint.lint(DEPLOY, lint.default_versions()) == []


def test_default_versions_span_the_oldest_supported_and_the_newest_known() -> None:
    versions = lint.default_versions()
    assert versions[0] == "1.30"
    assert tuple(int(x) for x in versions[-1].split(".")) >= (1, 37)


def test_command_line_exit_codes(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "deploy.lint", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )

    ok = run("-k", "1.30")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout == ""

    root = _copy(tmp_path)
    _edit(root, "base/webhook.yaml", "ValidatingWebhookConfiguration", "attest-verifier", _fail_open)
    bad = run(str(root), "-k", "1.30")
    assert bad.returncode == 1
    assert "base/webhook.yaml: ValidatingWebhookConfiguration/attest-verifier: " in bad.stdout
    assert "WH001" in bad.stdout
    # Every violation is listed, one per line, each naming file, object, field and rule.
    assert all(line.count(": ") >= 3 for line in bad.stdout.splitlines())

    (root / "base" / "namespace.yaml").write_text("kind: [unclosed\n")
    unusable = run(str(root), "-k", "1.30")
    assert unusable.returncode == 2
    assert unusable.stdout == ""
    assert unusable.stderr.startswith("deploy.lint: error: base/namespace.yaml: not YAML")
    assert "Traceback" not in unusable.stderr

    assert run("-k", "1.29").returncode == 2  # older than deploy/ supports
    assert run(str(tmp_path / "missing")).returncode == 2
    listed = run("--list-rules")
    assert listed.returncode == 0
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == list(lint.RULES)


def test_webhook_paths_are_the_services_paths() -> None:
    """The three paths in the webhook configuration are attest.wire's, each for its resource."""
    (cfg,) = [d for d in yaml.safe_load_all((BASE / "webhook.yaml").read_text()) if d]
    by_path = {h["clientConfig"]["service"]["path"]: h for h in cfg["webhooks"]}
    assert sorted(by_path) == sorted(ADMISSION_PATHS)
    resources = {p: {r for rule in h["rules"] for r in rule["resources"]} for p, h in by_path.items()}
    assert resources[ADMISSION_NODES] == {"nodes"}
    assert resources[ADMISSION_CSRS] == {"certificatesigningrequests"}
    assert resources[ADMISSION_PODS] == {"pods", "pods/binding", "pods/ephemeralcontainers"}


def _selected(hook: Obj, request: Obj) -> bool:
    """Would kube-apiserver send this AdmissionReview request to this webhook? (rules and
    namespaceSelector; matchConditions are CEL and are left to the API server)"""
    resource = request["resource"]["resource"]
    if request.get("subResource"):
        resource += "/" + request["subResource"]
    ruled = any(
        request["resource"]["group"] in rule["apiGroups"]
        and request["resource"]["version"] in rule["apiVersions"]
        and request["operation"] in rule["operations"]
        and resource in rule["resources"]
        for rule in hook["rules"]
    )
    if not ruled or not request.get("namespace"):
        return ruled
    expressions = hook.get("namespaceSelector", {}).get("matchExpressions", [])
    return all(
        e["key"] == "kubernetes.io/metadata.name"
        and e["operator"] == "NotIn"
        and request["namespace"] not in e["values"]
        for e in expressions
    )


@pytest.mark.parametrize(
    ("fixture", "path"),
    [
        ("01-validate-nodes-CREATE-node1.json", ADMISSION_NODES),
        ("04-validate-nodes-UPDATE-node1.json", ADMISSION_NODES),
        ("05-validate-certificatesigningrequests-CREATE-node-csr-node3.json", ADMISSION_CSRS),
        ("03-validate-pods-CREATE-demo.json", ADMISSION_PODS),
        ("08-validate-pods-CREATE-pinned.json", ADMISSION_PODS),
        ("05-validate-pods-binding-CREATE-demo.json", ADMISSION_PODS),
        ("14-validate-configmaps-CREATE-cm-dryrun.json", None),
    ],
)
def test_real_admission_requests_reach_the_right_webhook(fixture: str, path: str | None) -> None:
    """Requests exactly as kube-apiserver 1.36 sent them (a Binding arrives as resource pods,
    subResource binding) are routed by the shipped rules to the expected path, and only there."""
    request = json.loads((ADMISSION / fixture).read_text())["request"]
    (cfg,) = [d for d in yaml.safe_load_all((BASE / "webhook.yaml").read_text()) if d]
    hit = [h["clientConfig"]["service"]["path"] for h in cfg["webhooks"] if _selected(h, request)]
    assert hit == ([path] if path else [])


def test_pods_in_the_exempt_namespaces_skip_the_pod_webhook() -> None:
    request = json.loads((ADMISSION / "05-validate-pods-binding-CREATE-demo.json").read_text())["request"]
    (cfg,) = [d for d in yaml.safe_load_all((BASE / "webhook.yaml").read_text()) if d]
    pods = _hook(cfg, ADMISSION_PODS)
    for namespace in ("kube-system", "attest-system"):
        assert not _selected(pods, {**request, "namespace": namespace})


# --- the renderer ----------------------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) is not installed"
)
@pytest.mark.parametrize("kustomization", ["base", "overlays/cert-manager", "overlays/single-node-sqlite"])
def test_renderer_agrees_with_kustomize(kustomization: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / kustomization)], capture_output=True, text=True, check=True
    ).stdout
    theirs = sorted(json.dumps(d, sort_keys=True) for d in yaml.safe_load_all(out) if d)
    ours = lint.render(DEPLOY / kustomization / "kustomization.yaml", DEPLOY)
    assert sorted(json.dumps(d.obj, sort_keys=True) for d in ours) == theirs


def test_overlays_render_what_they_promise() -> None:
    def objects(kustomization: str) -> dict[str, Obj]:
        docs = lint.render(DEPLOY / kustomization / "kustomization.yaml", DEPLOY)
        return {d.ref: d.obj for d in docs}

    base = objects("base")
    assert all(
        o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tpm-node-attest" for o in base.values()
    )
    assert _container(base["Deployment/attest-verifier"])["image"] == "ghcr.io/tpm-node-attest/verifier:0.1.0"

    sqlite = objects("overlays/single-node-sqlite")
    dep = sqlite["Deployment/attest-verifier"]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert _container(dep)["env"][0] == {
        "name": "ATTEST_VERIFIER_DATABASE",
        "value": "sqlite:////var/lib/attest-verifier/verifier.db",
    }
    assert "PersistentVolumeClaim/attest-verifier-data" in sqlite
    assert sqlite["PodDisruptionBudget/attest-verifier"]["spec"].get("minAvailable") is None

    cm = objects("overlays/cert-manager")
    annotations = cm["ValidatingWebhookConfiguration/attest-verifier"]["metadata"]["annotations"]
    assert annotations["cert-manager.io/inject-ca-from"] == "attest-system/attest-verifier-tls"
    assert cm["Certificate/attest-verifier-tls"]["spec"]["secretName"] == "attest-verifier-tls"


def test_image_digest_from_an_operator_overlay(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    prod = root / "overlays" / "prod"
    prod.mkdir()
    digest = "sha256:" + "ab" * 32
    (prod / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": ["../../base"],
                "images": [{"name": "ghcr.io/tpm-node-attest/verifier", "digest": digest}],
            }
        )
    )
    docs = {d.ref: d.obj for d in lint.render(prod / "kustomization.yaml", root)}
    assert (
        _container(docs["Deployment/attest-verifier"])["image"]
        == f"ghcr.io/tpm-node-attest/verifier@{digest}"
    )
    assert lint.lint(root, VERSIONS) == []


@pytest.mark.parametrize(
    ("kustomization", "message"),
    [
        ({"resources": ["../../base"], "namespace": "elsewhere"}, "not supported"),
        ({"resources": ["../../base", "nowhere.yaml"]}, "does not exist"),
        ({"resources": ["https://example.invalid/x.yaml"]}, "only local files"),
        (
            {
                "resources": ["../../base"],
                "patches": [{"target": {"kind": "Service", "name": "x"}, "patch": "[]"}],
            },
            "matches no object",
        ),
        (
            {
                "resources": ["../../base"],
                "patches": [{"target": {"kind": "Service", "name": "attest-verifier"}, "patch": "spec: {}"}],
            },
            "only JSON 6902",
        ),
        (
            {
                "resources": ["../../base"],
                "patches": [
                    {
                        "target": {"kind": "Service", "name": "attest-verifier"},
                        "patch": "- {op: test, path: /spec/type, value: NodePort}",
                    }
                ],
            },
            "test /spec/type failed",
        ),
        (
            {"resources": ["../../base"], "labels": [{"pairs": {"a": "b"}, "includeSelectors": True}]},
            "labels",
        ),
    ],
)
def test_renderer_refuses_what_it_does_not_implement(
    tmp_path: Path, kustomization: Obj, message: str
) -> None:
    root = _copy(tmp_path)
    bad = root / "overlays" / "bad"
    bad.mkdir()
    (bad / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    with pytest.raises(lint.InputError, match=message):
        lint.lint(root, VERSIONS)
    assert lint.main([str(root), "-k", "1.30"]) == 2


def test_plain_directory_without_kustomization_is_one_install(tmp_path: Path) -> None:
    for f in BASE.glob("*.yaml"):
        if f.name != "kustomization.yaml":
            shutil.copy(f, tmp_path / f.name)
    # The base files carry release tags themselves, so they pass on their own too.
    assert lint.lint(tmp_path, VERSIONS) == []
    (tmp_path / "node-registration-policy.yaml").unlink()
    assert _rules(tmp_path) == {"VAP001"}


# --- each rule, on a broken copy -------------------------------------------------------------


def _fail_open(cfg: Obj) -> None:
    _hook(cfg, ADMISSION_PODS)["failurePolicy"] = "Ignore"


def _set_hook(path: str, key: str, value: Any) -> Callable[[Obj], None]:
    def change(cfg: Obj) -> None:
        _hook(cfg, path)[key] = value

    return change


def _http_url(cfg: Obj) -> None:
    _hook(cfg, ADMISSION_PODS)["clientConfig"] = {"url": "http://attest.example.com/v1/admission/pods"}


def _ip_url(cfg: Obj) -> None:
    _hook(cfg, ADMISSION_PODS)["clientConfig"] = {"url": "https://10.0.0.7:8443/v1/admission/pods"}


def _wrong_path(cfg: Obj) -> None:
    _hook(cfg, ADMISSION_CSRS)["clientConfig"]["service"]["path"] = "/v1/admission/csr"


def _drop_binding(cfg: Obj) -> None:
    hook = _hook(cfg, ADMISSION_PODS)
    hook["rules"] = [r for r in hook["rules"] if r["resources"] != ["pods/binding"]]


def _drop_pod_update(cfg: Obj) -> None:
    _hook(cfg, ADMISSION_PODS)["rules"][0]["operations"] = ["CREATE"]


def _no_kube_system_exemption(cfg: Obj) -> None:
    _hook(cfg, ADMISSION_PODS)["namespaceSelector"]["matchExpressions"][0]["values"] = ["attest-system"]


def _extra_exemption(cfg: Obj) -> None:
    _hook(cfg, ADMISSION_PODS)["namespaceSelector"]["matchExpressions"][0]["values"].append("monitoring")


def _exempt_by_mutable_label(cfg: Obj) -> None:
    _hook(cfg, ADMISSION_PODS)["namespaceSelector"] = {
        "matchExpressions": [{"key": "attest-exempt", "operator": "DoesNotExist"}]
    }


def _node_namespace_selector(cfg: Obj) -> None:
    _hook(cfg, ADMISSION_NODES)["namespaceSelector"] = {"matchLabels": {"x": "y"}}


def _object_selector(cfg: Obj) -> None:
    _hook(cfg, ADMISSION_PODS)["objectSelector"] = {"matchLabels": {"attest": "checked"}}


def _wildcard_rule(cfg: Obj) -> None:
    _hook(cfg, ADMISSION_PODS)["rules"][0]["resources"] = ["*"]


def _pods_match_condition(cfg: Obj) -> None:
    _hook(cfg, ADMISSION_PODS)["matchConditions"] = [{"name": "x", "expression": "false"}]


def _duplicate_pods_webhook(cfg: Obj) -> None:
    copy = json.loads(json.dumps(_hook(cfg, ADMISSION_PODS)))
    copy["name"] = "pods2.attest.tpm-node-attest.io"
    cfg["webhooks"].append(copy)


def _schema_unknown_field(cfg: Obj) -> None:
    _hook(cfg, ADMISSION_PODS)["failurePolicyy"] = "Fail"


def _add_rbac_rule(rule: Obj) -> Callable[[Obj], None]:
    def change(role: Obj) -> None:
        role["rules"].append(rule)

    return change


def _drop_events_rule(role: Obj) -> None:
    role["rules"] = [r for r in role["rules"] if r["resources"] != ["events"]]


def _any_signer(role: Obj) -> None:
    next(r for r in role["rules"] if r["resources"] == ["signers"])["resourceNames"].append(
        "kubernetes.io/kube-apiserver-client"
    )


def _bind_agent(binding: Obj) -> None:
    binding["subjects"].append(
        {"kind": "ServiceAccount", "name": "attest-agent", "namespace": "attest-system"}
    )


def _no_run_as_non_root(dep: Obj) -> None:
    del dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    del _container(dep)["securityContext"]["runAsNonRoot"]


def _container_sc(key: str, value: Any) -> Callable[[Obj], None]:
    def change(obj: Obj) -> None:
        _container(obj)["securityContext"][key] = value

    return change


def _latest(dep: Obj) -> None:
    _container(dep)["image"] = "ghcr.io/tpm-node-attest/verifier:latest"


def _untagged(dep: Obj) -> None:
    _container(dep)["image"] = "ghcr.io/tpm-node-attest/verifier"


def _no_memory_limit(dep: Obj) -> None:
    del _container(dep)["resources"]["limits"]


def _no_readiness(dep: Obj) -> None:
    del _container(dep)["readinessProbe"]


def _http_liveness(dep: Obj) -> None:
    _container(dep)["livenessProbe"]["httpGet"]["scheme"] = "HTTP"


def _replicas(n: int) -> Callable[[Obj], None]:
    def change(dep: Obj) -> None:
        dep["spec"]["replicas"] = n

    return change


def _max_unavailable(dep: Obj) -> None:
    dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] = 1


def _tolerate_unverified(dep: Obj) -> None:
    dep["spec"]["template"]["spec"]["tolerations"].append({"key": "unverified", "operator": "Exists"})


def _tolerate_everything(dep: Obj) -> None:
    dep["spec"]["template"]["spec"]["tolerations"].append({"operator": "Exists"})


def _host_network(obj: Obj) -> None:
    obj["spec"]["template"]["spec"]["hostNetwork"] = True


def _agent_without_toleration(ds: Obj) -> None:
    ds["spec"]["template"]["spec"]["tolerations"] = [
        t for t in ds["spec"]["template"]["spec"]["tolerations"] if t["key"] != "unverified"
    ]


def _agent_mounts_tls_secret(ds: Obj) -> None:
    ds["spec"]["template"]["spec"]["volumes"][2] = {
        "name": "ca",
        "secret": {"secretName": "attest-verifier-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]},
    }


def _agent_token(ds: Obj) -> None:
    ds["spec"]["template"]["spec"]["automountServiceAccountToken"] = True


def _pdb_zero(pdb: Obj) -> None:
    pdb["spec"]["minAvailable"] = 0


def _pdb_other_pods(pdb: Obj) -> None:
    pdb["spec"]["selector"]["matchLabels"] = {"app.kubernetes.io/name": "something-else"}


def _service_port(svc: Obj) -> None:
    svc["spec"]["ports"] = [p for p in svc["spec"]["ports"] if p["port"] != 8443]


def _warn_only(binding: Obj) -> None:
    binding["spec"]["validationActions"] = ["Warn"]


def _policy_fails_open(policy: Obj) -> None:
    policy["spec"]["failurePolicy"] = "Ignore"


def _binding_names_other_policy(binding: Obj) -> None:
    binding["spec"]["policyName"] = "something-else"


def _policy_without_taint(policy: Obj) -> None:
    policy["spec"]["validations"] = policy["spec"]["validations"][1:]
    policy["spec"]["variables"] = [
        v for v in policy["spec"]["variables"] if "unverified" not in v["expression"]
    ]


def _certificate_without_service_name(cert: Obj) -> None:
    cert["spec"]["dnsNames"] = ["attest-verifier"]


def _certificate_other_secret(cert: Obj) -> None:
    cert["spec"]["secretName"] = "some-other-secret"


def _default_namespace(obj: Obj) -> None:
    del obj["metadata"]["namespace"]


WEBHOOK = ("base/webhook.yaml", "ValidatingWebhookConfiguration", "attest-verifier")
CLUSTER_ROLE = ("base/verifier-rbac.yaml", "ClusterRole", "attest-verifier")
ROLE = ("base/verifier-rbac.yaml", "Role", "attest-verifier")
VERIFIER = ("base/verifier-deployment.yaml", "Deployment", "attest-verifier")
AGENT = ("base/agent-daemonset.yaml", "DaemonSet", "attest-agent")
BINDING = (
    "base/node-registration-policy.yaml",
    "ValidatingAdmissionPolicyBinding",
    "attest-node-registration",
)
POLICY = ("base/node-registration-policy.yaml", "ValidatingAdmissionPolicy", "attest-node-registration")
CERT = ("overlays/cert-manager/certificate.yaml", "Certificate", "attest-verifier-tls")

BROKEN = {
    "failurePolicy Ignore": (WEBHOOK, _fail_open, "WH001"),
    "sideEffects Some": (WEBHOOK, _set_hook(ADMISSION_NODES, "sideEffects", "Some"), "WH002"),
    "timeoutSeconds 45": (WEBHOOK, _set_hook(ADMISSION_PODS, "timeoutSeconds", 45), "WH003"),
    "timeoutSeconds unset (10 s)": (
        WEBHOOK,
        lambda c: _hook(c, ADMISSION_CSRS).pop("timeoutSeconds"),
        "WH003",
    ),
    "matchPolicy Exact": (WEBHOOK, _set_hook(ADMISSION_PODS, "matchPolicy", "Exact"), "WH004"),
    "admissionReviewVersions v1beta1": (
        WEBHOOK,
        _set_hook(ADMISSION_NODES, "admissionReviewVersions", ["v1beta1"]),
        "WH005",
    ),
    "http url": (WEBHOOK, _http_url, "WH006"),
    "IP literal url": (WEBHOOK, _ip_url, "WH006"),
    "unknown path": (WEBHOOK, _wrong_path, "WH007"),
    "missing pods/binding": (WEBHOOK, _drop_binding, "WH008"),
    "missing Pod UPDATE": (WEBHOOK, _drop_pod_update, "WH008"),
    "kube-system not exempt": (WEBHOOK, _no_kube_system_exemption, "WH010"),
    "an extra exempt namespace": (WEBHOOK, _extra_exemption, "WH010"),
    "exemption by a mutable label": (WEBHOOK, _exempt_by_mutable_label, "WH010"),
    "namespaceSelector on Nodes": (WEBHOOK, _node_namespace_selector, "WH011"),
    "objectSelector": (WEBHOOK, _object_selector, "WH012"),
    "wildcard webhook resource": (WEBHOOK, _wildcard_rule, "WH013"),
    "matchConditions on pods": (WEBHOOK, _pods_match_condition, "WH014"),
    "path served twice": (WEBHOOK, _duplicate_pods_webhook, "WH015"),
    "schema: unknown field": (WEBHOOK, _schema_unknown_field, "K8S001"),
    "wildcard RBAC verb": (
        CLUSTER_ROLE,
        _add_rbac_rule({"apiGroups": [""], "resources": ["nodes"], "verbs": ["*"]}),
        "RBAC001",
    ),
    "extra RBAC resource": (
        CLUSTER_ROLE,
        _add_rbac_rule({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}),
        "RBAC002",
    ),
    "extra RBAC verb": (
        CLUSTER_ROLE,
        _add_rbac_rule({"apiGroups": [""], "resources": ["nodes"], "verbs": ["update"]}),
        "RBAC002",
    ),
    "a third signer": (CLUSTER_ROLE, _any_signer, "RBAC002"),
    "missing events": (CLUSTER_ROLE, _drop_events_rule, "RBAC002"),
    "leases delete": (
        ROLE,
        _add_rbac_rule({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["delete"]}),
        "RBAC003",
    ),
    "agent bound to the verifier role": (
        ("base/verifier-rbac.yaml", "ClusterRoleBinding", "attest-verifier"),
        _bind_agent,
        "RBAC005",
    ),
    "no runAsNonRoot": (VERIFIER, _no_run_as_non_root, "SEC001"),
    "readOnlyRootFilesystem false": (VERIFIER, _container_sc("readOnlyRootFilesystem", False), "SEC002"),
    "allowPrivilegeEscalation true": (VERIFIER, _container_sc("allowPrivilegeEscalation", True), "SEC003"),
    "capability added": (
        VERIFIER,
        _container_sc("capabilities", {"drop": ["ALL"], "add": ["NET_ADMIN"]}),
        "SEC004",
    ),
    "image :latest": (VERIFIER, _latest, "SEC005"),
    "image without tag": (VERIFIER, _untagged, "SEC005"),
    "no memory limit": (VERIFIER, _no_memory_limit, "SEC006"),
    "privileged agent": (AGENT, _container_sc("privileged", True), "SEC007"),
    "seccomp Unconfined": (AGENT, _container_sc("seccompProfile", {"type": "Unconfined"}), "SEC008"),
    "agent on the host network": (AGENT, _host_network, "SEC009"),
    "no readiness probe": (VERIFIER, _no_readiness, "DEP001"),
    "liveness over http": (VERIFIER, _http_liveness, "DEP001"),
    "one replica on PostgreSQL": (VERIFIER, _replicas(1), "DEP002"),
    "rollout may drop a replica": (VERIFIER, _max_unavailable, "DEP003"),
    "verifier tolerates unverified": (VERIFIER, _tolerate_unverified, "DEP004"),
    "verifier tolerates everything": (VERIFIER, _tolerate_everything, "DEP004"),
    "PDB minAvailable 0": (
        ("base/verifier-pdb.yaml", "PodDisruptionBudget", "attest-verifier"),
        _pdb_zero,
        "DEP005",
    ),
    "PDB selects other pods": (
        ("base/verifier-pdb.yaml", "PodDisruptionBudget", "attest-verifier"),
        _pdb_other_pods,
        "DEP005",
    ),
    "no agent port on the Service": (
        ("base/verifier-service.yaml", "Service", "attest-verifier"),
        _service_port,
        "DEP006",
    ),
    "agent without the toleration": (AGENT, _agent_without_toleration, "AGT001"),
    "agent mounts the TLS Secret": (AGENT, _agent_mounts_tls_secret, "AGT002"),
    "agent with an API token": (AGENT, _agent_token, "AGT002"),
    "binding validationActions [Warn]": (BINDING, _warn_only, "VAP002"),
    "policy fails open": (POLICY, _policy_fails_open, "VAP001"),
    "policy no longer requires the taint": (POLICY, _policy_without_taint, "VAP001"),
    "binding names another policy": (BINDING, _binding_names_other_policy, "VAP003"),
    "certificate misses the service name": (CERT, _certificate_without_service_name, "CM001"),
    "injected CA is not the served certificate's": (CERT, _certificate_other_secret, "CM002"),
    "object in the default namespace": (
        ("base/verifier-service.yaml", "Service", "attest-verifier"),
        _default_namespace,
        "K8S003",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_lint_rejects_broken_copy(tmp_path: Path, case: str) -> None:
    (relpath, kind, name), change, rule = BROKEN[case]
    root = _copy(tmp_path)
    _edit(root, relpath, kind, name, change)
    violations = lint.lint(root, VERSIONS)
    assert rule in {v.rule for v in violations}, "\n".join(map(str, violations))
    hit = next(v for v in violations if v.rule == rule)
    assert str(hit).startswith(f"{hit.source}: {hit.ref}: {hit.field}: {rule} ")


def test_kubernetes_validate_alone_accepts_what_the_project_rules_refuse(tmp_path: Path) -> None:
    """The reason the project's rules exist: a fail-open, slow, plain-http webhook is schema-valid."""
    root = _copy(tmp_path)

    def weaken(cfg: Obj) -> None:
        _fail_open(cfg)
        _hook(cfg, ADMISSION_PODS)["timeoutSeconds"] = 30  # the schema's own maximum
        _hook(cfg, ADMISSION_NODES)["clientConfig"] = {"url": "http://attest.example.com/v1/admission/nodes"}

    _edit(root, *WEBHOOK, weaken)
    (cfg,) = [d for d in yaml.safe_load_all((root / WEBHOOK[0]).read_text()) if d]
    for version in lint.default_versions():
        lint.kubernetes_validate.validate(cfg, version, strict=True)  # no exception
    assert {"WH001", "WH003", "WH006"} <= _rules(root)


def test_removing_an_object_from_the_install_is_reported(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    k = root / "base" / "kustomization.yaml"
    doc = yaml.safe_load(k.read_text())
    doc["resources"].remove("agent-daemonset.yaml")
    doc["resources"].remove("node-registration-policy.yaml")
    k.write_text(yaml.safe_dump(doc))
    found = {(v.source, v.rule, v.message) for v in lint.lint(root, VERSIONS) if v.ref == "(install)"}
    for install in ("base", "overlays/cert-manager", "overlays/single-node-sqlite"):
        assert (f"{install}/kustomization.yaml", "INS001", "lacks DaemonSet/attest-agent") in found
        assert any(s == f"{install}/kustomization.yaml" and rule == "VAP001" for s, rule, _ in found)


def test_sqlite_overlay_must_stay_single_replica(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    k = root / "overlays" / "single-node-sqlite" / "kustomization.yaml"
    k.write_text(
        k.read_text().replace(
            "value: 1\n      - op: replace\n        path: /spec/strategy",
            "value: 2\n      - op: replace\n        path: /spec/strategy",
        )
    )
    violations = lint.lint(root, VERSIONS)
    assert [(v.rule, v.source) for v in violations] == [
        (
            "DEP002",
            "base/verifier-deployment.yaml (patched by overlays/single-node-sqlite/kustomization.yaml)",
        )
    ]


def test_an_overlay_that_weakens_the_base_is_caught(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    weak = root / "overlays" / "weak"
    weak.mkdir()
    (weak / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": ["../../base"],
                "images": [{"name": "ghcr.io/tpm-node-attest/agent", "newTag": "latest"}],
                "patches": [
                    {
                        "target": {"kind": "ValidatingWebhookConfiguration", "name": "attest-verifier"},
                        "patch": "- {op: replace, path: /webhooks/2/failurePolicy, value: Ignore}",
                    }
                ],
            }
        )
    )
    found = {(v.rule, v.source) for v in lint.lint(root, VERSIONS)}
    assert ("WH001", "base/webhook.yaml (patched by overlays/weak/kustomization.yaml)") in found
    assert ("SEC005", "base/agent-daemonset.yaml") in found


def test_rules_are_documented() -> None:
    """docs/deploy.md lists every rule id with the lint's own wording, and nothing else."""
    text = (REPO / "docs" / "deploy.md").read_text()
    rows = [line.split("|")[1:3] for line in text.splitlines() if line.startswith("| `")]
    documented = {cells[0].strip().strip("`"): cells[1].strip() for cells in rows}
    assert documented == lint.RULES
