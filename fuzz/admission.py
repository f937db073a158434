"""Admission decisions (webhook.admission.decide) on an AdmissionReview JSON body, as the
verifier's route gets it, against in-memory node records: no HTTP, no store.

A body either fails the AdmissionReview model (the HTTP layer answers 400) or is decided on
each webhook path: a Decision, or ParseError(ADMISSION_REVIEW_MALFORMED) when the object is not
what kube-apiserver sends. Every decision turns into a response with the request's uid that
is allowed exactly when the decision has no denial.
"""

from __future__ import annotations

import datetime as dt

from pydantic import ValidationError

from attest.errors import ParseError
from attest.reasons import Reason
from attest.store.api import NodeRecord, VerdictRecord
from attest.verify.policy import Policy, load_policy
from attest.wire import ADMISSION_PATHS, AdmissionReview
from fuzz import expect_code
from webhook.admission import Context, Options, decide, review_response

NOW = dt.datetime(2026, 11, 28, 16, 30, tzinfo=dt.UTC)
_MINUTE = dt.timedelta(minutes=1)
_POLICY = load_policy(
    "version: 1\nname: fuzz\ncontainers:\n  images:\n"
    "  - registry.example.com/app@sha256:" + "0" * 64 + "\n  - registry.example.com/tagged\n"
)


def _record(name: str) -> NodeRecord | None:
    # Each node name lands in one state (by its length): unknown, trusted, stale, untrusted, revoked.
    state = len(name) % 5
    if state == 0:
        return None
    at = NOW - (10 if state == 2 else 1) * _MINUTE
    verdict = VerdictRecord(
        name,
        state != 3,
        at,
        None if state == 3 else at + 5 * _MINUTE,
        [{"code": "policy_event_not_allowed", "message": "fuzz"}] if state == 3 else [],
        {},
        "fuzz@1",
    )
    return NodeRecord(
        name=name,
        ek_fingerprint="ab" * 32,
        ak_public=b"\x00\x00",
        ak_name=b"\x00\x0b" + b"\x01" * 32,
        enrolled_at=NOW - dt.timedelta(days=1),
        revoked_at=NOW - _MINUTE if state == 4 else None,
        last_verdict=verdict,
        revoke_reason="fuzz" if state == 4 else None,
    )


def _policy() -> Policy:
    return _POLICY


_CONTEXT = Context(_record, _policy, NOW, Options(frozenset({"kube-system"}), dt.timedelta(minutes=5)))


def one_input(data: bytes) -> None:
    try:
        review = AdmissionReview.model_validate_json(data)
    except ValidationError:
        return
    for path in ADMISSION_PATHS:
        try:
            decision = decide(path, review.request, _CONTEXT)
        except ParseError as e:
            expect_code(e, Reason.ADMISSION_REVIEW_MALFORMED)
            continue
        response = review_response(review.request, decision).response
        assert response.uid == review.request.uid
        assert response.allowed == (not decision.denials)
        assert (response.status is None) == response.allowed
        review_response(review.request, decision).model_dump_json()
