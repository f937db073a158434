"""Test doubles for the verifier service's unit and HTTP tests (never shipped):

- FakeStore: the Store protocol in memory, with the semantics attest.store.api documents, and
  a `down` switch that makes every call raise StoreUnavailable.
- TestCa: a root and an intermediate that issue EK certificates (and TLS server certificates).
- SoftNode: a node whose TPM is software: an RSA EK (certified or not), an ECDSA AK and quotes
  (tests.soft_tpm) over the PCRs of a simulated measured boot (swtpm.measuredboot, no TPM
  needed), and optionally an IMA list. A test can build any attack exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import hmac
import itertools
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from attest.pcrselect import PcrSelection
from attest.reasons import Reason
from attest.store.api import (
    AuditRecord,
    Conflict,
    EkRecord,
    Enrollment,
    Health,
    NodeRecord,
    NonceRecord,
    NonceRejected,
    NotFound,
    PolicyRecord,
    RoundState,
    StoreUnavailable,
    VerdictRecord,
)
from attest.store.audit import make_record
from attest.tcg import Alg
from attest.verify import eventlog
from attest.verify.ekcert import TCG_KP_EK_CERTIFICATE
from attest.verify.pcrs import PcrValues
from attest.verify.policy import create_policy, dump_policy
from attest.verify.tpmstructs import (
    ClockInfo,
    ObjectAttr,
    RsaDetail,
    Scheme,
    SymDef,
    TpmtPublic,
)
from attest.wire import EnrollRequest, Evidence
from swtpm.imalog import BOOT_AGGREGATE, DEFAULT_FILES, ImaLog, boot_aggregate, make_entry
from swtpm.measuredboot import BootProfile, SimulatedBoot, simulate_boot
from swtpm.softtpm import SoftAk, quote_attest

NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


# --- store ---------------------------------------------------------------------------------


class FakeStore:
    """The Store protocol in memory. Not thread-safe beyond the GIL; enough for tests."""

    def __init__(self) -> None:
        self.down = False
        self.eks: dict[int, EkRecord] = {}
        self.enrollments: dict[str, tuple[Enrollment, bool]] = {}  # id -> (enrollment, used)
        self.nodes: dict[str, NodeRecord] = {}
        self.nonces: dict[bytes, tuple[NonceRecord, bool]] = {}
        self.policies: dict[str, list[PolicyRecord]] = {}
        self.audit: list[AuditRecord] = []
        self.verdicts: list[VerdictRecord] = []
        self._ids = itertools.count(1)
        self.clock: Callable[[], dt.datetime] = lambda: NOW

    def __getattribute__(self, name: str) -> Any:
        # A database that is down: every call but health() and close() raises.
        if (
            name not in ("health", "close")
            and not name.startswith("_")
            and object.__getattribute__(self, "down")
        ):
            attr = object.__getattribute__(self, name)
            if callable(attr):
                raise StoreUnavailable("database is down (test)")
        return object.__getattribute__(self, name)

    def append_audit(self, kind: str, subject: str, data: dict[str, Any]) -> AuditRecord:
        prev = self.audit[-1].hash if self.audit else ""
        record = make_record(len(self.audit) + 1, self.clock(), kind, subject, data, prev)
        self.audit.append(record)
        return record

    def close(self) -> None:
        pass

    def health(self) -> Health:
        return Health(ok=False, detail="database is down (test)") if self.down else Health(ok=True)

    def add_ek(
        self, node: str, fingerprint: str, public_pem: str, certificate: bytes | None, source: str
    ) -> EkRecord:
        active = self.find_ek(fingerprint)
        if active is not None:
            if active.node != node:
                raise Conflict("EK enrolled for another node", Reason.EK_NODE_CONFLICT)
            return active
        record = EkRecord(next(self._ids), node, fingerprint, public_pem, certificate, source, self.clock())
        self.eks[record.id] = record
        self.append_audit("ek", node, {"fingerprint": fingerprint})
        return record

    def find_ek(self, fingerprint: str) -> EkRecord | None:
        return next(
            (e for e in self.eks.values() if e.fingerprint == fingerprint and e.revoked_at is None), None
        )

    def list_eks(self, after_id: int = 0, limit: int | None = None) -> list[EkRecord]:
        return [self.eks[i] for i in sorted(self.eks) if i > after_id][:limit]

    def revoke_ek(self, ek_id: int) -> EkRecord:
        if ek_id not in self.eks:
            raise NotFound(f"no EK {ek_id}")
        ek = self.eks[ek_id] = dataclasses.replace(self.eks[ek_id], revoked_at=self.clock())
        for node in list(self.nodes.values()):
            if node.ek_fingerprint == ek.fingerprint and node.revoked_at is None:
                self.revoke_node(node.name, "its EK was revoked")
        self.append_audit("revoke", f"ek:{ek_id}", {})
        return ek

    def create_enrollment(self, enrollment: Enrollment) -> None:
        self.enrollments[enrollment.id] = (enrollment, False)

    def complete_enrollment(self, enrollment_id: str, secret: bytes, now: dt.datetime) -> NodeRecord:
        if enrollment_id not in self.enrollments:
            raise NotFound("no such enrollment", Reason.ENROLLMENT_UNKNOWN)
        e, used = self.enrollments[enrollment_id]
        if used:
            raise Conflict("enrollment already used", Reason.ENROLLMENT_USED)
        if now >= e.expires_at:
            raise Conflict("enrollment expired", Reason.ENROLLMENT_EXPIRED)
        self.enrollments[enrollment_id] = (e, True)
        if not hmac.compare_digest(hashlib.sha256(secret).digest(), e.secret_hash):
            raise Conflict("wrong secret", Reason.CREDENTIAL_INVALID)
        bound = self.nodes.get(e.node)
        if bound is not None and bound.revoked_at is None and bound.ek_fingerprint != e.ek_fingerprint:
            raise Conflict("node bound to another EK", Reason.EK_NODE_CONFLICT)
        if any(
            n.ek_fingerprint == e.ek_fingerprint and n.revoked_at is None and n.name != e.node
            for n in self.nodes.values()
        ):
            raise Conflict("EK bound to another node", Reason.EK_NODE_CONFLICT)
        node = NodeRecord(e.node, e.ek_fingerprint, e.ak_public, e.ak_name, now)
        self.nodes[e.node] = node
        self.append_audit("enroll", e.node, {"ak_name": e.ak_name.hex()})
        return node

    def get_node(self, name: str) -> NodeRecord | None:
        return self.nodes.get(name)

    def list_nodes(self, after: str | None = None, limit: int | None = None) -> list[NodeRecord]:
        names = sorted(n for n in self.nodes if after is None or n > after)
        return [self.nodes[n] for n in names[:limit]]

    def node_state_counts(self, now: dt.datetime) -> dict[str, int]:
        from webhook.admin import node_state

        return dict(collections.Counter(node_state(n, now) for n in self.nodes.values()))

    def revoke_node(self, name: str, reason: str) -> NodeRecord:
        if name not in self.nodes:
            raise NotFound(f"no node {name}")
        if self.nodes[name].revoked_at is None:
            self.nodes[name] = dataclasses.replace(self.nodes[name], revoked_at=self.clock())
            self.append_audit("revoke", name, {"reason": reason})
        return self.nodes[name]

    def issue_nonce(self, record: NonceRecord) -> None:
        self.nonces[record.nonce] = (record, False)

    def consume_nonce(self, node: str, nonce: bytes, now: dt.datetime) -> NonceRecord:
        record = self._usable_nonce(node, nonce, now)
        self.nonces[nonce] = (record, True)
        return record

    def _usable_nonce(self, node: str, nonce: bytes, now: dt.datetime) -> NonceRecord:
        if nonce not in self.nonces:
            raise NonceRejected("unknown nonce", Reason.NONCE_UNKNOWN)
        record, used = self.nonces[nonce]
        if record.node != node:
            raise NonceRejected("nonce of another node", Reason.NONCE_WRONG_NODE)
        if used:
            raise NonceRejected("nonce reused", Reason.NONCE_REUSED)
        if now >= record.expires_at:
            raise NonceRejected("nonce expired", Reason.NONCE_EXPIRED)
        return record

    def round_state(
        self, node: str, policy: str, nonce: bytes | None = None, now: dt.datetime | None = None
    ) -> RoundState:
        record = None
        if nonce is not None:
            record = self._usable_nonce(node, nonce, now or self.clock())
        versions = self.policies.get(policy)
        latest = versions[-1] if versions else None
        return RoundState(
            self.nodes.get(node), None if latest is None else (latest.version, latest.digest), record
        )

    def record_verdict(
        self,
        verdict: VerdictRecord,
        clock: dict[str, Any] | None,
        ima_state: dict[str, Any] | None,
        nonce: bytes | None = None,
    ) -> None:
        node = self.nodes.get(verdict.node)
        if node is None:
            raise NotFound(f"no node {verdict.node}")
        if node.revoked_at is not None:
            raise Conflict("node revoked", Reason.NODE_REVOKED)
        if nonce is not None:
            self.consume_nonce(verdict.node, nonce, verdict.appraised_at)
        self.nodes[verdict.node] = dataclasses.replace(
            node,
            last_verdict=verdict,
            clock=node.clock if clock is None else clock,
            ima_state=node.ima_state if ima_state is None else ima_state,
        )
        self.verdicts.append(verdict)
        self.append_audit("verdict", verdict.node, {"trusted": verdict.trusted})

    def put_policy(self, name: str, text: str) -> PolicyRecord:
        versions = self.policies.setdefault(name, [])
        if versions and versions[-1].text == text:
            return versions[-1]
        record = PolicyRecord(
            name, len(versions) + 1, hashlib.sha256(text.encode()).hexdigest(), text, self.clock()
        )
        versions.append(record)
        self.append_audit("policy", name, {"version": record.version})
        return record

    def get_policy(self, name: str, version: int | None = None) -> PolicyRecord | None:
        versions = self.policies.get(name, [])
        if version is None:
            return versions[-1] if versions else None
        return next((p for p in versions if p.version == version), None)

    def list_policies(self) -> list[PolicyRecord]:
        return [v[-1] for v in self.policies.values()]

    def audit_records(self, after_seq: int = 0, limit: int = 10_000) -> list[AuditRecord]:
        return [r for r in self.audit if r.seq > after_seq][:limit]


# --- certificates ----------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclasses.dataclass
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def make_ca(cn: str, parent: Issuer | None = None) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(parent.cert.subject if parent else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 3650 * DAY)
        .not_valid_after(NOW + 3650 * DAY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    )
    if parent:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()), critical=False
        )
    return Issuer(builder.sign(parent.key if parent else key, hashes.SHA256()), key)


@dataclasses.dataclass
class TestCa:
    """A manufacturer: a root (trusted) and the intermediate that signs EK certificates."""

    __test__ = False  # not a pytest test class

    root: Issuer
    intermediate: Issuer

    @classmethod
    def create(cls, cn: str = "Test TPM Vendor") -> TestCa:
        root = make_ca(f"{cn} Root CA")
        return cls(root, make_ca(f"{cn} EK CA", root))

    def ek_certificate(self, key: rsa.RSAPublicKey) -> x509.Certificate:
        issuer = self.intermediate
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(issuer.cert.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - 3650 * DAY)
            .not_valid_after(NOW + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, True, False, False, False, False, False, False), critical=True
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([TCG_KP_EK_CERTIFICATE]), critical=False)
            .sign(issuer.key, hashes.SHA256())
        )


# --- a node with a software TPM --------------------------------------------------------------

EK_ATTRS = (
    ObjectAttr.FIXED_TPM
    | ObjectAttr.FIXED_PARENT
    | ObjectAttr.SENSITIVE_DATA_ORIGIN
    | ObjectAttr.ADMIN_WITH_POLICY
    | ObjectAttr.RESTRICTED
    | ObjectAttr.DECRYPT
)


def software_ima(boot: SimulatedBoot, files: tuple[tuple[str, bytes], ...] = DEFAULT_FILES) -> ImaLog:
    """IMA's list after `boot`: boot_aggregate over its PCRs 0-9, then `files`."""
    banks = ("sha1", "sha256")
    first = make_entry(BOOT_AGGREGATE, boot_aggregate(boot.pcrs["sha256"]), banks)
    return ImaLog(banks, (first,)).with_files(files)


class SoftNode:
    """One node: its name, EK (with a certificate from `ca`, if given), AK, boot and clock."""

    def __init__(self, name: str, ca: TestCa | None = None, profile: BootProfile | None = None) -> None:
        self.name = name
        self.ek_key = rsa.generate_private_key(65537, 2048)
        modulus = self.ek_key.public_key().public_numbers().n.to_bytes(256)
        detail = RsaDetail(SymDef(Alg.AES, 128, Alg.CFB), Scheme(), 2048, 0, modulus)
        self.ek = TpmtPublic(Alg.SHA256, int(EK_ATTRS), bytes(32), detail)
        self.ek_cert = ca.ek_certificate(self.ek_key.public_key()) if ca else None
        self.ak = SoftAk()
        self.boot = simulate_boot(profile or BootProfile())
        self.ima: ImaLog | None = None
        self.clock = ClockInfo(clock=100_000, reset_count=7, restart_count=0, safe=True)

    def enroll_request(self) -> EnrollRequest:
        from cryptography.hazmat.primitives.serialization import Encoding

        return EnrollRequest(
            node=self.name,
            ek_certificate=self.ek_cert.public_bytes(Encoding.DER) if self.ek_cert else None,
            ek_public=self.ek.marshal_tpm2b(),
            ak_public=self.ak.public.marshal_tpm2b(),
        )

    def pcrs(self) -> PcrValues:
        values = {b: dict(v) for b, v in self.boot.pcrs.items()}
        if self.ima is not None:
            for bank, value in self.ima.pcr10.items():
                values[bank][10] = value
        return PcrValues(values)

    def reboot(self, profile: BootProfile | None = None) -> None:
        self.boot = simulate_boot(profile or self.boot.profile)
        self.ima = None
        self.clock = ClockInfo(5_000, self.clock.reset_count + 1, 0, True)

    def evidence(
        self,
        nonce: bytes,
        selection: str,
        *,
        ak: SoftAk | None = None,
        ima_offset: int = 0,
        with_eventlog: bool = True,
        **attest_changes: Any,
    ) -> Evidence:
        """A quote of `selection` over `nonce`, signed by this node's AK (or `ak`), and the logs."""
        self.clock = dataclasses.replace(self.clock, clock=self.clock.clock + 60_000)
        sel = PcrSelection.parse(selection)
        values = self.pcrs().restrict(sel)
        attest = quote_attest(nonce, sel, values, self.clock)
        message = dataclasses.replace(attest, **attest_changes).marshal()
        ima = None
        if self.ima is not None:
            ima = "".join(e.line() + "\n" for e in self.ima.entries[ima_offset:]).encode()
        return Evidence(
            nonce=nonce,
            quote=message,
            signature=(ak or self.ak).sign(message).marshal(),
            pcrs={b: {i: v.hex() for i, v in vs.items()} for b, vs in values.items()},
            eventlog=self.boot.log if with_eventlog else None,
            ima=ima,
            ima_offset=ima_offset,
        )


def policy_text(boot: SimulatedBoot, name: str = "default", ima: ImaLog | None = None) -> str:
    """A reference policy generated from a known-good boot (and IMA list)."""
    from attest.verify import ima as imalib

    log = eventlog.parse(boot.log)
    entries = imalib.parse(ima.text().encode()).entries if ima else ()
    policy = create_policy(name, log, eventlog.replay(log).pcrs, entries, with_ima=ima is not None)
    return dump_policy(policy)
