"""The appraisal pipeline (DESIGN 4): evidence and what the verifier expects in, a verdict out.

Order matters: nothing read from a log is used until the quote proved the PCR values it must
reproduce, and nothing from the logs reaches the policy unless its replay reproduced them.
Independent checks all run, so a verdict lists every reason, not just the first. Any error
that escapes a step leaves the node untrusted with INTERNAL_ERROR: this function never raises
for bad evidence and never returns trusted by accident.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from attest.containerlog import ContainerEntry
from attest.errors import AttestError
from attest.pcrselect import PcrSelection
from attest.reasons import Finding, Reason
from attest.verify import eventlog, ima, workarounds
from attest.verify.containers import appraise_containers
from attest.verify.imasig import KeyRing, verify_entry_signature
from attest.verify.pcrs import PcrValues
from attest.verify.policy import Policy, evaluate_boot, evaluate_ima
from attest.verify.quote import AkPublic, QuoteResult, compare_clock, verify_quote
from attest.verify.tpmstructs import ClockInfo

# PCRs other logs own: the firmware log neither covers nor must reset them.
IMA_PCR = 10
CONTAINER_PCR = 23
_FOREIGN_PCRS = frozenset({IMA_PCR, CONTAINER_PCR})


@dataclass(frozen=True)
class Evidence:
    """What a node sends: its quote, the PCR values it claims, and its logs."""

    attest: bytes  # TPMS_ATTEST
    signature: bytes  # TPMT_SIGNATURE
    pcrs: PcrValues
    eventlog: bytes | None = None
    ima: bytes | None = None  # the whole list, or the entries after `Expectations.ima_state.offset`
    container_log: bytes | None = None  # every record since boot (docs/containers.md)


@dataclass(frozen=True)
class Expectations:
    """What the verifier knows independently of the evidence."""

    ak: AkPublic  # the AK bound at enrollment: never a key sent along with the evidence
    nonce: bytes
    selection: PcrSelection
    policy: Policy | None = None
    allow_sha1: bool = False
    previous_clock: ClockInfo | None = None
    previous_firmware: int | None = None
    ima_state: ima.ReplayState | None = None  # where the last accepted IMA replay stopped
    ima_keys: KeyRing | None = None  # keys ima-sig signatures must verify under, when set
    # len(Verdict.containers) of an earlier round since the last reboot: fewer now means PCR 23
    # was reset. Pass previous_clock along with it, or a reboot would look like a reset.
    containers_accepted: int | None = None


@dataclass(frozen=True)
class Verdict:
    trusted: bool
    findings: tuple[Finding, ...]
    pcrs: Mapping[str, Mapping[int, bytes]] = field(default_factory=dict)  # proven by the quote
    workarounds: tuple[str, ...] = ()
    reboot: bool = False
    clock: ClockInfo | None = None
    firmware_version: int | None = None
    ima_state: ima.ReplayState | None = None  # resume point for the next round, when IMA was judged
    ima_entries: int = 0  # entries proven by this quote and judged
    ima_pending: int = 0  # entries logged after the quote, left for the next round
    containers: tuple[ContainerEntry, ...] = ()  # container launches proven by the quote: what ran
    containers_pending: int = 0  # launches logged after the quote, left for the next round

    def to_json(self) -> dict[str, Any]:
        return {
            "trusted": self.trusted,
            "reasons": [f.to_json() for f in self.findings],
            "pcrs": {b: {str(i): v.hex() for i, v in sorted(vs.items())} for b, vs in self.pcrs.items()},
            "workarounds": list(self.workarounds),
            "reboot": self.reboot,
            "clock": None
            if self.clock is None
            else {
                "clock": self.clock.clock,
                "reset_count": self.clock.reset_count,
                "restart_count": self.clock.restart_count,
                "safe": self.clock.safe,
            },
            "ima": {"entries": self.ima_entries, "pending": self.ima_pending},
            "containers": [e.to_json() for e in self.containers],
            "containers_pending": self.containers_pending,
        }


@dataclass(frozen=True)
class _BootOutcome:
    """Everything the firmware-log stage and the boot policy concluded from one log: what a
    cache hit hands back in place of parsing, replaying and judging the log again."""

    findings: tuple[Finding, ...]  # parse or replay failures
    replayed: Mapping[str, frozenset[int]]
    applied: tuple[str, ...]
    policy: Policy | None  # held so the id() in the key cannot be reused while the entry lives
    boot_findings: tuple[Finding, ...] | None  # evaluate_boot's, None when it was not run


# The key: (SHA-256 of the log, the quoted boot PCRs, the workarounds tried, id(policy), the
# quoted values of PCRs the boot policy pins outside the firmware log's own).
_Key = tuple[
    bytes, tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...], tuple[Any, ...], int, tuple[Any, ...]
]


class AppraisalCache:
    """A bounded LRU of firmware-log outcomes, so a node re-attesting in the same boot costs a
    digest of its unchanged log instead of a parse, a replay and a policy pass.

    Everything the stage reads is in the key: the log bytes (by SHA-256), the quoted values of
    every boot PCR in every bank, the candidate workarounds, and the policy (by identity: the
    verifier parses a policy once per version and shares it; the entry keeps it alive, so its
    id cannot be reused for another). A hit therefore returns exactly what a miss computes.
    Safe to share between threads; `maxsize=0` disables it."""

    def __init__(self, maxsize: int = 4096) -> None:
        if maxsize < 0:
            raise ValueError("maxsize cannot be negative")
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[_Key, _BootOutcome] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: _Key, policy: Policy | None) -> _BootOutcome | None:
        if not self.maxsize:
            return None
        with self._lock:
            found = self._entries.get(key)
            if found is None or found.policy is not policy:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: _Key, outcome: _BootOutcome) -> None:
        if not self.maxsize:
            return
        with self._lock:
            self._entries[key] = outcome
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


_default_cache: AppraisalCache | None = None
_default_lock = threading.Lock()


def default_cache() -> AppraisalCache:
    """The process-wide cache `appraise` uses unless given one; created on first use."""
    global _default_cache  # noqa: PLW0603 - one lazily built instance per process
    if _default_cache is None:
        with _default_lock:
            if _default_cache is None:
                _default_cache = AppraisalCache()
    return _default_cache


def _finding(e: AttestError, **where: Any) -> Finding:
    return Finding(e.code, e.message, **where)


def appraise(evidence: Evidence, expect: Expectations, *, cache: AppraisalCache | None = None) -> Verdict:
    """Appraise one round of evidence. Fails closed on any unexpected error.

    `cache` keeps firmware-log outcomes between rounds (`default_cache()` unless given;
    `AppraisalCache(0)` for none)."""
    try:
        return _appraise(evidence, expect, default_cache() if cache is None else cache)
    except Exception as e:  # fail closed: the verdict must exist and must be untrusted
        return Verdict(False, (_internal_error(e),))


def _internal_error(e: Exception) -> Finding:
    return Finding(Reason.INTERNAL_ERROR, f"appraisal failed: {type(e).__name__}: {e}")


def _appraise(evidence: Evidence, expect: Expectations, cache: AppraisalCache) -> Verdict:
    policy = expect.policy
    allow_sha1 = expect.allow_sha1 or (policy is not None and policy.allow_sha1)
    try:
        result = verify_quote(
            expect.ak,
            evidence.attest,
            evidence.signature,
            nonce=expect.nonce,
            selection=expect.selection,
            pcr_values=evidence.pcrs,
            allow_sha1=allow_sha1,
        )
    except AttestError as e:
        return Verdict(False, (_finding(e),))
    findings = [_finding(f) for f in result.failures]
    if not result.ok:
        # Without proven PCR values no log can be judged: stop with the quote's reasons.
        return Verdict(False, tuple(findings), clock=result.clock_info)
    try:
        return _appraise_proven(evidence, expect, cache, result, findings)
    except Exception as e:
        # Fail closed with the proven PCRs, so the service stores this untrusted verdict (a
        # trusted node does not keep its last one until it expires). No clock: the rollback
        # check may not have run, and the stored high-water mark must stay where it is.
        pcrs = {b: dict(v) for b, v in result.pcrs.items()}
        return Verdict(False, (*findings, _internal_error(e)), pcrs=pcrs)


def _appraise_proven(
    evidence: Evidence,
    expect: Expectations,
    cache: AppraisalCache,
    result: QuoteResult,
    findings: list[Finding],
) -> Verdict:
    """The rest of the appraisal, once the quote proved its PCR values."""
    policy = expect.policy
    reboot = False
    if expect.previous_clock is not None:
        change = compare_clock(
            expect.previous_clock,
            result.clock_info,
            previous_firmware=expect.previous_firmware,
            current_firmware=result.firmware_version,
        )
        findings += [_finding(f) for f in change.failures]
        reboot = change.reboot

    quoted: dict[str, dict[int, bytes]] = {b: dict(v) for b, v in result.pcrs.items()}
    boot_quoted = {b: {i: v for i, v in vs.items() if i not in _FOREIGN_PCRS} for b, vs in quoted.items()}
    boot = _boot(evidence, policy, quoted, boot_quoted, cache)
    findings += boot.findings

    ima_state: ima.ReplayState | None = None
    ima_entries: tuple[ima.ImaEntry, ...] = ()
    pending = 0
    if evidence.ima is not None or (policy is not None and policy.ima is not None):
        ima_state, ima_entries, pending = _ima(evidence, expect, quoted, findings)

    if policy is not None:
        bank = policy.bank
        if bank not in quoted:
            findings.append(
                Finding(
                    Reason.POLICY_PCR_UNVERIFIED,
                    f"the quote has no {bank} bank, which policy '{policy.name}' uses",
                )
            )
        elif boot.boot_findings is not None:
            findings += boot.boot_findings
        findings += evaluate_ima(policy, ima_entries)

    previous = None if reboot else expect.containers_accepted
    containers = appraise_containers(evidence.container_log, quoted, policy, previous=previous)
    findings += containers.findings

    return Verdict(
        trusted=not findings,
        findings=tuple(findings),
        pcrs=quoted,
        workarounds=boot.applied,
        reboot=reboot,
        clock=result.clock_info,
        firmware_version=result.firmware_version,
        ima_state=ima_state,
        ima_entries=len(ima_entries),
        ima_pending=pending,
        containers=containers.accepted,
        containers_pending=containers.pending,
    )


def _boot(
    evidence: Evidence,
    policy: Policy | None,
    quoted: Mapping[str, Mapping[int, bytes]],
    boot_quoted: Mapping[str, Mapping[int, bytes]],
    cache: AppraisalCache,
) -> _BootOutcome:
    """The firmware-log stage and the boot policy's findings, from `cache` when the same log
    came with the same quoted boot PCRs under the same policy."""
    key: _Key | None = None
    if evidence.eventlog is not None and cache.maxsize:
        pinned: tuple[Any, ...] = ()
        if policy is not None and policy.boot is not None:
            bank_values = quoted.get(policy.bank, {})
            pinned = tuple((p, bank_values.get(p)) for p in sorted(policy.boot.pcrs) if p in _FOREIGN_PCRS)
        key = (
            hashlib.sha256(evidence.eventlog).digest(),
            tuple(sorted((b, tuple(sorted(vs.items()))) for b, vs in boot_quoted.items())),
            workarounds.WORKAROUNDS,
            id(policy),
            pinned,
        )
        found = cache.get(key, policy)
        if found is not None:
            return found
    stage: list[Finding] = []
    log, replayed, applied = _event_log(evidence, policy, boot_quoted, stage)
    boot_findings = None
    if policy is not None and policy.bank in quoted:
        bank = policy.bank
        boot_findings = tuple(evaluate_boot(policy, log, quoted[bank], replayed.get(bank, frozenset())))
    outcome = _BootOutcome(tuple(stage), replayed, applied, policy, boot_findings)
    if key is not None:
        cache.put(key, outcome)
    return outcome


def _event_log(
    evidence: Evidence,
    policy: Policy | None,
    quoted: Mapping[str, Mapping[int, bytes]],
    findings: list[Finding],
) -> tuple[eventlog.EventLog | None, dict[str, frozenset[int]], tuple[str, ...]]:
    """Parse and replay the firmware log against the quoted boot PCRs. Returns the log, the
    PCRs per bank it reproduced (the only ones whose events policy may use), and the
    workarounds that were needed."""
    needs_log = (
        policy is not None
        and policy.boot is not None
        and bool(policy.required_pcrs() - _FOREIGN_PCRS - set(policy.boot.pcrs))
    )
    if evidence.eventlog is None:
        if needs_log:
            findings.append(
                Finding(Reason.EVENTLOG_MISSING, "the policy judges boot events but no event log was sent")
            )
        return None, {}, ()
    try:
        log = eventlog.parse(evidence.eventlog)
    except AttestError as e:
        findings.append(_finding(e))
        return None, {}, ()
    try:
        replay = workarounds.replay_matching(log, quoted)
    except AttestError as e:
        findings.append(_finding(e))
        # Judge what did reproduce: events of PCRs whose plain replay equals the quote.
        plain = eventlog.replay(log, banks=quoted.keys())
        bad = set(plain.mismatches(quoted))
        ok = {b: frozenset(i for i in vs if (b, i) not in bad) for b, vs in quoted.items() if b in plain.pcrs}
        return log, ok, ()
    return log, {b: frozenset(vs) for b, vs in quoted.items()}, replay.workarounds


def _ima(
    evidence: Evidence,
    expect: Expectations,
    quoted: Mapping[str, Mapping[int, bytes]],
    findings: list[Finding],
) -> tuple[ima.ReplayState | None, tuple[ima.ImaEntry, ...], int]:
    if evidence.ima is None:
        findings.append(Finding(Reason.IMA_MISSING, "the policy judges IMA entries but no IMA log was sent"))
        return None, (), 0
    ima_quoted = {b: {IMA_PCR: vs[IMA_PCR]} for b, vs in quoted.items() if IMA_PCR in vs}
    if not ima_quoted:
        findings.append(
            Finding(
                Reason.IMA_REPLAY_MISMATCH,
                f"an IMA log was sent but PCR {IMA_PCR} is not in the quote",
                pcr=IMA_PCR,
            )
        )
        return None, (), 0
    start = expect.ima_state
    try:
        log = ima.parse(evidence.ima, first_index=start.offset if start else 0)
        match = ima.match_quote(log, ima_quoted, start=start)
    except AttestError as e:
        findings.append(_finding(e, pcr=IMA_PCR))
        return None, (), 0
    if start is None or start.offset == 0:
        boot = {b: {i: v for i, v in vs.items() if i < IMA_PCR} for b, vs in quoted.items()}
        accepted = ima.ImaLog(match.accepted, log.format, log.template_hash_alg)
        try:
            ima.verify_boot_aggregate(accepted, boot)
        except AttestError as e:
            findings.append(_finding(e, pcr=IMA_PCR, event=0))
    if expect.ima_keys is not None:
        for entry in match.accepted:
            if entry.sig and not entry.violation:
                try:
                    verify_entry_signature(entry, expect.ima_keys)
                except AttestError as e:
                    findings.append(_finding(e, pcr=IMA_PCR, event=entry.index))
    return match.state, match.accepted, len(match.pending)
