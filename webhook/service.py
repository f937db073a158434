"""Enrollment and attestation (DESIGN 3 and 4): the verifier's decisions, without HTTP.

Every method takes wire models and returns wire models; refusals are typed exceptions
(webhook.errors, the store's errors, the verifier library's ParseError / VerificationError)
that webhook.errors turns into responses. Methods block (database, crypto, appraisal): the
HTTP layer runs them in worker threads.

Two rules shape the evidence path. First, the challenge endpoint is unauthenticated, so anyone
can obtain a nonce for any node: evidence whose quote does not verify under the node's bound AK
proves nothing about the node, and must not be able to replace its verdict (that would let
anyone mark any node untrusted). It is answered 422 and audited, never stored as a verdict.
Second, state carried between rounds (clock, IMA position) only moves forward on evidence that
deserves it, so a failure stays visible until the node proves it is gone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Final, NoReturn

from cryptography.hazmat.primitives import serialization

from attest.errors import AttestError, ParseError
from attest.pcrselect import PcrSelection
from attest.reasons import Finding, Reason
from attest.store.api import (
    Enrollment,
    NodeRecord,
    NonceRecord,
    NonceRejected,
    PolicyRecord,
    RoundState,
    Store,
    StoreError,
    VerdictRecord,
)
from attest.verify.appraise import Evidence as AppraisalEvidence
from attest.verify.appraise import Expectations, Verdict, appraise
from attest.verify.credential import make_credential
from attest.verify.ekcert import validate_ek_certificate
from attest.verify.ima import ReplayState
from attest.verify.pcrs import PcrValues
from attest.verify.policy import Policy, load_policy
from attest.verify.quote import ak_name, check_ak_attributes, load_ak
from attest.verify.tpmstructs import ClockInfo, PublicKey, parse_public
from attest.wire import (
    ActivateRequest,
    Challenge,
    ChallengeRequest,
    EnrollChallenge,
    EnrollRequest,
    EnrollResult,
    Evidence,
    ReasonOut,
    VerdictOut,
)
from webhook.config import Settings
from webhook.errors import Conflicting, EvidenceRejected, Forbidden, Missing, ServiceError
from webhook.metrics import Metrics

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
RandomBytes = Callable[[int], bytes]

NONCE_BYTES: Final = 32
CREDENTIAL_SECRET_BYTES: Final = 32
_POLICY_CACHE: Final = 4
# How old the active policy admission judges images against may be (seconds): one store read per
# second instead of one per request; a newly applied policy reaches every replica's admission
# within this (docs/admission.md).
ADMISSION_POLICY_MAX_AGE: Final = 1.0
# Findings that mean the TPM's clock or firmware went back: the stored high-water mark stays.
_ROLLBACKS: Final = frozenset({Reason.QUOTE_CLOCK_ROLLBACK, Reason.QUOTE_FIRMWARE_ROLLBACK})
# Separates bound nonces from any other use of SHA-256 over random bytes (docs/kubernetes.md).
BIND_DOMAIN: Final = b"tpm-node-attest/bind/v1\x00"
_FINGERPRINT_BYTES: Final = 32


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def key_fingerprint(key: PublicKey) -> str:
    """How EKs are named everywhere: hex SHA-256 of the SubjectPublicKeyInfo DER."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def bind_nonce(salt: bytes, fingerprints: Iterable[str]) -> tuple[bytes, bytes]:
    """(nonce, binding) for a challenge that commits to keys (hex SHA-256 SPKI fingerprints).

    binding = salt || the raw fingerprints, sorted and deduplicated; nonce = SHA-256(BIND_DOMAIN
    || binding). The quote signs the nonce, so it commits to the keys, and the stored binding is
    the whole preimage: anyone holding it and the quote can check the commitment. The random salt
    keeps the nonce unpredictable and single use, as an unbound nonce is.
    """
    binding = salt + b"".join(sorted({bytes.fromhex(f) for f in fingerprints}))
    return hashlib.sha256(BIND_DOMAIN + binding).digest(), binding


def bound_keys(nonce: bytes, binding: bytes | None) -> tuple[str, ...]:
    """The fingerprints a consumed nonce committed to; () for an unbound nonce, or for a
    stored binding that does not hash to its nonce (a tampered row binds nothing)."""
    if not binding:
        return ()
    keys = binding[NONCE_BYTES:]
    if (
        len(binding) < NONCE_BYTES
        or len(keys) % _FINGERPRINT_BYTES
        or not secrets.compare_digest(hashlib.sha256(BIND_DOMAIN + binding).digest(), nonce)
    ):
        log.error("a stored nonce binding does not match its nonce: ignored")
        return ()
    return tuple(keys[i : i + _FINGERPRINT_BYTES].hex() for i in range(0, len(keys), _FINGERPRINT_BYTES))


def public_pem(key: PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


@dataclasses.dataclass(frozen=True)
class ActivePolicy:
    record: PolicyRecord
    policy: Policy

    @property
    def label(self) -> str:
        return f"{self.record.name}@{self.record.version}"


class PolicyCache:
    """Parsed policies by digest: a policy is parsed once per version, not once per request.
    It also remembers the last active policy read from the store, and when (time.monotonic),
    for readers that accept one a little old (admission: ADMISSION_POLICY_MAX_AGE)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._parsed: OrderedDict[str, Policy] = OrderedDict()
        self._monotonic = monotonic
        self._active: tuple[float, ActivePolicy | None] | None = None  # (read at, what was read)
        self._versions: dict[str, ActivePolicy] = {}  # the latest version seen, by policy name

    def recent(self, max_age: float) -> tuple[ActivePolicy | None] | None:
        """(the active policy,) as last read, if that was less than max_age seconds ago; None
        when it must be read again."""
        remembered = self._active
        if remembered is None or self._monotonic() - remembered[0] >= max_age:
            return None
        return (remembered[1],)

    def remember(self, read_at: float, active: ActivePolicy | None) -> None:
        with self._lock:
            # Concurrent readers: the newest read wins, never an older one finishing late.
            if self._active is None or read_at >= self._active[0]:
                self._active = (read_at, active)

    def now(self) -> float:
        return self._monotonic()

    def latest(
        self, name: str, version: tuple[int, str] | None, read: Callable[[int], PolicyRecord | None]
    ) -> ActivePolicy | None:
        """The policy `name` at `version` ((version, digest), as Store.round_state reads it),
        parsed; `read(version)` fetches its text the first time that version is asked for."""
        if version is None:
            return None
        with self._lock:
            known = self._versions.get(name)
        if known is not None and (known.record.version, known.record.digest) == version:
            return known
        record = read(version[0])
        if record is None:  # deleted between the two reads: there is no such version
            return None
        active = ActivePolicy(record, self.load(record))
        with self._lock:
            self._versions[name] = active
        return active

    def load(self, record: PolicyRecord) -> Policy:
        with self._lock:
            policy = self._parsed.get(record.digest)
            if policy is not None:
                self._parsed.move_to_end(record.digest)
                return policy
        try:
            policy = load_policy(record.text)
        except ParseError as e:
            # It loaded when it was stored; failing now is the verifier's problem, not the node's.
            raise RuntimeError(f"stored policy {record.name}@{record.version} no longer loads: {e}") from e
        with self._lock:
            self._parsed[record.digest] = policy
            while len(self._parsed) > _POLICY_CACHE:
                self._parsed.popitem(last=False)
        return policy


def _clock_json(verdict: Verdict) -> dict[str, Any] | None:
    if verdict.clock is None:
        return None
    return {
        "clock": verdict.clock.clock,
        "reset_count": verdict.clock.reset_count,
        "restart_count": verdict.clock.restart_count,
        "safe": verdict.clock.safe,
        "firmware_version": verdict.firmware_version,
    }


def _containers_proven(node: NodeRecord) -> int | None:
    """How many container launches the last verdict proved: a later quote of the same boot
    proving fewer means PCR 23 was reset behind the log's back (appraise ignores it after a reboot)."""
    last = node.last_verdict
    if last is None or "containers" not in last.detail:
        return None
    return len(last.detail["containers"])


def _previous_clock(node: NodeRecord) -> tuple[ClockInfo | None, int | None]:
    if node.clock is None:
        return None, None
    c = node.clock
    info = ClockInfo(int(c["clock"]), int(c["reset_count"]), int(c["restart_count"]), bool(c["safe"]))
    firmware = c.get("firmware_version")
    return info, None if firmware is None else int(firmware)


def _reasons(findings: tuple[Finding, ...]) -> list[ReasonOut]:
    return [ReasonOut.model_validate(f.to_json()) for f in findings]


@dataclasses.dataclass(frozen=True)
class _Round:
    """One evidence submission as judged: the appraisal, and what the service added to it."""

    node: str
    now: dt.datetime
    policy: ActivePolicy | None
    stored_ima: ReplayState | None
    verdict: Verdict
    findings: tuple[Finding, ...]
    trusted: bool
    restart_ima: bool  # the IMA position could not be continued: start over from the whole list
    bound_keys: tuple[str, ...]  # what the nonce committed to (docs/kubernetes.md)


class Verifier:
    """The agent API's logic: enroll, activate, challenge, evidence."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: Metrics,
        *,
        clock: Clock = utcnow,
        random_bytes: RandomBytes = secrets.token_bytes,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self._clock = clock
        self._random = random_bytes
        self._policies = PolicyCache()

    # --- enrollment ------------------------------------------------------------------------

    def enroll(self, request: EnrollRequest) -> EnrollChallenge:
        """Accept the EK (manufacturer chain or operator enrollment), check the AK, and answer
        with a credential only the TPM holding both can open."""
        try:
            challenge = self._enroll(request)
        except (AttestError, StoreError, ServiceError):
            self.metrics.enrollments.labels("refused").inc()
            raise
        self.metrics.enrollments.labels("challenged").inc()
        return challenge

    def _enroll(self, request: EnrollRequest) -> EnrollChallenge:
        now = self._clock()
        ek = parse_public(request.ek_public, Reason.EK_MALFORMED)
        try:
            ek_key = ek.public_key()
        except ValueError as e:
            raise ParseError(Reason.EK_MALFORMED, f"EK public area: {e}") from None
        fingerprint = key_fingerprint(ek_key)
        self._check_node_identity(request.node, fingerprint)
        self._accept_ek(request, ek_key, fingerprint, now)

        ak = parse_public(request.ak_public, Reason.AK_MALFORMED)
        check_ak_attributes(ak)
        name = ak_name(ak)  # computed here: a name the node sends proves nothing
        secret = self._random(CREDENTIAL_SECRET_BYTES)
        credential = make_credential(ek, name, secret)
        enrollment = Enrollment(
            id=secrets.token_urlsafe(24),
            node=request.node,
            ek_fingerprint=fingerprint,
            ak_public=request.ak_public,
            ak_name=name,
            secret_hash=hashlib.sha256(secret).digest(),
            expires_at=now + self.settings.enrollment_ttl,
        )
        self.store.create_enrollment(enrollment)
        log.info("enrollment %s issued for node %s (EK %s)", enrollment.id, request.node, fingerprint[:16])
        return EnrollChallenge(
            enrollment_id=enrollment.id,
            credential_blob=credential.id_object,
            encrypted_secret=credential.encrypted_secret,
            expires_at=enrollment.expires_at,
        )

    def _check_node_identity(self, node: str, fingerprint: str) -> None:
        """A new TPM never silently takes over an enrolled node: an operator revokes the node
        first. Refused here, before any credential is made; the store checks the same (and that
        the TPM is not another node's) atomically when the credential is activated."""
        bound = self.store.get_node(node)
        if bound is not None and bound.revoked_at is None and bound.ek_fingerprint != fingerprint:
            raise Conflicting(
                Reason.EK_NODE_CONFLICT,
                f"node {node} is bound to another TPM; an operator must revoke it before it re-enrolls",
            )

    def _accept_ek(
        self, request: EnrollRequest, ek_key: PublicKey, fingerprint: str, now: dt.datetime
    ) -> None:
        vouched = self.store.find_ek(fingerprint)
        if vouched is not None and vouched.node == request.node:
            return
        if request.ek_certificate is None:
            raise Forbidden(
                Reason.EK_NOT_ENROLLED,
                "no EK certificate was sent and no operator enrolled this EK for this node",
            )
        # The chain vouches for the key in the certificate; check_ek_public (inside) makes sure
        # that is the key MakeCredential encrypts to.
        validate_ek_certificate(
            request.ek_certificate,
            self.settings.ek_roots,
            self.settings.ek_intermediates,
            ek_public=ek_key,
            at=now,
        )
        if any(r.fingerprint == fingerprint and r.revoked_at is not None for r in self.store.list_eks()):
            raise Forbidden(Reason.EK_NOT_ENROLLED, "an operator revoked this EK")

    def activate(self, enrollment_id: str, request: ActivateRequest) -> EnrollResult:
        try:
            node = self.store.complete_enrollment(enrollment_id, request.secret, self._clock())
        except StoreError:
            self.metrics.enrollments.labels("activation_failed").inc()
            raise
        self.metrics.enrollments.labels("activated").inc()
        log.info("node %s enrolled: AK %s bound", node.name, node.ak_name.hex())
        return EnrollResult(node=node.name, ak_name=node.ak_name.hex(), enrolled_at=node.enrolled_at)

    # --- attestation -----------------------------------------------------------------------

    def _bound_node(self, name: str) -> NodeRecord:
        return self._check_bound(name, self.store.get_node(name))

    @staticmethod
    def _check_bound(name: str, node: NodeRecord | None) -> NodeRecord:
        if node is None:
            raise Missing(Reason.AK_NOT_BOUND, f"node {name} is not enrolled: no AK is bound to it")
        if node.revoked_at is not None:
            raise Forbidden(Reason.NODE_REVOKED, f"node {name} was revoked by an operator")
        return node

    def active_policy(self, max_age: float = 0.0) -> ActivePolicy | None:
        """The latest version of --policy-name, parsed (once per version). max_age > 0 accepts
        the one read by any caller less than max_age seconds ago instead of reading the store:
        admission's path (ADMISSION_POLICY_MAX_AGE). The evidence path reads every time (and
        refreshes what admission sees), so an appraisal always uses the latest policy."""
        if max_age > 0:
            recent = self._policies.recent(max_age)
            if recent is not None:
                return recent[0]
        read_at = self._policies.now()
        record = self.store.get_policy(self.settings.policy_name)
        active = None if record is None else ActivePolicy(record, self._policies.load(record))
        self._policies.remember(read_at, active)
        return active

    def _round(
        self, name: str, nonce: bytes | None = None, now: dt.datetime | None = None
    ) -> tuple[NodeRecord, ActivePolicy | None, RoundState]:
        """What a round reads, in one store read: the bound node, the latest policy (its text
        read and parsed once per version) and, for evidence, the nonce, checked but not consumed.
        Admission's remembered policy is refreshed with it."""
        read_at = self._policies.now()
        policy_name = self.settings.policy_name
        state = self.store.round_state(name, policy_name, nonce, now)
        node = self._check_bound(name, state.node)
        active = self._policies.latest(
            policy_name, state.policy, lambda version: self.store.get_policy(policy_name, version)
        )
        self._policies.remember(read_at, active)
        return node, active, state

    def selection(self, policy: Policy | None) -> PcrSelection:
        """The configured PCRs plus every PCR the policy's rules need, so no rule goes unjudged."""
        banks = self.settings.pcrs.as_dict()
        if policy is not None and policy.required_pcrs():
            banks[policy.bank] = sorted(set(banks.get(policy.bank, ())) | policy.required_pcrs())
        return PcrSelection.of(banks)

    def challenge(self, name: str, request: ChallengeRequest | None = None) -> Challenge:
        node, active, _ = self._round(name)
        now = self._clock()
        selection = self.selection(active.policy if active else None)
        salt = self._random(NONCE_BYTES)
        nonce, binding = (salt, None) if not request or not request.bind else bind_nonce(salt, request.bind)
        record = NonceRecord(
            node=name,
            nonce=nonce,
            selection=str(selection),
            issued_at=now,
            expires_at=now + self.settings.nonce_ttl,
            binding=binding,
        )
        self.store.issue_nonce(record)
        ima = ReplayState.from_json(node.ima_state) if node.ima_state else None
        return Challenge(
            nonce=record.nonce,
            selection=record.selection,
            expires_at=record.expires_at,
            ima_offset=ima.offset if ima else 0,
            bound_keys=list(bound_keys(nonce, binding)),
        )

    def submit_evidence(self, name: str, evidence: Evidence) -> VerdictOut:
        now = self._clock()
        try:
            node, active, state = self._round(name, evidence.nonce, now)
        except NonceRejected as e:
            self._nonce_rejected(e)
        issued = state.nonce
        assert issued is not None  # round_state checks the nonce it is given, or raises
        try:
            pcrs = PcrValues(
                {b: {i: bytes.fromhex(v) for i, v in vs.items()} for b, vs in evidence.pcrs.items()}
            )
        except ValueError:
            self._reject(
                name, issued.nonce, (Finding(Reason.PCR_VALUES_MALFORMED, "a PCR value is not whole bytes"),)
            )
        except ParseError as e:
            self._reject(name, issued.nonce, (Finding(e.code, e.message),))

        stored_ima = ReplayState.from_json(node.ima_state) if node.ima_state else None
        # Offset 0 is a whole list from boot; any other offset continues exactly where the last
        # accepted round stopped, or the entries before it would go unjudged.
        resume = evidence.ima_offset > 0 and (stored_ima.offset if stored_ima else 0) == evidence.ima_offset
        offset_wrong = evidence.ima_offset > 0 and not resume
        previous_clock, previous_firmware = _previous_clock(node)
        expect = Expectations(
            ak=load_ak(node.ak_public),  # the AK bound at enrollment, never one from the request
            nonce=issued.nonce,
            selection=PcrSelection.parse(issued.selection),  # what was asked, not what was quoted
            policy=active.policy if active else None,
            previous_clock=previous_clock,
            previous_firmware=previous_firmware,
            ima_state=stored_ima if resume else None,
            containers_accepted=_containers_proven(node),
        )
        started = time.perf_counter()
        verdict = appraise(
            AppraisalEvidence(
                attest=evidence.quote,
                signature=evidence.signature,
                pcrs=pcrs,
                eventlog=evidence.eventlog,
                ima=None if offset_wrong else evidence.ima,
                container_log=evidence.container_log,
            ),
            expect,
        )
        self.metrics.appraisal_seconds.observe(time.perf_counter() - started)
        # appraise() proves PCR values only once the quote verified under the AK with the issued
        # nonce and selection: without them, nothing in this evidence is provably the node's.
        if not verdict.pcrs:
            self._reject(name, issued.nonce, verdict.findings)

        extra: list[Finding] = []
        if offset_wrong:
            expected = stored_ima.offset if stored_ima else 0
            extra.append(
                Finding(
                    Reason.IMA_REPLAY_MISMATCH,
                    f"IMA entries sent from {evidence.ima_offset}, the verifier continues from {expected}",
                    pcr=10,
                )
            )
        elif resume and verdict.reboot:
            extra.append(
                Finding(
                    Reason.IMA_REPLAY_MISMATCH,
                    "the TPM was reset since the last accepted IMA entry: send the whole list from boot",
                    pcr=10,
                )
            )
        if active is None and self.settings.require_policy:
            extra.append(
                Finding(Reason.POLICY_MISSING, f"no policy named {self.settings.policy_name!r} is stored")
            )
        # Entries sent from a wrong offset were not appraised: "no IMA list sent" would mislead.
        kept = (f for f in verdict.findings if not (offset_wrong and f.code is Reason.IMA_MISSING))
        judged = _Round(
            node=name,
            now=now,
            policy=active,
            stored_ima=stored_ima,
            verdict=verdict,
            findings=(*kept, *extra),
            trusted=verdict.trusted and not extra,
            restart_ima=bool(extra),
            bound_keys=bound_keys(issued.nonce, issued.binding),
        )
        return self._store_verdict(judged, issued.nonce)

    def _nonce_rejected(self, e: NonceRejected) -> NoReturn:
        self.metrics.attestation("rejected", [e.code.value if e.code else "nonce_rejected"])
        raise e

    def _store_verdict(self, r: _Round, nonce: bytes) -> VerdictOut:
        # IMA state advances only with a trusted verdict: an entry that failed policy must be
        # judged again next round (and fail again) until a reboot clears the list. A reset, or
        # a position the node could not continue from, starts over from the whole list.
        new_ima: ReplayState | None = None
        if r.trusted and r.verdict.ima_state is not None:
            new_ima = r.verdict.ima_state
        elif r.verdict.reboot or r.restart_ima:
            new_ima = ReplayState()
        clock = None if any(f.code in _ROLLBACKS for f in r.findings) else _clock_json(r.verdict)
        expires = r.now + self.settings.verdict_ttl if r.trusted else None
        detail = r.verdict.to_json()
        del detail["trusted"], detail["reasons"]
        # The kubelet CSR approver (webhook.k8s.approver) reads these: keys this appraisal vouches for.
        detail["bound_keys"] = list(r.bound_keys)
        record = VerdictRecord(
            node=r.node,
            trusted=r.trusted,
            appraised_at=r.now,
            expires_at=expires,
            reasons=[f.to_json() for f in r.findings],
            detail=detail,
            policy=r.policy.label if r.policy else None,
        )
        # The nonce is consumed in the verdict's transaction: another submission of it that won
        # meanwhile makes this one a rejection, and a failure stores neither.
        try:
            self.store.record_verdict(record, clock, None if new_ima is None else new_ima.to_json(), nonce)
        except NonceRejected as e:
            self._nonce_rejected(e)
        codes = [f.code.value for f in r.findings]
        self.metrics.attestation("trusted" if r.trusted else "untrusted", codes)
        log.info("node %s appraised %s %s", r.node, "trusted" if r.trusted else "untrusted", " ".join(codes))
        current = new_ima or r.stored_ima
        return VerdictOut(
            node=r.node,
            trusted=r.trusted,
            reasons=_reasons(r.findings),
            appraised_at=r.now,
            expires_at=expires,
            reboot=r.verdict.reboot,
            workarounds=list(r.verdict.workarounds),
            ima_offset=current.offset if current else 0,
        )

    def _reject(self, name: str, nonce: bytes, findings: tuple[Finding, ...]) -> NoReturn:
        """Refuse evidence whose quote did not verify: its nonce spent, counted and audited,
        never a verdict."""
        try:
            self.store.consume_nonce(name, nonce, self._clock())
        except NonceRejected as e:  # another submission of it was judged meanwhile
            self._nonce_rejected(e)
        self.metrics.attestation("rejected", [f.code.value for f in findings])
        self.store.append_audit("rejected-evidence", name, {"reasons": [f.to_json() for f in findings]})
        log.warning("evidence for node %s rejected: %s", name, " ".join(f.code.value for f in findings))
        raise EvidenceRejected(findings)
