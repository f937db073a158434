"""SqlStore, method by method: every test body runs on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import os
import stat
from pathlib import Path

import pytest

from attest.reasons import Reason
from attest.store.api import (
    Conflict,
    Enrollment,
    NonceRecord,
    NonceRejected,
    NotFound,
    StoreError,
    VerdictRecord,
)
from attest.store.audit import verify_chain
from attest.store.sql import PURGE_GRACE, SqlStore

NOW = dt.datetime(2030, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
EK_A = "a" * 64
EK_B = "b" * 64
SECRET = b"s" * 32


def enrollment(
    store: SqlStore,
    node: str = "node-1",
    ek: str = EK_A,
    *,
    ak: bytes = b"ak-1",
    id: str | None = None,
    ttl: dt.timedelta = dt.timedelta(minutes=5),
) -> str:
    ident = id or f"enr-{node}-{ek[:4]}-{ak.hex()}"
    store.create_enrollment(
        Enrollment(ident, node, ek, b"pub:" + ak, b"name:" + ak, hashlib.sha256(SECRET).digest(), NOW + ttl)
    )
    return ident


def enroll(store: SqlStore, node: str = "node-1", ek: str = EK_A, *, ak: bytes = b"ak-1") -> None:
    store.complete_enrollment(enrollment(store, node, ek, ak=ak), SECRET, NOW)


def verdict(node: str = "node-1", *, trusted: bool = True, at: dt.datetime = NOW) -> VerdictRecord:
    return VerdictRecord(
        node=node,
        trusted=trusted,
        appraised_at=at,
        expires_at=at + dt.timedelta(minutes=10) if trusted else None,
        reasons=[] if trusted else [{"code": "pcr_digest_mismatch", "message": "no", "pcr": 7}],
        detail={"pcrs": {"sha256": {"0": "00" * 32}}, "reboot": False},
        policy="base@1",
    )


def nonce(
    node: str = "node-1", value: bytes = b"n" * 32, *, ttl: dt.timedelta = dt.timedelta(seconds=60)
) -> NonceRecord:
    return NonceRecord(node, value, "sha256:0-7,10", NOW, NOW + ttl, binding=b"csr-key-hash")


def codes(store: SqlStore) -> list[tuple[str, str, str | None]]:
    return [(r.kind, r.subject, r.data.get("outcome") or r.data.get("target")) for r in store.audit_records()]


# --- opening -------------------------------------------------------------------------------


def test_open_refuses_urls_it_cannot_serve() -> None:
    for url in ("sqlite://", "sqlite:///:memory:", "mysql://u@h/db", "not a url"):
        with pytest.raises(
            ValueError, match=r"SQLite store needs a file|unsupported database|not a database URL"
        ):
            SqlStore.open(url)


def test_sqlite_file_and_its_wal_are_private(tmp_path: Path) -> None:
    path = tmp_path / "attest.db"
    old = os.umask(0o022)
    try:
        store = SqlStore.open(f"sqlite:///{path}")
    finally:
        os.umask(old)
    try:
        store.put_policy("base", "x")
        for name in ("attest.db", "attest.db-wal", "attest.db-shm"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    finally:
        store.close()


def test_sqlite_pragmas(sqlite_url: str) -> None:
    store = SqlStore.open(sqlite_url)
    try:
        with store._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    finally:
        store.close()


def test_health(store: SqlStore) -> None:
    health = store.health()
    assert health.ok
    assert health.counts == {"nodes": 0, "eks": 0, "policies": 0, "audit": 0}
    store.add_ek("node-1", EK_A, "PEM", None, "operator")
    enroll(store)
    store.put_policy("base", "v1")
    store.put_policy("base", "v2")
    assert store.health().counts == {"nodes": 1, "eks": 1, "policies": 1, "audit": 4}


# --- endorsement keys ----------------------------------------------------------------------


def test_eks_add_find_list(store: SqlStore) -> None:
    added = store.add_ek("node-1", EK_A.upper(), "PEM-A", b"\x30\x82cert", "manufacturer-chain")
    assert added.fingerprint == EK_A
    assert added.id > 0
    assert added.revoked_at is None
    assert added.created_at.tzinfo is dt.UTC
    assert store.find_ek(EK_A) == added
    assert store.find_ek(EK_B) is None
    # The same EK for the same node again: the stored record, nothing new audited.
    assert store.add_ek("node-1", EK_A, "PEM-A", None, "operator") == added
    other = store.add_ek("node-2", EK_B, "PEM-B", None, "operator")
    assert store.list_eks() == [added, other]
    assert [r.kind for r in store.audit_records()] == ["ek", "ek"]


def test_ek_enrolled_for_another_node_conflicts(store: SqlStore) -> None:
    store.add_ek("node-1", EK_A, "PEM", None, "operator")
    with pytest.raises(Conflict) as e:
        store.add_ek("node-2", EK_A, "PEM", None, "operator")
    assert e.value.code is Reason.EK_NODE_CONFLICT


def test_ek_arguments_are_checked(store: SqlStore) -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        store.add_ek("node-1", "abc", "PEM", None, "operator")
    with pytest.raises(ValueError, match="source"):
        store.add_ek("node-1", EK_A, "PEM", None, "someone")


def test_revoke_ek_revokes_the_nodes_it_vouched_for(store: SqlStore) -> None:
    ek = store.add_ek("node-1", EK_A, "PEM", None, "operator")
    enroll(store)
    revoked = store.revoke_ek(ek.id)
    assert revoked.revoked_at is not None
    assert revoked.id == ek.id
    assert store.find_ek(EK_A) is None
    assert store.list_eks() == [revoked]
    node = store.get_node("node-1")
    assert node is not None
    assert node.revoked_at is not None
    assert node.revoke_reason == f"its EK (id {ek.id}) was revoked"
    assert store.revoke_ek(ek.id) == revoked  # again: unchanged, not audited twice
    assert codes(store)[-2:] == [("revoke", "node-1", "ek"), ("revoke", "node-1", "node")]
    with pytest.raises(NotFound):
        store.revoke_ek(9999)
    # A revoked EK may be vouched for again: a new record.
    again = store.add_ek("node-1", EK_A, "PEM", None, "operator")
    assert again.id != ek.id
    assert store.find_ek(EK_A) == again


# --- enrollment ----------------------------------------------------------------------------


def test_enrollment_binds_the_ak(store: SqlStore) -> None:
    ident = enrollment(store)
    node = store.complete_enrollment(ident, SECRET, NOW)
    assert node.name == "node-1"
    assert node.ek_fingerprint == EK_A
    assert (node.ak_public, node.ak_name) == (b"pub:ak-1", b"name:ak-1")
    assert node.enrolled_at == NOW
    assert node.revoked_at is None
    assert node.last_verdict is None
    assert store.get_node("node-1") == node
    (record,) = store.audit_records()
    assert (record.kind, record.subject) == ("enroll", "node-1")
    assert record.data == {
        "outcome": "enrolled",
        "enrollment": ident,
        "ek": EK_A,
        "ak_name": b"name:ak-1".hex(),
    }


def test_enrollment_is_single_use(store: SqlStore) -> None:
    ident = enrollment(store)
    store.complete_enrollment(ident, SECRET, NOW)
    with pytest.raises(Conflict) as e:
        store.complete_enrollment(ident, SECRET, NOW)
    assert e.value.code is Reason.ENROLLMENT_USED
    assert len(store.audit_records()) == 1


def test_enrollment_unknown_and_expired(store: SqlStore) -> None:
    with pytest.raises(NotFound) as unknown:
        store.complete_enrollment("nope", SECRET, NOW)
    assert unknown.value.code is Reason.ENROLLMENT_UNKNOWN
    ident = enrollment(store, ttl=dt.timedelta(seconds=30))
    with pytest.raises(Conflict) as expired:
        store.complete_enrollment(ident, SECRET, NOW + dt.timedelta(seconds=30))
    assert expired.value.code is Reason.ENROLLMENT_EXPIRED
    assert store.get_node("node-1") is None
    assert store.audit_records() == []


def test_wrong_secret_spends_the_enrollment(store: SqlStore) -> None:
    ident = enrollment(store)
    with pytest.raises(Conflict) as e:
        store.complete_enrollment(ident, b"guess" * 7, NOW)
    assert e.value.code is Reason.CREDENTIAL_INVALID
    assert store.get_node("node-1") is None
    # Refused answers are audited and the challenge is gone: the right secret is too late.
    assert codes(store) == [("enroll", "node-1", "credential_invalid")]
    with pytest.raises(Conflict) as again:
        store.complete_enrollment(ident, SECRET, NOW)
    assert again.value.code is Reason.ENROLLMENT_USED


def test_duplicate_enrollment_id_conflicts(store: SqlStore) -> None:
    enrollment(store, id="same")
    with pytest.raises(Conflict):
        enrollment(store, id="same")


def test_new_tpm_never_takes_over_a_node(store: SqlStore) -> None:
    enroll(store, "node-1", EK_A)
    ident = enrollment(store, "node-1", EK_B, ak=b"ak-2")
    with pytest.raises(Conflict) as e:
        store.complete_enrollment(ident, SECRET, NOW)
    assert e.value.code is Reason.EK_NODE_CONFLICT
    node = store.get_node("node-1")
    assert node is not None
    assert node.ek_fingerprint == EK_A
    assert node.ak_name == b"name:ak-1"
    assert codes(store)[-1] == ("enroll", "node-1", "ek_node_conflict")


def test_one_tpm_one_node(store: SqlStore) -> None:
    enroll(store, "node-1", EK_A)
    with pytest.raises(Conflict) as e:
        enroll(store, "node-2", EK_A, ak=b"ak-2")
    assert e.value.code is Reason.EK_NODE_CONFLICT
    assert store.get_node("node-2") is None


def test_ek_revoked_after_the_challenge_was_issued(store: SqlStore) -> None:
    ek = store.add_ek("node-1", EK_A, "PEM", None, "operator")
    ident = enrollment(store)
    store.revoke_ek(ek.id)
    with pytest.raises(Conflict) as e:
        store.complete_enrollment(ident, SECRET, NOW)
    assert e.value.code is Reason.EK_NOT_ENROLLED


def test_reenrollment_with_the_same_ek_replaces_the_ak(store: SqlStore) -> None:
    enroll(store, "node-1", EK_A, ak=b"ak-1")
    store.record_verdict(verdict(), {"clock": 5, "reset_count": 1}, {"offset": 10})
    node = store.complete_enrollment(enrollment(store, "node-1", EK_A, ak=b"ak-2"), SECRET, NOW)
    assert node.ak_name == b"name:ak-2"
    assert node.ak_public == b"pub:ak-2"
    # The new AK starts over: no carried clock or IMA position, no verdict it did not earn.
    assert (node.clock, node.ima_state, node.last_verdict) == (None, None, None)
    last = store.audit_records()[-1]
    assert last.data["outcome"] == "re-enrolled"
    assert last.data["previous_ak_name"] == b"name:ak-1".hex()
    assert last.data["was_revoked"] is False


def test_revoked_node_may_enroll_again(store: SqlStore) -> None:
    enroll(store, "node-1", EK_A)
    store.revoke_node("node-1", "motherboard replaced")
    node = store.complete_enrollment(enrollment(store, "node-1", EK_B, ak=b"ak-2"), SECRET, NOW)
    assert node.ek_fingerprint == EK_B
    assert node.revoked_at is None
    assert node.revoke_reason is None
    assert store.audit_records()[-1].data["was_revoked"] is True


# --- nodes ---------------------------------------------------------------------------------


def test_nodes_list_and_revoke(store: SqlStore) -> None:
    assert store.get_node("node-1") is None
    assert store.list_nodes() == []
    enroll(store, "node-b", EK_B, ak=b"b")
    enroll(store, "node-a", EK_A, ak=b"a")
    assert [n.name for n in store.list_nodes()] == ["node-a", "node-b"]
    revoked = store.revoke_node("node-a", "compromised")
    assert revoked.revoked_at is not None
    assert revoked.revoke_reason == "compromised"
    assert store.get_node("node-a") == revoked
    assert store.revoke_node("node-a", "again") == revoked
    assert codes(store)[-1] == ("revoke", "node-a", "node")
    assert len(store.audit_records()) == 3
    with pytest.raises(NotFound):
        store.revoke_node("node-z", "x")


def test_nodes_paged_by_name(store: SqlStore) -> None:
    """Keyset pages: every node exactly once and in order, even when nodes enroll between pages
    (one before the cursor is not seen, one after it is)."""
    for i in range(7):
        enroll(store, f"node-{i}", f"{i:x}" * 64, ak=bytes([i]))
    pages = [store.list_nodes(limit=3)]
    enroll(store, "node-00", "e" * 64, ak=b"early")  # sorts before the cursor: already passed
    enroll(store, "node-9", "f" * 64, ak=b"late")  # sorts after it: the walk must reach it
    while pages[-1]:
        pages.append(store.list_nodes(after=pages[-1][-1].name, limit=3))
    names = [n.name for page in pages for n in page]
    assert names == [*(f"node-{i}" for i in range(7)), "node-9"]
    assert [len(p) for p in pages] == [3, 3, 2, 0]
    assert store.list_nodes(after="node-9") == []
    assert [n.name for n in store.list_nodes(after="node-5", limit=1)] == ["node-6"]


def test_eks_paged_by_id(store: SqlStore) -> None:
    added = [store.add_ek(f"node-{i}", f"{i:x}" * 64, "pem", None, "operator") for i in range(5)]
    assert store.list_eks(limit=2) == added[:2]
    assert store.list_eks(after_id=added[1].id, limit=2) == added[2:4]
    assert store.list_eks(after_id=added[-1].id) == []


# --- nonces --------------------------------------------------------------------------------


def test_nonce_round_trip(store: SqlStore) -> None:
    issued = nonce()
    store.issue_nonce(issued)
    assert store.consume_nonce("node-1", issued.nonce, NOW + dt.timedelta(seconds=59)) == issued


@pytest.mark.parametrize(
    ("node", "value", "at", "code"),
    [
        ("node-1", b"x" * 32, NOW, Reason.NONCE_UNKNOWN),
        ("node-1", b"n" * 31, NOW, Reason.NONCE_UNKNOWN),
        ("node-2", b"n" * 32, NOW, Reason.NONCE_WRONG_NODE),
        ("node-1", b"n" * 32, NOW + dt.timedelta(seconds=60), Reason.NONCE_EXPIRED),
    ],
    ids=["unknown", "prefix", "wrong-node", "expired"],
)
def test_nonce_refused(store: SqlStore, node: str, value: bytes, at: dt.datetime, code: Reason) -> None:
    store.issue_nonce(nonce())
    with pytest.raises(NonceRejected) as e:
        store.consume_nonce(node, value, at)
    assert e.value.code is code
    if code is not Reason.NONCE_EXPIRED:
        # A refusal changes nothing: the node it was issued to can still use it.
        assert store.consume_nonce("node-1", b"n" * 32, NOW).node == "node-1"


def test_nonce_single_use(store: SqlStore) -> None:
    store.issue_nonce(nonce())
    store.consume_nonce("node-1", b"n" * 32, NOW)
    with pytest.raises(NonceRejected) as e:
        store.consume_nonce("node-1", b"n" * 32, NOW)
    assert e.value.code is Reason.NONCE_REUSED


def test_nonce_issued_twice_conflicts(store: SqlStore) -> None:
    store.issue_nonce(nonce())
    with pytest.raises(Conflict):
        store.issue_nonce(nonce("node-2"))


def test_expired_nonces_and_enrollments_are_purged(store: SqlStore) -> None:
    store.issue_nonce(nonce(value=b"old" * 11, ttl=dt.timedelta(seconds=1)))
    store.issue_nonce(nonce(value=b"new" * 11, ttl=dt.timedelta(hours=2)))
    old_enrollment = enrollment(store, ttl=dt.timedelta(seconds=1))
    later = NOW + PURGE_GRACE + dt.timedelta(seconds=2)
    assert store.purge_expired(later) == 1
    with pytest.raises(NonceRejected) as e:
        store.consume_nonce("node-1", b"old" * 11, later)
    assert e.value.code is Reason.NONCE_UNKNOWN
    store.consume_nonce("node-1", b"new" * 11, NOW)
    with pytest.raises(NotFound):
        store.complete_enrollment(old_enrollment, SECRET, later)
    assert store.purge_expired(later) == 0


# --- verdicts ------------------------------------------------------------------------------


def test_verdict_and_node_state_round_trip(store: SqlStore) -> None:
    enroll(store)
    clock = {"clock": 1000, "reset_count": 2, "restart_count": 0, "safe": True, "firmware_version": 7}
    ima = {"offset": 42, "pcrs": {"sha256": "00" * 32}}
    store.record_verdict(verdict(trusted=False), clock, ima)
    node = store.get_node("node-1")
    assert node is not None
    assert node.last_verdict == verdict(trusted=False)
    assert (node.clock, node.ima_state) == (clock, ima)
    # A later verdict replaces the latest; state not given is left as it was.
    later = verdict(at=NOW + dt.timedelta(minutes=1))
    store.record_verdict(later, None, None)
    node = store.get_node("node-1")
    assert node is not None
    assert node.last_verdict == later
    assert (node.clock, node.ima_state) == (clock, ima)
    assert store.list_nodes() == [node]
    audited = [r for r in store.audit_records() if r.kind == "verdict"]
    assert [r.data["trusted"] for r in audited] == [False, True]
    assert audited[0].data["reasons"] == verdict(trusted=False).reasons
    assert audited[1].data["expires_at"] == "2030-05-01T12:11:00.123456Z"


def test_verdict_for_unknown_or_revoked_node(store: SqlStore) -> None:
    with pytest.raises(NotFound) as missing:
        store.record_verdict(verdict(), None, None)
    assert missing.value.code is Reason.AK_NOT_BOUND
    enroll(store)
    store.revoke_node("node-1", "x")
    with pytest.raises(Conflict) as revoked:
        store.record_verdict(verdict(), None, None)
    assert revoked.value.code is Reason.NODE_REVOKED


def test_node_state_counts_match_each_nodes_state(store: SqlStore) -> None:
    from webhook.admin import node_state

    assert store.node_state_counts(NOW) == {}
    for i, name in enumerate(["enrolled", "untrusted", "stale", "fresh", "no-expiry", "revoked"]):
        enroll(store, name, f"{i}" * 64, ak=name.encode())
    store.record_verdict(verdict("untrusted", trusted=False), None, None)
    store.record_verdict(verdict("stale", at=NOW - dt.timedelta(minutes=10)), None, None)
    store.record_verdict(verdict("fresh"), None, None)
    store.record_verdict(dataclasses.replace(verdict("no-expiry"), expires_at=None), None, None)
    store.record_verdict(verdict("revoked"), None, None)
    store.revoke_node("revoked", "x")
    counts = store.node_state_counts(NOW)
    assert counts == {"enrolled": 1, "untrusted": 1, "stale": 2, "trusted": 1, "revoked": 1}
    # The same as judging each node in Python (webhook.admin.node_state), at any time, also with
    # the clock set back so that verdicts lie ahead of it.
    minutes = (-60, -10, 0, 10, 60)
    for at in (NOW + dt.timedelta(minutes=m) for m in minutes):
        expected = collections.Counter(node_state(n, at) for n in store.list_nodes())
        assert store.node_state_counts(at) == dict(expected)


def test_round_state_reads_node_policy_version_and_nonce_without_consuming(store: SqlStore) -> None:
    empty = store.round_state("node-1", "base")
    assert (empty.node, empty.policy, empty.nonce) == (None, None, None)
    enroll(store)
    store.put_policy("base", "v1")
    v2 = store.put_policy("base", "v2")
    store.issue_nonce(nonce())
    state = store.round_state("node-1", "base", b"n" * 32, NOW)
    assert state.node == store.get_node("node-1")
    assert state.policy == (2, v2.digest)
    assert state.nonce == nonce()
    # Only read: the nonce is still there to consume, and is refused as consume_nonce would.
    assert store.round_state("node-1", "base", b"n" * 32, NOW).nonce == nonce()
    for node, value, at, code in [
        ("node-1", b"x" * 32, NOW, Reason.NONCE_UNKNOWN),
        ("node-2", b"n" * 32, NOW, Reason.NONCE_WRONG_NODE),
        ("node-1", b"n" * 32, NOW + dt.timedelta(seconds=60), Reason.NONCE_EXPIRED),
    ]:
        with pytest.raises(NonceRejected) as e:
            store.round_state(node, "base", value, at)
        assert e.value.code is code
    store.consume_nonce("node-1", b"n" * 32, NOW)
    with pytest.raises(NonceRejected) as reused:
        store.round_state("node-1", "base", b"n" * 32, NOW)
    assert reused.value.code is Reason.NONCE_REUSED


def test_verdict_consumes_its_nonce_in_its_transaction_once(store: SqlStore) -> None:
    enroll(store)
    store.issue_nonce(nonce())
    store.record_verdict(verdict(trusted=False), {"clock": 1}, None, b"n" * 32)
    audit = len(store.audit_records())
    # The same nonce again (a second submission that lost the race): refused, nothing stored.
    with pytest.raises(NonceRejected) as e:
        store.record_verdict(verdict(at=NOW + dt.timedelta(seconds=1)), {"clock": 2}, None, b"n" * 32)
    assert e.value.code is Reason.NONCE_REUSED
    node = store.get_node("node-1")
    assert node is not None
    assert (node.last_verdict, node.clock) == (verdict(trusted=False), {"clock": 1})
    assert len(store.audit_records()) == audit
    # A verdict that fails (the node was revoked meanwhile) leaves its nonce unconsumed.
    store.issue_nonce(nonce(value=b"m" * 32))
    store.revoke_node("node-1", "x")
    with pytest.raises(Conflict):
        store.record_verdict(verdict(), None, None, b"m" * 32)
    assert store.consume_nonce("node-1", b"m" * 32, NOW).nonce == b"m" * 32


def test_verdict_reasons_are_bounded_in_the_audit_record(store: SqlStore) -> None:
    enroll(store)
    many = [{"code": "policy_ima_not_allowed", "message": f"file {i}"} for i in range(120)]
    store.record_verdict(VerdictRecord("node-1", False, NOW, None, many, {}), None, None)
    data = store.audit_records()[-1].data
    assert len(data["reasons"]) == 50
    assert data["reasons_total"] == 120
    node = store.get_node("node-1")
    assert node is not None
    assert node.last_verdict is not None
    assert node.last_verdict.reasons == many


def test_naive_datetimes_are_refused(store: SqlStore) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.issue_nonce(NonceRecord("node-1", b"z" * 32, "sha256:0", NOW.replace(tzinfo=None), NOW))


# --- policies ------------------------------------------------------------------------------


def test_policy_versions(store: SqlStore) -> None:
    assert store.get_policy("base") is None
    assert store.list_policies() == []
    v1 = store.put_policy("base", "rules: 1\n")
    v2 = store.put_policy("base", "rules: 2\n")
    assert (v1.version, v2.version) == (1, 2)
    assert v2.digest == hashlib.sha256(b"rules: 2\n").hexdigest()
    assert store.put_policy("base", "rules: 2\n") == v2  # unchanged text: no new version
    other = store.put_policy("edge", "rules: e\n")
    assert store.get_policy("base") == v2
    assert store.get_policy("base", 1) == v1
    assert store.get_policy("base", 3) is None
    assert store.list_policies() == [v2, other]
    assert [(r.subject, r.data["version"]) for r in store.audit_records()] == [
        ("base", 1),
        ("base", 2),
        ("edge", 1),
    ]


# --- audit ---------------------------------------------------------------------------------


def test_append_audit_and_paging(store: SqlStore) -> None:
    first = store.append_audit(
        "rejected-evidence", "node-1", {"reasons": [{"code": "quote_signature_invalid"}]}
    )
    assert first.seq == 1
    assert first.prev == ""
    for i in range(4):
        store.append_audit("note", f"s{i}", {"i": i, "t": (1, 2)})
    records = store.audit_records()
    assert records[0] == first
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[1].data == {"i": 0, "t": [1, 2]}
    assert [r.seq for r in store.audit_records(after_seq=2, limit=2)] == [3, 4]
    assert store.audit_records(after_seq=5) == []
    assert verify_chain(records) == []
    with pytest.raises(ValueError, match="audit kind"):
        store.append_audit("Bad Kind", "x", {})


def test_audit_chain_after_a_mix_of_operations(store: SqlStore) -> None:
    ek = store.add_ek("node-1", EK_A, "PEM", None, "operator")
    enroll(store)
    store.put_policy("base", "v1")
    store.record_verdict(verdict(), {"clock": 1}, None)
    with pytest.raises(StoreError):
        store.complete_enrollment(enrollment(store, "node-1", EK_B, ak=b"x"), SECRET, NOW)
    store.revoke_node("node-1", "investigation")
    store.revoke_ek(ek.id)
    store.append_audit("rejected-evidence", "node-1", {})
    records = store.audit_records()
    assert [r.kind for r in records] == [
        "ek",
        "enroll",
        "policy",
        "verdict",
        "enroll",
        "revoke",
        "revoke",
        "rejected-evidence",
    ]
    assert verify_chain(records) == []
    assert store.health().counts["audit"] == len(records)
