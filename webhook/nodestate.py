"""Admission's view of the nodes (docs/admission.md, "The node view"): every node's record and
the active policy in memory, so that an admission decision reads no database and needs no
worker thread.

The bound: the view answers only while its last successful sync began less than `max_age`
seconds ago (time.monotonic); a sync reflects every write committed before it began. A thread
syncs it every max_age / 4 seconds, so a write made through another replica (or another
process on the same database) judges admission here within max_age. Writes made through this
process's store (WatchedStore) update the view before they return, so one replica never
admits on state older than its own writes.

Following the database costs one query a sync: the audit log is its change feed. Every store
write that changes a node appends, in the same transaction, an audit record naming the node
(attest.store.api: "every change ... appends its audit record in the same transaction"), and
records are numbered in commit order (the chain's head is locked by each writer). So a sync
reads the records after the last one it saw and re-reads the nodes they name.

Fail closed: when the view is past its bound and its last sync failed, every lookup raises
StoreUnavailable at once (admission refuses, without waiting on a database that just failed);
a node whose re-read after this process's own write failed is refused until a sync reads it.
When the view is past its bound for another reason (not started, a sync running late), the
caller reads through to the store, as with --admission-cache-seconds 0.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from attest.store.api import (
    AuditRecord,
    EkRecord,
    NodeRecord,
    PolicyRecord,
    Store,
    StoreError,
    StoreUnavailable,
    VerdictRecord,
)
from attest.verify.policy import Policy
from webhook.admission import NodeLookup, PolicyLookup

log = logging.getLogger(__name__)

Monotonic = Callable[[], float]

# Audit records read per query while catching up.
_PAGE: Final = 1000
# More changed nodes than this in one sync: one read of the whole table beats one read each.
_RELOAD_AT: Final = 200


def audit_head(store: Store) -> int:
    """The last audit record's seq (0 when there is none), by the Store API alone: records are
    numbered 1, 2, ... without gaps, so whether one follows `seq` bisects to the last one in
    about 2 log2(head) indexed reads."""

    def follows(seq: int) -> bool:
        return bool(store.audit_records(seq, 1))

    if not follows(0):
        return 0
    low, high = 0, 1  # a record follows low, and we look for a seq none follows
    while follows(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if follows(middle) else (low, middle)
    return high


def admission_facts(record: NodeRecord) -> NodeRecord:
    """The part of a node record admission reads (webhook.admission: revocation, and the latest
    verdict's trust, times and reason codes) plus the EK fingerprint nodes_of_ek matches. The
    rest (AK, clock, IMA position, the verdict's PCRs and findings) is several kB a node, some
    400 MB at 100,000 nodes, and admission never reads it."""
    v = record.last_verdict
    verdict = None
    if v is not None:
        codes = dict.fromkeys(sys.intern(str(r["code"])) for r in v.reasons if r.get("code"))
        reasons: list[dict[str, Any]] = [{"code": c} for c in codes]
        verdict = VerdictRecord(v.node, v.trusted, v.appraised_at, v.expires_at, reasons, {}, v.policy)
    return NodeRecord(
        name=record.name,
        ek_fingerprint=sys.intern(record.ek_fingerprint),
        ak_public=b"",
        ak_name=b"",
        enrolled_at=record.enrolled_at,
        revoked_at=record.revoked_at,
        last_verdict=verdict,
        revoke_reason=record.revoke_reason,
    )


class NodeView:
    """The nodes and the active policy as of the last sync; see the module's docstring."""

    def __init__(
        self,
        store: Store,
        read_policy: PolicyLookup,
        max_age: float,
        monotonic: Monotonic = time.monotonic,
    ) -> None:
        if not max_age > 0:
            raise ValueError("a node view needs a positive max_age (0 means: read through, no view)")
        self.max_age = max_age
        self._store = store
        self._read_policy = read_policy
        self._monotonic = monotonic
        self._sync_lock = threading.Lock()  # one sync at a time
        self._lock = threading.Lock()  # the entries below, written by syncs and by own writes
        self._nodes: dict[str, NodeRecord] = {}
        # When the read behind each entry began: a read that began earlier never replaces it.
        self._read_at: dict[str, float] = {}
        self._unknown: set[str] = set()  # re-read after an own write failed: refused until read
        self._policy: Policy | None = None
        self._policy_read_at = -math.inf
        self._position: int | None = None  # the last audit record applied; None: never loaded
        self._synced_at = -math.inf  # when the last successful sync began
        self._failure: str | None = None  # why the last sync failed, None if it did not
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- reading --------------------------------------------------------------------------

    def lookups(self) -> tuple[NodeLookup, PolicyLookup] | None:
        """The lookups admission decides with while the view is within its bound; lookups that
        raise StoreUnavailable when it is past its bound because the store failed; None when
        it is past its bound otherwise (the caller reads through)."""
        age = self._monotonic() - self._synced_at
        if age < self.max_age:
            return self._node, self._active_policy
        failure = self._failure
        if failure is None:
            return None
        message = (
            f"admission's node view is {'not loaded' if math.isinf(age) else f'{age:.1f}s old'} "
            f"(bound {self.max_age:g}s) and the database cannot be read: {failure}"
        )

        def refuse(*_: Any) -> Any:
            raise StoreUnavailable(message)

        return refuse, refuse

    def _node(self, name: str) -> NodeRecord | None:
        if name in self._unknown:
            raise StoreUnavailable(f"node {name} changed here and could not be read back")
        return self._nodes.get(name)

    def _active_policy(self) -> Policy | None:
        return self._policy

    # --- syncing --------------------------------------------------------------------------

    def sync(self) -> None:
        """Bring the view up to date: the whole node table the first time, afterwards the nodes
        the audit log names since the last sync. StoreError (and the view keeps its age) when
        the store fails."""
        with self._sync_lock:
            started = self._monotonic()
            try:
                if self._position is None:
                    self._load(started)
                else:
                    self._follow(started)
            except Exception as e:
                self._failure = e.message if isinstance(e, StoreError) else f"{type(e).__name__}: {e}"
                raise
            self._failure = None
            self._synced_at = started

    def _load(self, started: float) -> None:
        # The position first: whatever commits after it is in the feed the next sync reads, so
        # reading the table in pages (not one snapshot) misses nothing.
        position = audit_head(self._store)
        fresh: dict[str, NodeRecord] = {}
        after: str | None = None
        while True:
            page = self._store.list_nodes(after, _PAGE)
            fresh.update((n.name, admission_facts(n)) for n in page)
            if len(page) < _PAGE:
                break
            after = page[-1].name
        policy = self._read_policy()
        with self._lock:
            for name in set(self._nodes) | set(fresh) | self._unknown:
                self._put(name, fresh.get(name), started)
            self._set_policy(policy, started)
        self._position = position

    def _follow(self, started: float) -> None:
        assert self._position is not None
        position = self._position
        changed: list[AuditRecord] = []
        while True:
            page = self._store.audit_records(position, _PAGE)
            changed += page
            if page:
                position = page[-1].seq
            if len(page) < _PAGE:
                break
        with self._lock:
            names = {r.subject for r in changed if r.kind != "policy"} | self._unknown
        if len(names) > _RELOAD_AT:
            self._load(started)
            return
        for name in sorted(names):
            self._reread(name, started)
        if any(r.kind == "policy" for r in changed):
            policy = self._read_policy()
            with self._lock:
                self._set_policy(policy, started)
        self._position = position

    def _reread(self, name: str, started: float) -> None:
        record = self._store.get_node(name)
        with self._lock:
            self._put(name, record, started)

    def _put(self, name: str, record: NodeRecord | None, read_at: float) -> None:
        if read_at < self._read_at.get(name, -math.inf):
            return
        self._read_at[name] = read_at
        self._unknown.discard(name)
        if record is None:
            self._nodes.pop(name, None)
        else:
            self._nodes[name] = admission_facts(record)

    def _set_policy(self, policy: Policy | None, read_at: float) -> None:
        if read_at >= self._policy_read_at:
            self._policy, self._policy_read_at = policy, read_at

    # --- this process's writes -----------------------------------------------------------

    def node_written(self, name: str) -> None:
        """This process changed node `name` (the write committed): read it back now. If that
        fails, the node is refused until a sync reads it."""
        started = self._monotonic()
        try:
            self._reread(name, started)
        except StoreError as e:
            log.warning("node %s changed but could not be read back (refused until it is): %s", name, e)
            with self._lock:
                if started >= self._read_at.get(name, -math.inf):
                    self._read_at[name] = started
                    self._unknown.add(name)

    def nodes_of_ek(self, fingerprint: str) -> list[str]:
        return [n.name for n in list(self._nodes.values()) if n.ek_fingerprint == fingerprint]

    def policy_written(self) -> None:
        """This process stored a policy: read the active one again now (a failure leaves the
        old one, which the next sync replaces)."""
        started = self._monotonic()
        try:
            policy = self._read_policy()
        except StoreError as e:
            log.warning("a policy was stored but could not be read back: %s", e)
            return
        with self._lock:
            self._set_policy(policy, started)

    # --- the syncing thread --------------------------------------------------------------

    def start(self) -> None:
        """Load the view (a failure is logged: admission refuses until a sync succeeds) and
        keep it synced from a thread until stop()."""
        self._sync_logged()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="admission-node-view", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.max_age / 4):
            self._sync_logged()

    def _sync_logged(self) -> None:
        failed = self._failure is not None
        try:
            self.sync()
        except StoreError:
            if not failed:
                log.warning(
                    "admission's node view cannot sync (refusing after %gs): %s", self.max_age, self._failure
                )
        except Exception:
            # A stored policy that no longer loads, say: the view ages and admission refuses.
            if not failed:
                log.exception("admission's node view cannot sync (refusing after %gs)", self.max_age)
        else:
            if failed:
                log.warning("admission's node view syncs again")


class WatchedStore:
    """The store with every write that changes a node or a policy also applied to a NodeView
    before it returns. Everything else is the store's own (attribute access passes through)."""

    def __init__(self, store: Store, view: NodeView) -> None:
        self._store = store
        self._view = view

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def complete_enrollment(self, enrollment_id: str, secret: bytes, now: dt.datetime) -> NodeRecord:
        node = self._store.complete_enrollment(enrollment_id, secret, now)
        self._view.node_written(node.name)
        return node

    def revoke_node(self, name: str, reason: str) -> NodeRecord:
        node = self._store.revoke_node(name, reason)
        self._view.node_written(name)
        return node

    def revoke_ek(self, ek_id: int) -> EkRecord:
        ek = self._store.revoke_ek(ek_id)
        for name in {ek.node, *self._view.nodes_of_ek(ek.fingerprint)}:
            self._view.node_written(name)
        return ek

    def record_verdict(
        self,
        verdict: VerdictRecord,
        clock: dict[str, Any] | None,
        ima_state: dict[str, Any] | None,
        nonce: bytes | None = None,
    ) -> None:
        self._store.record_verdict(verdict, clock, ima_state, nonce)
        self._view.node_written(verdict.node)

    def put_policy(self, name: str, text: str) -> PolicyRecord:
        record = self._store.put_policy(name, text)
        self._view.policy_written()
        return record
