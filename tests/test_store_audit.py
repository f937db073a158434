"""The audit hash chain: the record hash's exact definition, and verify_chain catching every
edit, removal and reordering, in memory and in the database rows themselves."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from attest.store.api import AuditRecord
from attest.store.audit import make_record, record_hash, verify_chain
from attest.store.sql import SqlStore

AT = dt.datetime(2030, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


def chain(n: int = 5) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    for seq in range(1, n + 1):
        prev = records[-1].hash if records else ""
        records.append(
            make_record(seq, AT + dt.timedelta(seconds=seq), "policy", f"p{seq}", {"version": seq}, prev)
        )
    return records


def test_record_hash_is_sha256_of_the_documented_canonical_json() -> None:
    canonical = (
        b'{"at":"2030-05-01T12:00:00.123456Z","data":{"a":1,"b":[true,null],"s":"\\u00e9"},'
        b'"kind":"policy","prev":"","seq":1,"subject":"base"}'
    )
    data = {"s": "\u00e9", "b": [True, None], "a": 1}
    assert record_hash(1, AT, "policy", "base", data, "") == hashlib.sha256(canonical).hexdigest()
    # The same instant in another zone is the same record.
    paris = AT.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert record_hash(1, paris, "policy", "base", data, "") == record_hash(1, AT, "policy", "base", data, "")
    with pytest.raises(ValueError, match="naive"):
        record_hash(1, AT.replace(tzinfo=None), "policy", "base", data, "")


def test_intact_chains() -> None:
    assert verify_chain([]) == []
    assert verify_chain(chain()) == []
    assert verify_chain(iter(chain())) == []  # streamed once


def test_edited_record() -> None:
    records = chain()
    records[2] = dataclasses.replace(records[2], data={"version": 99})
    assert verify_chain(records) == ["record 3: hash does not match its content: edited"]


def test_edited_record_with_its_hash_recomputed() -> None:
    records = chain()
    r = records[2]
    records[2] = make_record(r.seq, r.at, r.kind, r.subject, {"version": 99}, r.prev)
    assert verify_chain(records) == ["record 4: prev does not match record 3's hash"]


def test_unhashable_record() -> None:
    records = chain()
    records[1] = dataclasses.replace(records[1], at=AT.replace(tzinfo=None))
    (problem,) = verify_chain(records)
    assert problem.startswith("record 2: cannot be hashed")


def test_removed_records() -> None:
    records = chain()
    assert verify_chain(records[:2] + records[3:]) == [
        "record 4: record(s) 3 missing: removed",
        "record 4: prev does not match record 2's hash",
    ]
    assert verify_chain(records[:1] + records[4:]) == [
        "record 5: record(s) 2..4 missing: removed",
        "record 5: prev does not match record 1's hash",
    ]
    assert verify_chain(records[1:]) == [
        "record 2: the trail starts at seq 2, not 1: removed",
        "record 2: first record must have an empty prev",
    ]


def test_reordered_records() -> None:
    records = chain()
    swapped = [records[0], records[2], records[1], records[3], records[4]]
    assert verify_chain(swapped) == [
        "record 3: record(s) 2 missing: removed",
        "record 3: prev does not match record 1's hash",
        "record 2: comes after record 3: reordered",
        "record 2: prev does not match record 3's hash",
        "record 4: record(s) 3 missing: removed",
        "record 4: prev does not match record 2's hash",
    ]


# --- tampering with the stored rows -------------------------------------------------------


@pytest.fixture
def filled(store: SqlStore, store_url: str) -> Iterator[tuple[SqlStore, sa.Engine]]:
    """A store with six audit records, and a raw engine on the same database to tamper with."""
    store.add_ek("node-1", "a" * 64, "PEM", None, "operator")
    for i in range(1, 5):
        store.put_policy("base", f"rules: {i}\n")
    store.append_audit("rejected-evidence", "node-1", {"reasons": []})
    assert verify_chain(store.audit_records()) == []
    engine = sa.create_engine(store_url)
    yield store, engine
    engine.dispose()


def test_stored_edit_is_detected(filled: tuple[SqlStore, sa.Engine]) -> None:
    store, engine = filled
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE audit SET data = :data WHERE seq = 3"), {"data": '{"digest":"00","version":7}'}
        )
    assert store.audit_records()[2].data["version"] == 7
    assert verify_chain(store.audit_records()) == ["record 3: hash does not match its content: edited"]


def test_stored_deletion_is_detected(filled: tuple[SqlStore, sa.Engine]) -> None:
    store, engine = filled
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit WHERE seq = 4"))
    assert verify_chain(store.audit_records()) == [
        "record 5: record(s) 4 missing: removed",
        "record 5: prev does not match record 3's hash",
    ]


def test_stored_swap_is_detected(filled: tuple[SqlStore, sa.Engine]) -> None:
    store, engine = filled
    with engine.begin() as conn:
        for old, new in ((2, -1), (3, 2), (-1, 3)):
            conn.execute(sa.text("UPDATE audit SET seq = :new WHERE seq = :old"), {"old": old, "new": new})
    assert verify_chain(store.audit_records()) == [
        "record 2: hash does not match its content: edited",
        "record 2: prev does not match record 1's hash",
        "record 3: hash does not match its content: edited",
        "record 3: prev does not match record 2's hash",
        "record 4: prev does not match record 3's hash",
    ]
