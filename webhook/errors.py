"""Every error the service answers with, and the one place exceptions become responses.

The service and admin layers raise typed exceptions (ServiceError subclasses, the store's
StoreError family, the verifier library's ParseError / VerificationError); `install` maps each
kind to a status and an ErrorOut body with a stable code, usually a Reason value. Nothing else
builds an error response, so no path can leak a traceback or invent a code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import ClassVar, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from attest.errors import AttestError, ParseError
from attest.reasons import Finding, Reason
from attest.store.api import Conflict, NonceRejected, NotFound, StoreError, StoreUnavailable
from attest.wire import ErrorOut, ReasonOut

log = logging.getLogger(__name__)

# Codes of failures that are not appraisal reasons. Stable, like Reason values.
INVALID_REQUEST: Final = "invalid_request"
NOT_FOUND: Final = "not_found"
METHOD_NOT_ALLOWED: Final = "method_not_allowed"
UNAUTHORIZED: Final = "unauthorized"
ADMIN_DISABLED: Final = "admin_disabled"
REQUEST_TOO_LARGE: Final = "request_too_large"
UNSUPPORTED_ENCODING: Final = "unsupported_content_encoding"
STORE_UNAVAILABLE: Final = "store_unavailable"
CONFLICT: Final = "conflict"
OVERLOADED: Final = "overloaded"
RATE_LIMITED: Final = "rate_limited"
INTERNAL_ERROR: Final = Reason.INTERNAL_ERROR.value

RETRY_AFTER_SECONDS: Final = 5

# Store failures whose Reason decides the status better than the exception's class does.
_STORE_STATUS: Final[Mapping[Reason, int]] = {
    Reason.CREDENTIAL_INVALID: 403,
    Reason.NODE_REVOKED: 403,
    Reason.EK_NODE_CONFLICT: 409,
    Reason.EK_NOT_ENROLLED: 403,
    Reason.ENROLLMENT_UNKNOWN: 404,
    Reason.ENROLLMENT_EXPIRED: 410,
    Reason.ENROLLMENT_USED: 410,
}


class ServiceError(Exception):
    """A request the service refuses; the subclass says how (its HTTP status)."""

    status: ClassVar[int] = 400

    def __init__(self, code: str, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message
        self.headers = dict(headers or {})


class BadRequest(ServiceError):
    status = 400


class Unauthorized(ServiceError):
    status = 401


class Forbidden(ServiceError):
    status = 403


class Missing(ServiceError):
    status = 404


class Conflicting(ServiceError):
    status = 409


class EvidenceRejected(ServiceError):
    """The quote did not verify under the node's AK: nothing here is provably the node's, so
    no verdict was stored. Every reason is listed; the first is the code."""

    status = 422

    def __init__(self, findings: Sequence[Finding]) -> None:
        first = findings[0]
        super().__init__(first.code.value, f"evidence rejected, no verdict stored: {first.message}")
        self.findings = tuple(findings)


def reason_out(finding: Finding) -> ReasonOut:
    return ReasonOut.model_validate(finding.to_json())


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    reasons: Sequence[Finding] = (),
) -> JSONResponse:
    body = ErrorOut(code=code, message=message, reasons=[reason_out(f) for f in reasons])
    return JSONResponse(body.model_dump(mode="json", exclude_defaults=True), status, headers=headers)


def store_error_status(e: StoreError) -> int:
    if isinstance(e, StoreUnavailable):
        return 503
    if e.code is not None and e.code in _STORE_STATUS:
        return _STORE_STATUS[e.code]
    if isinstance(e, NotFound):
        return 404
    if isinstance(e, (Conflict, NonceRejected)):
        return 409
    return 400


def _store_error(e: StoreError) -> JSONResponse:
    status = store_error_status(e)
    if status == 503:
        # The store's message may name hosts or files: the log gets it, the client does not.
        log.warning("store unavailable: %s", e.message)
        return error_response(
            503,
            STORE_UNAVAILABLE,
            "the verifier's database is unavailable; retry later",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    default = NOT_FOUND if status == 404 else CONFLICT if status == 409 else INVALID_REQUEST
    return error_response(status, e.code.value if e.code else default, e.message)


JSON_REQUIRED: Final = "request bodies are JSON: send Content-Type: application/json"


def is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "application/json"


def _validation_message(e: RequestValidationError) -> str:
    errors = e.errors()
    if not errors:
        return "the request is not valid"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


def install(app: FastAPI) -> None:
    """Register the handlers. Unexpected exceptions are turned into 500s by RequestContext
    (webhook.middleware), which knows the request id to log them with."""

    async def service_error(_: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, ServiceError)
        reasons = e.findings if isinstance(e, EvidenceRejected) else ()
        return error_response(e.status, e.code, e.message, headers=e.headers, reasons=reasons)

    async def store_error(_: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, StoreError)
        return _store_error(e)

    async def attest_error(_: Request, e: Exception) -> JSONResponse:
        # Malformed input is the client's to fix (400); a check that failed is a refusal (403).
        assert isinstance(e, AttestError)
        return error_response(400 if isinstance(e, ParseError) else 403, e.code.value, e.message)

    async def validation_error(request: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, RequestValidationError)
        if not is_json(request.headers.get("content-type")) and request.method in ("POST", "PUT"):
            # FastAPI reads a body as JSON only when it says so (a guard against cross-site forms).
            return error_response(400, INVALID_REQUEST, JSON_REQUIRED)
        return error_response(400, INVALID_REQUEST, _validation_message(e))

    async def http_error(_: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, StarletteHTTPException)
        code = {404: NOT_FOUND, 405: METHOD_NOT_ALLOWED}.get(e.status_code, INVALID_REQUEST)
        return error_response(e.status_code, code, str(e.detail), headers=e.headers)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(StoreError, store_error)
    app.add_exception_handler(AttestError, attest_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
