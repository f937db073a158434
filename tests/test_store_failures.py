"""SqlStore under races, outages and schema changes: several "replicas" (SqlStore instances on
one database) racing, a locked or read-only SQLite file, a stopped PostgreSQL server, and the
migrations. Database failures must surface as StoreUnavailable, and the store must recover
without being reopened."""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from attest.reasons import Reason
from attest.store.api import (
    Conflict,
    Enrollment,
    NodeRecord,
    NonceRecord,
    NonceRejected,
    StoreUnavailable,
)
from attest.store.audit import verify_chain
from attest.store.schema import metadata
from attest.store.sql import SqlStore
from tests.pg import PgServer

T = TypeVar("T")
NOW = dt.datetime(2030, 5, 1, 12, 0, tzinfo=dt.UTC)
THREADS = 8


def race(fn: Callable[[int], T], n: int = THREADS) -> list[T | Exception]:
    """Run fn(0..n-1) in n threads released together; each result or the exception it raised."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T | Exception:
        barrier.wait()
        try:
            return fn(i)
        except Exception as e:
            return e

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


@pytest.fixture
def replicas(store: SqlStore, store_url: str) -> Iterator[list[SqlStore]]:
    """Two stores on one database: two verifier replicas."""
    other = SqlStore.open(store_url)
    yield [store, other]
    other.close()


# --- races ---------------------------------------------------------------------------------


def test_a_nonce_is_consumed_once_across_replicas(replicas: list[SqlStore]) -> None:
    for round_ in range(3):
        value = bytes([round_]) * 32
        replicas[0].issue_nonce(NonceRecord("node-1", value, "sha256:0", NOW, NOW + dt.timedelta(minutes=1)))

        def consume(i: int, value: bytes = value) -> NonceRecord:
            return replicas[i % 2].consume_nonce("node-1", value, NOW)

        results = race(consume)
        winners = [r for r in results if isinstance(r, NonceRecord)]
        losers = [r for r in results if isinstance(r, NonceRejected)]
        assert len(winners) == 1, results
        assert len(losers) == THREADS - 1, results
        assert {e.code for e in losers} == {Reason.NONCE_REUSED}


def test_an_enrollment_is_completed_once_across_replicas(replicas: list[SqlStore]) -> None:
    secret = b"k" * 32
    replicas[1].create_enrollment(
        Enrollment(
            "e1",
            "node-1",
            "a" * 64,
            b"pub",
            b"name",
            hashlib.sha256(secret).digest(),
            NOW + dt.timedelta(minutes=5),
        )
    )
    results = race(lambda i: replicas[i % 2].complete_enrollment("e1", secret, NOW))
    assert len([r for r in results if isinstance(r, NodeRecord)]) == 1, results
    assert {r.code for r in results if isinstance(r, Conflict)} == {Reason.ENROLLMENT_USED}
    assert [r.kind for r in replicas[0].audit_records()] == ["enroll"]


def test_audit_appends_are_serialized_across_replicas(replicas: list[SqlStore]) -> None:
    def work(i: int) -> None:
        for j in range(5):
            replicas[i % 2].append_audit("note", f"t{i}", {"j": j})
            replicas[i % 2].put_policy("base", f"{i}-{j}")

    assert race(work) == [None] * THREADS
    records = replicas[0].audit_records()
    assert [r.seq for r in records] == list(range(1, 2 * 5 * THREADS + 1))
    assert verify_chain(records) == []
    assert [r.data["version"] for r in records if r.kind == "policy"] == list(range(1, 5 * THREADS + 1))


# --- SQLite outages ------------------------------------------------------------------------


def test_sqlite_locked_then_recovers(sqlite_url: str) -> None:
    store = SqlStore.open(sqlite_url, lock_timeout=0.2)
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        store.put_policy("base", "v1")
        holder.execute("BEGIN EXCLUSIVE")  # another process writing, or hung while writing
        with pytest.raises(StoreUnavailable, match="locked"):
            store.put_policy("base", "v2")
        with pytest.raises(StoreUnavailable):
            store.consume_nonce("node-1", b"n" * 32, NOW)
        record = store.get_policy("base")  # WAL: reads go on
        assert record is not None
        assert record.version == 1
        holder.execute("ROLLBACK")
        assert store.put_policy("base", "v2").version == 2
        assert verify_chain(store.audit_records()) == []
    finally:
        holder.close()
        store.close()


def test_sqlite_read_only(sqlite_url: str) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    writer = SqlStore.open(sqlite_url)
    writer.put_policy("base", "v1")
    writer.close()
    store = SqlStore.open(f"sqlite:///file:{path}?mode=ro&uri=true", migrate=False)
    try:
        # Readable, but not ready: every attestation writes.
        health = store.health()
        assert not health.ok
        assert "readonly" in health.detail
        with pytest.raises(StoreUnavailable, match="readonly"):
            store.put_policy("base", "v2")
        record = store.get_policy("base")
        assert record is not None
        assert record.version == 1
    finally:
        store.close()


def test_unreachable_at_open(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable):
        SqlStore.open(f"sqlite:///{tmp_path}/missing/attest.db")
    with pytest.raises(StoreUnavailable):
        SqlStore.open(f"postgresql+psycopg://postgres@/attest?host={tmp_path}", lock_timeout=1)


# --- PostgreSQL outage ---------------------------------------------------------------------


def test_postgresql_stopped_then_recovers(pg_server: PgServer, pg_url: str) -> None:
    store = SqlStore.open(pg_url, lock_timeout=2)
    try:
        store.put_policy("base", "v1")
        pg_server.stop()
        try:
            calls: list[Callable[[], object]] = [
                lambda: store.put_policy("base", "v2"),
                lambda: store.get_policy("base"),
                lambda: store.consume_nonce("node-1", b"n" * 32, NOW),
                lambda: store.append_audit("note", "x", {}),
                store.audit_records,
                store.list_nodes,
            ]
            for call in calls:
                with pytest.raises(StoreUnavailable):
                    call()
            health = store.health()
            assert not health.ok
            assert health.detail.startswith("postgresql database unavailable")
            with pytest.raises(StoreUnavailable):
                SqlStore.open(pg_url, lock_timeout=2)
        finally:
            pg_server.start()
        assert store.health().ok
        assert store.put_policy("base", "v2").version == 2
        assert verify_chain(store.audit_records()) == []
    finally:
        store.close()


# --- migrations ----------------------------------------------------------------------------


def _revision(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def test_migrations_on_an_empty_database_and_again(store_url: str) -> None:
    with pytest.raises(StoreUnavailable, match="revision None"):
        SqlStore.open(store_url, migrate=False)
    SqlStore.open(store_url).close()
    assert _revision(store_url) == "0001"
    store = SqlStore.open(store_url)  # nothing left to do
    store.put_policy("base", "v1")
    store.close()
    store = SqlStore.open(store_url, migrate=False)
    assert store.get_policy("base") is not None
    store.close()
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            # schema.py, which the code queries, is exactly what the migrations built.
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
            assert conn.execute(sa.text("SELECT id, seq FROM audit_head")).all() == [(1, 1)]
    finally:
        engine.dispose()


def test_replicas_starting_together_migrate_once(store_url: str) -> None:
    results = race(lambda _: SqlStore.open(store_url), n=4)
    stores = [r for r in results if isinstance(r, SqlStore)]
    try:
        assert len(stores) == 4, results
        stores[0].append_audit("note", "x", {})
        assert [r.seq for r in stores[3].audit_records()] == [1]
    finally:
        for s in stores:
            s.close()


def test_database_newer_than_the_code(store_url: str) -> None:
    SqlStore.open(store_url).close()
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00d'"))
    engine.dispose()
    with pytest.raises(StoreUnavailable, match="f00d"):
        SqlStore.open(store_url)
    with pytest.raises(StoreUnavailable, match="f00d"):
        SqlStore.open(store_url, migrate=False)
