"""Admission's node view (webhook.nodestate) on a real SQLite store: its bound, this process's
own writes, another process's writes, and a database that fails. Time is a monotonic clock
the tests move, so the bound is checked without sleeping."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from attest.errors import UsageError
from attest.reasons import Reason
from attest.store.api import Store, StoreUnavailable, VerdictRecord
from attest.store.sql import SqlStore
from attest.verify.policy import Policy, load_policy
from attest.wire import ADMISSION_PODS, AdmissionReview
from bench.admission import POLICY, seed_node
from tests.webhook_support import FakeStore
from webhook import nodestate
from webhook.admission import Context, Options, decide
from webhook.app import create_app
from webhook.config import Settings, load_settings
from webhook.nodestate import NodeView, WatchedStore, audit_head

FIXTURES = Path(__file__).parent / "data" / "k8s" / "admission"
PINNED: dict[str, Any] = json.loads((FIXTURES / "08-validate-pods-CREATE-pinned.json").read_text())
NOW = dt.datetime.now(dt.UTC)
BOUND = 1.0
ALLOWED_IMAGE = "registry.example.com/app@sha256:" + "0" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Counting:
    """A store that counts the calls made to it (and can fail them all)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls = 0
        self.by_name: Counter[str] = Counter()
        self.down = False

    def __getattr__(self, name: str) -> Any:
        self.calls += 1
        self.by_name[name] += 1
        if self.down:
            raise StoreUnavailable("database is down (test)")
        return getattr(self.store, name)


def policy_of(store: Store) -> Policy | None:
    record = store.get_policy("default")
    return load_policy(record.text) if record else None


@pytest.fixture
def url(store_url: str) -> str:
    """A database (SQLite and PostgreSQL, tests/pg.py) with three nodes and the image policy."""
    store = SqlStore.open(store_url)
    try:
        store.put_policy("default", POLICY)
        for name, state in (("node2", "trusted"), ("node3", "trusted"), ("bad", "untrusted")):
            seed_node(store, name, state, NOW)
    finally:
        store.close()
    return store_url


@pytest.fixture
def store(url: str) -> Iterator[SqlStore]:
    s = SqlStore.open(url)
    yield s
    s.close()


def view_of(store: Store, clock: Clock) -> NodeView:
    view = NodeView(store, lambda: policy_of(store), BOUND, clock)
    view.sync()
    return view


def judge(view: NodeView, node: str = "node2", image: str = ALLOWED_IMAGE) -> str | None:
    """The first reason code admission gives a pinned Pod CREATE on `node` judged from the view
    (None: allowed); AssertionError when the view says to read through instead."""
    doc = json.loads(json.dumps(PINNED))
    doc["request"]["object"]["spec"]["nodeName"] = node
    doc["request"]["object"]["spec"]["containers"][0]["image"] = image
    lookups = view.lookups()
    assert lookups is not None, "the view sent the caller to the store"
    nodes, policy = lookups
    context = Context(nodes, policy, dt.datetime.now(dt.UTC), Options(frozenset(), None))
    return decide(ADMISSION_PODS, AdmissionReview.model_validate(doc).request, context).code


def test_the_view_answers_from_memory_within_its_bound(store: SqlStore, clock: Clock) -> None:
    counting = Counting(store)
    view = view_of(counting, clock)
    loaded = counting.calls
    clock.now += BOUND - 0.01
    assert judge(view) is None
    assert judge(view, "bad") == Reason.ADMISSION_NODE_UNTRUSTED
    assert judge(view, "nowhere") == Reason.ADMISSION_NODE_UNATTESTED
    assert judge(view, image="registry.example.com/app:latest") == Reason.ADMISSION_IMAGE_NOT_PINNED
    assert counting.calls == loaded


def test_past_its_bound_the_view_sends_the_caller_to_the_store(store: SqlStore, clock: Clock) -> None:
    view = view_of(store, clock)
    clock.now += BOUND
    assert view.lookups() is None  # read through: nothing older than the bound is served
    view.sync()
    assert judge(view) is None


def test_a_failed_sync_past_the_bound_refuses_at_once(store: SqlStore, clock: Clock) -> None:
    counting = Counting(store)
    view = view_of(counting, clock)
    counting.down = True
    with pytest.raises(StoreUnavailable):
        view.sync()
    assert judge(view) is None  # within the bound the last sync still judges
    clock.now += BOUND
    calls = counting.calls
    assert judge(view) == Reason.ADMISSION_STORE_UNAVAILABLE
    assert judge(view, image="registry.example.com/app:latest") == Reason.ADMISSION_STORE_UNAVAILABLE
    assert counting.calls == calls  # refused without waiting on the database again
    counting.down = False
    view.sync()
    assert judge(view) is None


def test_a_view_never_loaded_from_a_failing_store_refuses(store: SqlStore, clock: Clock) -> None:
    counting = Counting(store)
    counting.down = True
    view = NodeView(counting, lambda: None, BOUND, clock)
    assert view.lookups() is None  # not started yet: read through
    with pytest.raises(StoreUnavailable):
        view.sync()
    assert judge(view) == Reason.ADMISSION_STORE_UNAVAILABLE


def test_own_writes_are_in_the_view_before_they_return(store: SqlStore, clock: Clock) -> None:
    view = view_of(store, clock)
    watched = WatchedStore(store, view)
    watched.revoke_node("node2", "stolen")
    assert judge(view) == Reason.NODE_REVOKED
    untrusted = VerdictRecord(
        "node3", False, NOW, None, [{"code": "policy_pcr_mismatch", "message": "test"}], {}, "default@1"
    )
    watched.record_verdict(untrusted, None, None)
    assert judge(view, "node3") == Reason.ADMISSION_NODE_UNTRUSTED
    assert judge(view, "fresh") == Reason.ADMISSION_NODE_UNATTESTED
    seed_node(watched, "fresh", "trusted", NOW)  # enrolled, then a trusted verdict
    assert judge(view, "fresh") is None
    watched.put_policy("default", POLICY.replace("registry.example.com/*", "other.example.com/*"))
    assert judge(view, "") == Reason.ADMISSION_IMAGE_NOT_ALLOWED  # a pod not placed yet


def test_an_ek_revocation_revokes_its_nodes_in_the_view(store: SqlStore, clock: Clock) -> None:
    node = store.get_node("node2")
    assert node is not None
    ek = store.add_ek("node2", node.ek_fingerprint, "PEM", None, "operator")
    view = view_of(store, clock)
    WatchedStore(store, view).revoke_ek(ek.id)
    assert judge(view) == Reason.NODE_REVOKED
    assert judge(view, "node3") is None


def test_another_process_writes_are_in_the_view_after_one_sync(
    url: str, store: SqlStore, clock: Clock
) -> None:
    view = view_of(store, clock)
    other = SqlStore.open(url)  # another replica on the same database
    try:
        other.revoke_node("node2", "stolen")
        seed_node(other, "new-node", "trusted", NOW)
        other.put_policy("default", POLICY.replace("registry.example.com/*", "other.example.com/*"))
    finally:
        other.close()
    # Within the bound the view may still answer as of its last sync ...
    assert judge(view) is None
    # ... and past it, it is not used until a sync has read the writes.
    clock.now += BOUND
    assert view.lookups() is None
    view.sync()
    assert judge(view) == Reason.NODE_REVOKED
    assert judge(view, "new-node") == Reason.ADMISSION_IMAGE_NOT_ALLOWED


def test_many_changes_reload_the_whole_view(
    url: str, store: SqlStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = view_of(store, clock)
    monkeypatch.setattr(nodestate, "_RELOAD_AT", 2)  # more changed nodes than this: one table read
    counting = Counting(store)
    view._store = counting
    other = SqlStore.open(url)
    try:
        for name in ("n1", "n2"):
            seed_node(other, name, "trusted", NOW)
        other.revoke_node("node3", "test")
    finally:
        other.close()
    view.sync()
    assert (counting.by_name["list_nodes"], counting.by_name["get_node"]) == (1, 0)
    assert judge(view, "n2") is None
    assert judge(view, "node3") == Reason.NODE_REVOKED
    other = SqlStore.open(url)
    try:
        other.revoke_node("n1", "test")
    finally:
        other.close()
    view.sync()
    assert (counting.by_name["list_nodes"], counting.by_name["get_node"]) == (1, 1)
    assert judge(view, "n1") == Reason.NODE_REVOKED


def test_a_node_that_cannot_be_read_back_after_an_own_write_is_refused(store: SqlStore, clock: Clock) -> None:
    counting = Counting(store)
    view = view_of(counting, clock)
    store.revoke_node("node2", "stolen")  # committed, then the database fails
    counting.down = True
    view.node_written("node2")
    assert judge(view) == Reason.ADMISSION_STORE_UNAVAILABLE
    assert judge(view, "node3") is None  # the others are as synced
    counting.down = False
    view.sync()
    assert judge(view) == Reason.NODE_REVOKED


def test_an_older_read_does_not_replace_a_newer_one(store: SqlStore, clock: Clock) -> None:
    view = view_of(store, clock)
    stale = store.get_node("node2")
    store.revoke_node("node2", "stolen")
    clock.now += 0.1
    view.node_written("node2")
    assert judge(view) == Reason.NODE_REVOKED
    view._put("node2", stale, clock.now - 0.05)  # a sync that began before the read back
    assert judge(view) == Reason.NODE_REVOKED


@pytest.mark.parametrize("records", [0, 1, 2, 3, 8, 17, 64])
def test_the_audit_head_is_found_by_bisection(records: int) -> None:
    fake = FakeStore()
    for i in range(records):
        fake.append_audit("test", f"s{i}", {})
    assert audit_head(fake) == records


def test_the_app_answers_admission_from_the_view(store: SqlStore) -> None:
    counting = Counting(store)
    app = create_app(Settings(), counting, clock=lambda: dt.datetime.now(dt.UTC))
    with TestClient(app) as client:
        for _ in range(3):
            r = client.post(f"{ADMISSION_PODS}?timeout=5s", json=PINNED)
            assert r.status_code == 200, r.text
            assert r.json()["response"] == {"uid": PINNED["request"]["uid"], "allowed": True}
        assert counting.by_name["get_node"] == 0  # loaded once (list_nodes), no read per request
        # An admin revocation through this process is refused at once.
        app.state.admin.revoke_node("node3")
        doc = json.loads(json.dumps(PINNED))
        doc["request"]["object"]["spec"]["nodeName"] = "node3"
        answer = client.post(f"{ADMISSION_PODS}?timeout=5s", json=doc).json()["response"]
        assert answer["allowed"] is False
        assert answer["status"]["message"].startswith("node_revoked:")


def test_the_cache_option() -> None:
    assert Settings().admission_cache_seconds == 1.0
    assert load_settings({"admission_cache_seconds": "0"}, {}).admission_cache_seconds == 0
    assert (
        load_settings({}, {"ATTEST_VERIFIER_ADMISSION_CACHE_SECONDS": "0.5"}).admission_cache_seconds == 0.5
    )
    for bad in ("1.5", "-1", "nan", "soon"):
        with pytest.raises(UsageError, match="from 0 to 1"):
            load_settings({"admission_cache_seconds": bad}, {})
    assert create_app(Settings(admission_cache_seconds=0), FakeStore()).state.node_view is None


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.mark.parametrize("state", ["trusted", "revoked", "stale", "untrusted", "unattested"])
def test_the_view_keeps_every_fact_admission_decides_on(state: str) -> None:
    from tests.test_admission import Lookups, fixture, judge, node_record

    full = node_record("node2", "trusted" if state == "unattested" else state)
    assert full is not None
    if state == "unattested":
        full = dataclasses.replace(full, last_verdict=None)
    slim = nodestate.admission_facts(full)
    # The heavy appraisal state is dropped ...
    assert (slim.ak_public, slim.clock, slim.ima_state) == (b"", None, None)
    assert slim.last_verdict is None or slim.last_verdict.detail == {}
    # ... and every decision and message is the same as on the full record.
    doc = fixture("05-validate-pods-binding-CREATE-demo.json")
    on_full = judge(doc, Lookups(nodes={"node2": full}))
    on_slim = judge(doc, Lookups(nodes={"node2": slim}))
    assert on_slim.allowed == on_full.allowed
    assert [(d.code, d.message) for d in on_slim.denials] == [(d.code, d.message) for d in on_full.denials]
