"""Lint for the Kubernetes manifests in deploy/: the API schemas, then the project's own rules.

    python -m deploy.lint [DIR] [--kubernetes-version X.Y ...] [--list-rules]

Every YAML file under DIR (default: this directory) is read. A kustomization.yaml is rendered
here, with no kustomize binary: resources (files and directories), labels (metadata only),
images and JSON 6902 patches, the features deploy/ uses; any other kustomization field is
refused, never ignored, so what is linted is what `kubectl apply -k` applies. Each rendered
kustomization is one install, which must hold everything the cluster needs. Every other file
holds Kubernetes objects, each checked on its own.

Each object is validated with kubernetes-validate in strict mode (an unknown field is an error)
against every requested Kubernetes version (default: the oldest supported, 1.30, and the newest
kubernetes-validate knows), then against the rules in RULES. The schema check reports the first
error of each object; the project's rules report every violation. One line each:

    FILE: Kind/name: FIELD: RULE message

Exit codes: 0 clean; 1 violations, all listed on stdout; 2 unusable input (unreadable YAML, a
missing resource, an unsupported kustomization feature, an unknown Kubernetes version), one
line on stderr.
"""

from __future__ import annotations

import argparse
import copy
import functools
import ipaddress
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import kubernetes_validate
import yaml

from attest.wire import ADMISSION_CSRS, ADMISSION_NODES, ADMISSION_PATHS, ADMISSION_PODS

Obj = dict[str, Any]

NAMESPACE: Final = "attest-system"
VERIFIER: Final = "attest-verifier"
AGENT: Final = "attest-agent"
TAINT_KEY: Final = "unverified"
TLS_SECRET_NAME: Final = "attest-verifier-tls"  # noqa: S105 - a Secret's name, not a password
VERIFIER_PORT: Final = 8443
# Exempt from the pod webhook, by the immutable kubernetes.io/metadata.name label: the cluster's
# own components, and the verifier and agents, which must start on unattested nodes.
EXEMPT_NAMESPACES: Final = frozenset({"kube-system", NAMESPACE})
MAX_WEBHOOK_TIMEOUT: Final = 5
MIN_KUBERNETES: Final = (1, 30)  # matchConditions and admissionregistration.k8s.io/v1 policies are GA

RULES: Final = {
    "K8S001": "the object validates against the Kubernetes API schema (strict: unknown fields are errors)",
    "K8S002": "the kind has a schema (built-in), or is a known CRD (cert-manager Issuer, Certificate)",
    "K8S003": f"namespaced objects name their namespace, {NAMESPACE} (nothing sets it for them)",
    "INS001": "an install holds every object the system needs",
    "WH001": "webhook failurePolicy is Fail",
    "WH002": "webhook sideEffects is None or NoneOnDryRun",
    "WH003": f"webhook timeoutSeconds is set and at most {MAX_WEBHOOK_TIMEOUT}",
    "WH004": "webhook matchPolicy is Equivalent",
    "WH005": "webhook admissionReviewVersions includes v1",
    "WH006": "a webhook clientConfig.url is https with a host name, not an IP literal (prefer service)",
    "WH007": f"a webhook clientConfig.service is {NAMESPACE}/{VERIFIER}, port 443, an admission path",
    "WH008": "the pods webhook covers pods CREATE/UPDATE, pods/binding, pods/ephemeralcontainers",
    "WH009": "the nodes webhook covers nodes CREATE/UPDATE; the CSR webhook covers CSR CREATE",
    "WH010": "the pods webhook exempts exactly kube-system and attest-system by kubernetes.io/metadata.name",
    "WH011": "the nodes and CSR webhooks have no namespaceSelector (cluster-scoped: it would select nothing)",
    "WH012": "no webhook has an objectSelector (requesters choose object labels; Bindings have none)",
    "WH013": "webhook rules name API groups, versions, resources and operations, never '*'",
    "WH014": "the pods webhook has no matchConditions (every pod path is checked)",
    "WH015": "the install's webhooks serve each admission path of attest.wire exactly once",
    "VAP001": "a ValidatingAdmissionPolicy requires the taint at Node CREATE; policies fail closed",
    "VAP002": "ValidatingAdmissionPolicyBinding validationActions include Deny",
    "VAP003": "every policy has a binding and every binding names a policy of the install",
    "RBAC001": "no '*' in any Role or ClusterRole",
    "RBAC002": "the verifier's ClusterRole grants exactly the allowed rights",
    "RBAC003": "the verifier's Role grants exactly leases get/create/update",
    "RBAC004": "deploy/ defines no Role or ClusterRole but the verifier's",
    "RBAC005": "bindings bind only the verifier's roles, to the verifier's ServiceAccount only",
    "SEC001": "containers run as non-root (one justified exception: the agent, uid 0 without capabilities)",
    "SEC002": "containers have readOnlyRootFilesystem true",
    "SEC003": "containers have allowPrivilegeEscalation false",
    "SEC004": "containers drop ALL capabilities and add none",
    "SEC005": "images have a tag or digest, never latest",
    "SEC006": "containers request cpu and memory and limit memory",
    "SEC007": "no container is privileged",
    "SEC008": "containers use the RuntimeDefault (or a Localhost) seccomp profile",
    "SEC009": "no pod uses the host's network, PID or IPC namespace",
    "DEP001": "the verifier has liveness /healthz and readiness /readyz probes over HTTPS",
    "DEP002": "the verifier runs 2+ replicas on PostgreSQL, exactly 1 on SQLite",
    "DEP003": "verifier rollouts never lower serving replicas (maxUnavailable 0), or Recreate on SQLite",
    "DEP004": "the verifier does not tolerate the unverified taint",
    "DEP005": "a PodDisruptionBudget keeps a replicated verifier serving",
    "DEP006": "the verifier Service exposes 443 (API server) and 8443 (agents) on the verifier's port",
    "AGT001": "the agent DaemonSet tolerates unverified:NoSchedule",
    "AGT002": "the agent mounts no Secret and no service account token",
    "CM001": "the verifier's cert-manager Certificate covers attest-verifier.attest-system.svc",
    "CM002": "cert-manager.io/inject-ca-from names the install's Certificate for the mounted TLS Secret",
}

CLUSTER_SCOPED: Final = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "PriorityClass",
        "CustomResourceDefinition",
        "ClusterIssuer",
        "StorageClass",
        "PersistentVolume",
    }
)
# No schema in kubernetes-validate; checked by CM001/CM002 instead.
KNOWN_CRDS: Final = frozenset(
    {
        ("cert-manager.io/v1", "Issuer"),
        ("cert-manager.io/v1", "ClusterIssuer"),
        ("cert-manager.io/v1", "Certificate"),
    }
)

Grant = tuple[str, str, str | None, str]  # API group, resource, resource name (None: all), verb
SIGNERS: Final = ("kubernetes.io/kube-apiserver-client-kubelet", "kubernetes.io/kubelet-serving")
CERTS: Final = "certificates.k8s.io"
VERIFIER_CLUSTER_GRANTS: Final[frozenset[Grant]] = frozenset(
    [("", "nodes", None, v) for v in ("get", "list", "watch", "patch")]
    + [("", "events", None, v) for v in ("create", "patch")]
    + [(CERTS, "certificatesigningrequests", None, v) for v in ("get", "list", "watch")]
    + [(CERTS, "certificatesigningrequests/approval", None, "update")]
    + [(CERTS, "signers", signer, "approve") for signer in SIGNERS]
)
VERIFIER_ROLE_GRANTS: Final[frozenset[Grant]] = frozenset(
    ("coordination.k8s.io", "leases", None, v) for v in ("get", "create", "update")
)

Op = tuple[str, str, str]  # API group, resource, operation
PODS_OPS: Final[frozenset[Op]] = frozenset(
    {
        ("", "pods", "CREATE"),
        ("", "pods", "UPDATE"),
        ("", "pods/binding", "CREATE"),
        ("", "pods/ephemeralcontainers", "UPDATE"),
    }
)
NODES_OPS: Final[frozenset[Op]] = frozenset({("", "nodes", "CREATE"), ("", "nodes", "UPDATE")})
CSRS_OPS: Final[frozenset[Op]] = frozenset({(CERTS, "certificatesigningrequests", "CREATE")})
REQUIRED_OPS: Final = {ADMISSION_PODS: PODS_OPS, ADMISSION_NODES: NODES_OPS, ADMISSION_CSRS: CSRS_OPS}

# The one container allowed to run as uid 0: the agent reads root-only securityfs logs and the
# TPM device through owner permission bits, with every capability dropped and not privileged
# (SEC004/SEC007 still apply to it); deploy/base/agent-daemonset.yaml explains the choice.
ROOT_ALLOWED: Final = frozenset({("DaemonSet", AGENT, "agent")})

# Kinds with a pod template, and where it is.
POD_SPECS: Final = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}

# libyaml's safe loader when PyYAML has it (several times faster), else the pure-Python one.
_YAML_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

KUSTOMIZATION_NAMES: Final = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUSTOMIZE_FIELDS: Final = frozenset({"apiVersion", "kind", "resources", "labels", "images", "patches"})


class InputError(Exception):
    """The input cannot be linted (exit 2)."""


@dataclass(frozen=True)
class Doc:
    obj: Obj
    source: str  # where it came from, relative to the linted directory

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def namespace(self) -> str | None:
        ns = self.obj["metadata"].get("namespace")
        return ns if isinstance(ns, str) else None

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"

    def is_(self, kind: str, name: str) -> bool:
        return self.kind == kind and self.name == name


@dataclass(frozen=True, order=True)
class Violation:
    source: str
    ref: str
    field: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.ref}: {self.field}: {self.rule} {self.message}"


def _v(doc: Doc, rule: str, field: str, message: str) -> Violation:
    return Violation(doc.source, doc.ref, field, rule, message)


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


# --- reading and rendering -------------------------------------------------------------------


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _load_yaml(path: Path, root: Path) -> list[Any]:
    try:
        return [
            d for d in yaml.load_all(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER) if d is not None
        ]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{_rel(path, root)}: cannot read: {e}") from None
    except yaml.YAMLError as e:
        raise InputError(f"{_rel(path, root)}: not YAML: {' '.join(str(e).split())}") from None


def load_objects(path: Path, root: Path) -> list[Doc]:
    """The Kubernetes objects in one YAML file."""
    docs = []
    for item in _load_yaml(path, root):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("apiVersion"), str)
            and isinstance(item.get("kind"), str)
            and isinstance(_get(item, "metadata", "name"), str)
        ):
            raise InputError(
                f"{_rel(path, root)}: a document is not a Kubernetes object (apiVersion, kind, metadata.name)"
            )
        docs.append(Doc(item, _rel(path, root)))
    return docs


def _kustomization_file(directory: Path) -> Path | None:
    for name in KUSTOMIZATION_NAMES:
        if (directory / name).is_file():
            return directory / name
    return None


def render(kfile: Path, root: Path, stack: tuple[Path, ...] = ()) -> list[Doc]:
    """What `kubectl apply -k` would apply for this kustomization file (the subset deploy/ uses)."""
    where = _rel(kfile, root)
    if kfile.resolve() in stack:
        raise InputError(f"{where}: kustomization cycle")
    loaded = _load_yaml(kfile, root)
    if len(loaded) != 1 or not isinstance(loaded[0], dict):
        raise InputError(f"{where}: a kustomization is one mapping")
    k: Obj = loaded[0]
    unsupported = sorted(set(k) - KUSTOMIZE_FIELDS)
    if unsupported:
        raise InputError(
            f"{where}: kustomization field(s) {', '.join(unsupported)} not supported by deploy/lint.py"
        )
    docs: list[Doc] = []
    for entry in _list(k.get("resources")):
        if not isinstance(entry, str) or "://" in entry or entry.startswith("github.com/"):
            raise InputError(f"{where}: resource {entry!r}: only local files and directories are supported")
        path = kfile.parent / entry
        if path.is_dir():
            inner = _kustomization_file(path)
            if inner is None:
                raise InputError(f"{where}: resource {entry!r} is a directory without a kustomization")
            docs.extend(render(inner, root, (*stack, kfile.resolve())))
        elif path.is_file():
            docs.extend(Doc(copy.deepcopy(d.obj), d.source) for d in load_objects(path, root))
        else:
            raise InputError(f"{where}: resource {entry!r} does not exist")
    # kustomize's order: patches, then labels, then images.
    for patch in _list(k.get("patches")):
        docs = _apply_patch(docs, patch, kfile, root)
    for label in _list(k.get("labels")):
        _apply_labels(docs, label, where)
    for image in _list(k.get("images")):
        _apply_image(docs, image, where)
    seen: set[tuple[str, str, str | None, str]] = set()
    for d in docs:
        identity = (d.obj["apiVersion"].split("/")[0], d.kind, d.namespace, d.name)
        if identity in seen:
            raise InputError(f"{where}: {d.ref} appears twice")
        seen.add(identity)
    return docs


def _apply_patch(docs: list[Doc], patch: Any, kfile: Path, root: Path) -> list[Doc]:
    where = _rel(kfile, root)
    if not isinstance(patch, dict) or set(patch) - {"target", "patch", "path"}:
        raise InputError(f"{where}: patches: only entries with target and patch (or path) are supported")
    target = _dict(patch.get("target"))
    if not target or set(target) - {"group", "version", "kind", "name", "namespace"}:
        raise InputError(f"{where}: patches: a target of group/version/kind/name/namespace is required")
    if isinstance(patch.get("patch"), str):
        text = patch["patch"]
    elif isinstance(patch.get("path"), str):
        try:
            text = (kfile.parent / patch["path"]).read_text(encoding="utf-8")
        except OSError as e:
            raise InputError(f"{where}: patch {patch['path']}: {e}") from None
    else:
        raise InputError(f"{where}: patches: each needs patch text or a path")
    try:
        ops = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(f"{where}: patch is not YAML: {' '.join(str(e).split())}") from None
    if not isinstance(ops, list):
        raise InputError(f"{where}: only JSON 6902 patches (a list of operations) are supported")
    out, matched = [], False
    for d in docs:
        api = d.obj["apiVersion"]
        group, version = api.rsplit("/", 1) if "/" in api else ("", api)
        facts = {"group": group, "version": version, "kind": d.kind, "name": d.name, "namespace": d.namespace}
        if all(facts[key] == value for key, value in target.items()):
            matched = True
            obj = copy.deepcopy(d.obj)
            for op in ops:
                _json_patch_op(obj, op, f"{where}: patch of {d.ref}")
            source = d.source if "(patched by" in d.source else f"{d.source} (patched by {where})"
            out.append(Doc(obj, source))
        else:
            out.append(d)
    if not matched:
        # kustomize would apply nothing; a patch that patches nothing is a mistake worth stopping on.
        raise InputError(f"{where}: patch target {json.dumps(target, sort_keys=True)} matches no object")
    return out


def _json_patch_op(obj: Obj, op: Any, where: str) -> None:
    """One RFC 6902 operation (add, remove, replace, test), in place."""
    if not isinstance(op, dict) or op.get("op") not in ("add", "remove", "replace", "test"):
        raise InputError(f"{where}: operation {op!r}: only add, remove, replace and test are supported")
    kind, path = op["op"], op.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise InputError(f"{where}: {kind}: path {path!r} is not a JSON pointer")
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]
    parent: Any = obj
    for part in parts[:-1]:
        if isinstance(parent, dict) and part in parent:
            parent = parent[part]
        elif isinstance(parent, list) and part.isdigit() and int(part) < len(parent):
            parent = parent[int(part)]
        else:
            raise InputError(f"{where}: {kind} {path}: no such location")
    last = parts[-1]
    if kind in ("add", "replace", "test") and "value" not in op:
        raise InputError(f"{where}: {kind} {path}: no value")
    value = copy.deepcopy(op.get("value"))
    if isinstance(parent, list):
        if kind == "add" and last == "-":
            parent.append(value)
            return
        size = len(parent) + (1 if kind == "add" else 0)
        if not last.isdigit() or int(last) >= size:
            raise InputError(f"{where}: {kind} {path}: no such index")
        index = int(last)
        if kind == "add":
            parent.insert(index, value)
        elif kind == "remove":
            del parent[index]
        elif kind == "replace":
            parent[index] = value
        elif parent[index] != value:
            raise InputError(f"{where}: test {path} failed: {parent[index]!r} is not {value!r}")
    elif isinstance(parent, dict):
        if kind == "add":
            parent[last] = value
        elif last not in parent:
            raise InputError(f"{where}: {kind} {path}: no such member")
        elif kind == "remove":
            del parent[last]
        elif kind == "replace":
            parent[last] = value
        elif parent[last] != value:
            raise InputError(f"{where}: test {path} failed: {parent[last]!r} is not {value!r}")
    else:
        raise InputError(f"{where}: {kind} {path}: parent is not an object or array")


def _apply_labels(docs: list[Doc], label: Any, where: str) -> None:
    pairs = _get(label, "pairs")
    if (
        not isinstance(label, dict)
        or set(label) - {"pairs", "includeSelectors", "includeTemplates"}
        or label.get("includeSelectors")
        or label.get("includeTemplates")
        or not isinstance(pairs, dict)
    ):
        raise InputError(
            f"{where}: labels: only pairs on metadata (no selectors, templates or fields) are supported"
        )
    for d in docs:
        meta = d.obj["metadata"]
        if not isinstance(meta.get("labels"), dict):
            meta["labels"] = {}
        meta["labels"].update({str(k): str(v) for k, v in pairs.items()})


def _split_image(image: str) -> tuple[str, str]:
    """(name, ":tag" or "@digest" or "")."""
    at = image.find("@")
    if at >= 0:
        return image[:at], image[at:]
    colon = image.rfind(":")
    if colon > image.rfind("/"):
        return image[:colon], image[colon:]
    return image, ""


def _apply_image(docs: list[Doc], image: Any, where: str) -> None:
    if (
        not isinstance(image, dict)
        or not isinstance(image.get("name"), str)
        or set(image)
        - {
            "name",
            "newName",
            "newTag",
            "digest",
        }
    ):
        raise InputError(f"{where}: images: entries of name, newName, newTag, digest are supported")
    for d in docs:
        spec = _pod_spec(d)
        if spec is None:
            continue
        for c in _containers(spec):
            if not isinstance(c.get("image"), str):
                continue
            name, suffix = _split_image(c["image"])
            if name != image["name"]:
                continue
            if "newTag" in image:
                suffix = f":{image['newTag']}"
            if "digest" in image:
                suffix = f"@{image['digest']}"
            c["image"] = str(image.get("newName", name)) + suffix


# --- per-object rules ------------------------------------------------------------------------


def _pod_spec(d: Doc) -> Obj | None:
    path = POD_SPECS.get(d.kind)
    spec = _get(d.obj, *path) if path else None
    return spec if isinstance(spec, dict) else None


def _pod_spec_field(d: Doc) -> str:
    return ".".join(POD_SPECS[d.kind])


def _containers(spec: Obj) -> Iterator[Obj]:
    for key in ("initContainers", "containers"):
        yield from (c for c in _list(spec.get(key)) if isinstance(c, dict))


@functools.lru_cache(maxsize=2048)
def _schema_error(obj_json: str, version: str) -> tuple[str, str] | None:
    """(field, message) of the first schema error, ("", "") when there is no schema, else None.

    Cached by the object's JSON: validating reads the version's whole schema file, and the same
    object comes back from the file itself, every kustomization that includes it, and every
    lint run in one process (the tests).
    """
    try:
        kubernetes_validate.validate(json.loads(obj_json), version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return ".".join(str(p) for p in e.path) or "(object)", str(e.message)
    except kubernetes_validate.SchemaNotFoundError:
        return "", ""
    return None


def check_schema(d: Doc, versions: Sequence[str]) -> Iterator[Violation]:
    obj_json = json.dumps(d.obj, sort_keys=True, default=str)
    for version in versions:
        error = _schema_error(obj_json, version)
        if error == ("", ""):
            if (d.obj["apiVersion"], d.kind) not in KNOWN_CRDS:
                yield _v(
                    d,
                    "K8S002",
                    "apiVersion",
                    f"no schema for {d.obj['apiVersion']} {d.kind} in Kubernetes {version}",
                )
        elif error is not None:
            yield _v(d, "K8S001", error[0], f"{error[1]} (Kubernetes {version})")
    if d.kind not in CLUSTER_SCOPED and d.namespace != NAMESPACE:
        yield _v(d, "K8S003", "metadata.namespace", f"is {d.namespace!r}, must be {NAMESPACE!r}")


def _rule_ops(rule: Obj) -> set[Op]:
    """What a webhook or policy rule matches, in API version v1; '*' counts as matching."""
    if not {"v1", "*"} & set(_list(rule.get("apiVersions"))):
        return set()
    ops = _list(rule.get("operations"))
    resources = _list(rule.get("resources"))
    wanted = PODS_OPS | NODES_OPS | CSRS_OPS
    out = set()
    for group, resource, operation in wanted:
        groups = _list(rule.get("apiGroups"))
        if group not in groups and "*" not in groups:
            continue
        if operation not in ops and "*" not in ops:
            continue
        top, _, sub = resource.partition("/")
        if (
            resource in resources
            or "*/*" in resources
            or ("*" in resources and not sub)
            or (sub and f"{top}/*" in resources)
            or (sub and f"*/{sub}" in resources)
        ):
            out.add((group, resource, operation))
    return out


def _names(ops: Iterable[Op]) -> str:
    return ", ".join(f"{r} {o}" for _, r, o in sorted(ops))


def check_webhook_configuration(d: Doc) -> Iterator[Violation]:
    for i, item in enumerate(_list(d.obj.get("webhooks"))):
        hook = _dict(item)
        f = f"webhooks[{hook.get('name', i)}]"
        if hook.get("failurePolicy") != "Fail":
            yield _v(
                d,
                "WH001",
                f"{f}.failurePolicy",
                f"is {hook.get('failurePolicy')!r}: must be Fail (fail closed)",
            )
        if hook.get("sideEffects") not in ("None", "NoneOnDryRun"):
            yield _v(
                d,
                "WH002",
                f"{f}.sideEffects",
                f"is {hook.get('sideEffects')!r}: must be None or NoneOnDryRun",
            )
        timeout = hook.get("timeoutSeconds")
        if not isinstance(timeout, int) or timeout > MAX_WEBHOOK_TIMEOUT:
            shown = "unset (10 s)" if timeout is None else f"{timeout!r}"
            yield _v(d, "WH003", f"{f}.timeoutSeconds", f"is {shown}: must be at most {MAX_WEBHOOK_TIMEOUT}")
        if hook.get("matchPolicy") != "Equivalent":
            yield _v(d, "WH004", f"{f}.matchPolicy", f"is {hook.get('matchPolicy')!r}: must be Equivalent")
        if "v1" not in _list(hook.get("admissionReviewVersions")):
            yield _v(d, "WH005", f"{f}.admissionReviewVersions", "must include v1")
        client = _dict(hook.get("clientConfig"))
        path = None
        if "url" in client:
            url = str(client["url"])
            parts = urlsplit(url)
            path = parts.path
            if parts.scheme != "https":
                yield _v(
                    d, "WH006", f"{f}.clientConfig.url", f"{url!r} is not https (prefer clientConfig.service)"
                )
            try:
                ipaddress.ip_address(parts.hostname or "")
                yield _v(
                    d,
                    "WH006",
                    f"{f}.clientConfig.url",
                    f"{url!r}: an IP literal cannot be checked against a certificate name",
                )
            except ValueError:
                pass
        service = _dict(client.get("service"))
        if service:
            path = service.get("path")
            if (service.get("namespace"), service.get("name")) != (NAMESPACE, VERIFIER) or service.get(
                "port", 443
            ) != 443:
                yield _v(
                    d,
                    "WH007",
                    f"{f}.clientConfig.service",
                    f"must be {NAMESPACE}/{VERIFIER} port 443, is "
                    f"{service.get('namespace')}/{service.get('name')} port {service.get('port', 443)}",
                )
        if path not in ADMISSION_PATHS:
            yield _v(
                d, "WH007", f"{f}.clientConfig", f"path {path!r} is not one of {', '.join(ADMISSION_PATHS)}"
            )
        rules = [_dict(r) for r in _list(hook.get("rules"))]
        for j, rule in enumerate(rules):
            for key in ("apiGroups", "apiVersions", "resources", "operations"):
                if any(isinstance(x, str) and "*" in x for x in _list(rule.get(key))):
                    yield _v(d, "WH013", f"{f}.rules[{j}].{key}", f"{rule.get(key)!r} uses '*'")
        if hook.get("objectSelector"):
            yield _v(
                d, "WH012", f"{f}.objectSelector", "must not be set: object labels are the requester's choice"
            )
        covered = set().union(*(_rule_ops(r) for r in rules)) if rules else set()
        if path == ADMISSION_PODS:
            missing = PODS_OPS - covered
            if missing:
                yield _v(d, "WH008", f"{f}.rules", f"do not cover {_names(missing)}")
            yield from _check_pod_namespaces(d, f, _dict(hook.get("namespaceSelector")))
            if hook.get("matchConditions"):
                yield _v(d, "WH014", f"{f}.matchConditions", "must not be set on the pods webhook")
        elif path in (ADMISSION_NODES, ADMISSION_CSRS):
            missing = REQUIRED_OPS[path] - covered
            if missing:
                yield _v(d, "WH009", f"{f}.rules", f"do not cover {_names(missing)}")
            if hook.get("namespaceSelector"):
                yield _v(
                    d, "WH011", f"{f}.namespaceSelector", "must not be set: Nodes and CSRs have no namespace"
                )


def _check_pod_namespaces(d: Doc, f: str, selector: Obj) -> Iterator[Violation]:
    exprs = _list(selector.get("matchExpressions"))
    ok = (
        not selector.get("matchLabels")
        and len(exprs) == 1
        and _get(exprs[0], "key") == "kubernetes.io/metadata.name"
        and _get(exprs[0], "operator") == "NotIn"
        and sorted(_list(_get(exprs[0], "values"))) == sorted(EXEMPT_NAMESPACES)
    )
    if not ok:
        yield _v(
            d,
            "WH010",
            f"{f}.namespaceSelector",
            f"must be exactly kubernetes.io/metadata.name NotIn {sorted(EXEMPT_NAMESPACES)}, "
            f"is {json.dumps(selector, sort_keys=True)}",
        )


def _grants(rules: Any) -> set[Grant]:
    out: set[Grant] = set()
    for item in _list(rules):
        rule = _dict(item)
        names = _list(rule.get("resourceNames")) or [None]
        for verb in _list(rule.get("verbs")):
            for url in _list(rule.get("nonResourceURLs")):
                out.add(("(non-resource)", str(url), None, str(verb)))
            for group in _list(rule.get("apiGroups")):
                for resource in _list(rule.get("resources")):
                    for name in names:
                        out.add((str(group), str(resource), name, str(verb)))
    return out


def _grant_text(g: Grant) -> str:
    group, resource, name, verb = g
    where = f"{group}/{resource}" if group else resource
    return f"{verb} {where}" + (f" [{name}]" if name else "")


def check_role(d: Doc) -> Iterator[Violation]:
    for i, rule in enumerate(_list(d.obj.get("rules"))):
        for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            if any(isinstance(x, str) and "*" in x for x in _list(_dict(rule).get(key))):
                yield _v(d, "RBAC001", f"rules[{i}].{key}", f"{_dict(rule).get(key)!r} uses '*'")
    if d.is_("ClusterRole", VERIFIER):
        rule, allowed = "RBAC002", VERIFIER_CLUSTER_GRANTS
    elif d.is_("Role", VERIFIER) and d.namespace == NAMESPACE:
        rule, allowed = "RBAC003", VERIFIER_ROLE_GRANTS
    else:
        yield _v(
            d, "RBAC004", "metadata.name", f"unexpected {d.kind}: deploy/ grants rights to the verifier only"
        )
        return
    granted = _grants(d.obj.get("rules"))
    for g in sorted(granted - allowed, key=str):
        yield _v(d, rule, "rules", f"grants {_grant_text(g)}, beyond the allowed set")
    for g in sorted(allowed - granted, key=str):
        yield _v(d, rule, "rules", f"lacks {_grant_text(g)}, which the verifier needs")


def check_binding(d: Doc) -> Iterator[Violation]:
    role_kind = "ClusterRole" if d.kind == "ClusterRoleBinding" else "Role"
    ref = _dict(d.obj.get("roleRef"))
    if (ref.get("kind"), ref.get("name")) != (role_kind, VERIFIER):
        yield _v(
            d, "RBAC005", "roleRef", f"binds {ref.get('kind')}/{ref.get('name')}, not {role_kind}/{VERIFIER}"
        )
    subjects = [
        (_get(s, "kind"), _get(s, "name"), _get(s, "namespace")) for s in _list(d.obj.get("subjects"))
    ]
    if subjects != [("ServiceAccount", VERIFIER, NAMESPACE)]:
        yield _v(
            d, "RBAC005", "subjects", f"must be only ServiceAccount {NAMESPACE}/{VERIFIER}, are {subjects}"
        )


def _tolerates(tolerations: Any, effect: str) -> bool:
    for item in _list(tolerations):
        t = _dict(item)
        key_ok = t.get("key") == TAINT_KEY or (not t.get("key") and t.get("operator") == "Exists")
        if key_ok and t.get("effect") in (None, "", effect):
            return True
    return False


def check_pods(d: Doc) -> Iterator[Violation]:
    spec = _pod_spec(d)
    if spec is None:
        return
    base = _pod_spec_field(d)
    pod_sc = _dict(spec.get("securityContext"))
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key) is True:
            yield _v(d, "SEC009", f"{base}.{key}", "must not be true")
    for c in _containers(spec):
        f = f"{base}.containers[{c.get('name')}]"
        sc = _dict(c.get("securityContext"))
        if (d.kind, d.name, c.get("name")) not in ROOT_ALLOWED:
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            if non_root is not True:
                yield _v(d, "SEC001", f"{f}.securityContext.runAsNonRoot", f"is {non_root!r}: must be true")
            elif sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
                yield _v(d, "SEC001", f"{f}.securityContext.runAsUser", "is 0: must be a non-root uid")
        if sc.get("readOnlyRootFilesystem") is not True:
            yield _v(d, "SEC002", f"{f}.securityContext.readOnlyRootFilesystem", "must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            yield _v(d, "SEC003", f"{f}.securityContext.allowPrivilegeEscalation", "must be false")
        caps = _dict(sc.get("capabilities"))
        if "ALL" not in _list(caps.get("drop")):
            yield _v(d, "SEC004", f"{f}.securityContext.capabilities.drop", "must include ALL")
        if caps.get("add"):
            yield _v(d, "SEC004", f"{f}.securityContext.capabilities.add", f"adds {caps['add']!r}")
        if sc.get("privileged") is True:
            yield _v(d, "SEC007", f"{f}.securityContext.privileged", "must not be true")
        seccomp = _dict(sc.get("seccompProfile") or pod_sc.get("seccompProfile"))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            yield _v(
                d,
                "SEC008",
                f"{f}.securityContext.seccompProfile",
                f"is {seccomp.get('type')!r}: must be RuntimeDefault",
            )
        image = c.get("image")
        _, suffix = _split_image(image) if isinstance(image, str) else ("", "")
        if not suffix or suffix == ":latest":
            yield _v(d, "SEC005", f"{f}.image", f"{image!r}: pin a release tag or a digest, never latest")
        resources = _dict(c.get("resources"))
        for part, what in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
            if _get(resources, part, what) is None:
                yield _v(d, "SEC006", f"{f}.resources.{part}.{what}", "must be set")


def _verifier_database(container: Obj) -> str | None:
    """The database URL when written in the manifest; None when it comes from a Secret."""
    args = [str(a) for a in _list(container.get("args"))]
    for i, arg in enumerate(args):
        if arg == "--database" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--database="):
            return arg.split("=", 1)[1]
    for env in _list(container.get("env")):
        if _get(env, "name") == "ATTEST_VERIFIER_DATABASE" and isinstance(_get(env, "value"), str):
            return str(env["value"])
    return None


def _verifier_container(d: Doc) -> Obj | None:
    spec = _pod_spec(d) or {}
    return next((c for c in _list(spec.get("containers")) if _get(c, "name") == "verifier"), None)


def check_verifier(d: Doc) -> Iterator[Violation]:
    spec = _pod_spec(d) or {}
    base = _pod_spec_field(d)
    container = _verifier_container(d)
    if container is None:
        yield _v(d, "DEP001", f"{base}.containers", "has no container named verifier")
        return
    f = f"{base}.containers[verifier]"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = _dict(_get(container, probe, "httpGet"))
        if get.get("path") != path or get.get("scheme") != "HTTPS":
            yield _v(d, "DEP001", f"{f}.{probe}", f"must be httpGet {path} with scheme HTTPS")
    database = _verifier_database(container)
    sqlite = database is not None and database.startswith("sqlite")
    replicas = _get(d.obj, "spec", "replicas")
    replicas = 1 if replicas is None else replicas
    if sqlite and replicas != 1:
        yield _v(d, "DEP002", "spec.replicas", f"is {replicas} on SQLite: SQLite is single-replica only")
    elif not sqlite and (not isinstance(replicas, int) or replicas < 2):
        yield _v(
            d,
            "DEP002",
            "spec.replicas",
            f"is {replicas}: run 2 or more on PostgreSQL (one down stops pod placement)",
        )
    strategy = _dict(_get(d.obj, "spec", "strategy"))
    if sqlite and strategy.get("type") != "Recreate":
        yield _v(
            d,
            "DEP003",
            "spec.strategy.type",
            "must be Recreate on SQLite (two pods must never share the file)",
        )
    elif not sqlite and (
        strategy.get("type", "RollingUpdate") != "RollingUpdate"
        or _get(strategy, "rollingUpdate", "maxUnavailable") not in (0, "0%")
    ):
        yield _v(d, "DEP003", "spec.strategy", "must be RollingUpdate with maxUnavailable 0")
    for t in _list(spec.get("tolerations")):
        if _tolerates([t], "NoSchedule") or _tolerates([t], "NoExecute"):
            yield _v(d, "DEP004", f"{base}.tolerations", f"{t!r} lets the verifier run on unattested nodes")


def check_agent(d: Doc) -> Iterator[Violation]:
    spec = _pod_spec(d) or {}
    base = _pod_spec_field(d)
    if not _tolerates(spec.get("tolerations"), "NoSchedule"):
        yield _v(
            d,
            "AGT001",
            f"{base}.tolerations",
            f"must tolerate {TAINT_KEY}:NoSchedule (the agent lifts the taint)",
        )
    if spec.get("automountServiceAccountToken") is not False:
        yield _v(
            d,
            "AGT002",
            f"{base}.automountServiceAccountToken",
            "must be false: the agent never calls the API",
        )
    for vol in _list(spec.get("volumes")):
        sources = [_get(vol, "secret")] + [
            _get(s, "secret") or _get(s, "serviceAccountToken")
            for s in _list(_get(vol, "projected", "sources"))
        ]
        if any(s is not None for s in sources):
            yield _v(
                d,
                "AGT002",
                f"{base}.volumes[{_get(vol, 'name')}]",
                "mounts a Secret or token: every node could then read it (use a ConfigMap for the CA)",
            )


def check_policy(d: Doc) -> Iterator[Violation]:
    # Explicit, as on the webhooks: the default is Fail today, the manifest should say so anyway.
    policy = _get(d.obj, "spec", "failurePolicy")
    if policy != "Fail":
        yield _v(d, "VAP001", "spec.failurePolicy", f"is {policy!r}: must be Fail")


def check_policy_binding(d: Doc) -> Iterator[Violation]:
    actions = _list(_get(d.obj, "spec", "validationActions"))
    if "Deny" not in actions:
        yield _v(
            d, "VAP002", "spec.validationActions", f"{actions!r} must include Deny: a warning admits the node"
        )


def check_certificate(d: Doc) -> Iterator[Violation]:
    if _get(d.obj, "spec", "secretName") == TLS_SECRET_NAME:
        wanted = f"{VERIFIER}.{NAMESPACE}.svc"
        if wanted not in _list(_get(d.obj, "spec", "dnsNames")):
            yield _v(d, "CM001", "spec.dnsNames", f"must include {wanted} (the name the API server calls)")


OBJECT_CHECKS: Final[dict[str, Callable[[Doc], Iterator[Violation]]]] = {
    "ValidatingWebhookConfiguration": check_webhook_configuration,
    "MutatingWebhookConfiguration": check_webhook_configuration,
    "ClusterRole": check_role,
    "Role": check_role,
    "ClusterRoleBinding": check_binding,
    "RoleBinding": check_binding,
    "ValidatingAdmissionPolicy": check_policy,
    "ValidatingAdmissionPolicyBinding": check_policy_binding,
    "Certificate": check_certificate,
}


def check_object(d: Doc, versions: Sequence[str]) -> Iterator[Violation]:
    yield from check_schema(d, versions)
    check = OBJECT_CHECKS.get(d.kind)
    if check is not None:
        yield from check(d)
    yield from check_pods(d)
    if d.is_("Deployment", VERIFIER):
        yield from check_verifier(d)
    if d.is_("DaemonSet", AGENT):
        yield from check_agent(d)


# --- per-install rules -----------------------------------------------------------------------


@dataclass(frozen=True)
class Install:
    """The objects one `kubectl apply -k` creates (or, with no kustomization, every file's)."""

    source: str
    docs: list[Doc]

    def find(self, kind: str, name: str | None = None) -> list[Doc]:
        return [d for d in self.docs if d.kind == kind and (name is None or d.name == name)]

    def violation(self, rule: str, field: str, message: str) -> Violation:
        return Violation(self.source, "(install)", field, rule, message)


REQUIRED_OBJECTS: Final = (
    ("Namespace", NAMESPACE),
    ("ServiceAccount", VERIFIER),
    ("ClusterRole", VERIFIER),
    ("ClusterRoleBinding", VERIFIER),
    ("Role", VERIFIER),
    ("RoleBinding", VERIFIER),
    ("Deployment", VERIFIER),
    ("Service", VERIFIER),
    ("PodDisruptionBudget", VERIFIER),
    ("ServiceAccount", AGENT),
    ("DaemonSet", AGENT),
)


def check_install(install: Install) -> Iterator[Violation]:
    for kind, name in REQUIRED_OBJECTS:
        if not install.find(kind, name):
            yield install.violation("INS001", "resources", f"lacks {kind}/{name}")
    yield from _check_webhook_paths(install)
    yield from _check_policies(install)
    for dep in install.find("Deployment", VERIFIER):
        yield from _check_verifier_objects(install, dep)
        yield from _check_cert_manager(install, dep)


def _check_webhook_paths(install: Install) -> Iterator[Violation]:
    served: dict[str, int] = {}
    for d in install.find("ValidatingWebhookConfiguration"):
        for hook in _list(d.obj.get("webhooks")):
            client = _dict(_get(hook, "clientConfig"))
            path = _get(client, "service", "path") or urlsplit(str(client.get("url", ""))).path
            served[path] = served.get(path, 0) + 1
    for path in ADMISSION_PATHS:
        if served.get(path, 0) != 1:
            yield install.violation(
                "WH015",
                "webhooks",
                f"{path} is served by {served.get(path, 0)} webhooks, must be by exactly 1",
            )


def _requires_taint(policy: Doc) -> bool:
    spec = _dict(policy.obj.get("spec"))
    rules = [_dict(r) for r in _list(_get(spec, "matchConstraints", "resourceRules"))]
    matches_create = any(("", "nodes", "CREATE") in _rule_ops(r) for r in rules)
    expressions = [
        str(_get(e, "expression")) for e in _list(spec.get("variables")) + _list(spec.get("validations"))
    ]
    return matches_create and any(f"'{TAINT_KEY}'" in e for e in expressions)


def _check_policies(install: Install) -> Iterator[Violation]:
    policies = {d.name: d for d in install.find("ValidatingAdmissionPolicy")}
    if not any(_requires_taint(p) for p in policies.values()):
        yield install.violation(
            "VAP001",
            "resources",
            f"lacks a ValidatingAdmissionPolicy requiring the {TAINT_KEY} taint on Node CREATE",
        )
    bound = set()
    for b in install.find("ValidatingAdmissionPolicyBinding"):
        name = _get(b.obj, "spec", "policyName")
        bound.add(name)
        if name not in policies:
            yield _v(b, "VAP003", "spec.policyName", f"names {name!r}, not a policy of this install")
    for name, p in policies.items():
        if name not in bound:
            yield _v(
                p, "VAP003", "metadata.name", "has no ValidatingAdmissionPolicyBinding: it is not enforced"
            )


def _scaled(value: Any, replicas: int) -> int | None:
    """An int-or-percent of `replicas`, rounded up as the disruption controller does."""
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d+%", value):
        return math.ceil(replicas * int(value[:-1]) / 100)
    return None


def _selects(selector: Any, labels: Any) -> bool:
    match, labels = _dict(selector), _dict(labels)
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def _check_verifier_objects(install: Install, dep: Doc) -> Iterator[Violation]:
    """The verifier's disruption budget and Service fit its Deployment."""
    pod_labels = _get(dep.obj, "spec", "template", "metadata", "labels")
    replicas = _get(dep.obj, "spec", "replicas")
    replicas = replicas if isinstance(replicas, int) else 1
    for pdb in install.find("PodDisruptionBudget", VERIFIER):
        spec = _dict(pdb.obj.get("spec"))
        if not _selects(_get(spec, "selector", "matchLabels"), pod_labels):
            yield _v(pdb, "DEP005", "spec.selector", "does not select the verifier's pods")
        if "minAvailable" in spec:
            keep = _scaled(spec["minAvailable"], replicas)
        else:
            down = _scaled(spec.get("maxUnavailable"), replicas)
            keep = None if down is None else replicas - down
        if replicas >= 2 and (keep is None or keep < 1):
            yield _v(
                pdb, "DEP005", "spec", f"keeps {keep} of {replicas} replicas through a disruption: keep 1+"
            )
    container = _verifier_container(dep) or {}
    named_ports = {_get(p, "name"): _get(p, "containerPort") for p in _list(container.get("ports"))}
    for svc in install.find("Service", VERIFIER):
        if not _selects(_get(svc.obj, "spec", "selector"), pod_labels):
            yield _v(svc, "DEP006", "spec.selector", "does not select the verifier's pods")
        targets = {_get(p, "port"): _get(p, "targetPort") for p in _list(_get(svc.obj, "spec", "ports"))}
        for port in (443, 8443):
            target = targets.get(port)
            target = named_ports.get(target, target) if isinstance(target, str) else target
            if target != VERIFIER_PORT:
                yield _v(
                    svc, "DEP006", "spec.ports", f"port {port} leads to {target!r}, not the verifier's 8443"
                )


def _check_cert_manager(install: Install, dep: Doc) -> Iterator[Violation]:
    """The CA injected into the webhooks is the CA of the certificate the verifier serves."""
    volumes = _list(_get(dep.obj, "spec", "template", "spec", "volumes"))
    mounted = next((_get(v, "secret", "secretName") for v in volumes if _get(v, "name") == "tls"), None)
    for d in install.find("ValidatingWebhookConfiguration"):
        inject = _get(d.obj, "metadata", "annotations", "cert-manager.io/inject-ca-from")
        if inject is None:
            continue
        ns, _, name = str(inject).partition("/")
        certs = [c for c in install.find("Certificate", name) if c.namespace == ns]
        field = "metadata.annotations[cert-manager.io/inject-ca-from]"
        if not certs:
            yield _v(d, "CM002", field, f"names {inject}, not a Certificate of this install")
        elif (issued := _get(certs[0].obj, "spec", "secretName")) != mounted:
            yield _v(d, "CM002", field, f"{inject} issues Secret {issued!r}; the verifier mounts {mounted!r}")


# --- driver ----------------------------------------------------------------------------------


def _yaml_files(directory: Path) -> list[Path]:
    files = []
    for p in sorted(directory.rglob("*")):
        hidden = any(part.startswith(".") for part in p.relative_to(directory).parts)
        if p.is_file() and not hidden and (p.suffix in (".yaml", ".yml") or p.name == "Kustomization"):
            files.append(p)
    return files


def lint(directory: Path, versions: Sequence[str]) -> list[Violation]:
    """Every violation in the manifests under `directory`, sorted; InputError if unusable."""
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory")
    files = _yaml_files(directory)
    if not files:
        raise InputError(f"{directory}: no YAML files")
    kustomizations = [p for p in files if p.name in KUSTOMIZATION_NAMES]
    standalone = [d for p in files if p.name not in KUSTOMIZATION_NAMES for d in load_objects(p, directory)]
    if kustomizations:
        installs = [Install(_rel(k, directory), render(k, directory)) for k in kustomizations]
    else:
        installs = [Install(".", standalone)]
    found: set[Violation] = set()
    checked: set[str] = set()
    for d in standalone + [d for install in installs for d in install.docs]:
        key = json.dumps([d.source, d.obj], sort_keys=True, default=str)
        if key not in checked:
            checked.add(key)
            found.update(check_object(d, versions))
    for install in installs:
        found.update(check_install(install))
    return sorted(found)


def _version(text: str) -> str:
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Kubernetes version X.Y")
    version = (int(m[1]), int(m[2]))
    if version < MIN_KUBERNETES:
        raise argparse.ArgumentTypeError(
            f"{text}: deploy/ targets Kubernetes {MIN_KUBERNETES[0]}.{MIN_KUBERNETES[1]} or newer"
        )
    return f"{version[0]}.{version[1]}"


def default_versions() -> list[str]:
    newest = ".".join(kubernetes_validate.latest_version().split(".")[:2])
    oldest = f"{MIN_KUBERNETES[0]}.{MIN_KUBERNETES[1]}"
    return [oldest] if newest == oldest else [oldest, newest]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.lint",
        description="Validate the Kubernetes manifests (schemas and the project's rules).",
        epilog="Exit codes: 0 clean, 1 violations (listed on stdout), 2 unusable input.",
    )
    parser.add_argument("directory", nargs="?", type=Path, default=Path(__file__).parent, metavar="DIR")
    parser.add_argument(
        "--kubernetes-version",
        "-k",
        action="append",
        type=_version,
        metavar="X.Y",
        help="validate against this version (repeatable; default: 1.30 and the newest known)",
    )
    parser.add_argument("--list-rules", action="store_true", help="print the rule ids and what each requires")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    if args.list_rules:
        for rule, text in RULES.items():
            print(f"{rule}\t{text}")
        return 0
    versions = args.kubernetes_version or default_versions()
    try:
        violations = lint(args.directory, versions)
    except InputError as e:
        print(f"deploy.lint: error: {e}", file=sys.stderr)
        return 2
    except kubernetes_validate.utils.VersionNotSupportedError as e:
        print(f"deploy.lint: error: {e.message}", file=sys.stderr)
        return 2
    for v in violations:
        print(v)
    print(
        f"deploy.lint: {len(violations)} violation(s) in {args.directory} (Kubernetes {', '.join(versions)})",
        file=sys.stderr,
    )
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
