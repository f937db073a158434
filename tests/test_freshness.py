"""One freshness rule for stored verdicts (VerdictRecord.fresh_at), shared by admission, node
listings, the node controller and the kubelet CSR approver: a verdict is fresh only before it
expires and only if it was not appraised further ahead of the reader's clock than replicas'
clocks differ — a clock stepped back must not stretch a verdict's life."""

from __future__ import annotations

import datetime as dt

import pytest

from attest.store.api import CLOCK_SKEW, NodeRecord, VerdictRecord
from webhook.admin import node_state
from webhook.k8s.approver import Action, PendingCsr, judge
from webhook.k8s.nodes import desired_state
from webhook.kubelet_csr import CLIENT_SIGNER, KubeletCsr

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
TTL = dt.timedelta(minutes=5)
KEY = "ab" * 32


def node(appraised: dt.datetime) -> NodeRecord:
    verdict = VerdictRecord(
        node="worker-1",
        trusted=True,
        appraised_at=appraised,
        expires_at=appraised + TTL,
        reasons=[],
        detail={"bound_keys": [KEY]},
    )
    return NodeRecord("worker-1", "ek", b"ak", b"name", NOW - dt.timedelta(days=1), last_verdict=verdict)


@pytest.mark.parametrize(
    ("appraised", "fresh"),
    [
        (NOW, True),
        (NOW - TTL + dt.timedelta(seconds=1), True),
        (NOW - TTL, False),  # expires exactly now
        (NOW + CLOCK_SKEW, True),  # another replica's clock a little ahead
        (NOW + CLOCK_SKEW + dt.timedelta(microseconds=1), False),  # this clock was set back
        (NOW + dt.timedelta(minutes=10), False),
    ],
)
def test_every_reader_applies_the_same_rule(appraised: dt.datetime, fresh: bool) -> None:
    record = node(appraised)
    assert record.last_verdict is not None
    assert record.last_verdict.fresh_at(NOW) is fresh
    assert node_state(record, NOW) == ("trusted" if fresh else "stale")
    assert desired_state("worker-1", record, NOW).attested is fresh
    csr = PendingCsr("csr-1", NOW - dt.timedelta(minutes=20), KubeletCsr(CLIENT_SIGNER, "worker-1", KEY))
    decision = judge(csr, record, None, NOW, grace=dt.timedelta(minutes=10))
    assert (decision.action is Action.APPROVE) is fresh


def test_a_verdict_without_expiry_is_never_fresh() -> None:
    verdict = VerdictRecord("worker-1", True, NOW, None, [], {})
    assert not verdict.fresh_at(NOW)
