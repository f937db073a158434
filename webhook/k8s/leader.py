"""Leader election through a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it,
so that of several verifier replicas one runs the controllers at a time.

A replica leads while it holds the Lease: it renews `renewTime` every `retry_period`; one that
cannot renew for `renew_deadline` stops its work and competes again. The others take the Lease
only once they have watched its record stay unchanged for `lease_duration`, timed on their own
monotonic clock (never by comparing the holder's timestamps with their own wall clock, so clock
skew between machines does not matter). Since renew_deadline < lease_duration, a leader that
lost the Lease has stopped before anyone else can have it, up to requests already in flight;
those are harmless because every write of the controllers is idempotent or carries a
resourceVersion precondition (docs/kubernetes.md). Every Lease write is itself conditional on
the version read, so two candidates can never both believe they acquired it.

On shutdown the leader stops its work and releases the Lease (empty holder), so that another
replica takes over at once instead of after lease_duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Final

import httpx2
from lightkube import AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from webhook.k8s.informer import status_code

log = logging.getLogger(__name__)

LEASE_DURATION: Final = 15.0
RENEW_DEADLINE: Final = 10.0
RETRY_PERIOD: Final = 2.0
RELEASE_TIMEOUT: Final = 2.0


def default_identity() -> str:
    """The pod name (the host name in a pod) and a random suffix: a restarted container is a new
    candidate, never mistaken for the leader it replaced."""
    return f"{socket.gethostname()}_{secrets.token_hex(4)}"


def micro_time(t: dt.datetime) -> dt.datetime:
    """A Lease's times are MicroTime: the API server parses exactly six fractional digits, and the
    encoder leaves them out when the microseconds are zero."""
    return t.astimezone(dt.UTC).replace(microsecond=t.microsecond or 1)


class LeaderElector:
    def __init__(
        self,
        client: AsyncClient,
        *,
        name: str,
        namespace: str,
        identity: str,
        clock: Callable[[], dt.datetime],
        lease_duration: float = LEASE_DURATION,
        renew_deadline: float = RENEW_DEADLINE,
        retry_period: float = RETRY_PERIOD,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs retry_period < renew_deadline < lease_duration")
        self._client = client
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self._clock = clock
        self._duration = lease_duration
        self._deadline = renew_deadline
        self._retry = retry_period
        self._observed: tuple[str | None, dt.datetime | None, int | None] | None = None
        self._observed_at = 0.0
        self.leading = False
        self.terms = 0  # how many times this replica became the leader

    async def run(self, work: Callable[[], Awaitable[None]]) -> None:
        """Until cancelled: acquire the Lease, run `work` while holding it, stop it when the Lease
        is lost; on cancellation stop it and release the Lease."""
        try:
            while True:
                await self._acquire()
                await self._lead(work)
        finally:
            if self.leading:
                self.leading = False
                await self._release_quietly()

    async def _acquire(self) -> None:
        while not await self._attempt(self._deadline):
            await asyncio.sleep(self._retry)
        self.leading = True
        self.terms += 1
        log.info("leader election: %s leads (Lease %s/%s)", self.identity, self.namespace, self.name)

    async def _lead(self, work: Callable[[], Awaitable[None]]) -> None:
        async def run_work() -> None:
            await work()

        task = asyncio.create_task(run_work(), name="leader-work")
        renewed = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self._retry)
                if done:
                    # The work ended on its own (it should not): give the Lease to someone else.
                    if not task.cancelled() and task.exception() is not None:
                        log.error("leader work failed", exc_info=task.exception())
                    self.leading = False
                    await self._release_quietly()
                    await asyncio.sleep(self._retry)
                    return
                remaining = self._deadline - (time.monotonic() - renewed)
                if await self._attempt(max(remaining, 0.1)):
                    renewed = time.monotonic()
                elif time.monotonic() - renewed >= self._deadline:
                    log.warning(
                        "leader election: %s could not renew for %.0f s: stepping down",
                        self.identity,
                        self._deadline,
                    )
                    self.leading = False
                    return
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _attempt(self, timeout: float) -> bool:
        """One try to acquire or renew, bounded in time; any failure is just 'not now'."""
        try:
            async with asyncio.timeout(timeout):
                return await self._try_acquire_or_renew()
        except TimeoutError:
            log.warning("leader election: the API server did not answer within %.1f s", timeout)
        except httpx2.HTTPStatusError as e:
            if status_code(e) != 409:  # 409: another candidate wrote first
                log.warning("leader election: HTTP %d: %s", status_code(e), e)
        except httpx2.TransportError as e:
            log.warning("leader election: the API server is unreachable: %s", e)
        return False

    async def _try_acquire_or_renew(self) -> bool:
        now = micro_time(self._clock())
        try:
            lease = await self._client.get(Lease, self.name, namespace=self.namespace)
        except httpx2.HTTPStatusError as e:
            if status_code(e) != 404:
                raise
            await self._client.create(
                Lease(
                    metadata=ObjectMeta(name=self.name, namespace=self.namespace),
                    spec=self._spec(now, acquired=now, transitions=0),
                )
            )
            self._observe(self.identity, now, int(self._duration))
            return True
        spec = lease.spec or LeaseSpec()
        holder = spec.holderIdentity or None
        self._observe(holder, spec.renewTime, spec.leaseDurationSeconds)
        duration = spec.leaseDurationSeconds or self._duration
        if holder not in (None, self.identity) and time.monotonic() < self._observed_at + duration:
            return False  # someone else holds it and we have not seen it expire
        mine = holder == self.identity
        lease.spec = self._spec(
            now,
            acquired=spec.acquireTime if mine and spec.acquireTime else now,
            transitions=(spec.leaseTransitions or 0) + (0 if mine else 1),
        )
        await self._client.replace(lease)  # carries the version read: a concurrent write is a 409
        self._observe(self.identity, now, int(self._duration))
        return True

    def _spec(self, now: dt.datetime, *, acquired: dt.datetime, transitions: int) -> LeaseSpec:
        return LeaseSpec(
            holderIdentity=self.identity,
            leaseDurationSeconds=int(self._duration),
            acquireTime=micro_time(acquired),
            renewTime=now,
            leaseTransitions=transitions,
        )

    def _observe(self, holder: str | None, renewed: dt.datetime | None, duration: int | None) -> None:
        record = (holder, renewed, duration)
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()

    async def _release_quietly(self) -> None:
        """Best effort and bounded: if it fails, the others wait out lease_duration instead."""
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT):
                await self._release()
        except (TimeoutError, httpx2.HTTPError) as e:
            log.warning("leader election: could not release the Lease: %s", e)

    async def _release(self) -> None:
        lease = await self._client.get(Lease, self.name, namespace=self.namespace)
        spec = lease.spec or LeaseSpec()
        if spec.holderIdentity != self.identity:
            return
        now = micro_time(self._clock())
        lease.spec = LeaseSpec(
            holderIdentity="",
            leaseDurationSeconds=1,
            acquireTime=now,
            renewTime=now,
            leaseTransitions=spec.leaseTransitions,
        )
        await self._client.replace(lease)
        log.info("leader election: %s released Lease %s/%s", self.identity, self.namespace, self.name)
