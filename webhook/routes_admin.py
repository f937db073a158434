"""The admin API (/v1/admin) for attestctl. Every route needs the admin bearer token."""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from attest.wire import (
    API_PREFIX,
    AuditRecordOut,
    EkEnrollRequest,
    EkOut,
    ErrorOut,
    NodeOut,
    PolicyIn,
    PolicyOut,
)
from webhook.admin import MAX_AUDIT_PAGE, MAX_PAGE
from webhook.config import POLICY_NAME_PATTERN
from webhook.deps import AdminDep, NodeName, require_admin

router = APIRouter(
    prefix=API_PREFIX + "/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={status: {"model": ErrorOut} for status in (400, 401, 403, 404, 409, 503)},
)

POLICIES_PATH: Final = API_PREFIX + "/admin/policies"
PolicyName = Annotated[str, Path(pattern=POLICY_NAME_PATTERN)]
# Row ids are signed 64-bit in SQLite and PostgreSQL: a larger one is a 400, not a driver overflow.
EkId = Annotated[int, Path(ge=1, le=2**63 - 1)]
DEFAULT_AUDIT_PAGE: Final = 1000
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE)]


def _link_next(request: Request, response: Response, cursor: str | None, limit: int) -> None:
    """The next page's address in a Link header (RFC 8288), so the body stays the plain JSON array
    older clients read; its absence ends the listing."""
    if cursor is not None:
        query = urllib.parse.urlencode({"after": cursor, "limit": limit})
        response.headers["Link"] = f'<{request.url.path}?{query}>; rel="next"'


@router.get("/nodes")
def list_nodes(
    request: Request,
    response: Response,
    admin: AdminDep,
    after: Annotated[str | None, Query(max_length=253)] = None,
    limit: PageLimit = MAX_PAGE,
) -> list[NodeOut]:
    page, cursor = admin.nodes(after, limit)
    _link_next(request, response, cursor, limit)
    return page


@router.get("/nodes/{name}")
def get_node(name: NodeName, admin: AdminDep) -> NodeOut:
    return admin.node(name)


@router.post("/nodes/{name}/revoke")
def revoke_node(name: NodeName, admin: AdminDep) -> NodeOut:
    return admin.revoke_node(name)


@router.post("/eks")
def enroll_ek(body: EkEnrollRequest, admin: AdminDep) -> EkOut:
    return admin.enroll_ek(body)


@router.get("/eks")
def list_eks(
    request: Request,
    response: Response,
    admin: AdminDep,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: PageLimit = MAX_PAGE,
) -> list[EkOut]:
    page, cursor = admin.eks(after, limit)
    _link_next(request, response, cursor, limit)
    return page


@router.post("/eks/{ek_id}/revoke")
def revoke_ek(ek_id: EkId, admin: AdminDep) -> EkOut:
    return admin.revoke_ek(ek_id)


@router.post("/policies")
def put_policy(body: PolicyIn, admin: AdminDep) -> PolicyOut:
    return admin.put_policy(body)


@router.get("/policies")
def list_policies(admin: AdminDep) -> list[PolicyOut]:
    return admin.policies()


@router.get("/policies/{name}")
def get_policy(
    name: PolicyName, admin: AdminDep, version: Annotated[int | None, Query(ge=1)] = None
) -> PolicyOut:
    return admin.policy(name, version)


@router.get("/audit")
def audit(
    admin: AdminDep,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_PAGE)] = DEFAULT_AUDIT_PAGE,
) -> list[AuditRecordOut]:
    return admin.audit(after, limit)
