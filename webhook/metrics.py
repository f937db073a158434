"""Prometheus metrics, in a registry of each application's own (tests build many apps; a
process-global registry would refuse the second one's names).

attest_attestations_total counts each evidence submission once, under its result and its first
reason; attest_attestation_reasons_total counts every reason of every untrusted or rejected
submission, for "which check fails most". Node states are computed from the store at scrape
time, so they can never drift from it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from attest.store.api import StoreError

log = logging.getLogger(__name__)

NODE_STATES: Final = ("trusted", "untrusted", "stale", "enrolled", "revoked")
# Appraisal of a full boot log takes milliseconds; a large IMA list, seconds.
_APPRAISAL_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# An admission decision is a read or two of the store: about a millisecond, unless it is in trouble.
_ADMISSION_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _NodeStates(Collector):
    def __init__(self, count: Callable[[], Mapping[str, int]]) -> None:
        self._count = count

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily("attest_nodes", "Enrolled nodes by state, at scrape time", labels=["state"])

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self._count()
        except StoreError as e:
            # A scrape must not fail because the database did: the other metrics still matter.
            log.warning("nodes metric skipped: %s", e.message)
            return
        family = self._family()
        for state in NODE_STATES:
            family.add_metric([state], counts.get(state, 0))
        yield family


class Metrics:
    def __init__(self, node_states: Callable[[], Mapping[str, int]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.attestations = Counter(
            "attest_attestations",
            "Evidence submissions by result (trusted, untrusted, rejected) and first reason",
            ["result", "reason"],
            registry=self.registry,
        )
        self.attestation_reasons = Counter(
            "attest_attestation_reasons",
            "Every reason of untrusted verdicts and rejected evidence",
            ["reason"],
            registry=self.registry,
        )
        self.appraisal_seconds = Histogram(
            "attest_appraisal_seconds",
            "Time spent appraising one submission of evidence",
            buckets=_APPRAISAL_BUCKETS,
            registry=self.registry,
        )
        self.enrollments = Counter(
            "attest_enrollments",
            "Enrollment steps by result (challenged, refused, activated, activation_failed)",
            ["result"],
            registry=self.registry,
        )
        self.requests_rejected = Counter(
            "attest_requests_rejected",
            "Requests refused before reaching a route: too_large, content_encoding, overloaded, rate_limited",
            ["reason"],
            registry=self.registry,
        )
        self.admission_decisions = Counter(
            "attest_admission_decisions",
            "Admission decisions by resource (pods/binding, ...), allowed, and first reason code",
            ["resource", "allowed", "reason"],
            registry=self.registry,
        )
        self.admission_seconds = Histogram(
            "attest_admission_seconds",
            "Time to decide one admission request, its store reads included",
            ["resource"],
            buckets=_ADMISSION_BUCKETS,
            registry=self.registry,
        )
        self.agent_requests = Gauge(
            "attest_agent_requests",
            "Agent API requests being served (active) and waiting for a slot (queued)",
            ["state"],
            registry=self.registry,
        )
        self.registry.register(_NodeStates(node_states))

    def admission(self, resource: str, allowed: bool, reason: str | None, seconds: float) -> None:
        # Dry runs are counted too: they cost the same, and the label set stays small.
        self.admission_decisions.labels(resource, str(allowed).lower(), reason or "none").inc()
        self.admission_seconds.labels(resource).observe(seconds)

    def attestation(self, result: str, reasons: list[str]) -> None:
        self.attestations.labels(result, reasons[0] if reasons else "none").inc()
        for reason in reasons:
            self.attestation_reasons.labels(reason).inc()
