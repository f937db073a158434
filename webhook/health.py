"""Probes and metrics: /healthz (the process answers), /readyz (the store answers), /metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from attest.store.api import Store
from webhook.errors import RETRY_AFTER_SECONDS, STORE_UNAVAILABLE, error_response
from webhook.metrics import Metrics

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
def readyz(request: Request) -> dict[str, str] | Response:
    store: Store = request.app.state.store
    health = store.health()
    if not health.ok:
        # Not ready: a load balancer should send agents to a replica that can reach the database.
        log.warning("not ready: %s", health.detail)
        return error_response(
            503,
            STORE_UNAVAILABLE,
            "the verifier's database is unavailable",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return {"status": "ready"}


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    # Node states come from the store at scrape time: a blocking query, so off the event loop.
    body = await run_in_threadpool(generate_latest, registry.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
