"""The node state controller (DESIGN 5.2 and 5.5): every Node carries its attestation state.

A node whose latest verdict is trusted and fresh gets `node-restriction.kubernetes.io/attested=true`
and loses the `unverified` taint; any other Node (untrusted, stale, revoked, enrolled without a
verdict, or not enrolled at all) gets the label `false` and the taint `unverified:NoSchedule`,
plus `unverified:NoExecute` with --node-taint-noexecute. Kubelets cannot set labels under
`node-restriction.kubernetes.io/` nor, with the admission policy, remove the taint: only this
controller moves a node between the two states.

The desired state is recomputed from the store for every Node on every change of a Node and
every few seconds (a verdict expires without any event), and a Node is patched only where it
differs. Writes are idempotent: the label is a JSON merge patch of one key; the taints, a list
that a merge patch replaces whole, are written with the Node's resourceVersion as a
precondition, so a concurrent change by anyone else (the node lifecycle controller adding its
own taints) is a 409, re-read and merged again, never overwritten. Two replicas doing this at
once would converge on the same state; leader election (webhook.k8s.leader) keeps it to one.

When the label changes, an Event on the Node says why: Attested (Normal); AttestationFailed,
AttestationStale or NotAttested (Warning), with the reason codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import secrets
from collections.abc import Callable
from typing import Any, Final

import httpx2
from lightkube import AsyncClient
from lightkube.models.core_v1 import EventSource, ObjectReference, Taint
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Node
from lightkube.types import PatchType

from attest.store.api import NodeRecord, Store, StoreError
from webhook.admin import node_state
from webhook.k8s.informer import DEFAULT_BACKOFF, Backoff, Informer, status_code

log = logging.getLogger(__name__)

ATTESTED_LABEL: Final = "node-restriction.kubernetes.io/attested"
TAINT_KEY: Final = "unverified"
# Events about cluster-scoped objects live in "default" (the API server refuses them elsewhere).
EVENT_NAMESPACE: Final = "default"
COMPONENT: Final = "attest-verifier"
DEFAULT_RESYNC: Final = 5.0  # seconds between passes without any Node change: verdicts expire silently
MIN_INTERVAL: Final = 1.0  # at most one pass per second, however often Nodes change
MAX_CONFLICTS: Final = 5


@dataclasses.dataclass(frozen=True)
class Desired:
    attested: bool
    reason: str  # the Event's reason when the label changes to this
    message: str

    @property
    def label(self) -> str:
        return "true" if self.attested else "false"


def _when(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def desired_state(name: str, record: NodeRecord | None, now: dt.datetime) -> Desired:
    if record is None:
        return Desired(False, "NotAttested", f"node {name} is not enrolled with the verifier")
    state = node_state(record, now)
    verdict = record.last_verdict
    if state == "trusted" and verdict is not None and verdict.expires_at is not None:
        policy = f" against policy {verdict.policy}" if verdict.policy else ""
        return Desired(
            True,
            "Attested",
            f"node {name} attested trusted at {_when(verdict.appraised_at)}{policy}, "
            f"fresh until {_when(verdict.expires_at)}",
        )
    if state == "revoked":
        return Desired(False, "AttestationFailed", f"node {name} was revoked ({record.revoke_reason})")
    if state == "stale" and verdict is not None:
        expired = _when(verdict.expires_at) if verdict.expires_at else "at once"
        return Desired(
            False,
            "AttestationStale",
            f"node {name}'s last trusted verdict ({_when(verdict.appraised_at)}) expired {expired}: "
            "no fresh attestation since",
        )
    if state == "untrusted" and verdict is not None:
        codes = " ".join(str(r.get("code")) for r in verdict.reasons) or "untrusted"
        return Desired(
            False,
            "AttestationFailed",
            f"node {name} attested untrusted at {_when(verdict.appraised_at)}: {codes}",
        )
    return Desired(False, "NotAttested", f"node {name} is enrolled but has no verdict yet")


def desired_taints(current: list[Taint], attested: bool, noexecute: bool, now: dt.datetime) -> list[Taint]:
    """Everyone else's taints untouched, and ours exactly as the state wants them."""
    others = [t for t in current if t.key != TAINT_KEY]
    if attested:
        return others
    ours = {t.effect: t for t in current if t.key == TAINT_KEY}
    effects = ["NoSchedule", "NoExecute"] if noexecute else ["NoSchedule"]
    # NoExecute taints carry the time they were added: tolerationSeconds count from it.
    added = now.replace(microsecond=0)
    return others + [
        ours.get(e) or Taint(key=TAINT_KEY, effect=e, timeAdded=added if e == "NoExecute" else None)
        for e in effects
    ]


def _taint_set(taints: list[Taint]) -> set[tuple[str, str, str]]:
    return {(t.key, t.effect, t.value or "") for t in taints}


class NodeController:
    """Keeps every Node's label and taint equal to its attestation state. Run `run()` as a task."""

    def __init__(
        self,
        client: AsyncClient,
        store: Store,
        *,
        clock: Callable[[], dt.datetime],
        noexecute: bool = False,
        instance: str = COMPONENT,
        resync: float = DEFAULT_RESYNC,
        min_interval: float = MIN_INTERVAL,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self._client = client
        self._store = store
        self._clock = clock
        self._noexecute = noexecute
        self._instance = instance
        self._resync = resync
        self._min_interval = min_interval
        self.informer = Informer(client, Node, backoff=backoff)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.informer.run(), name="node-informer")
            tasks.create_task(self._loop(), name="node-controller")

    async def _loop(self) -> None:
        await self.informer.synced.wait()
        while True:
            self.informer.changed.clear()
            await self.reconcile()
            await asyncio.sleep(self._min_interval)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._resync):
                    await self.informer.changed.wait()

    async def reconcile(self) -> None:
        """One pass over every Node."""
        try:
            records = {r.name: r for r in await asyncio.to_thread(self._store.list_nodes)}
        except StoreError as e:
            # Without the verdicts nothing is known: change nothing rather than guess either way.
            # Admission fails closed meanwhile, and nodes go stale once the store is back.
            log.warning("node reconciliation paused: the store is unavailable: %s", e.message)
            return
        now = self._clock()
        for node in list(self.informer.objects.values()):
            name = node.metadata.name if node.metadata else None
            if not name:
                continue
            try:
                await self._reconcile_node(node, desired_state(name, records.get(name), now))
            except httpx2.HTTPStatusError as e:
                log.warning("node %s: HTTP %d updating it: %s", name, status_code(e), e)
            except httpx2.TransportError as e:
                log.warning("node reconciliation paused: the API server is unreachable: %s", e)
                return

    async def _reconcile_node(self, node: Node, desired: Desired) -> None:
        name = (node.metadata.name if node.metadata else None) or ""
        for _ in range(MAX_CONFLICTS):
            assert node.metadata is not None
            labels = node.metadata.labels or {}
            before = labels.get(ATTESTED_LABEL)
            taints = (node.spec.taints if node.spec else None) or []
            wanted = desired_taints(taints, desired.attested, self._noexecute, self._clock())
            taints_differ = _taint_set(taints) != _taint_set(wanted)
            if before == desired.label and not taints_differ:
                return
            metadata: dict[str, Any] = {"labels": {ATTESTED_LABEL: desired.label}}
            patch: dict[str, Any] = {"metadata": metadata}
            if taints_differ:
                # A merge patch replaces the whole list: only against the version it was read from.
                metadata["resourceVersion"] = node.metadata.resourceVersion
                patch["spec"] = {"taints": [t.to_dict() for t in wanted]}
            try:
                await self._client.patch(Node, name, patch, patch_type=PatchType.MERGE)
            except httpx2.HTTPStatusError as e:
                if status_code(e) == 404:
                    return  # deleted meanwhile: nothing to label
                if status_code(e) != 409:
                    raise
                node = await self._client.get(Node, name)
                continue
            log.info("node %s: %s=%s, taint %s", name, ATTESTED_LABEL, desired.label, _taint_words(wanted))
            if before != desired.label:
                await self._event(node, desired)
            return
        log.warning("node %s: still conflicting after %d attempts; next pass retries", name, MAX_CONFLICTS)

    async def _event(self, node: Node, desired: Desired) -> None:
        """Best effort: a lost Event must not stop the label and taint from being right."""
        assert node.metadata is not None
        name = node.metadata.name or ""
        now = self._clock().replace(microsecond=0)
        event = Event(
            # As client-go names them: the object's name and a unique suffix.
            metadata=ObjectMeta(name=f"{name}.{secrets.token_hex(8)}", namespace=EVENT_NAMESPACE),
            involvedObject=ObjectReference(apiVersion="v1", kind="Node", name=name, uid=node.metadata.uid),
            reason=desired.reason,
            message=desired.message,
            type="Normal" if desired.attested else "Warning",
            source=EventSource(component=COMPONENT),
            reportingComponent=COMPONENT,
            reportingInstance=self._instance,
            firstTimestamp=now,
            lastTimestamp=now,
            count=1,
        )
        try:
            await self._client.create(event)
        except (httpx2.HTTPStatusError, httpx2.TransportError) as e:
            log.warning("node %s: could not record the %s event: %s", name, desired.reason, e)


def _taint_words(taints: list[Taint]) -> str:
    ours = sorted(t.effect for t in taints if t.key == TAINT_KEY)
    return f"{TAINT_KEY}:{','.join(ours)}" if ours else "removed"
