"""SECURITY.md lines that no other test built the attack for, through the verifier service
(webhook.service.Verifier over the in-memory store, software TPM nodes: tests.webhook_support):

- a quoted PCR with no events in the log must hold its reset value;
- malformed event logs leave the node untrusted, never trusted;
- any exception during appraisal leaves the node untrusted (fail closed).
"""

from __future__ import annotations

# The service's world and its enrolled good node are its own tests' fixtures, imported as such.
# ruff: noqa: F811
import dataclasses

import pytest

import attest.verify.appraise
from attest.errors import AttestError
from attest.reasons import Reason
from attest.tcg import pcr_reset_value
from attest.verify import eventlog
from attest.verify.workarounds import replay_matching
from swtpm.measuredboot import BootProfile, simulate_boot
from tests.test_webhook_service import World, ca, good, make_world, world  # noqa: F401
from tests.webhook_support import SoftNode
from webhook.errors import EvidenceRejected


def _codes(world: World, node: SoftNode) -> set[str]:
    verdict = world.attest(node)
    assert not verdict.trusted
    assert verdict.expires_at is None
    assert world.admin.node(node.name).state == "untrusted"
    return {r.code for r in verdict.reasons}


def test_a_quoted_pcr_without_events_must_hold_its_reset_value() -> None:
    """PCRs 11-15 get no firmware events: quoted at their reset value they replay, holding
    anything else (extended by code that did not log it) they do not. The service's quote
    selection always covers events, so this is shown where appraise() matches the log."""
    boot = simulate_boot(BootProfile())
    log = eventlog.parse(boot.log)
    assert not {r[1] for r in log.records} & set(range(11, 16))
    quoted = {"sha256": {i: boot.pcrs["sha256"][i] for i in (0, 7, 11, 14)}}
    assert quoted["sha256"][11] == pcr_reset_value(11, 32)
    replay_matching(log, quoted)  # as the TPM holds them: accepted
    for pcr in (11, 14):
        tampered = {"sha256": {**quoted["sha256"], pcr: bytes([0x5A]) * 32}}
        with pytest.raises(AttestError) as e:
            replay_matching(log, tampered)
        assert e.value.code is Reason.EVENTLOG_REPLAY_MISMATCH
        assert str(pcr) in e.value.message


@pytest.mark.parametrize(
    "log",
    [b"", b"\x00" * 64, b"\xff" * 4096, "truncated", "huge size"],
    ids=["empty", "zeros", "ones", "truncated", "huge-size"],
)
def test_a_malformed_event_log_leaves_the_node_untrusted(
    world: World, good: SoftNode, log: bytes | str
) -> None:
    assert world.attest(good).trusted
    real = good.boot.log
    if log == "truncated":
        log = real[: len(real) // 2]
    elif log == "huge size":  # the first event's event size field claims 4 GiB
        log = real[:28] + b"\xff\xff\xff\xff" + real[32:]
    assert isinstance(log, bytes)
    good.boot = dataclasses.replace(good.boot, log=log)
    codes = _codes(world, good)
    assert any(c.startswith("eventlog_") for c in codes), codes


def test_an_exception_during_appraisal_leaves_the_node_untrusted(
    world: World, good: SoftNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the quote proved its PCRs, an exception is an untrusted verdict with internal_error,
    stored: a trusted node is untrusted at once (it used to keep its last verdict until that
    expired), its clock high-water mark and IMA position unchanged."""
    assert world.attest(good).trusted
    before = world.store.get_node(good.name)
    assert before is not None

    def broken(*_args: object, **_kwargs: object) -> None:
        raise ZeroDivisionError("a bug in a parser")

    monkeypatch.setattr(attest.verify.appraise, "_boot", broken)
    assert _codes(world, good) == {"internal_error"}
    after = world.store.get_node(good.name)
    assert after is not None
    assert (after.clock, after.ima_state) == (before.clock, before.ima_state)


def test_an_exception_before_the_quote_is_proven_stores_no_verdict(
    world: World, good: SoftNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the quote verified nothing in the evidence is provably the node's: the evidence
    is refused (422) with internal_error, and a node never trusted stays so."""
    fresh = SoftNode("node-b.example", world.ca)
    world.enroll(fresh)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise ZeroDivisionError("a bug in the quote parser")

    monkeypatch.setattr(attest.verify.appraise, "verify_quote", broken)
    with pytest.raises(EvidenceRejected) as e:
        world.attest(fresh)
    assert [r.code for r in e.value.findings] == [Reason.INTERNAL_ERROR]
    assert world.admin.node(fresh.name).state != "trusted"
    assert world.store.audit[-1].kind == "rejected-evidence"
