"""The container launch log against the quoted PCR 23: what ran on the node, and was it allowed.

The log is evidence only as far as it replays to the quoted PCR 23. PCR 23 starts every boot at
zero and the agent extends it with each bank's hash of each record's line, so the replay is a
fold from zero over the lines. The hook appends a record before extending, and the agent reads
the log after quoting, so a log may run past the quote: the records up to the prefix whose
fold equals the quoted value in every quoted bank are accepted, those after it are pending
(the next quote covers them). No such prefix: the log was edited, reordered or cut, or PCR 23
was extended (or reset) behind the log's back.

Records are judged by the image policy only once accepted, and every accepted record is
judged: a record the quote proves is a container the node started.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from attest.containerlog import CONTAINER_PCR, ContainerEntry, matching_prefix, parse_log
from attest.errors import AttestError, VerificationError
from attest.reasons import Finding, Reason
from attest.tcg import hash_alg, pcr_reset_value
from attest.verify.policy import CONTAINERS_RULE, Policy, evaluate_containers


@dataclass(frozen=True)
class ContainerMatch:
    accepted: tuple[ContainerEntry, ...]  # proven by the quoted PCR 23
    pending: tuple[ContainerEntry, ...]  # logged after the quote: not evidence yet


@dataclass(frozen=True)
class ContainerResult:
    accepted: tuple[ContainerEntry, ...] = ()
    pending: int = 0
    findings: tuple[Finding, ...] = ()


def match_quote(entries: tuple[ContainerEntry, ...], quoted: Mapping[str, bytes]) -> ContainerMatch:
    """Apply the longer-than-quote rule: `quoted` maps each quoted bank to its PCR 23 value.
    VerificationError(CONTAINERLOG_REPLAY_MISMATCH) when no prefix of the log reproduces it."""
    if not quoted:
        raise ValueError("no quoted PCR 23 value to match")
    for bank, value in quoted.items():
        if len(value) != hash_alg(bank).size:
            raise ValueError(
                f"the quoted {bank} PCR {CONTAINER_PCR} value is not {hash_alg(bank).size} bytes"
            )
    k = matching_prefix([e.line for e in entries], quoted)
    if k is None:
        banks = ", ".join(sorted(quoted))
        raise VerificationError(
            Reason.CONTAINERLOG_REPLAY_MISMATCH,
            f"no prefix of the container log ({len(entries)} records) reproduces the quoted PCR "
            f"{CONTAINER_PCR} ({banks}): records edited, removed or reordered, or PCR {CONTAINER_PCR} "
            "extended or reset outside the log",
        )
    return ContainerMatch(entries[:k], entries[k:])


def appraise_containers(
    log: bytes | None,
    quoted: Mapping[str, Mapping[int, bytes]],
    policy: Policy | None,
    *,
    previous: int | None = None,
) -> ContainerResult:
    """Parse and replay the log against the quoted PCR 23 of every bank that has it, then judge
    the accepted records by the policy's image rules. `quoted` are the PCR values the quote
    proved (bank -> index -> value); `previous` the number of records an earlier round of the
    same boot accepted, when known."""
    judged = policy is not None and policy.containers is not None
    pcr23 = {b: vs[CONTAINER_PCR] for b, vs in quoted.items() if CONTAINER_PCR in vs}
    if not pcr23:
        if not judged:
            return ContainerResult()  # the verifier did not ask for PCR 23: nothing to judge
        return ContainerResult(
            findings=(
                Finding(
                    Reason.POLICY_PCR_UNVERIFIED,
                    f"PCR {CONTAINER_PCR} is not in the quote: rule '{CONTAINERS_RULE}' cannot be judged",
                    CONTAINERS_RULE,
                    CONTAINER_PCR,
                ),
            )
        )
    if log is None:
        at_reset = all(v == pcr_reset_value(CONTAINER_PCR, len(v)) for v in pcr23.values())
        if at_reset or not judged:
            return ContainerResult()  # no container started since boot, or none is judged
        return ContainerResult(
            findings=(
                Finding(
                    Reason.CONTAINERLOG_MISSING,
                    f"PCR {CONTAINER_PCR} shows containers were started but no container log was sent",
                    pcr=CONTAINER_PCR,
                ),
            )
        )
    try:
        match = match_quote(parse_log(log), pcr23)
    except AttestError as e:
        return ContainerResult(findings=(Finding(e.code, e.message, pcr=CONTAINER_PCR),))
    findings = evaluate_containers(policy, match.accepted) if policy is not None else []
    if previous is not None and len(match.accepted) < previous:
        # PCR 23 only grows within a boot, unless someone resets it (it is resettable from
        # locality 0): a quote proving fewer launches than an earlier one did is such a reset.
        findings.append(
            Finding(
                Reason.CONTAINERLOG_REPLAY_MISMATCH,
                f"the quote proves {len(match.accepted)} container launches, fewer than the {previous} "
                f"accepted earlier in this boot: PCR {CONTAINER_PCR} was reset",
                pcr=CONTAINER_PCR,
            )
        )
    return ContainerResult(match.accepted, len(match.pending), tuple(findings))
