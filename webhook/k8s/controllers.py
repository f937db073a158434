"""The controllers inside `attest-verifier serve`: started with the application, stopped with it.

One lightkube client; a leader election on the Lease `--lease-name` in the verifier's namespace;
while this replica leads, the CSR approver and the node controller. A controller that fails
unexpectedly is logged and restarted after a backoff, never allowed to take the HTTP service
down with it: serving agents and admission matters more than any background work. On shutdown
the controllers are cancelled, the Lease released and the client closed, within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Final

from attest.store.api import Store
from webhook.config import Settings
from webhook.k8s.informer import DEFAULT_BACKOFF, Backoff

if TYPE_CHECKING:
    import datetime as dt

    from fastapi import FastAPI
    from lightkube import AsyncClient, KubeConfig

log = logging.getLogger(__name__)

STOP_TIMEOUT: Final = 5.0

Lifespan = Callable[["FastAPI"], contextlib.AbstractAsyncContextManager[None]]


async def supervise(
    name: str, run: Callable[[], Awaitable[None]], backoff: Backoff = DEFAULT_BACKOFF
) -> None:
    """Run `run` until cancelled, restarting it after an unexpected failure."""
    failures = 0
    while True:
        try:
            await run()
            log.error("%s stopped by itself; restarting it", name)
        except Exception:
            log.exception("%s failed; restarting it", name)
        failures += 1
        await asyncio.sleep(backoff.delay(failures))


async def run_controllers(
    client: AsyncClient, store: Store, settings: Settings, clock: Callable[[], dt.datetime], identity: str
) -> None:
    """Both controllers, until cancelled (this replica leads)."""
    from webhook.k8s.approver import CsrApprover
    from webhook.k8s.nodes import NodeController

    approver = CsrApprover(client, store, grace=settings.csr_grace, clock=clock)
    nodes = NodeController(
        client, store, clock=clock, noexecute=settings.node_taint_noexecute, instance=identity
    )
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(supervise("CSR approver", approver.run))
        tasks.create_task(supervise("node controller", nodes.run))


async def run(settings: Settings, store: Store, config: KubeConfig, clock: Callable[[], dt.datetime]) -> None:
    from webhook.k8s.client import make_client
    from webhook.k8s.leader import LeaderElector, default_identity

    client = make_client(config)
    try:
        elector = LeaderElector(
            client,
            name=settings.lease_name,
            namespace=client.namespace,
            identity=default_identity(),
            clock=clock,
        )
        log.info(
            "controllers on: competing for Lease %s/%s as %s",
            elector.namespace,
            elector.name,
            elector.identity,
        )
        await elector.run(lambda: run_controllers(client, store, settings, clock, elector.identity))
    finally:
        await client.close()


def lifespan(
    settings: Settings, store: Store, config: KubeConfig, clock: Callable[[], dt.datetime]
) -> Lifespan:
    """The application's lifespan: the controllers run from startup to shutdown."""

    @contextlib.asynccontextmanager
    async def controllers(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(supervise("controllers", lambda: run(settings, store, config, clock)))
        try:
            yield
        finally:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT)
            if not done:
                log.warning("controllers did not stop within %.0f s", STOP_TIMEOUT)

    return controllers
