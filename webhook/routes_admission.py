"""The validating admission webhook (DESIGN 5.3): AdmissionReview v1 in, AdmissionReview v1
out, on the three paths deploy/base/webhook.yaml calls. What is decided, and why, is
webhook.admission's; this module reads the request, times it, counts it and logs it.

A review that is not v1, has no uid or does not parse is a 400 (webhook.errors), so the API
server applies failurePolicy Fail. Every review that parses is answered 200 with a decision,
including the refusal when the database is down: kubectl then prints the verifier's reason
instead of "failed calling webhook". The `timeout` query parameter the API server adds is
ignored: a decision is one indexed read, far inside any timeout it can ask for.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from fastapi import APIRouter, Request

from attest.verify.policy import Policy
from attest.wire import (
    ADMISSION_CSRS,
    ADMISSION_NODES,
    ADMISSION_PODS,
    AdmissionReview,
    AdmissionReviewOut,
    ErrorOut,
)
from webhook.admission import Context, Decision, Options, decide, resource_of, review_response
from webhook.config import Settings
from webhook.metrics import Metrics
from webhook.service import ADMISSION_POLICY_MAX_AGE, Clock, Verifier

log = logging.getLogger(__name__)

# An UPDATE review carries the object and its old version, each up to the API server's 3 MiB
# request limit (a Pod with large annotations or many containers comes close to neither).
ADMISSION_BODY_LIMIT: Final = 6 * 1024 * 1024

router = APIRouter(
    tags=["admission"],
    responses={status: {"model": ErrorOut} for status in (400, 413, 415)},
)


def _answer(path: str, review: AdmissionReview, request: Request) -> AdmissionReviewOut:
    state = request.app.state
    settings: Settings = state.settings
    verifier: Verifier = state.verifier
    metrics: Metrics = state.metrics
    clock: Clock = state.clock

    def active_policy() -> Policy | None:
        # The service's cache: parsed once per version, read from the store at most once a
        # second (a new policy judges images here within ADMISSION_POLICY_MAX_AGE).
        active = verifier.active_policy(ADMISSION_POLICY_MAX_AGE)
        return active.policy if active else None

    started = time.perf_counter()
    context = Context(
        nodes=verifier.store.get_node,
        policy=active_policy,
        now=clock(),
        options=Options.of(settings),
    )
    decision = decide(path, review.request, context)
    metrics.admission(decision.resource, decision.allowed, decision.code, time.perf_counter() - started)
    _log(review, decision)
    return review_response(review.request, decision)


def _log(review: AdmissionReview, decision: Decision) -> None:
    # Refusals at info (the API server's audit log has the rest), so a busy cluster's
    # allowed requests cost no log line unless asked for.
    level = logging.DEBUG if decision.allowed else logging.INFO
    if not log.isEnabledFor(level):
        return
    r = review.request
    outcome = "allowed" if decision.allowed else "denied " + " ".join(d.code.value for d in decision.denials)
    log.log(
        level,
        "admission %s %s %s by %s%s: %s (uid %s)",
        r.operation,
        resource_of(r),
        "/".join(p for p in (r.namespace, r.name) if p) or "-",
        r.user_info.username,
        " (dry run)" if r.dry_run else "",
        outcome,
        r.uid,
    )


# Plain `def` routes: FastAPI runs them in a worker thread, as their store reads block.
@router.post(ADMISSION_NODES, response_model_exclude_none=True)
def nodes(review: AdmissionReview, request: Request) -> AdmissionReviewOut:
    """Node CREATE and UPDATE by kubelets: only on their own Node, with the `unverified` taint."""
    return _answer(ADMISSION_NODES, review, request)


@router.post(ADMISSION_CSRS, response_model_exclude_none=True)
def csrs(review: AdmissionReview, request: Request) -> AdmissionReviewOut:
    """Kubelet CSR CREATE: malformed ones are refused, the others wait for attestation."""
    return _answer(ADMISSION_CSRS, review, request)


@router.post(ADMISSION_PODS, response_model_exclude_none=True)
def pods(review: AdmissionReview, request: Request) -> AdmissionReviewOut:
    """Pod CREATE/UPDATE, pods/binding, pods/ephemeralcontainers: attested nodes, allowed images."""
    return _answer(ADMISSION_PODS, review, request)
