"""The agent API (/v1): enroll, activate, challenge, evidence. Bodies are attest.wire models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

import anyio
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from attest.wire import (
    API_PREFIX,
    ActivateRequest,
    Challenge,
    ChallengeRequest,
    EnrollChallenge,
    EnrollRequest,
    EnrollResult,
    ErrorOut,
    Evidence,
    VerdictOut,
)
from webhook.deps import EnrollmentId, NodeName, VerifierDep
from webhook.errors import INVALID_REQUEST, JSON_REQUIRED, BadRequest, is_json
from webhook.service import Verifier

EVIDENCE_PATH: Final = API_PREFIX + "/nodes/{node}/evidence"
ACTIVATE_PATH: Final = API_PREFIX + "/enroll/{enrollment_id}/activate"
# The second step of a round (enroll then activate, challenge then evidence): kept when the
# agent API is overloaded, so that a round once begun is not wasted (webhook.ratelimit).
FINISHING_PATHS: Final = (ACTIVATE_PATH, EVIDENCE_PATH)

router = APIRouter(prefix=API_PREFIX, tags=["agent"])

_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": ErrorOut} for status in (400, 403, 404, 409, 410, 413, 415, 429, 503)
}
_REJECTED: Final = {"model": ErrorOut, "description": "the quote did not verify: no verdict was stored"}
_EVIDENCE_BODY: Final = {"application/json": {"schema": Evidence.model_json_schema()}}
_T = TypeVar("_T")


async def agent_thread(request: Request, fn: Callable[..., _T], *args: Any) -> _T:
    """Run blocking agent work (store calls, parsing, appraisal) in a worker thread under the
    agent API's own limiter (webhook.app), not the pool the other routes share."""
    return await anyio.to_thread.run_sync(fn, *args, limiter=request.app.state.agent_threads)


@router.post("/enroll", responses=_ERRORS)
async def enroll(body: EnrollRequest, request: Request, verifier: VerifierDep) -> EnrollChallenge:
    return await agent_thread(request, verifier.enroll, body)


@router.post("/enroll/{enrollment_id}/activate", responses=_ERRORS)
async def activate(
    enrollment_id: EnrollmentId, body: ActivateRequest, request: Request, verifier: VerifierDep
) -> EnrollResult:
    return await agent_thread(request, verifier.activate, enrollment_id, body)


@router.post("/nodes/{node}/challenge", responses=_ERRORS)
async def challenge(
    node: NodeName, request: Request, verifier: VerifierDep, body: ChallengeRequest | None = None
) -> Challenge:
    # The body is optional: agents that bind no key (and older ones) send none.
    return await agent_thread(request, verifier.challenge, node, body)


def _evidence(verifier: Verifier, node: str, body: bytes) -> VerdictOut:
    try:
        parsed = Evidence.model_validate_json(body)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False, include_context=False)) from None
    return verifier.submit_evidence(node, parsed)


@router.post(
    "/nodes/{node}/evidence",
    responses={**_ERRORS, 422: _REJECTED},
    # The body is read and validated by hand (below), so its schema is declared here.
    openapi_extra={"requestBody": {"required": True, "content": _EVIDENCE_BODY}},
)
async def evidence(node: NodeName, request: Request, verifier: VerifierDep) -> VerdictOut:
    # Evidence runs to tens of MiB: decoding and validating it, like appraising it, is CPU
    # work that would stall every other request if it ran on the event loop.
    if not is_json(request.headers.get("content-type")):
        raise BadRequest(INVALID_REQUEST, JSON_REQUIRED)
    # One trip to a worker thread for both: each trip costs a thread handoff.
    return await agent_thread(request, _evidence, verifier, node, await request.body())
