"""create_app: the verifier's ASGI application, built from settings and a store.

Nothing happens at import: every object the routes use (service, admin, metrics registry) is
made here, per application, and reached by routes through app.state (webhook.deps). The
caller owns the store and closes it.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final, cast

import anyio
from fastapi import FastAPI
from fastapi.routing import APIRoute

from attest import __version__
from attest.store.api import Store
from attest.verify.policy import Policy
from attest.wire import ADMISSION_PATHS
from webhook import errors, health, routes_admin, routes_admission, routes_agent
from webhook.admin import Admin
from webhook.config import Settings
from webhook.metrics import Metrics
from webhook.middleware import AgentLimits, BodyLimit, RequestContext
from webhook.nodestate import NodeView, WatchedStore
from webhook.ratelimit import ConcurrencyGate, RateLimiter
from webhook.service import Clock, RandomBytes, Verifier, utcnow

if TYPE_CHECKING:
    from lightkube import KubeConfig

# A policy with an IMA allowlist runs to megabytes; PolicyIn allows 16 MiB of text, which JSON
# escaping makes somewhat longer.
POLICY_BODY_LIMIT: Final = 24 * 1024 * 1024


def create_app(
    settings: Settings,
    store: Store,
    *,
    clock: Clock = utcnow,
    random_bytes: RandomBytes = secrets.token_bytes,
    kube: KubeConfig | None = None,
) -> FastAPI:
    """With `kube`, the Kubernetes controllers (webhook.k8s) run for the application's lifespan;
    with settings.admission_cache_seconds, admission's node view is synced for it."""
    # Every write goes through the view's store, so this process's own writes update it at once.
    view = None
    if settings.admission_cache_seconds > 0:
        view = NodeView(store, lambda: _policy_of(app), settings.admission_cache_seconds)
        store = cast(Store, WatchedStore(store, view))
    controllers = None
    if kube is not None:
        from webhook.k8s.controllers import lifespan as controllers_lifespan

        controllers = controllers_lifespan(settings, store, kube, clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if view is not None:
            view.start()
        try:
            if controllers is None:
                yield
            else:
                async with controllers(app):
                    yield
        finally:
            if view is not None:
                view.stop()

    admin = Admin(store, clock)
    metrics = Metrics(node_states=admin.node_state_counts)
    app = FastAPI(
        title="attest-verifier",
        version=__version__,
        summary="TPM 2.0 node attestation: enrollment, challenges, evidence, verdicts",
        docs_url=None,  # the interactive pages load scripts from a CDN: not on a security service
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.metrics = metrics
    app.state.admin = admin
    app.state.clock = clock
    app.state.verifier = Verifier(settings, store, metrics, clock=clock, random_bytes=random_bytes)
    app.state.node_view = view

    errors.install(app)
    # Admission first: the router tries routes in order, and admission is the busiest path.
    app.include_router(routes_admission.router)
    app.include_router(routes_agent.router)
    app.include_router(routes_admin.router)
    app.include_router(health.router)

    evidence = re.compile(re.sub(r"\{[a-z_]+\}", "[^/]+", routes_agent.EVIDENCE_PATH))
    policies = re.compile(re.escape(routes_admin.POLICIES_PATH))
    admission = re.compile("|".join(re.escape(p) for p in ADMISSION_PATHS))
    app.add_middleware(
        BodyLimit,
        default_limit=settings.max_request_bytes,
        limits=[
            (evidence, settings.max_evidence_bytes),
            (policies, max(settings.max_request_bytes, POLICY_BODY_LIMIT)),
            (admission, max(settings.max_request_bytes, routes_admission.ADMISSION_BODY_LIMIT)),
        ],
        on_reject=lambda reason: metrics.requests_rejected.labels(reason).inc(),
    )
    # Agent work gets threads of its own (routes_agent.agent_thread): however much of it there
    # is, the default pool stays free for the other routes' blocking calls.
    concurrency = settings.max_agent_concurrency
    app.state.agent_threads = anyio.CapacityLimiter(concurrency) if concurrency else None
    gate = ConcurrencyGate(concurrency, settings.agent_queue) if concurrency else None
    if gate is not None:
        metrics.agent_requests.labels("active").set_function(lambda: gate.active)
        metrics.agent_requests.labels("queued").set_function(lambda: gate.waiting)
    app.add_middleware(
        AgentLimits,
        paths=[
            (r.path_regex, r.path in routes_agent.FINISHING_PATHS)
            for r in routes_agent.router.routes
            if isinstance(r, APIRoute)
        ],
        gate=gate,
        buckets=RateLimiter(settings.node_rate, settings.node_burst) if settings.node_rate else None,
        on_shed=lambda reason: metrics.requests_rejected.labels(reason).inc(),
    )
    app.add_middleware(RequestContext)  # added last: outermost, so it sees every failure
    return app


def _policy_of(app: FastAPI) -> Policy | None:
    # Through the service's cache: each version is parsed once, and appraisals see what is read.
    verifier: Verifier = app.state.verifier
    active = verifier.active_policy()
    return active.policy if active else None
