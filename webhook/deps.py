"""What routes are given (FastAPI dependencies): the objects create_app put on app.state,
validated path parameters, and admin authentication."""

from __future__ import annotations

import hmac
from typing import Annotated, Final

from fastapi import Depends, Path, Request

from attest.wire import NODE_NAME_MAX, NODE_NAME_PATTERN
from webhook.admin import Admin
from webhook.config import Settings
from webhook.errors import ADMIN_DISABLED, UNAUTHORIZED, Forbidden, Unauthorized
from webhook.service import Verifier

_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="attest-verifier admin"'}


# async: FastAPI runs a plain `def` dependency in a worker thread, a thread handoff per request
# (and per dependency) for what is an attribute read.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_verifier(request: Request) -> Verifier:
    verifier: Verifier = request.app.state.verifier
    return verifier


async def get_admin(request: Request) -> Admin:
    admin: Admin = request.app.state.admin
    return admin


SettingsDep = Annotated[Settings, Depends(get_settings)]
VerifierDep = Annotated[Verifier, Depends(get_verifier)]
AdminDep = Annotated[Admin, Depends(get_admin)]

NodeName = Annotated[str, Path(min_length=1, max_length=NODE_NAME_MAX, pattern=NODE_NAME_PATTERN)]
# secrets.token_urlsafe's alphabet: nothing that could climb out of a path or a log line.
EnrollmentId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def require_admin(request: Request, settings: SettingsDep) -> None:
    """Bearer token, compared in constant time. Without a configured token the admin API is
    off for everyone (403), so a forgotten flag never means an open API."""
    if settings.admin_token is None:
        raise Forbidden(ADMIN_DISABLED, "the admin API is disabled: the verifier has no --admin-token-file")
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized(UNAUTHORIZED, "an admin bearer token is required", headers=_CHALLENGE)
    if not hmac.compare_digest(presented.strip().encode(), settings.admin_token.encode()):
        raise Unauthorized(UNAUTHORIZED, "the admin bearer token is not valid", headers=_CHALLENGE)
