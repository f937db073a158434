"""What the verifier keeps, and the operations on it, independent of the database behind it.

Every method is one transaction. Every change an auditor cares about (enrollment, verdict,
policy, revocation, EK) appends its audit record in the same transaction as the change, so
the two can never disagree. Errors are typed: StoreUnavailable when the database cannot be
reached or written (callers answer 503 and fail closed), the others when the request itself
cannot be honoured.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from attest.reasons import Reason


class StoreError(Exception):
    """Base class; `code` is a Reason when the failure is the caller's to explain."""

    def __init__(self, message: str, code: Reason | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class StoreUnavailable(StoreError):
    """The database is down, locked, read-only or full. Nothing was changed."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    """The change contradicts what is stored (a second EK for an enrolled node, say)."""


class NonceRejected(StoreError):
    """code is NONCE_UNKNOWN, NONCE_EXPIRED, NONCE_REUSED or NONCE_WRONG_NODE."""


@dataclass(frozen=True)
class EkRecord:
    id: int
    node: str
    fingerprint: str  # hex SHA-256 of the EK SubjectPublicKeyInfo (DER)
    public_pem: str
    certificate: bytes | None  # DER
    source: str  # "operator" | "manufacturer-chain"
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None


@dataclass(frozen=True)
class Enrollment:
    id: str
    node: str
    ek_fingerprint: str
    ak_public: bytes  # TPM2B_PUBLIC
    ak_name: bytes
    secret_hash: bytes  # SHA-256 of the credential secret: the secret itself is never stored
    expires_at: dt.datetime


# How far a verdict's appraisal may lie ahead of the reader's clock (replicas' clocks differ a
# little). Further ahead, the clock that appraised it, or the reader's, was stepped back: the
# verdict would stay fresh for longer than it was issued for, so it no longer counts.
CLOCK_SKEW: Final = dt.timedelta(seconds=5)


@dataclass(frozen=True)
class VerdictRecord:
    node: str
    trusted: bool
    appraised_at: dt.datetime
    expires_at: dt.datetime | None
    reasons: list[dict[str, Any]]  # Finding.to_json() of each
    detail: dict[str, Any]  # the rest of Verdict.to_json()
    policy: str | None = None  # "name@version"

    def fresh_at(self, now: dt.datetime) -> bool:
        """Still within its lifetime as seen at `now` (whether trusted or not): the one rule that
        admission, the CSR approver, the node controller and node listings share."""
        return self.expires_at is not None and now < self.expires_at and self.appraised_at <= now + CLOCK_SKEW


@dataclass(frozen=True)
class NodeRecord:
    name: str
    ek_fingerprint: str
    ak_public: bytes
    ak_name: bytes
    enrolled_at: dt.datetime
    revoked_at: dt.datetime | None = None
    # Appraisal state carried between rounds:
    clock: dict[str, Any] | None = None  # last accepted TPMS_CLOCK_INFO + firmwareVersion
    ima_state: dict[str, Any] | None = None  # attest.verify.ima.ReplayState.to_json()
    last_verdict: VerdictRecord | None = None
    revoke_reason: str | None = None


@dataclass(frozen=True)
class NonceRecord:
    node: str
    nonce: bytes
    selection: str
    issued_at: dt.datetime
    expires_at: dt.datetime
    binding: bytes | None = None  # what the nonce commits to (e.g. a CSR key's hash), if anything


@dataclass(frozen=True)
class PolicyRecord:
    name: str
    version: int
    digest: str  # hex SHA-256 of text
    text: str
    created_at: dt.datetime


@dataclass(frozen=True)
class RoundState:
    """What an attestation round reads before it appraises, in one read (Store.round_state)."""

    node: NodeRecord | None
    policy: tuple[int, str] | None  # the latest version of the policy asked for: (version, digest)
    nonce: NonceRecord | None = None  # the nonce asked about, valid and unconsumed when it was read


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: dt.datetime
    kind: str  # "ek", "enroll", "verdict", "policy", "revoke"
    subject: str
    data: dict[str, Any]
    prev: str  # hex hash of the previous record, "" for the first
    hash: str  # hex SHA-256 over (seq, at, kind, subject, data, prev) in canonical JSON: attest.store.audit


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str = ""
    counts: dict[str, int] = field(default_factory=dict)


class Store(Protocol):
    """The verifier's persistence. Implementations: attest.store.sql.SqlStore (SQLite, PostgreSQL).

    Any method may raise StoreUnavailable. "Audited" methods append their audit record(s) in
    the transaction of the change.
    """

    def close(self) -> None: ...
    def health(self) -> Health:
        """A cheap round trip; never raises: ok=False with the cause when the database is down."""
        ...

    # Endorsement keys vouched for by an operator or a manufacturer chain.
    def add_ek(
        self, node: str, fingerprint: str, public_pem: str, certificate: bytes | None, source: str
    ) -> EkRecord:
        """Audited. The same active EK for the same node again returns the stored record
        unchanged; an active EK recorded for another node raises Conflict(EK_NODE_CONFLICT)."""
        ...

    def find_ek(self, fingerprint: str) -> EkRecord | None: ...  # active (not revoked) only
    def list_eks(self, after_id: int = 0, limit: int | None = None) -> list[EkRecord]:
        """By id: those after `after_id`, at most `limit` (all when None), for paging by id."""
        ...

    def revoke_ek(self, ek_id: int) -> EkRecord:
        """Audited. Also revokes every node bound to that EK: trust in the AK came from it.
        Revoking a revoked EK returns it unchanged. NotFound for an unknown id."""
        ...

    # Enrollment: a pending credential challenge, completed once.
    def create_enrollment(self, enrollment: Enrollment) -> None:
        """Conflict if the id exists. Nothing is audited until the challenge is answered."""
        ...

    def complete_enrollment(self, enrollment_id: str, secret: bytes, now: dt.datetime) -> NodeRecord:
        """Atomically: the enrollment exists, is unexpired and unused, the secret's hash matches
        (constant time); then bind the AK to the node and consume the enrollment. A node already
        bound to a different EK raises Conflict (a new TPM never silently takes over).

        Refusals, by code: NotFound(ENROLLMENT_UNKNOWN); Conflict(ENROLLMENT_USED),
        Conflict(ENROLLMENT_EXPIRED) (these two change nothing); then, once the challenge is
        consumed (single use: a refused answer cannot be retried either, and is audited):
        Conflict(CREDENTIAL_INVALID) for a wrong secret, Conflict(EK_NODE_CONFLICT) when the
        node is actively bound to another EK or the EK to another node, Conflict(EK_NOT_ENROLLED)
        when an operator revoked the EK since the challenge was issued.

        Binding replaces any earlier binding of the node with the same EK (new AK after a TPM
        clear or lost agent state) or of a revoked node (the operator released it), and clears
        the carried clock, IMA state and latest verdict: the new AK must earn a verdict.
        Audited (kind "enroll", data.outcome says which)."""
        ...

    def get_node(self, name: str) -> NodeRecord | None: ...
    def list_nodes(self, after: str | None = None, limit: int | None = None) -> list[NodeRecord]:
        """By name: those after `after`, at most `limit` (all when None). Paging by name needs
        no offset scan: the primary key's index serves both the ORDER BY and the WHERE."""
        ...

    def node_state_counts(self, now: dt.datetime) -> dict[str, int]:
        """How many nodes are in each state at `now`, counted by the database (no rows are
        loaded): revoked, enrolled (no verdict yet), untrusted, stale (trusted, expired) or
        trusted; states with no node are left out."""
        ...

    def revoke_node(self, name: str, reason: str) -> NodeRecord:
        """Audited. NotFound for an unknown node; a revoked node is returned unchanged."""
        ...

    # Nonces: single use, short lived, issued to one node; consumed atomically even across replicas.
    def issue_nonce(self, record: NonceRecord) -> None:
        """Conflict if the same nonce was issued before. Expired nonces are purged here, a bounded
        batch at a time."""
        ...

    def consume_nonce(self, node: str, nonce: bytes, now: dt.datetime) -> NonceRecord:
        """Exactly one caller wins, even across replicas. NonceRejected with NONCE_UNKNOWN,
        NONCE_WRONG_NODE (issued to another node: left unconsumed for it), NONCE_REUSED or
        NONCE_EXPIRED, checked in that order; a refusal changes nothing."""
        ...

    def round_state(
        self, node: str, policy: str, nonce: bytes | None = None, now: dt.datetime | None = None
    ) -> RoundState:
        """The node, the latest version of `policy` and (when asked) the nonce, read together.
        A nonce that consume_nonce would refuse at `now` raises the same NonceRejected; it is
        only read here, never consumed (record_verdict or consume_nonce does that)."""
        ...

    def record_verdict(
        self,
        verdict: VerdictRecord,
        clock: dict[str, Any] | None,
        ima_state: dict[str, Any] | None,
        nonce: bytes | None = None,
    ) -> None:
        """Store the verdict as the node's latest, update the carried appraisal state (only
        when given), and append the audit record: one transaction. NotFound for a node that is
        not enrolled, Conflict(NODE_REVOKED) for a revoked one (it was revoked mid-appraisal).

        With `nonce`, the same transaction first consumes it for the node at the verdict's
        appraised_at, as consume_nonce does: if that is refused (another submission of the same
        nonce won) it raises that NonceRejected and stores nothing, so a nonce yields at most
        one verdict, and a failure anywhere leaves the nonce, the verdict and the state as they were."""
        ...

    def put_policy(self, name: str, text: str) -> PolicyRecord:
        """A new version, audited; the same text as the latest version returns that version."""
        ...

    def get_policy(self, name: str, version: int | None = None) -> PolicyRecord | None: ...
    def list_policies(self) -> list[PolicyRecord]: ...  # latest version of each

    def append_audit(self, kind: str, subject: str, data: dict[str, Any]) -> AuditRecord:
        """An audit record for an event that changes nothing else (evidence refused, say)."""
        ...

    def audit_records(self, after_seq: int = 0, limit: int = 10_000) -> list[AuditRecord]: ...
