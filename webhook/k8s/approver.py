"""The kubelet certificate approver (DESIGN 5.1): the verifier decides which kubelet CSRs the
cluster's signer may sign.

A CSR of one of the two kubelet signers is approved only when all of this holds:

- it is the CSR a kubelet files, by the rules the admission webhook enforces too
  (webhook.kubelet_csr: subject `O=system:nodes, CN=system:node:<name>`, an EC P-256 or RSA
  >= 2048 key, exactly the usages a kubelet asks for, no SANs on a client certificate, DNS/IP
  SANs only on a serving one), signed by its key, and filed by that node itself or, for a client
  certificate, by a bootstrap identity;
- the node's latest verdict is trusted, still fresh, and was appraised after the CSR was filed
  (so a renewal needs a new attestation, not the one that got the last certificate);
- that appraisal's nonce committed to the CSR's public key (`bound_keys`, webhook.service): the
  key provably belongs to the machine whose TPM was attested, not to whoever holds a bootstrap
  token;
- for a serving certificate, every DNS name and IP address it asks for is the node's own
  (its Node's status.addresses and its kubernetes.io/hostname label).

A CSR that cannot meet this (malformed, filed by another node, a foreign SAN, a node attested
untrusted since the CSR or revoked) is denied at once; one that may still meet it (no verdict
since the CSR yet, key not bound yet) waits, checked again on every change and every few
seconds, until `--csr-grace` after its creation, and is then denied. Every denial carries a
reason code (docs/reason-codes.md) and a message. CSRs of other signers, and CSRs already
approved or denied, are never touched.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import datetime as dt
import enum
import ipaddress
import logging
from collections.abc import Callable
from typing import Final

import httpx2
from lightkube import AsyncClient
from lightkube.models.certificates_v1 import (
    CertificateSigningRequestCondition,
    CertificateSigningRequestStatus,
)
from lightkube.resources.certificates_v1 import CertificateSigningRequest, CertificateSigningRequestApproval
from lightkube.resources.core_v1 import Node

from attest.reasons import Reason
from attest.store.api import NodeRecord, Store, StoreError
from webhook.k8s.informer import DEFAULT_BACKOFF, Backoff, Informer, status_code
from webhook.kubelet_csr import (
    CLIENT_SIGNER,
    NODE_USER_PREFIX,
    SERVING_SIGNER,
    SIGNERS,
    IpAddress,
    KubeletCsr,
    MalformedKubeletCsr,
    parse_kubelet_csr,
)

log = logging.getLogger(__name__)

APPROVED_REASON: Final = "AttestedNode"
HOSTNAME_LABEL: Final = "kubernetes.io/hostname"
DNS_ADDRESS_TYPES: Final = frozenset({"Hostname", "InternalDNS", "ExternalDNS"})
IP_ADDRESS_TYPES: Final = frozenset({"InternalIP", "ExternalIP"})
DEFAULT_POLL: Final = 5.0  # seconds between checks of waiting CSRs against the stored verdicts
MAX_CSR_BYTES: Final = 64 * 1024


class Action(enum.Enum):
    APPROVE = "approve"
    DENY = "deny"
    WAIT = "wait"


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    message: str
    reason: str = ""  # Denied: a Reason value; Approved: APPROVED_REASON

    @classmethod
    def deny(cls, code: Reason, message: str) -> Decision:
        return cls(Action.DENY, message, code.value)


class CsrRefused(Exception):
    def __init__(self, code: Reason, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class PendingCsr:
    """A kubelet CSR object: its name, when it was filed, and what it asks for."""

    name: str
    created: dt.datetime
    request: KubeletCsr


def is_pending(csr: CertificateSigningRequest) -> bool:
    """Neither approved nor denied: the only CSRs the approver answers."""
    conditions = csr.status.conditions if csr.status else None
    return not any(c.type in ("Approved", "Denied") for c in conditions or ())


def _load_request(encoded: str) -> bytes:
    # spec.request is []byte in the API: base64 in JSON, of a PEM "CERTIFICATE REQUEST".
    try:
        pem = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise CsrRefused(Reason.CSR_MALFORMED, "spec.request is not base64") from None
    if len(pem) > MAX_CSR_BYTES:
        raise CsrRefused(Reason.CSR_MALFORMED, f"spec.request is larger than {MAX_CSR_BYTES} bytes")
    return pem


def parse_kubelet_csr_object(csr: CertificateSigningRequest) -> PendingCsr:
    """The CSR as a kubelet files it for its signer, or CsrRefused with the reason.

    The shape is judged by the admission webhook's rules (webhook.kubelet_csr), so a CSR that
    got past admission (created while the webhook was down, say) is denied here as it would
    have been refused there.
    """
    meta, spec = csr.metadata, csr.spec
    if meta is None or not meta.name or meta.creationTimestamp is None:
        raise CsrRefused(Reason.CSR_MALFORMED, "the CSR has no name or creation time")
    try:
        request = parse_kubelet_csr(spec.signerName, _load_request(spec.request), spec.usages or ())
    except MalformedKubeletCsr as e:
        raise CsrRefused(Reason.CSR_MALFORMED, e.message) from None
    node = request.node
    # spec.username is set by the API server from the authenticated requestor: it cannot be forged.
    requestor = spec.username or ""
    own = NODE_USER_PREFIX + node
    if request.signer == SERVING_SIGNER and requestor != own:
        raise CsrRefused(
            Reason.CSR_REQUESTOR_MISMATCH,
            f"a serving certificate for {node} filed by {requestor!r}, not by {own}",
        )
    if requestor.startswith(NODE_USER_PREFIX) and requestor != own:
        raise CsrRefused(Reason.CSR_REQUESTOR_MISMATCH, f"{requestor} asked for a certificate of node {node}")
    return PendingCsr(name=meta.name, created=meta.creationTimestamp, request=request)


def foreign_sans(request: KubeletCsr, node: Node) -> list[str]:
    """The names a serving CSR asks for that are not its Node's addresses or hostname."""
    addresses = (node.status.addresses if node.status else None) or []
    labels = (node.metadata.labels if node.metadata else None) or {}
    own_dns = {a.address.lower().rstrip(".") for a in addresses if a.type in DNS_ADDRESS_TYPES}
    if labels.get(HOSTNAME_LABEL):
        own_dns.add(labels[HOSTNAME_LABEL].lower())
    own_ips: set[IpAddress] = set()
    for a in addresses:
        if a.type in IP_ADDRESS_TYPES:
            with contextlib.suppress(ValueError):
                own_ips.add(ipaddress.ip_address(a.address))
    foreign = [d for d in request.dns_names if d.lower().rstrip(".") not in own_dns]
    foreign += [str(ip) for ip in request.ips if ip not in own_ips]
    return foreign


def _when(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def judge(
    pending: PendingCsr,
    record: NodeRecord | None,
    node: Node | None,
    now: dt.datetime,
    grace: dt.timedelta,
) -> Decision:
    """Approve, deny or wait, from the node's stored record and (serving CSRs) its Node object."""
    request, created = pending.request, pending.created
    name = request.node
    if request.signer == SERVING_SIGNER and node is not None:
        foreign = foreign_sans(request, node)
        if foreign:
            return Decision.deny(
                Reason.CSR_SAN_FOREIGN, f"{', '.join(foreign)} not among node {name}'s addresses and hostname"
            )
    if record is not None and record.revoked_at is not None:
        return Decision.deny(Reason.CSR_NODE_UNTRUSTED, f"node {name} was revoked ({record.revoke_reason})")
    verdict = record.last_verdict if record else None
    since = verdict is not None and verdict.appraised_at >= created
    if verdict is not None and since and not verdict.trusted:
        codes = " ".join(str(r.get("code")) for r in verdict.reasons) or "untrusted"
        return Decision.deny(
            Reason.CSR_NODE_UNTRUSTED,
            f"node {name} attested untrusted at {_when(verdict.appraised_at)}: {codes}",
        )
    fresh = verdict is not None and verdict.fresh_at(now)
    bound = verdict is not None and request.fingerprint in (verdict.detail.get("bound_keys") or ())
    if verdict is not None and since and fresh and bound:
        if node is not None or request.signer == CLIENT_SIGNER:
            assert verdict.expires_at is not None
            return Decision(
                Action.APPROVE,
                f"node {name} attested trusted at {_when(verdict.appraised_at)} (fresh until "
                f"{_when(verdict.expires_at)}); its quote committed to this key "
                f"(SHA-256 {request.fingerprint})",
                APPROVED_REASON,
            )
        code, why = Reason.CSR_SAN_FOREIGN, f"there is no Node {name} to check the names against"
    elif verdict is None:
        code, why = Reason.CSR_NOT_BOUND, f"no attestation bound to this key: node {name} has no verdict"
    elif not since or not fresh:
        last = "trusted" if verdict.trusted else "untrusted"
        code, why = (
            Reason.CSR_VERDICT_STALE,
            f"node {name} has no fresh trusted verdict since the CSR was filed at {_when(created)} "
            f"(the last one, {last}, is from {_when(verdict.appraised_at)})",
        )
    else:
        code, why = (
            Reason.CSR_NOT_BOUND,
            f"no attestation bound to this key: node {name}'s verdict does not commit to SHA-256 "
            f"{request.fingerprint}",
        )
    if now - created < grace:
        return Decision(Action.WAIT, why)
    return Decision.deny(code, f"{why}; waited {int(grace.total_seconds())} s")


class CsrApprover:
    """Answers kubelet CSRs as they come and as verdicts change. Run `run()` as a task."""

    def __init__(
        self,
        client: AsyncClient,
        store: Store,
        *,
        grace: dt.timedelta,
        clock: Callable[[], dt.datetime],
        poll_interval: float = DEFAULT_POLL,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self._client = client
        self._store = store
        self._grace = grace
        self._clock = clock
        self._poll = poll_interval
        self.informer = Informer(client, CertificateSigningRequest, backoff=backoff)
        # name -> the resourceVersion answered: until the watch brings the decided CSR, the same
        # version is not answered again (a second answer would only fail on its stale version).
        self._answered: dict[str, str] = {}

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.informer.run(), name="csr-informer")
            tasks.create_task(self._loop(), name="csr-approver")

    async def _loop(self) -> None:
        await self.informer.synced.wait()
        while True:
            self.informer.changed.clear()
            await self.reconcile()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self.informer.changed.wait()

    async def reconcile(self) -> None:
        """Answer every pending kubelet CSR that can be answered now."""
        csrs = dict(self.informer.objects)
        self._answered = {n: v for n, v in self._answered.items() if n in csrs}
        for csr in csrs.values():
            if csr.spec.signerName not in SIGNERS or not is_pending(csr):
                continue
            try:
                await self._handle(csr)
            except StoreError as e:
                # No verdict can be read: decide nothing (neither approve nor deny) until it can.
                log.warning("CSR approval paused: the store is unavailable: %s", e.message)
                return
            except httpx2.HTTPStatusError as e:
                # 409: the CSR changed (another replica answered it, say); 404: it was deleted.
                # The watch brings its new state either way.
                level = logging.INFO if status_code(e) in (404, 409) else logging.WARNING
                log.log(level, "CSR %s: HTTP %d answering it: %s", _name(csr), status_code(e), e)
            except httpx2.TransportError as e:
                log.warning("CSR approval paused: the API server is unreachable: %s", e)
                return

    async def _handle(self, csr: CertificateSigningRequest) -> None:
        name, version = _name(csr), _version(csr)
        if self._answered.get(name) == version:
            return
        try:
            pending = parse_kubelet_csr_object(csr)
        except CsrRefused as e:
            decision = Decision.deny(e.code, e.message)
        else:
            request = pending.request
            record = await asyncio.to_thread(self._store.get_node, request.node)
            node = await self._node(request.node) if request.signer == SERVING_SIGNER else None
            decision = judge(pending, record, node, self._clock(), self._grace)
        if decision.action is Action.WAIT:
            log.debug("CSR %s waits: %s", name, decision.message)
            return
        await self._answer(csr, decision)
        self._answered[name] = version

    async def _node(self, name: str) -> Node | None:
        try:
            return await self._client.get(Node, name)
        except httpx2.HTTPStatusError as e:
            if status_code(e) == 404:
                return None
            raise

    async def _answer(self, csr: CertificateSigningRequest, decision: Decision) -> None:
        now = self._clock().replace(microsecond=0)
        condition = CertificateSigningRequestCondition(
            type="Approved" if decision.action is Action.APPROVE else "Denied",
            status="True",
            reason=decision.reason,
            message=decision.message,
            lastUpdateTime=now,
            lastTransitionTime=now,
        )
        status = csr.status or CertificateSigningRequestStatus()
        body = CertificateSigningRequestApproval(
            spec=csr.spec,
            metadata=csr.metadata,  # with its resourceVersion: a CSR changed meanwhile is a 409
            status=CertificateSigningRequestStatus(
                conditions=[*(status.conditions or ()), condition], certificate=status.certificate
            ),
        )
        await self._client.replace(body, _name(csr))
        verb = "approved" if decision.action is Action.APPROVE else f"denied ({decision.reason})"
        log.info("CSR %s (%s) %s: %s", _name(csr), csr.spec.signerName, verb, decision.message)


def _name(csr: CertificateSigningRequest) -> str:
    return (csr.metadata.name if csr.metadata else None) or ""


def _version(csr: CertificateSigningRequest) -> str:
    return (csr.metadata.resourceVersion if csr.metadata else None) or ""
