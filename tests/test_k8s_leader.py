"""Leader election through a Lease on the test API server, with the real lightkube client: one
replica leads at a time, a released Lease is taken over at once, an abandoned one after its
duration, and two full controller stacks answer a CSR once."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from attest.store.sql import SqlStore
from tests.kube_apiserver import KubeApi, fingerprint, make_csr, running
from tests.test_k8s_controllers import (
    CSR_PATH,
    attest,
    call,
    client_for,
    decided,
    enroll,
    eventually,
    new_key,
    utcnow,
    writes,
)
from webhook.config import Settings
from webhook.k8s.controllers import run_controllers
from webhook.k8s.leader import LeaderElector, micro_time

LEASE = "/apis/coordination.k8s.io/v1/namespaces/attest-system/leases/attest-verifier"
TIMING: dict[str, float] = {"lease_duration": 1.5, "renew_deadline": 1.0, "retry_period": 0.2}


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeApi]:
    yield from running(tmp_path / "kube")


class Work:
    """What the leader runs: records who is running it, and checks it is never two at once."""

    def __init__(self) -> None:
        self.active: set[str] = set()
        self.ran: list[str] = []
        self.overlap = False

    def for_(self, identity: str) -> Any:
        async def work() -> None:
            self.active.add(identity)
            self.overlap |= len(self.active) > 1
            self.ran.append(identity)
            try:
                await asyncio.Event().wait()
            finally:
                self.active.discard(identity)

        return work


@asynccontextmanager
async def candidate(
    kube: KubeApi, identity: str, work: Work
) -> AsyncIterator[tuple[LeaderElector, asyncio.Task[None]]]:
    async with client_for(kube) as client:
        elector = LeaderElector(
            client,
            name="attest-verifier",
            namespace=client.namespace,
            identity=identity,
            clock=utcnow,
            **TIMING,
        )
        task = asyncio.create_task(elector.run(work.for_(identity)))
        try:
            yield elector, task
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _is(value: bool) -> bool:
    return value


def test_one_leader_and_a_released_lease_is_taken_over_at_once(kube: KubeApi) -> None:
    work = Work()

    async def scenario() -> None:
        async with (
            candidate(kube, "replica-a", work) as (a, a_task),
            candidate(kube, "replica-b", work) as (b, b_task),
        ):
            await eventually(lambda: _is(len(work.active) == 1))
            await asyncio.sleep(1.0)  # several renewals: still exactly one
            assert len(work.active) == 1
            assert a.leading != b.leading
            leader, leader_task, follower = (a, a_task, b) if a.leading else (b, b_task, a)
            lease = await call(kube.call, "GET", LEASE)
            assert lease["spec"]["holderIdentity"] == leader.identity
            # Shutting the leader down releases the Lease: the other leads well before it expires.
            leader_task.cancel()
            await asyncio.gather(leader_task, return_exceptions=True)
            started = asyncio.get_running_loop().time()
            await eventually(lambda: _is(follower.leading and work.active == {follower.identity}))
            assert asyncio.get_running_loop().time() - started < TIMING["lease_duration"]

    asyncio.run(scenario())
    assert not work.overlap


def test_an_abandoned_lease_is_taken_after_its_duration(kube: KubeApi) -> None:
    """A leader that died without releasing: its Lease is taken once it stayed unrenewed."""
    now = micro_time(utcnow())
    stamp = now.isoformat().replace("+00:00", "Z")
    kube.call(
        "POST",
        "/apis/coordination.k8s.io/v1/namespaces/attest-system/leases",
        {
            "metadata": {"name": "attest-verifier"},
            "spec": {
                "holderIdentity": "dead-replica",
                "leaseDurationSeconds": 1,
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 3,
            },
        },
    )
    work = Work()

    async def scenario() -> None:
        async with candidate(kube, "replica-a", work) as (a, _):
            await asyncio.sleep(0.5)
            assert not a.leading  # not before the holder's duration has passed unrenewed
            await eventually(lambda: _is(a.leading))

    asyncio.run(scenario())
    lease = kube.call("GET", LEASE)
    assert lease["spec"]["leaseTransitions"] == 4
    assert lease["spec"]["holderIdentity"] == ""  # released on shutdown


def test_a_leader_that_cannot_renew_stops_its_work(kube: KubeApi) -> None:
    work = Work()

    async def scenario() -> None:
        async with candidate(kube, "replica-a", work) as (a, _):
            await eventually(lambda: _is(a.leading))
            # Someone takes the Lease over behind its back (as after a network partition).
            lease = await call(kube.call, "GET", LEASE)
            lease["spec"]["holderIdentity"] = "usurper"
            lease["spec"]["renewTime"] = micro_time(utcnow()).isoformat().replace("+00:00", "Z")
            lease["spec"]["leaseDurationSeconds"] = 60
            await call(kube.call, "PUT", LEASE, lease)
            await eventually(lambda: _is(not a.leading and not work.active))

    asyncio.run(scenario())


def test_two_controller_replicas_answer_a_csr_once(kube: KubeApi, tmp_path: Path) -> None:
    store = SqlStore.open(f"sqlite:///{tmp_path / 'shared.db'}")  # one database, as on PostgreSQL
    settings = Settings(csr_grace=dt.timedelta(seconds=60))
    key = new_key()
    enroll(store, "node-a")
    kube.create_node("node-a")
    kube.create_csr("node-csr-a", make_csr(key, "node-a"))
    attest(store, "node-a", bound=(fingerprint(key),))
    leaders: list[str] = []

    @asynccontextmanager
    async def replica(identity: str) -> AsyncIterator[LeaderElector]:
        async with client_for(kube) as client:
            elector = LeaderElector(
                client,
                name="attest-verifier",
                namespace="attest-system",
                identity=identity,
                clock=utcnow,
                **TIMING,
            )

            async def work() -> None:
                leaders.append(identity)
                await run_controllers(client, store, settings, utcnow, identity)

            task = asyncio.create_task(elector.run(work))
            try:
                yield elector
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def scenario() -> None:
        async with replica("replica-a"), replica("replica-b"):
            assert (await decided(kube, "node-csr-a"))["type"] == "Approved"

            async def labelled() -> bool:
                labels = (await call(kube.node, "node-a"))["metadata"].get("labels") or {}
                return labels.get("node-restriction.kubernetes.io/attested") == "true"

            await eventually(labelled)
            await asyncio.sleep(1.0)

    try:
        asyncio.run(scenario())
    finally:
        store.close()
    assert len(leaders) == 1
    approvals = [w for w in writes(kube) if w == f"PUT {CSR_PATH}/node-csr-a/approval"]
    assert len(approvals) == 1
    assert [e["reason"] for e in kube.events()] == ["Attested"]
