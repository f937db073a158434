"""Admission's cheap path to the active policy (webhook.service.Verifier.active_policy with a
max age): the store is read at most once per ADMISSION_POLICY_MAX_AGE, a newly applied policy
judges images within it, and the evidence path always reads the latest (refreshing admission's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from attest.store.api import PolicyRecord, StoreUnavailable
from attest.wire import ADMISSION_PODS
from tests.webhook_support import NOW, FakeStore
from webhook.app import create_app
from webhook.config import Settings
from webhook.metrics import Metrics
from webhook.service import ADMISSION_POLICY_MAX_AGE, PolicyCache, Verifier

FIXTURES = Path(__file__).parent / "data" / "k8s" / "admission"
APP = "registry.example.com/app@sha256:" + "0" * 64


def policy(*images: str) -> str:
    return f"version: 1\nname: default\ncontainers:\n  images: {json.dumps(list(images))}\n"


class CountingStore(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.policy_reads = 0
        self.policy_down = False

    def get_policy(self, name: str, version: int | None = None) -> PolicyRecord | None:
        self.policy_reads += 1
        if self.policy_down:
            raise StoreUnavailable("sqlite database unavailable: disk I/O error")
        return super().get_policy(name, version)


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(store: CountingStore) -> tuple[Verifier, Monotonic]:
    clock = Monotonic()
    verifier = Verifier(Settings(), store, Metrics(dict))
    verifier._policies = PolicyCache(clock)
    return verifier, clock


def version(verifier: Verifier, max_age: float = ADMISSION_POLICY_MAX_AGE) -> int | None:
    active = verifier.active_policy(max_age)
    return active.record.version if active else None


def test_admission_reads_the_store_once_per_max_age() -> None:
    store = CountingStore()
    store.put_policy("default", policy(APP))
    verifier, clock = make(store)
    assert [version(verifier) for _ in range(100)] == [1] * 100
    assert store.policy_reads == 1
    store.put_policy("default", policy("registry.example.com/*"))
    clock.now += ADMISSION_POLICY_MAX_AGE - 0.001
    assert version(verifier) == 1  # still within the bound the docs promise
    clock.now += 0.001
    assert version(verifier) == 2
    assert store.policy_reads == 2


def test_no_policy_is_remembered_too_and_a_new_one_is_seen_within_max_age() -> None:
    store = CountingStore()
    verifier, clock = make(store)
    assert version(verifier) is None
    store.put_policy("default", policy(APP))
    assert version(verifier) is None
    assert store.policy_reads == 1
    clock.now += ADMISSION_POLICY_MAX_AGE
    assert version(verifier) == 1


def test_the_evidence_path_always_reads_and_refreshes_admission() -> None:
    store = CountingStore()
    store.put_policy("default", policy(APP))
    verifier, _ = make(store)
    assert version(verifier) == 1
    store.put_policy("default", policy("registry.example.com/*"))
    assert version(verifier, 0) == 2  # what challenge() and submit_evidence() call
    assert store.policy_reads == 2
    assert version(verifier) == 2  # admission sees it at once, without a read
    assert store.policy_reads == 2


def test_a_failed_read_is_not_remembered() -> None:
    store = CountingStore()
    store.put_policy("default", policy(APP))
    verifier, clock = make(store)
    store.policy_down = True
    with pytest.raises(StoreUnavailable):
        verifier.active_policy(ADMISSION_POLICY_MAX_AGE)
    store.policy_down = False
    assert version(verifier) == 1
    store.policy_down = True
    assert version(verifier) == 1  # within max age: not read
    clock.now += ADMISSION_POLICY_MAX_AGE
    with pytest.raises(StoreUnavailable):
        verifier.active_policy(ADMISSION_POLICY_MAX_AGE)


def test_an_older_read_finishing_late_does_not_replace_a_newer_one() -> None:
    store = CountingStore()
    verifier, _ = make(store)
    cache = PolicyCache(Monotonic())
    old = verifier.active_policy()
    store.put_policy("default", policy(APP))
    new = verifier.active_policy()
    cache.remember(2.0, new)
    cache.remember(1.0, old)
    assert cache.recent(float("inf")) == (new,)


def test_admission_requests_share_one_policy_read() -> None:
    store = CountingStore()
    store.put_policy("default", policy(APP))
    app = create_app(Settings(), store, clock=lambda: NOW)
    review: dict[str, Any] = json.loads((FIXTURES / "08-validate-pods-CREATE-pinned.json").read_text())
    with TestClient(app) as client:
        for _ in range(5):
            r = client.post(f"{ADMISSION_PODS}?timeout=5s", json=review)
            assert r.status_code == 200, r.text
            assert r.json()["response"]["uid"] == review["request"]["uid"]
    assert store.policy_reads == 1
