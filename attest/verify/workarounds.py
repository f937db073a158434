"""Named workarounds for firmware that extends PCRs differently from what it logs.

A workaround never makes a log acceptable silently: it is applied only when its symptom is
present, only when the plain replay does not match the quote (`replay_matching`), and its name
is reported in the result so the verdict shows it. Names are a stable interface (docs/eventlog.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from attest.errors import VerificationError
from attest.reasons import Reason
from attest.tcg import EventType
from attest.verify.eventlog import EventLog, Extend, Measurement, Replay, Workaround, replay

EBS_INVOCATION = b"Exit Boot Services Invocation"
EBS_SUCCESS = b"Exit Boot Services Returned with Success"
_EBS_ACTIONS = (EBS_INVOCATION, EBS_SUCCESS)


@dataclass(frozen=True)
class ExitBootServicesUnlogged:
    """The firmware extended PCR 5 with both ExitBootServices EV_EFI_ACTION strings the PFP defines
    but did not log them, because the log had been handed to the OS by then.

    Symptom: no ExitBootServices action in PCR 5 of the log. Fix: append both extensions to
    PCR 5, as the firmware made them after every logged event. Seen on real machines; the
    go-attestation test log `ebs_event_missing_eventlog` is one.
    """

    name: str = "exit-boot-services-unlogged"
    pcrs: frozenset[int] = frozenset({5})

    def rewrite(self, log: EventLog, extends: Sequence[Extend]) -> Sequence[Extend] | None:
        if any(
            e.pcr == 5 and e.type == EventType.EV_EFI_ACTION and e.data in _EBS_ACTIONS for e in log.events
        ):
            return None
        added = [
            Measurement(
                5,
                {b.name: b.algorithm.digest(action) for b in log.banks if b.algorithm is not None},
                f"{self.name}: {action.decode()}",
            )
            for action in _EBS_ACTIONS
        ]
        return [*extends, *added]


EXIT_BOOT_SERVICES_UNLOGGED = ExitBootServicesUnlogged()

# Every known workaround, in the order they are tried.
WORKAROUNDS: tuple[Workaround, ...] = (EXIT_BOOT_SERVICES_UNLOGGED,)


def by_name(name: str) -> Workaround:
    """A known workaround by its stable name; KeyError for any other name."""
    for w in WORKAROUNDS:
        if w.name == name:
            return w
    raise KeyError(name)


def replay_matching(
    log: EventLog,
    quoted: Mapping[str, Mapping[int, bytes]],
    candidates: Sequence[Workaround] = WORKAROUNDS,
) -> Replay:
    """Replay the log so that it reproduces every quoted PCR, with the fewest workarounds.

    `quoted` maps bank names to the quoted PCR values. The plain replay is tried first; only if
    it mismatches are the candidates that can touch a mismatching PCR tried, smallest sets
    first. The result names the workarounds used. Raises VerificationError with
    EVENTLOG_BANK_MISSING when a quoted bank is not in the log, and EVENTLOG_REPLAY_MISMATCH
    when no set of candidates explains the quote.
    """
    missing = sorted(set(quoted) - {b.name for b in log.banks if b.replayable})
    if missing:
        raise VerificationError(
            Reason.EVENTLOG_BANK_MISSING, f"the log cannot replay the quoted bank(s) {', '.join(missing)}"
        )
    plain = replay(log, banks=quoted.keys())
    bad = plain.mismatches(quoted)
    if not bad:
        return plain
    bad_pcrs = {index for _bank, index in bad}
    relevant = [w for w in candidates if w.pcrs & bad_pcrs]
    for size in range(1, len(relevant) + 1):
        for combo in itertools.combinations(relevant, size):
            result = replay(log, combo, banks=quoted.keys())
            # A set in which some workaround found no symptom equals a smaller set already tried.
            if len(result.workarounds) == size and not result.mismatches(quoted):
                return result
    shown = ", ".join(f"{bank} PCR {index}" for bank, index in bad)
    tried = ", ".join(w.name for w in relevant) or "none applies"
    raise VerificationError(
        Reason.EVENTLOG_REPLAY_MISMATCH,
        f"the event log does not reproduce the quoted {shown} (workarounds tried: {tried})",
    )
