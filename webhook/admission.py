"""Kubernetes admission decisions (DESIGN 5.3): AdmissionReview requests judged against the
stored verdicts and the image policy, without HTTP.

`decide` is a pure function of the webhook path, the request, two lookups (a node's stored
record, the active policy), the time and the options: no TPM work, no appraisal, no writes, so
a dry run is judged exactly like a real request and leaves nothing behind. Each lookup is made
at most once per request, and only when the decision needs it.

Every refusal is a `Denial` with a reason code (attest.reasons, docs/reason-codes.md), a
sentence that says what to do, and the field it is about; `review_response` turns the whole
decision into the AdmissionReview the API server expects (uid echoed, never a patch).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from collections.abc import Callable, Iterable
from typing import Final, TypeVar

from pydantic import BaseModel, ValidationError

from attest.errors import ParseError
from attest.reasons import Reason
from attest.store.api import NodeRecord, StoreUnavailable
from attest.verify.policy import Policy, image_allowed
from attest.wire import (
    ADMISSION_CSRS,
    ADMISSION_NODES,
    ADMISSION_PODS,
    AdmissionRequest,
    AdmissionResponse,
    AdmissionReviewOut,
    AdmissionStatus,
    BindingObject,
    Container,
    CsrObject,
    NodeObject,
    PodObject,
    StatusCause,
    StatusDetails,
)
from webhook.config import Settings
from webhook.kubelet_csr import (
    NODE_USER_PREFIX,
    SERVING_SIGNER,
    SIGNERS,
    MalformedKubeletCsr,
    parse_kubelet_csr,
)

log = logging.getLogger(__name__)

NodeLookup = Callable[[str], NodeRecord | None]
PolicyLookup = Callable[[], Policy | None]

# The taint every kubelet registers with and only the verifier lifts (node-registration-policy.yaml).
UNVERIFIED_TAINT: Final = ("unverified", "NoSchedule")
# Labels under this domain (and its subdomains) are the cluster's to set, never a kubelet's;
# node-restriction.kubernetes.io/attested is the verifier's.
RESTRICTED_LABEL_DOMAIN: Final = "node-restriction.kubernetes.io"
# Digest-pinned: the runtime fetches this content and nothing else (the container log's digests).
_PINNED: Final = re.compile(r"@(?P<digest>sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
# A cause per problem is returned; a pod with thousands of bad images gets the first ones.
MAX_CAUSES: Final = 20
MAX_WARNINGS: Final = 10

# Each webhook path: the (resource, operation) pairs it judges. Anything else reaching it means
# the ValidatingWebhookConfiguration is not deploy/base/webhook.yaml, and is refused.
PATH_REQUESTS: Final = {
    ADMISSION_NODES: frozenset({("nodes", "CREATE"), ("nodes", "UPDATE")}),
    ADMISSION_CSRS: frozenset({("certificatesigningrequests", "CREATE")}),
    ADMISSION_PODS: frozenset(
        {
            ("pods", "CREATE"),
            ("pods", "UPDATE"),
            ("pods/binding", "CREATE"),
            ("pods/ephemeralcontainers", "UPDATE"),
        }
    ),
}
_GROUPS: Final = {"certificatesigningrequests": "certificates.k8s.io"}


@dataclasses.dataclass(frozen=True)
class Options:
    """exempt_namespaces: pods there are not judged (the webhook's namespaceSelector exempts
    them too; this holds if the selector is lost). max_age: a trusted verdict older than this
    is stale even before it expires (None: its expiry alone decides)."""

    exempt_namespaces: frozenset[str]
    max_age: dt.timedelta | None

    @classmethod
    def of(cls, settings: Settings) -> Options:
        return cls(frozenset(settings.admission_exempt_namespaces), settings.admission_freshness)


@dataclasses.dataclass(frozen=True)
class Context:
    nodes: NodeLookup
    policy: PolicyLookup
    now: dt.datetime
    options: Options


@dataclasses.dataclass(frozen=True)
class Denial:
    code: Reason
    message: str  # a sentence for the person reading kubectl's output: what is wrong, what to do
    field: str | None = None
    status: int = 403  # 503 when the verifier could not decide: its database is down


@dataclasses.dataclass(frozen=True)
class Decision:
    resource: str  # "pods/binding", or "other" for what the path does not judge: a metrics label
    denials: tuple[Denial, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return not self.denials

    @property
    def code(self) -> str | None:
        return self.denials[0].code.value if self.denials else None


def resource_of(request: AdmissionRequest) -> str:
    r = request.resource
    return f"{r.resource}/{request.sub_resource}" if request.sub_resource else r.resource


def decide(path: str, request: AdmissionRequest, ctx: Context) -> Decision:
    """The decision for one AdmissionReview request that arrived on webhook path `path`.

    ParseError(ADMISSION_REVIEW_MALFORMED) when the object is not what the API server sends for
    that resource: that is no request to decide, and the HTTP layer answers 400.
    """
    resource = resource_of(request)
    r = request.resource
    version = (r.group, r.version) == (_GROUPS.get(r.resource, ""), "v1")
    if not version or (resource, request.operation) not in PATH_REQUESTS[path]:
        judged = ", ".join(sorted(f"{op} {res}" for res, op in PATH_REQUESTS[path]))
        sent = f"{request.operation} {r.group + '/' if r.group else ''}{r.version} {resource}"
        # "other", not the resource: the metric's labels stay a fixed set whatever is sent.
        return Decision(
            "other",
            (
                Denial(
                    Reason.ADMISSION_REQUEST_UNEXPECTED,
                    f"{path} judges {judged}, not {sent}: the webhook configuration's rules are wrong, "
                    "re-apply deploy/base/webhook.yaml",
                ),
            ),
        )
    try:
        if path == ADMISSION_NODES:
            return _judge_node(request)
        if path == ADMISSION_CSRS:
            return _judge_csr(request)
        return _judge_pod(resource, request, ctx)
    except StoreUnavailable as e:
        # Fail closed, but say so: a refusal kubectl prints is better than "failed calling webhook".
        log.warning("admission %s %s refused, store unavailable: %s", resource, request.uid, e.message)
        message = (
            "the attestation verifier's database is unavailable, so no node's verdict can be read; "
            "retry when it is back"
        )
        return Decision(resource, (Denial(Reason.ADMISSION_STORE_UNAVAILABLE, message, status=503),))


def review_response(request: AdmissionRequest, decision: Decision) -> AdmissionReviewOut:
    """The AdmissionReview answer: the request's uid, allowed or a Failure status whose message
    leads with the first reason code, every problem as a cause, and the warnings."""
    status = None
    if decision.denials:
        first = decision.denials[0]
        message = f"{first.code.value}: {first.message}"
        more = decision.denials[1:]
        if more:
            message += f" (and {len(more)} more: {', '.join(sorted({d.code.value for d in more}))})"
        status = AdmissionStatus(
            code=first.status,
            reason="ServiceUnavailable" if first.status == 503 else "Forbidden",
            message=message,
            details=StatusDetails(
                causes=[
                    StatusCause(reason=d.code.value, message=d.message, field=d.field)
                    for d in decision.denials[:MAX_CAUSES]
                ]
            ),
        )
    return AdmissionReviewOut(
        response=AdmissionResponse(
            uid=request.uid,
            allowed=decision.allowed,
            status=status,
            warnings=list(decision.warnings[:MAX_WARNINGS]) or None,
        )
    )


# --- parsing the object under review --------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], value: object, where: str) -> M:
    if value is None:
        raise ParseError(Reason.ADMISSION_REVIEW_MALFORMED, f"request.{where} is missing")
    try:
        return model.model_validate(value)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ParseError(
            Reason.ADMISSION_REVIEW_MALFORMED, f"request.{where}.{loc}: {first['msg']}"
        ) from None


def _when(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _ago(delta: dt.timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


# --- Nodes ----------------------------------------------------------------------------------


def _restricted(key: str) -> bool:
    domain, slash, _ = key.partition("/")
    return bool(slash) and (
        domain == RESTRICTED_LABEL_DOMAIN or domain.endswith("." + RESTRICTED_LABEL_DOMAIN)
    )


def _tainted(node: NodeObject) -> bool:
    return any((t.key, t.effect) == UNVERIFIED_TAINT for t in node.spec.taints)


def _judge_node(request: AdmissionRequest) -> Decision:
    username = request.user_info.username
    if not username.startswith(NODE_USER_PREFIX):
        # The webhook's matchConditions send kubelets only. Other users (the node lifecycle
        # controller, cloud controllers, the verifier) must keep working while the verifier is
        # down, and the registration policy guards the label and taint against them in-process.
        return Decision("nodes")
    acting = username.removeprefix(NODE_USER_PREFIX)
    new = _parse(NodeObject, request.obj, "object")
    old = _parse(NodeObject, request.old_object, "oldObject") if request.operation == "UPDATE" else None
    names = {request.name, new.metadata.name, old.metadata.name if old else ""} - {""}
    foreign = sorted(n for n in names if n != acting)
    if foreign:
        return Decision(
            "nodes",
            (
                Denial(
                    Reason.ADMISSION_NODE_MISMATCH,
                    f"{username} may only {request.operation.lower()} its own Node {acting}, not Node "
                    f"{foreign[0]}: a node acting for another is investigated, not admitted",
                    "metadata.name",
                ),
            ),
        )
    denials: list[Denial] = []
    old_labels = old.metadata.labels if old else {}
    for key in sorted(set(new.metadata.labels) | set(old_labels)):
        if _restricted(key) and new.metadata.labels.get(key) != old_labels.get(key):
            verb = (
                "set" if key not in old_labels else "remove" if key not in new.metadata.labels else "change"
            )
            denials.append(
                Denial(
                    Reason.ADMISSION_LABEL_FORBIDDEN,
                    f"kubelet {acting} may not {verb} the label {key}: only the attestation verifier marks "
                    "nodes; remove it from the kubelet's --node-labels",
                    f"metadata.labels[{key}]",
                )
            )
    key, effect = UNVERIFIED_TAINT
    if old is None and not _tainted(new):
        denials.append(
            Denial(
                Reason.ADMISSION_TAINT_MISSING,
                f"Node {acting} must register with the taint {key}:{effect}, so that it gets no pods "
                f"before it is attested: add --register-with-taints={key}:{effect} to the kubelet",
                "spec.taints",
            )
        )
    elif old is not None and _tainted(old) and not _tainted(new):
        denials.append(
            Denial(
                Reason.ADMISSION_TAINT_REMOVED,
                f"kubelet {acting} may not remove the taint {key}:{effect} from its Node: the attestation "
                "verifier lifts it after a trusted verdict",
                "spec.taints",
            )
        )
    return Decision("nodes", tuple(denials))


# --- CertificateSigningRequests -------------------------------------------------------------


def _csr_malformed(message: str, field: str = "spec.request") -> Decision:
    return Decision(
        "certificatesigningrequests",
        (
            Denial(
                Reason.ADMISSION_CSR_MALFORMED,
                f"{message}; a kubelet never files this CSR, find out who did",
                field,
            ),
        ),
    )


def _judge_csr(request: AdmissionRequest) -> Decision:
    spec = _parse(CsrObject, request.obj, "object").spec
    signer = spec.signer_name
    if signer not in SIGNERS:
        # Not a kubelet's signer (the webhook's matchConditions leave these out anyway): the
        # verifier neither approves nor judges them.
        return Decision("certificatesigningrequests")
    try:
        node = parse_kubelet_csr(signer, spec.request, spec.usages).node
    except MalformedKubeletCsr as e:
        return _csr_malformed(e.message, e.field)

    # The API server sets the requester (spec.username too) from the authenticated user.
    requester = request.user_info.username
    own = NODE_USER_PREFIX + node
    if (requester.startswith(NODE_USER_PREFIX) or signer == SERVING_SIGNER) and requester != own:
        who = "its serving certificate" if signer == SERVING_SIGNER else "its client certificate"
        return Decision(
            "certificatesigningrequests",
            (
                Denial(
                    Reason.ADMISSION_NODE_MISMATCH,
                    f"{requester or 'an anonymous user'} filed a CSR in the name of node {node}: only {own} "
                    f"may ask for {who}",
                    "spec.username",
                ),
            ),
        )
    waits = f"approval waits for a trusted attestation of node {node}"
    if signer == SERVING_SIGNER:
        waits += " and for every SAN to be one of its addresses"
    return Decision("certificatesigningrequests", warnings=(waits,))


# --- Pods -----------------------------------------------------------------------------------


def _node_fit(name: str, ctx: Context, field: str) -> Denial | None:
    """None when the node has a fresh trusted verdict; otherwise why it has not."""
    node = ctx.nodes(name)
    if node is None:
        return Denial(
            Reason.ADMISSION_NODE_UNATTESTED,
            f"node {name} is not enrolled with the attestation verifier, so nothing vouches for what it "
            "booted; its attest-agent must enroll and attest first",
            field,
        )
    if node.revoked_at is not None:
        why = f" ({node.revoke_reason})" if node.revoke_reason else ""
        return Denial(
            Reason.NODE_REVOKED,
            f"node {name} was revoked at {_when(node.revoked_at)}{why}; it must enroll again and attest "
            "trusted before anything runs there",
            field,
        )
    verdict = node.last_verdict
    if verdict is None:
        return Denial(
            Reason.ADMISSION_NODE_UNATTESTED,
            f"node {name} is enrolled but not attested yet; wait for its attest-agent's first "
            f"attestation (attestctl node show {name})",
            field,
        )
    if not verdict.trusted:
        codes = list(dict.fromkeys(str(r["code"]) for r in verdict.reasons if r.get("code")))
        listed = ", ".join(codes[:3]) + (f" and {len(codes) - 3} more" if len(codes) > 3 else "")
        listed = listed or "no reason recorded"
        return Denial(
            Reason.ADMISSION_NODE_UNTRUSTED,
            f"node {name} failed attestation at {_when(verdict.appraised_at)} ({listed}); "
            f"see attestctl node show {name}",
            field,
        )
    if not verdict.fresh_at(ctx.now):
        if verdict.expires_at is None or ctx.now >= verdict.expires_at:
            expired = verdict.expires_at or verdict.appraised_at
            return Denial(
                Reason.ADMISSION_NODE_STALE,
                f"node {name}'s trusted verdict expired at {_when(expired)} ({_ago(ctx.now - expired)} ago): "
                "its attest-agent has not attested since; check that it runs and reaches the verifier",
                field,
            )
        # Appraised ahead of this clock (VerdictRecord.fresh_at).
        return Denial(
            Reason.ADMISSION_NODE_STALE,
            f"node {name}'s trusted verdict was appraised at {_when(verdict.appraised_at)}, "
            f"{_ago(verdict.appraised_at - ctx.now)} after this verifier's clock reads: a clock was "
            "set back, so it counts only once its attest-agent attests again",
            field,
        )
    max_age = ctx.options.max_age
    if max_age is not None and ctx.now - verdict.appraised_at >= max_age:
        return Denial(
            Reason.ADMISSION_NODE_STALE,
            f"node {name} was last attested at {_when(verdict.appraised_at)} "
            f"({_ago(ctx.now - verdict.appraised_at)} ago), longer ago than the admission freshness of "
            f"{max_age.total_seconds():g}s; check that its attest-agent runs and reaches the verifier",
            field,
        )
    return None


Image = tuple[str, str]  # (field, image reference)


def _containers(field: str, containers: Iterable[Container]) -> list[Image]:
    return [(f"spec.{field}[{i}].image", c.image) for i, c in enumerate(containers)]


def _images(pod: PodObject) -> list[Image]:
    spec = pod.spec
    images = _containers("containers", spec.containers)
    images += _containers("initContainers", spec.init_containers)
    images += _containers("ephemeralContainers", spec.ephemeral_containers)
    images += [
        (f"spec.volumes[{i}].image.reference", v.image.reference)
        for i, v in enumerate(spec.volumes)
        if v.image
    ]
    return images


def _judge_images(images: list[Image], ctx: Context) -> tuple[list[Denial], list[str]]:
    """Every image pinned by digest and allowed, when the policy has a containers section;
    without one, unpinned images are only warned about."""
    if not images:
        return [], []
    policy = ctx.policy()
    denials: list[Denial] = []
    warnings: list[str] = []
    for field, image in images:
        pinned = _PINNED.search(image)
        if policy is None or policy.containers is None:
            if pinned is None:
                warnings.append(
                    f"{field} {image!r} is not pinned by digest: which content ran cannot be verified"
                )
        elif pinned is None:
            denials.append(
                Denial(
                    Reason.ADMISSION_IMAGE_NOT_PINNED,
                    f"{field} {image!r} is not pinned by digest, and policy {policy.name!r} judges images: "
                    "write it as REPO@sha256:DIGEST",
                    field,
                )
            )
        elif not image_allowed(policy, image, pinned["digest"]):
            denials.append(
                Denial(
                    Reason.ADMISSION_IMAGE_NOT_ALLOWED,
                    f"{field} {image!r} is not allowed by policy {policy.name!r} (containers.images): "
                    "allowlist it there or use an allowed image",
                    field,
                )
            )
    return denials, list(dict.fromkeys(warnings))


def _judge_pod(resource: str, request: AdmissionRequest, ctx: Context) -> Decision:
    if request.namespace in ctx.options.exempt_namespaces:
        # Also exempt by the webhook's namespaceSelector: this keeps the cluster's own components
        # and the verifier schedulable if that selector is ever lost.
        return Decision(resource)
    if resource == "pods/binding":
        target = _parse(BindingObject, request.obj, "object").target
        if not target.name or target.kind not in ("", "Node"):
            raise ParseError(Reason.ADMISSION_REVIEW_MALFORMED, "request.object.target: not a Node")
        denial = _node_fit(target.name, ctx, "target.name")
        return Decision(resource, (denial,) if denial else ())

    pod = _parse(PodObject, request.obj, "object")
    node_name = pod.spec.node_name
    if request.operation == "CREATE":
        judged = _images(pod)
    else:
        old = _parse(PodObject, request.old_object, "oldObject")
        node_name = node_name or old.spec.node_name
        if resource == "pods/ephemeralcontainers":
            # Ephemeral containers are only ever added: the new names are what starts now.
            before = {c.name for c in old.spec.ephemeral_containers}
            judged = [
                (f"spec.ephemeralContainers[{i}].image", c.image)
                for i, c in enumerate(pod.spec.ephemeral_containers)
                if c.name not in before
            ]
        else:
            # Only what changes is judged: an update that leaves the images alone (labels, a
            # finalizer removed on deletion) must not fail because the policy changed since.
            before_images = set(_images(old))
            judged = [img for img in _images(pod) if img not in before_images]
    denials: list[Denial] = []
    # A pod with a node starts these images there now: the node must be fit (a pod without one
    # is judged again when it is bound).
    if node_name and (request.operation == "CREATE" or judged):
        denial = _node_fit(node_name, ctx, "spec.nodeName")
        if denial:
            denials.append(denial)
    image_denials, warnings = _judge_images(judged, ctx)
    return Decision(resource, tuple(denials + image_denials), tuple(warnings))
