"""The validating admission webhook (DESIGN 5.3): AdmissionReview v1 in, AdmissionReview v1
out, on the three paths deploy/base/webhook.yaml calls. What is decided, and why, is
webhook.admission's; this module reads the request, times it, counts it and logs it.

A review that is not v1, has no uid or does not parse is a 400 (webhook.errors), so the API
server applies failurePolicy Fail. Every review that parses is answered 200 with a decision,
including the refusal when the database is down: kubectl then prints the verifier's reason
instead of "failed calling webhook". The `timeout` query parameter the API server adds is
ignored: a decision is a lookup in memory (or one indexed read), far inside any timeout it can
ask for.

The routes are async: while admission's node view (webhook.nodestate) is within its bound a
decision needs no I/O, so it is made on the event loop, without a worker thread. Only with
--admission-cache-seconds 0, or a view past its bound whose store has not failed, do the
store reads run in a worker thread. The body is parsed here (orjson, then the AdmissionReview
model, which keeps the object under review a mapping) rather than by FastAPI, and the answer
is written by its model straight to JSON: FastAPI would validate both once more.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from attest.verify.policy import Policy
from attest.wire import (
    ADMISSION_CSRS,
    ADMISSION_NODES,
    ADMISSION_PODS,
    AdmissionReview,
)
from webhook.admission import Context, Decision, Options, decide, resource_of, review_response
from webhook.config import Settings
from webhook.errors import is_json
from webhook.metrics import Metrics
from webhook.nodestate import NodeView
from webhook.service import ADMISSION_POLICY_MAX_AGE, Clock, Verifier

log = logging.getLogger(__name__)

# An UPDATE review carries the object and its old version, each up to the API server's 3 MiB
# request limit (a Pod with large annotations or many containers comes close to neither).
ADMISSION_BODY_LIMIT: Final = 6 * 1024 * 1024

router = APIRouter()


def _review(body: bytes, content_type: str | None) -> AdmissionReview:
    """The posted review, or RequestValidationError: webhook.errors answers 400 invalid_request
    (JSON_REQUIRED without the JSON content type, as for every other route)."""
    if not is_json(content_type):
        raise RequestValidationError([])
    try:
        return AdmissionReview.model_validate(orjson.loads(body))
    except orjson.JSONDecodeError as e:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": f"not JSON: {e}"}]
        ) from None
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False, include_context=False)) from None


async def _answer(path: str, request: Request) -> Response:
    review = _review(await request.body(), request.headers.get("content-type"))
    state = request.app.state
    settings: Settings = state.settings
    metrics: Metrics = state.metrics
    clock: Clock = state.clock
    view: NodeView | None = state.node_view

    started = time.perf_counter()
    lookups = view.lookups() if view is not None else None
    if lookups is not None:
        nodes, policy = lookups
        context = Context(nodes=nodes, policy=policy, now=clock(), options=Options.of(settings))
        decision = decide(path, review.request, context)
    else:
        decision = await run_in_threadpool(decide, path, review.request, _read_through(state, settings))
    metrics.admission(decision.resource, decision.allowed, decision.code, time.perf_counter() - started)
    _log(review, decision)
    answer = review_response(review.request, decision).model_dump_json(by_alias=True, exclude_none=True)
    return Response(answer, media_type="application/json")


def _read_through(state: Any, settings: Settings) -> Context:
    """Lookups that read the store (in the worker thread that decides)."""
    verifier: Verifier = state.verifier
    clock: Clock = state.clock

    def active_policy() -> Policy | None:
        # The service's cache: parsed once per version, read from the store at most once a
        # second (a new policy judges images here within ADMISSION_POLICY_MAX_AGE).
        active = verifier.active_policy(ADMISSION_POLICY_MAX_AGE)
        return active.policy if active else None

    return Context(
        nodes=verifier.store.get_node, policy=active_policy, now=clock(), options=Options.of(settings)
    )


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


async def nodes(request: Request) -> Response:
    """Node CREATE and UPDATE by kubelets: only on their own Node, with the `unverified` taint."""
    return await _answer(ADMISSION_NODES, request)


async def csrs(request: Request) -> Response:
    """Kubelet CSR CREATE: malformed ones are refused, the others wait for attestation."""
    return await _answer(ADMISSION_CSRS, request)


async def pods(request: Request) -> Response:
    """Pod CREATE/UPDATE, pods/binding, pods/ephemeralcontainers: attested nodes, allowed images."""
    return await _answer(ADMISSION_PODS, request)


# Plain Starlette routes, not FastAPI's: the endpoint reads and answers the review itself, so
# FastAPI's dependency solving and response handling would be work per request for nothing.
# They are therefore not in /openapi.json: the API server, not a person, calls them.
for _path, _endpoint in ((ADMISSION_NODES, nodes), (ADMISSION_CSRS, csrs), (ADMISSION_PODS, pods)):
    router.add_route(_path, _endpoint, methods=["POST"], include_in_schema=False)
