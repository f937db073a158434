"""The kubelet CSR approver and the node state controller, with the real lightkube client against
the test API server process (tests/kube_apiserver.py), and verdicts in a real SqlStore on SQLite
recorded through the store API, as the evidence route records them."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from lightkube import AsyncClient

from attest.store.api import Enrollment, VerdictRecord
from attest.store.sql import SqlStore
from tests.kube_apiserver import KubeApi, fingerprint, make_csr, running
from webhook.k8s.approver import CsrApprover
from webhook.k8s.client import load_config, make_client
from webhook.k8s.informer import Backoff
from webhook.k8s.nodes import ATTESTED_LABEL, NodeController

SECRET = b"s" * 32
FAST = Backoff(base=0.05, cap=0.5)
CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
T = TypeVar("T")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeApi]:
    yield from running(tmp_path / "kube")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    opened = SqlStore.open(f"sqlite:///{tmp_path / 'attest.db'}")
    yield opened
    opened.close()


def enroll(store: SqlStore, node: str) -> None:
    ident = f"enr-{node}"
    now = utcnow()
    store.create_enrollment(
        Enrollment(
            ident,
            node,
            hashlib.sha256(node.encode()).hexdigest(),
            b"pub:" + node.encode(),
            b"name:" + node.encode(),
            hashlib.sha256(SECRET).digest(),
            now + dt.timedelta(minutes=5),
        )
    )
    store.complete_enrollment(ident, SECRET, now)


def attest(
    store: SqlStore,
    node: str,
    *,
    trusted: bool = True,
    bound: tuple[str, ...] = (),
    at: dt.datetime | None = None,
    ttl: float = 300,
) -> None:
    at = at or utcnow()
    store.record_verdict(
        VerdictRecord(
            node=node,
            trusted=trusted,
            appraised_at=at,
            expires_at=at + dt.timedelta(seconds=ttl) if trusted else None,
            reasons=[] if trusted else [{"code": "policy_pcr_mismatch", "message": "PCR 4", "pcr": 4}],
            detail={"bound_keys": list(bound)},
            policy="default@1",
        ),
        None,
        None,
    )


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """The admin's blocking HTTP calls, off the event loop the controllers run on."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 10.0) -> T:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def decision(csr: dict[str, Any]) -> dict[str, Any] | None:
    for c in (csr.get("status") or {}).get("conditions") or []:
        if c["type"] in ("Approved", "Denied"):
            return dict(c)
    return None


async def decided(kube: KubeApi, name: str, timeout: float = 10.0) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        return decision(await call(kube.csr, name))

    return await eventually(check, timeout)


def writes(kube: KubeApi, user: str = "system:serviceaccount:attest-system:attest-verifier") -> list[str]:
    return [
        f"{r['method']} {r['path']}" for r in kube.requests() if r["user"] == user and r["method"] != "GET"
    ]


@asynccontextmanager
async def client_for(kube: KubeApi) -> AsyncIterator[AsyncClient]:
    client = make_client(load_config(kube.kubeconfig))
    try:
        yield client
    finally:
        await client.close()


@asynccontextmanager
async def running_task(coro: Awaitable[None]) -> AsyncIterator[asyncio.Task[None]]:
    async def wrapped() -> None:
        await coro

    task = asyncio.create_task(wrapped())
    try:
        yield task
    finally:
        task.cancel()
        results = await asyncio.gather(task, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results


@asynccontextmanager
async def approver(kube: KubeApi, store: SqlStore, grace: float = 60.0) -> AsyncIterator[CsrApprover]:
    async with client_for(kube) as client:
        a = CsrApprover(
            client, store, grace=dt.timedelta(seconds=grace), clock=utcnow, poll_interval=0.1, backoff=FAST
        )
        async with running_task(a.run()):
            yield a


@asynccontextmanager
async def node_controller(
    kube: KubeApi, store: SqlStore, *, noexecute: bool = False
) -> AsyncIterator[NodeController]:
    async with client_for(kube) as client:
        c = NodeController(
            client, store, clock=utcnow, noexecute=noexecute, resync=0.1, min_interval=0.02, backoff=FAST
        )
        async with running_task(c.run()):
            yield c


# --- the CSR approver ------------------------------------------------------------------------


def test_bound_fresh_trusted_node_is_approved(kube: KubeApi, store: SqlStore) -> None:
    key = new_key()
    enroll(store, "node-a")
    kube.create_csr("node-csr-a", make_csr(key, "node-a"))
    attest(store, "node-a", bound=(fingerprint(key),))  # the agent's round after the CSR

    async def scenario() -> None:
        async with approver(kube, store):
            condition = await decided(kube, "node-csr-a")
        assert condition["type"] == "Approved"
        assert condition["reason"] == "AttestedNode"
        assert fingerprint(key) in condition["message"]

    asyncio.run(scenario())
    assert writes(kube) == [f"PUT {CSR_PATH}/node-csr-a/approval"]


def test_waiting_csr_is_approved_when_the_bound_verdict_arrives(kube: KubeApi, store: SqlStore) -> None:
    key = new_key()
    enroll(store, "node-a")
    kube.create_csr("node-csr-a", make_csr(key, "node-a"))

    async def scenario() -> None:
        async with approver(kube, store):
            await asyncio.sleep(0.5)
            assert decision(await call(kube.csr, "node-csr-a")) is None  # waits, not denied
            await call(attest, store, "node-a", bound=(fingerprint(key),))
            assert (await decided(kube, "node-csr-a"))["type"] == "Approved"

    asyncio.run(scenario())


def test_untrusted_node_is_denied_at_once(kube: KubeApi, store: SqlStore) -> None:
    key = new_key()
    enroll(store, "node-a")
    kube.create_csr("node-csr-a", make_csr(key, "node-a"))
    attest(store, "node-a", trusted=False, bound=(fingerprint(key),))

    async def scenario() -> None:
        async with approver(kube, store, grace=600):
            condition = await decided(kube, "node-csr-a")
        assert condition["type"] == "Denied"
        assert condition["reason"] == "csr_node_untrusted"
        assert "policy_pcr_mismatch" in condition["message"]

    asyncio.run(scenario())


def test_revoked_node_is_denied(kube: KubeApi, store: SqlStore) -> None:
    key = new_key()
    enroll(store, "node-a")
    attest(store, "node-a", bound=(fingerprint(key),))
    store.revoke_node("node-a", "decommissioned")
    kube.create_csr("node-csr-a", make_csr(key, "node-a"))

    async def scenario() -> None:
        async with approver(kube, store, grace=600):
            condition = await decided(kube, "node-csr-a")
        assert (condition["type"], condition["reason"]) == ("Denied", "csr_node_untrusted")

    asyncio.run(scenario())


def test_no_bound_verdict_waits_then_is_denied_after_the_grace(kube: KubeApi, store: SqlStore) -> None:
    kube.create_csr("node-csr-a", make_csr(new_key(), "node-a"))  # never enrolled, never attested

    async def scenario() -> None:
        async with approver(kube, store, grace=2.5):
            await asyncio.sleep(0.5)
            assert decision(await call(kube.csr, "node-csr-a")) is None
            condition = await decided(kube, "node-csr-a")
        assert (condition["type"], condition["reason"]) == ("Denied", "csr_not_bound")
        assert "no attestation bound to this key" in condition["message"]

    asyncio.run(scenario())


def test_verdict_bound_to_another_key_is_denied(kube: KubeApi, store: SqlStore) -> None:
    enroll(store, "node-a")
    kube.create_csr("node-csr-a", make_csr(new_key(), "node-a"))
    attest(store, "node-a", bound=(fingerprint(new_key()),))

    async def scenario() -> None:
        async with approver(kube, store, grace=2):
            condition = await decided(kube, "node-csr-a")
        assert (condition["type"], condition["reason"]) == ("Denied", "csr_not_bound")
        assert "does not commit" in condition["message"]

    asyncio.run(scenario())


def test_renewal_needs_a_verdict_newer_than_the_csr(kube: KubeApi, store: SqlStore) -> None:
    key = new_key()
    enroll(store, "node-a")
    # Trusted, fresh and bound to this very key, but appraised before the renewal CSR was filed.
    attest(store, "node-a", bound=(fingerprint(key),), at=utcnow() - dt.timedelta(seconds=5))
    kube.create_csr("node-csr-a", make_csr(key, "node-a"), user="system:node:node-a")

    async def scenario() -> None:
        async with approver(kube, store, grace=2):
            condition = await decided(kube, "node-csr-a")
        assert (condition["type"], condition["reason"]) == ("Denied", "csr_verdict_stale")

    asyncio.run(scenario())


def test_another_node_cannot_ask_for_this_nodes_certificate(kube: KubeApi, store: SqlStore) -> None:
    key = new_key()
    enroll(store, "node-a")
    attest(store, "node-a", bound=(fingerprint(key),))
    kube.create_csr("node-csr-a", make_csr(key, "node-a"), user="system:node:node-b")

    async def scenario() -> None:
        async with approver(kube, store):
            condition = await decided(kube, "node-csr-a")
        assert (condition["type"], condition["reason"]) == ("Denied", "csr_requestor_mismatch")

    asyncio.run(scenario())


def test_malformed_kubelet_csr_is_denied(kube: KubeApi, store: SqlStore) -> None:
    key = new_key()
    kube.create_csr("admin-ish", make_csr(key, "node-a", org="system:masters"))
    kube.create_csr("with-sans", make_csr(key, "node-a", dns=("node-a",)))

    async def scenario() -> None:
        async with approver(kube, store):
            for name in ("admin-ish", "with-sans"):
                condition = await decided(kube, name)
                assert (condition["type"], condition["reason"]) == ("Denied", "csr_malformed")

    asyncio.run(scenario())


def test_serving_csr_own_names_approved_foreign_name_denied(kube: KubeApi, store: SqlStore) -> None:
    key = new_key()
    enroll(store, "node-a")
    kube.create_node(
        "node-a",
        addresses=[
            {"type": "Hostname", "address": "node-a"},
            {"type": "InternalIP", "address": "10.0.0.7"},
            {"type": "InternalDNS", "address": "node-a.cluster.example"},
        ],
    )
    serving = "kubernetes.io/kubelet-serving"
    own = make_csr(key, "node-a", dns=("node-a", "node-a.cluster.example"), ips=("10.0.0.7",))
    foreign = make_csr(key, "node-a", dns=("node-a", "api.example.com"), ips=("10.0.0.7",))
    kube.create_csr("serving-own", own, signer=serving, user="system:node:node-a")
    kube.create_csr("serving-foreign", foreign, signer=serving, user="system:node:node-a")
    attest(store, "node-a", bound=(fingerprint(key),))

    async def scenario() -> None:
        async with approver(kube, store):
            own_condition = await decided(kube, "serving-own")
            foreign_condition = await decided(kube, "serving-foreign")
        assert own_condition["type"] == "Approved"
        assert (foreign_condition["type"], foreign_condition["reason"]) == ("Denied", "csr_san_foreign")
        assert "api.example.com" in foreign_condition["message"]

    asyncio.run(scenario())


def test_other_signers_and_decided_csrs_are_never_touched(kube: KubeApi, store: SqlStore) -> None:
    key = new_key()
    enroll(store, "node-a")
    # Everything about it qualifies, except its signer.
    kube.create_csr(
        "not-a-kubelet",
        make_csr(key, "node-a"),
        signer="kubernetes.io/kube-apiserver-client",
        usages=("digital signature", "client auth"),
    )
    kube.create_csr("denied-by-admin", make_csr(key, "node-a"))
    csr = kube.csr("denied-by-admin")
    csr["status"] = {
        "conditions": [{"type": "Denied", "status": "True", "reason": "Operator", "message": "no"}]
    }
    kube.call("PUT", f"{CSR_PATH}/denied-by-admin/approval", csr)
    kube.create_csr("undecided", make_csr(new_key(), "node-a"))
    attest(store, "node-a", bound=(fingerprint(key),))
    kube.clear_requests()

    async def scenario() -> None:
        async with approver(kube, store, grace=1):
            assert (await decided(kube, "undecided"))["reason"] == "csr_not_bound"  # it did run
            await asyncio.sleep(0.5)

    asyncio.run(scenario())
    assert decision(kube.csr("not-a-kubelet")) is None
    assert decision(kube.csr("denied-by-admin"))["reason"] == "Operator"  # type: ignore[index]
    assert writes(kube) == [f"PUT {CSR_PATH}/undecided/approval"]


def test_watch_resumes_after_a_dropped_connection_and_relists_after_410(
    kube: KubeApi, store: SqlStore
) -> None:
    enroll(store, "node-a")

    async def scenario() -> None:
        async with approver(kube, store) as a:
            await a.informer.synced.wait()
            assert a.informer.lists == 1
            await call(kube.drop_watches)
            key = new_key()
            await call(kube.create_csr, "after-drop", make_csr(key, "node-a"))
            await call(attest, store, "node-a", bound=(fingerprint(key),))
            assert (await decided(kube, "after-drop"))["type"] == "Approved"

            # The version the client holds is compacted away: the server says 410, it lists again.
            await call(kube.compact)
            await call(kube.drop_watches)
            await eventually(lambda: _true(a.informer.lists >= 2))
            key = new_key()
            await call(kube.create_csr, "after-410", make_csr(key, "node-a"))
            await call(attest, store, "node-a", bound=(fingerprint(key),))
            assert (await decided(kube, "after-410"))["type"] == "Approved"

    asyncio.run(scenario())


async def _true(value: bool) -> bool:
    return value


# --- the node state controller ---------------------------------------------------------------


def _ours(node: dict[str, Any]) -> tuple[str | None, list[str]]:
    labels = node["metadata"].get("labels") or {}
    taints = sorted(f"{t['key']}:{t['effect']}" for t in node["spec"].get("taints") or [])
    return labels.get(ATTESTED_LABEL), taints


async def node_state(kube: KubeApi, name: str, label: str, taints: list[str]) -> None:
    async def check() -> bool:
        return _ours(await call(kube.node, name)) == (label, taints)

    await eventually(check)


def test_trusted_node_is_untainted_labelled_and_told(kube: KubeApi, store: SqlStore) -> None:
    enroll(store, "node-a")
    attest(store, "node-a")
    kube.create_node(
        "node-a",
        taints=[
            {"key": "unverified", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},  # not ours: kept
        ],
    )

    async def scenario() -> None:
        async with node_controller(kube, store):
            await node_state(kube, "node-a", "true", ["node.kubernetes.io/not-ready:NoSchedule"])

    asyncio.run(scenario())
    events = [e for e in kube.events() if e["involvedObject"]["name"] == "node-a"]
    assert [(e["reason"], e["type"]) for e in events] == [("Attested", "Normal")]
    assert events[0]["involvedObject"]["uid"] == kube.node("node-a")["metadata"]["uid"]


def test_expired_verdict_taints_again_with_an_event(kube: KubeApi, store: SqlStore) -> None:
    enroll(store, "node-a")
    attest(store, "node-a", ttl=2)
    kube.create_node("node-a")

    async def scenario() -> None:
        async with node_controller(kube, store):
            await node_state(kube, "node-a", "true", [])
            await node_state(kube, "node-a", "false", ["unverified:NoSchedule"])  # no event makes this

    asyncio.run(scenario())
    reasons = [e["reason"] for e in kube.events()]
    assert reasons == ["Attested", "AttestationStale"]
    assert "expired" in kube.events()[1]["message"]


def test_untrusted_and_unknown_nodes_are_tainted_noexecute_when_asked(kube: KubeApi, store: SqlStore) -> None:
    enroll(store, "node-a")
    attest(store, "node-a", trusted=False)
    kube.create_node("node-a", taints=[])
    kube.create_node("stranger", taints=[])  # a Node the verifier knows nothing about

    async def scenario() -> None:
        async with node_controller(kube, store, noexecute=True):
            want = ["unverified:NoExecute", "unverified:NoSchedule"]
            await node_state(kube, "node-a", "false", want)
            await node_state(kube, "stranger", "false", want)

    asyncio.run(scenario())
    by_node = {e["involvedObject"]["name"]: e for e in kube.events()}
    assert by_node["node-a"]["reason"] == "AttestationFailed"
    assert "policy_pcr_mismatch" in by_node["node-a"]["message"]
    assert by_node["stranger"]["reason"] == "NotAttested"
    assert all(e["type"] == "Warning" for e in by_node.values())
    added = [t for t in kube.node("node-a")["spec"]["taints"] if t["effect"] == "NoExecute"]
    assert added[0]["timeAdded"].endswith("Z")


def test_nothing_is_written_when_nothing_changes(kube: KubeApi, store: SqlStore) -> None:
    enroll(store, "node-a")
    attest(store, "node-a")
    kube.create_node("node-a")
    kube.create_node("node-b")

    async def scenario() -> None:
        async with node_controller(kube, store) as c:
            await node_state(kube, "node-a", "true", [])
            await node_state(kube, "node-b", "false", ["unverified:NoSchedule"])
            await call(kube.clear_requests)
            passes = c.informer.lists
            await asyncio.sleep(1.0)  # about ten resync passes
            assert c.informer.lists == passes

    asyncio.run(scenario())
    assert writes(kube) == []


def test_taints_of_others_survive_our_changes(kube: KubeApi, store: SqlStore) -> None:
    """The taint list is rewritten whole, from the latest version: another writer's taint stays."""
    enroll(store, "node-a")
    kube.create_node("node-a")

    async def scenario() -> None:
        async with node_controller(kube, store):
            await node_state(kube, "node-a", "false", ["unverified:NoSchedule"])
            # Someone else adds a taint, and the node attests: both must survive.
            taints = [
                {"key": "unverified", "effect": "NoSchedule"},
                {"key": "example.com/maintenance", "effect": "NoSchedule"},
            ]
            await call(kube.patch, "/api/v1/nodes/node-a", {"spec": {"taints": taints}})
            await call(attest, store, "node-a")
            await node_state(kube, "node-a", "true", ["example.com/maintenance:NoSchedule"])

    asyncio.run(scenario())
