"""The admin API's logic (attestctl): nodes and their state, EKs, policies, the audit trail.

HTTP-free like webhook.service; authentication happens before any of this is reached
(webhook.routes_admin).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from attest.reasons import Reason
from attest.store.api import AuditRecord, EkRecord, NodeRecord, PolicyRecord, Store
from attest.verify.ekcert import load_ek_certificate
from attest.verify.policy import load_policy
from attest.verify.tpmstructs import PublicKey
from attest.wire import (
    AuditRecordOut,
    ContainerOut,
    EkEnrollRequest,
    EkOut,
    NodeOut,
    PolicyIn,
    PolicyOut,
    ReasonOut,
)
from webhook.config import POLICY_NAME_PATTERN
from webhook.errors import INVALID_REQUEST, NOT_FOUND, BadRequest, Missing
from webhook.service import Clock, key_fingerprint, public_pem

MAX_AUDIT_PAGE = 10_000
# A page of nodes (each with its latest verdict's reasons and containers) or EKs: what one request
# may hold in memory, whatever the store holds.
MAX_PAGE = 1000
OPERATOR = "operator"


def node_state(node: NodeRecord, now: dt.datetime) -> str:
    """revoked, enrolled (no verdict yet), untrusted, stale (trusted but expired), or trusted."""
    verdict = node.last_verdict
    if node.revoked_at is not None:
        return "revoked"
    if verdict is None:
        return "enrolled"
    if not verdict.trusted:
        return "untrusted"
    if not verdict.fresh_at(now):
        return "stale"
    return "trusted"


def node_out(node: NodeRecord, now: dt.datetime) -> NodeOut:
    verdict = node.last_verdict
    return NodeOut(
        name=node.name,
        state=node_state(node, now),
        ek_fingerprint=node.ek_fingerprint,
        ak_name=node.ak_name.hex(),
        last_verdict_at=verdict.appraised_at if verdict else None,
        expires_at=verdict.expires_at if verdict else None,
        reasons=[ReasonOut.model_validate(r) for r in verdict.reasons] if verdict else [],
        policy=verdict.policy if verdict else None,
        containers=[ContainerOut.model_validate(c) for c in verdict.detail.get("containers", [])]
        if verdict
        else [],
    )


def ek_out(ek: EkRecord) -> EkOut:
    return EkOut(
        id=ek.id,
        node=ek.node,
        fingerprint=ek.fingerprint,
        source=ek.source,
        created_at=ek.created_at,
        revoked_at=ek.revoked_at,
    )


def policy_out(policy: PolicyRecord, *, with_text: bool = False) -> PolicyOut:
    return PolicyOut(
        name=policy.name,
        version=policy.version,
        digest=policy.digest,
        created_at=policy.created_at,
        text=policy.text if with_text else None,
    )


def audit_out(record: AuditRecord) -> AuditRecordOut:
    return AuditRecordOut(
        seq=record.seq,
        at=record.at,
        kind=record.kind,
        subject=record.subject,
        data=record.data,
        prev=record.prev,
        hash=record.hash,
    )


def _operator_key(request: EkEnrollRequest) -> tuple[PublicKey, bytes | None]:
    """The EK an operator vouches for, from its certificate (not chain-checked: the operator is
    the authority here) or its PEM public key."""
    if (request.ek_certificate is None) == (request.ek_public_pem is None):
        raise BadRequest(INVALID_REQUEST, "give exactly one of ek_certificate and ek_public_pem")
    if request.ek_certificate is not None:
        cert, _ = load_ek_certificate(request.ek_certificate)
        key: object = cert.public_key()
        der = cert.public_bytes(serialization.Encoding.DER)
    else:
        assert request.ek_public_pem is not None
        try:
            key = serialization.load_pem_public_key(request.ek_public_pem.encode())
        except (ValueError, UnsupportedAlgorithm) as e:
            raise BadRequest(Reason.EK_MALFORMED, f"ek_public_pem: not a PEM public key ({e})") from None
        der = None
    if not isinstance(key, PublicKey):
        raise BadRequest(Reason.EK_MALFORMED, f"an EK is an RSA or EC key, not {type(key).__name__}")
    return key, der


class Admin:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self._clock = clock

    def nodes(self, after: str | None, limit: int) -> tuple[list[NodeOut], str | None]:
        """A page of nodes by name after `after`, and the cursor of the next page (None at the end)."""
        limit = min(limit, MAX_PAGE)
        records = self.store.list_nodes(after, limit + 1)  # one more tells whether a next page exists
        now = self._clock()
        page = [node_out(n, now) for n in records[:limit]]
        return page, page[-1].name if len(records) > limit else None

    def node(self, name: str) -> NodeOut:
        node = self.store.get_node(name)
        if node is None:
            raise Missing(NOT_FOUND, f"no node named {name}")
        return node_out(node, self._clock())

    def revoke_node(self, name: str) -> NodeOut:
        return node_out(self.store.revoke_node(name, "revoked by an operator"), self._clock())

    def node_state_counts(self) -> Mapping[str, int]:
        return self.store.node_state_counts(self._clock())

    def enroll_ek(self, request: EkEnrollRequest) -> EkOut:
        key, certificate = _operator_key(request)
        return ek_out(
            self.store.add_ek(request.node, key_fingerprint(key), public_pem(key), certificate, OPERATOR)
        )

    def eks(self, after: int, limit: int) -> tuple[list[EkOut], str | None]:
        """A page of EKs by id after `after`, and the cursor of the next page (None at the end)."""
        limit = min(limit, MAX_PAGE)
        records = self.store.list_eks(after, limit + 1)
        page = [ek_out(e) for e in records[:limit]]
        return page, str(page[-1].id) if len(records) > limit else None

    def revoke_ek(self, ek_id: int) -> EkOut:
        return ek_out(self.store.revoke_ek(ek_id))

    def put_policy(self, request: PolicyIn) -> PolicyOut:
        policy = load_policy(request.text)  # ParseError(POLICY_INVALID) with the loader's words: 400
        if not re.fullmatch(POLICY_NAME_PATTERN, policy.name):
            raise BadRequest(
                Reason.POLICY_INVALID,
                f"policy.name: {policy.name!r} must be letters, digits, '.', '_' and '-', at most 128",
            )
        return policy_out(self.store.put_policy(policy.name, request.text))

    def policies(self) -> list[PolicyOut]:
        return [policy_out(p) for p in self.store.list_policies()]

    def policy(self, name: str, version: int | None) -> PolicyOut:
        record = self.store.get_policy(name, version)
        if record is None:
            which = f"version {version} of policy" if version is not None else "policy"
            raise Missing(NOT_FOUND, f"no {which} named {name}")
        return policy_out(record, with_text=True)

    def audit(self, after: int, limit: int) -> list[AuditRecordOut]:
        return [audit_out(r) for r in self.store.audit_records(after, min(limit, MAX_AUDIT_PAGE))]
