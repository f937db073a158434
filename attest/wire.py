"""Every wire format of the project, in one place: the agent API (enrollment, challenges,
evidence, verdicts) and the admin API that attestctl uses.

Binary TPM structures travel as base64 of their TPM marshalling, exactly the bytes tpm2-tools
writes to files, so any message can be replayed through `attestctl verify`. Every field has a
size bound, checked while parsing, before anything else looks at it. Requests refuse
unknown fields (a typo in a client is an error); responses ignore them (old clients keep
working against newer servers).

Version: the URL prefix (/v1). Add optional fields; never change the meaning of one.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pydantic.alias_generators import to_camel

API_PREFIX = "/v1"

# Kubernetes node names are DNS-1123 subdomains.
NODE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
NODE_NAME_MAX = 253
_NODE_NAME = re.compile(NODE_NAME_PATTERN)

MAX_TPM_STRUCT = 2048  # TPM2B_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE, credentials: all far smaller
MAX_EK_CERT = 16 * 1024
MAX_EVENTLOG = 16 * 1024 * 1024
MAX_IMA = 64 * 1024 * 1024
MAX_CONTAINER_LOG = 16 * 1024 * 1024
NONCE_SIZE = 32


def _b64_len(n: int) -> int:
    return (n + 2) // 3 * 4


# The largest Evidence body these bounds admit (base64 of every log at its limit, plus the
# small fields): the verifier's default body limit for evidence, so the two cannot disagree.
MAX_EVIDENCE_BODY = _b64_len(MAX_EVENTLOG) + _b64_len(MAX_IMA) + _b64_len(MAX_CONTAINER_LOG) + 64 * 1024
# Keys an agent may vouch for in one challenge: the kubelet's client and serving keys, and the
# bootstrap key while a CSR is pending, with room to spare.
MAX_BOUND_KEYS = 8


def valid_node_name(name: str) -> bool:
    return len(name) <= NODE_NAME_MAX and bool(_NODE_NAME.fullmatch(name))


def _b64_decoder(limit: int) -> Any:
    def decode(value: Any) -> bytes:
        if isinstance(value, bytes):
            raw = value
        elif isinstance(value, str):
            # Reject before decoding: base64 is 4/3 the size of what it carries.
            if len(value) > _b64_len(limit) + 4:
                raise ValueError(f"longer than {limit} bytes")
            try:
                raw = base64.b64decode(value, validate=True)
            except binascii.Error:
                raise ValueError("not base64") from None
        else:
            raise ValueError("must be a base64 string")
        if len(raw) > limit:
            raise ValueError(f"longer than {limit} bytes")
        return raw

    return decode


_B64_OUT = PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str)


def _b64_schema(limit: int) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "contentEncoding": "base64", "maxLength": _b64_len(limit)})


TpmStruct: TypeAlias = Annotated[
    bytes, BeforeValidator(_b64_decoder(MAX_TPM_STRUCT)), _B64_OUT, _b64_schema(MAX_TPM_STRUCT)
]
EkCert: TypeAlias = Annotated[
    bytes, BeforeValidator(_b64_decoder(MAX_EK_CERT)), _B64_OUT, _b64_schema(MAX_EK_CERT)
]
EventLogBytes: TypeAlias = Annotated[
    bytes, BeforeValidator(_b64_decoder(MAX_EVENTLOG)), _B64_OUT, _b64_schema(MAX_EVENTLOG)
]
ImaBytes: TypeAlias = Annotated[bytes, BeforeValidator(_b64_decoder(MAX_IMA)), _B64_OUT, _b64_schema(MAX_IMA)]
ContainerLogBytes: TypeAlias = Annotated[
    bytes, BeforeValidator(_b64_decoder(MAX_CONTAINER_LOG)), _B64_OUT, _b64_schema(MAX_CONTAINER_LOG)
]
Nonce: TypeAlias = Annotated[bytes, BeforeValidator(_b64_decoder(64)), _B64_OUT, _b64_schema(64)]
NodeName = Annotated[str, Field(min_length=1, max_length=NODE_NAME_MAX, pattern=NODE_NAME_PATTERN)]
Hex = Annotated[str, Field(pattern=r"^[0-9a-f]*$", max_length=256)]
# Hex SHA-256 of a public key's SubjectPublicKeyInfo (DER), lowercase: how keys are named.
KeyFingerprint = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", min_length=64, max_length=64)]
PcrSelectionText = Annotated[
    str, Field(max_length=256, pattern=r"^[a-z0-9_]+:[0-9,\-]+(\+[a-z0-9_]+:[0-9,\-]+)*$")
]


class Request(BaseModel):
    """What a client sends: an unknown field is refused, so a typo is an error, not a no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Response(BaseModel):
    """What a server answers: unknown fields are ignored, so an older client keeps working
    against a newer verifier that added optional fields."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)


# --- agent API -------------------------------------------------------------------------------


class EnrollRequest(Request):
    """POST /v1/enroll: a node presents its TPM's EK and a fresh AK."""

    node: NodeName
    ek_certificate: EkCert | None = None  # DER, from the TPM's NV; None when the TPM has none
    ek_public: TpmStruct  # TPM2B_PUBLIC of the EK the agent created (MakeCredential needs its template)
    ak_public: TpmStruct  # TPM2B_PUBLIC


class EnrollChallenge(Response):
    """The credential only the TPM holding that EK, with that AK loaded, can open."""

    enrollment_id: Annotated[str, Field(max_length=64)]
    credential_blob: TpmStruct  # TPM2B_ID_OBJECT
    encrypted_secret: TpmStruct  # TPM2B_ENCRYPTED_SECRET
    expires_at: dt.datetime


class ActivateRequest(Request):
    """POST /v1/enroll/{enrollment_id}/activate: the secret ActivateCredential returned."""

    secret: Nonce


class EnrollResult(Response):
    node: NodeName
    ak_name: Hex
    enrolled_at: dt.datetime


class ChallengeRequest(Request):
    """The optional body of POST /v1/nodes/{node}/challenge: keys the node vouches for.

    The nonce is derived from them (docs/kubernetes.md), so a quote over it proves that the
    attested machine named these keys: the verifier approves a kubelet CSR only for a key bound
    this way. No body, or an empty list, asks for a nonce that commits to nothing.
    """

    bind: Annotated[list[KeyFingerprint], Field(max_length=MAX_BOUND_KEYS)] = []


class Challenge(Response):
    """POST /v1/nodes/{node}/challenge: a single-use nonce for this node."""

    nonce: Nonce
    selection: PcrSelectionText  # quote exactly these PCRs
    expires_at: dt.datetime
    ima_offset: Annotated[int, Field(ge=0)] = 0  # send IMA entries from this index on
    # The fingerprints the nonce commits to, sorted and deduplicated: an agent that asked for a
    # binding and finds this empty talks to a verifier that ignored it.
    bound_keys: list[KeyFingerprint] = []


class Evidence(Request):
    """POST /v1/nodes/{node}/evidence: the answer to one challenge."""

    nonce: Nonce
    quote: TpmStruct  # TPMS_ATTEST as signed
    signature: TpmStruct  # TPMT_SIGNATURE
    pcrs: dict[Annotated[str, Field(max_length=16)], dict[Annotated[int, Field(ge=0, le=23)], Hex]]
    eventlog: EventLogBytes | None = None
    ima: ImaBytes | None = None  # entries from `ima_offset` on
    ima_offset: Annotated[int, Field(ge=0)] = 0
    container_log: ContainerLogBytes | None = None


class ReasonOut(Response):
    code: str
    message: str
    rule: str | None = None
    pcr: int | None = None
    event: int | None = None


class VerdictOut(Response):
    node: NodeName
    trusted: bool
    reasons: list[ReasonOut]
    appraised_at: dt.datetime
    expires_at: dt.datetime | None  # None when untrusted: nothing to expire
    reboot: bool = False
    workarounds: list[str] = []
    ima_offset: int = 0  # entries accepted so far: the next challenge starts here


class ErrorOut(Response):
    """Every 4xx/5xx body: a stable code and a sentence."""

    code: str
    message: str
    # Evidence refused before a verdict (422): every reason the quote failed, `code` is the first.
    reasons: list[ReasonOut] = []


# --- admin API (attestctl) -----------------------------------------------------------------


class EkEnrollRequest(Request):
    """POST /v1/admin/eks: an operator vouches for an EK (certificate or public key) for a node."""

    node: NodeName
    ek_certificate: EkCert | None = None
    ek_public_pem: Annotated[str, Field(max_length=8192)] | None = None


class EkOut(Response):
    id: int
    node: NodeName
    fingerprint: Hex  # SHA-256 of the EK's SubjectPublicKeyInfo
    source: str  # "operator" or "manufacturer-chain"
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None


class ContainerOut(Response):
    """One container launch the last verdict proved (PCR 23 log entry, docs/containers.md)."""

    index: int
    time: str
    container_id: str
    pod: str
    namespace: str
    container: str
    image: str
    image_digest: str
    runtime: str


class NodeOut(Response):
    name: NodeName
    state: str  # "trusted", "untrusted", "stale", "enrolled", "revoked"
    ek_fingerprint: Hex | None = None
    ak_name: Hex | None = None
    last_verdict_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    reasons: list[ReasonOut] = []
    policy: str | None = None
    containers: list[ContainerOut] = []  # what ran, as far as the last verdict's quote proves


class PolicyIn(Request):
    """POST /v1/admin/policies: a new version of the named policy (YAML text as written)."""

    text: Annotated[str, Field(max_length=16 * 1024 * 1024)]


class PolicyOut(Response):
    name: str
    version: int
    digest: Hex
    created_at: dt.datetime
    text: str | None = None


class AuditRecordOut(Response):
    seq: int
    at: dt.datetime
    kind: str  # "enroll", "verdict", "policy", "revoke", "ek"
    subject: str
    data: dict[str, Any]
    prev: Hex  # hash of the previous record ("" for the first)
    hash: Hex


# Kubernetes admission: the paths the verifier serves AdmissionReview v1 on, behind its TLS.
# deploy/base/webhook.yaml points the ValidatingWebhookConfiguration at these; deploy/lint.py
# checks that the two agree.
ADMISSION_NODES = API_PREFIX + "/admission/nodes"  # Node CREATE, UPDATE
ADMISSION_CSRS = API_PREFIX + "/admission/csrs"  # CertificateSigningRequest CREATE
ADMISSION_PODS = API_PREFIX + "/admission/pods"  # Pod CREATE/UPDATE, pods/binding, pods/ephemeralcontainers
ADMISSION_PATHS = (ADMISSION_NODES, ADMISSION_CSRS, ADMISSION_PODS)


# --- Kubernetes admission (AdmissionReview v1) --------------------------------------------
#
# What kube-apiserver posts to the paths above, and what it takes back. Unlike the agent API's
# requests, these models ignore unknown fields: the API server is not ours, each Kubernetes
# release adds fields, and refusing them would turn an upgrade into every admission failing
# closed. Only the fields a decision reads are modelled, with the bounds Kubernetes itself
# enforces (names 253, namespaces 63); everything else is bounded by the request body limit.
# The object under review stays a mapping until the decision knows what it must be.

MAX_CSR_PEM = 64 * 1024  # a kubelet's CSR is under 1 KiB even with an RSA-4096 key


def _none_as_empty(empty: Any) -> Any:
    # Go marshals a nil slice or map as null where omitempty is missing: the same as empty.
    return BeforeValidator(lambda v: empty() if v is None else v)


class K8sModel(BaseModel):
    """Kubernetes JSON: camelCase keys, unknown fields ignored, immutable once parsed."""

    model_config = ConfigDict(
        extra="ignore", frozen=True, alias_generator=to_camel, populate_by_name=True, defer_build=True
    )


K8sName = Annotated[str, Field(max_length=253)]
K8sNamespace = Annotated[str, Field(max_length=63)]
K8sList = Annotated[list[str], _none_as_empty(list)]
K8sLabels = Annotated[dict[str, str], _none_as_empty(dict)]


class GroupVersionResource(K8sModel):
    group: str = ""
    version: str = ""
    resource: str = ""


class UserInfo(K8sModel):
    username: str = ""
    groups: K8sList = []


class AdmissionRequest(K8sModel):
    uid: Annotated[str, Field(min_length=1, max_length=128)]
    resource: GroupVersionResource
    sub_resource: str = ""
    name: K8sName = ""
    namespace: K8sNamespace = ""
    operation: str
    user_info: UserInfo
    obj: dict[str, Any] | None = Field(default=None, alias="object")
    old_object: dict[str, Any] | None = None
    dry_run: bool = False


class AdmissionReview(K8sModel):
    """The body kube-apiserver posts: another version, or no uid, is a 400."""

    api_version: Literal["admission.k8s.io/v1"]
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


class ObjectMeta(K8sModel):
    name: K8sName = ""
    namespace: K8sNamespace = ""
    labels: K8sLabels = {}


class Taint(K8sModel):
    key: str
    value: str = ""
    effect: str = ""


class NodeSpec(K8sModel):
    taints: Annotated[list[Taint], _none_as_empty(list)] = []


class NodeObject(K8sModel):
    metadata: ObjectMeta
    spec: NodeSpec = NodeSpec()


class Container(K8sModel):
    """A container, init container or ephemeral container: its image is what runs."""

    name: str = ""
    image: str = ""


class ImageVolumeSource(K8sModel):
    reference: str = ""


class Volume(K8sModel):
    """An image volume mounts an image's content into the pod: judged like a container's image."""

    name: str = ""
    image: ImageVolumeSource | None = None


class PodSpec(K8sModel):
    node_name: K8sName = ""
    containers: Annotated[list[Container], _none_as_empty(list)] = []
    init_containers: Annotated[list[Container], _none_as_empty(list)] = []
    ephemeral_containers: Annotated[list[Container], _none_as_empty(list)] = []
    volumes: Annotated[list[Volume], _none_as_empty(list)] = []


class PodObject(K8sModel):
    metadata: ObjectMeta
    spec: PodSpec


class ObjectReference(K8sModel):
    kind: str = ""
    name: K8sName = ""


class BindingObject(K8sModel):
    """pods/binding: the scheduler (or anyone with that right) places pod metadata.name on target.name."""

    metadata: ObjectMeta
    target: ObjectReference


class CsrSpec(K8sModel):
    # []byte in Go, so base64 in JSON; the PEM inside is judged by the decision, not here.
    request: Annotated[bytes, BeforeValidator(_b64_decoder(MAX_CSR_PEM))]
    signer_name: str
    usages: K8sList = []
    username: str = ""


class CsrObject(K8sModel):
    metadata: ObjectMeta
    spec: CsrSpec


class StatusCause(K8sModel):
    reason: str  # a reason code
    message: str
    field: str | None = None  # "spec.containers[0].image"


class StatusDetails(K8sModel):
    causes: list[StatusCause] = []


class AdmissionStatus(K8sModel):
    """metav1.Status of a refusal: kubectl prints `Error from server (<reason>): ... <message>`."""

    status: Literal["Failure"] = "Failure"
    code: int
    reason: str  # metav1.StatusReason: Forbidden, ServiceUnavailable
    message: str
    details: StatusDetails | None = None


class AdmissionResponse(K8sModel):
    # Never patch or patchType: the API server refuses a patch from a validating webhook.
    uid: str  # the request's: the API server refuses any other
    allowed: bool
    status: AdmissionStatus | None = None
    warnings: list[str] | None = None


class AdmissionReviewOut(K8sModel):
    api_version: Literal["admission.k8s.io/v1"] = "admission.k8s.io/v1"
    kind: Literal["AdmissionReview"] = "AdmissionReview"
    response: AdmissionResponse
