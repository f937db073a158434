"""SqlStore: the Store on SQLAlchemy 2 Core, over SQLite (one file) or PostgreSQL (replicas).

How the guarantees are kept (docs/store.md has the long form):
- Every method is one transaction. On SQLite, writing transactions start with BEGIN IMMEDIATE
  so they queue on the busy timeout instead of failing when a read turns into a write.
- Audited changes lock the audit chain's head row first (FOR UPDATE on PostgreSQL; SQLite's
  write lock does it there), so appends are serialized across replicas and every audited
  transaction takes its locks in the same order.
- Nonces and enrollments are consumed by one conditional UPDATE: the database, not a read
  followed by a write, decides who wins. An attestation round consumes its nonce in the
  transaction that stores its verdict.
- The attestation round's statements are built once (module constants with bind parameters),
  so SQLAlchemy neither rebuilds them nor recomputes their cache keys per call.
- Database failures surface as StoreUnavailable, never as SQLAlchemy exceptions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import math
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, Final

from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Row,
    Select,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.pool import ConnectionPoolEntry

from attest.reasons import Reason
from attest.store import audit as chain
from attest.store import schema as t
from attest.store.api import (
    CLOCK_SKEW,
    AuditRecord,
    Conflict,
    EkRecord,
    Enrollment,
    Health,
    NodeRecord,
    NonceRecord,
    NonceRejected,
    NotFound,
    PolicyRecord,
    RoundState,
    StoreError,
    StoreUnavailable,
    VerdictRecord,
)

EK_SOURCES: Final = frozenset({"operator", "manufacturer-chain"})
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")

# Execution option that marks a connection's transaction as writing (BEGIN IMMEDIATE on SQLite).
_WRITE: Final = "attest_write"
# Any constant shared by every replica: it names the lock that serializes schema migrations.
_MIGRATION_LOCK: Final = 0x61747465_73745F31  # "attest_1"

# Expired nonces and enrollments stay this long, so a late replay is still told "expired" or
# "reused" rather than "unknown"; then they are purged a bounded batch at a time.
PURGE_GRACE: Final = dt.timedelta(hours=1)
PURGE_BATCH: Final = 1000
_PURGE_INTERVAL: Final = 10.0  # seconds between purges started by issue_nonce, per store

# An audited verdict names at most this many findings; all of them are bound by a digest.
_AUDIT_REASONS: Final = 50


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _cause(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


class SqlStore:
    """The Store over SQLAlchemy. Make one with SqlStore.open(url); thread safe."""

    def __init__(self, engine: Engine, lock_timeout: float = 5.0) -> None:
        self._engine = engine
        self.backend: str = engine.dialect.name
        # SQLite has one writer at a time, and a writer waiting for the file lock polls with
        # sleeps of up to 100 ms (its busy handler): this process's writers queue on a lock of
        # its own instead, and only another process's writer makes them poll.
        self._writer = threading.Lock() if self.backend == "sqlite" else None
        self._lock_timeout = lock_timeout
        self._next_purge = 0.0
        self._upsert_verdict = _verdict_upsert(self.backend)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, lock_timeout: float = 5.0) -> SqlStore:
        """Connect, and bring the schema to the latest revision (or, with migrate=False, check
        that it is there: for deployments that migrate in a separate step).

        `sqlite:///path/attest.db` (created 0600 if missing) or
        `postgresql+psycopg://user@host/db` (`postgresql://` means the same). `lock_timeout`
        is how long a write waits for another writer before StoreUnavailable.
        """
        try:
            parsed = make_url(url)
        except ArgumentError as e:
            raise ValueError(f"not a database URL: {e}") from None
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            engine = _sqlite_engine(parsed, lock_timeout)
        elif backend == "postgresql":
            engine = _postgresql_engine(parsed, lock_timeout)
        else:
            raise ValueError(f"unsupported database {backend!r}: use sqlite:/// or postgresql+psycopg://")
        store = cls(engine, lock_timeout)
        try:
            store._prepare_schema(migrate)
        except BaseException:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        self._engine.dispose()

    # --- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction, with every database failure turned into a StoreError."""
        writer = self._writer if write else None
        if writer is not None and not writer.acquire(timeout=self._lock_timeout):
            raise StoreUnavailable(f"{self.backend} database unavailable: another write took too long")
        try:
            with self._engine.connect() as conn:
                if write:
                    conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    yield conn
        except IntegrityError as e:
            raise Conflict(f"the change contradicts what is stored: {_cause(e)}") from e
        except DataError as e:
            raise StoreError(f"the database refused a value: {_cause(e)}") from e
        except DBAPIError as e:
            raise StoreUnavailable(f"{self.backend} database unavailable: {_cause(e)}") from e
        except StatementError as e:
            # A bound parameter failed to convert (a naive datetime, say): the caller's bug.
            if isinstance(e.orig, (TypeError, ValueError)):
                raise e.orig from None
            raise StoreUnavailable(f"{self.backend} database unavailable: {_cause(e)}") from e
        except SQLAlchemyError as e:
            raise StoreUnavailable(f"{self.backend} database unavailable: {_cause(e)}") from e
        finally:
            if writer is not None:
                writer.release()

    def _prepare_schema(self, migrate: bool) -> None:
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError

        config = Config()
        config.set_main_option("script_location", "attest.store:migrations")
        head = ScriptDirectory.from_config(config).get_current_head()
        try:
            with self._tx(write=migrate) as conn:
                if migrate:
                    if self.backend == "postgresql":
                        # Replicas starting together: one migrates, the others wait, then find nothing to do.
                        conn.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
                    config.attributes["connection"] = conn
                    command.upgrade(config, "head")
                current = MigrationContext.configure(conn).get_current_revision()
        except CommandError as e:
            raise StoreUnavailable(f"cannot migrate the database schema: {e}") from e
        if current != head:
            raise StoreUnavailable(
                f"database schema is at revision {current}, this verifier needs {head}: run the migrations"
            )

    def _maybe_purge(self, conn: Connection) -> None:
        if time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + _PURGE_INTERVAL
        if _purge(conn, _utcnow()) == PURGE_BATCH:
            self._next_purge = 0.0  # a backlog: keep going on the next call

    def purge_expired(self, now: dt.datetime | None = None) -> int:
        """Delete up to PURGE_BATCH nonces and as many enrollments that expired more than
        PURGE_GRACE before `now`; returns how many of either kind went, at most PURGE_BATCH."""
        with self._tx(write=True) as conn:
            return _purge(conn, now or _utcnow())

    # --- health -----------------------------------------------------------------------------

    def health(self) -> Health:
        sqlite = self.backend == "sqlite"
        try:
            # On SQLite a write too: reads go on under another process's write lock, or on a file
            # that can no longer be written, while every attestation fails.
            with self._tx(write=sqlite) as conn:
                if sqlite:
                    # Rewrites the header page with what it holds: a commit that reaches the WAL.
                    version = conn.exec_driver_sql("PRAGMA user_version").scalar_one()
                    conn.exec_driver_sql(f"PRAGMA user_version = {int(version)}")
                counts = {
                    "nodes": conn.execute(select(func.count()).select_from(t.nodes)).scalar_one(),
                    "eks": conn.execute(
                        select(func.count()).select_from(t.eks).where(t.eks.c.revoked_at.is_(None))
                    ).scalar_one(),
                    "policies": conn.execute(
                        select(func.count(func.distinct(t.policies.c.name)))
                    ).scalar_one(),
                    # The head's seq, not count(*): cheap however long the trail grows.
                    "audit": conn.execute(
                        select(t.audit_head.c.seq).where(t.audit_head.c.id == 1)
                    ).scalar_one(),
                }
        except StoreError as e:
            return Health(ok=False, detail=e.message)
        return Health(ok=True, detail=self.backend, counts={k: int(v) for k, v in counts.items()})

    # --- endorsement keys -------------------------------------------------------------------

    def add_ek(
        self, node: str, fingerprint: str, public_pem: str, certificate: bytes | None, source: str
    ) -> EkRecord:
        fingerprint = fingerprint.lower()
        if not _FINGERPRINT.fullmatch(fingerprint):
            raise ValueError(f"EK fingerprint must be 64 hex digits (SHA-256), not {fingerprint!r}")
        if source not in EK_SOURCES:
            raise ValueError(f"EK source must be one of {sorted(EK_SOURCES)}, not {source!r}")
        with self._tx(write=True) as conn:
            log = _Chain(conn)
            existing = conn.execute(
                select(t.eks).where(t.eks.c.fingerprint == fingerprint, t.eks.c.revoked_at.is_(None))
            ).first()
            if existing is not None:
                if existing.node == node:
                    return _ek(existing)
                raise Conflict(
                    f"EK {fingerprint[:16]} is enrolled for node {existing.node}",
                    code=Reason.EK_NODE_CONFLICT,
                )
            record = EkRecord(0, node, fingerprint, public_pem, certificate, source, _utcnow())
            values = {k: v for k, v in vars(record).items() if k != "id"}
            ek_id = conn.execute(insert(t.eks).values(values).returning(t.eks.c.id)).scalar_one()
            log.append(
                "ek",
                node,
                {"action": "add", "ek_id": ek_id, "fingerprint": fingerprint, "source": source,
                 "certificate": certificate is not None},
            )  # fmt: skip
            return EkRecord(ek_id, node, fingerprint, public_pem, certificate, source, record.created_at)

    def find_ek(self, fingerprint: str) -> EkRecord | None:
        with self._tx() as conn:
            row = conn.execute(
                select(t.eks).where(t.eks.c.fingerprint == fingerprint.lower(), t.eks.c.revoked_at.is_(None))
            ).first()
        return None if row is None else _ek(row)

    def list_eks(self, after_id: int = 0, limit: int | None = None) -> list[EkRecord]:
        query = select(t.eks).where(t.eks.c.id > after_id).order_by(t.eks.c.id).limit(limit)
        with self._tx() as conn:
            return [_ek(row) for row in conn.execute(query)]

    def revoke_ek(self, ek_id: int) -> EkRecord:
        with self._tx(write=True) as conn:
            log = _Chain(conn)
            row = conn.execute(select(t.eks).where(t.eks.c.id == ek_id)).first()
            if row is None:
                raise NotFound(f"no EK with id {ek_id}")
            if row.revoked_at is not None:
                return _ek(row)
            now = _utcnow()
            conn.execute(update(t.eks).where(t.eks.c.id == ek_id).values(revoked_at=now))
            log.append("revoke", row.node, {"target": "ek", "ek_id": ek_id, "fingerprint": row.fingerprint})
            bound = conn.execute(
                select(t.nodes.c.name).where(
                    t.nodes.c.ek_fingerprint == row.fingerprint, t.nodes.c.revoked_at.is_(None)
                )
            ).scalars()
            for name in list(bound):
                reason = f"its EK (id {ek_id}) was revoked"
                _revoke_node(conn, name, reason, now)
                log.append("revoke", name, {"target": "node", "reason": reason, "ek": row.fingerprint})
            return dataclasses.replace(_ek(row), revoked_at=now)

    # --- enrollment -------------------------------------------------------------------------

    def create_enrollment(self, enrollment: Enrollment) -> None:
        with self._tx(write=True) as conn:
            if conn.execute(select(t.enrollments.c.id).where(t.enrollments.c.id == enrollment.id)).first():
                raise Conflict(f"enrollment {enrollment.id} exists")
            conn.execute(insert(t.enrollments).values({**vars(enrollment), "created_at": _utcnow()}))

    def complete_enrollment(self, enrollment_id: str, secret: bytes, now: dt.datetime) -> NodeRecord:
        refusal: StoreError | None = None
        with self._tx(write=True) as conn:
            log = _Chain(conn)
            e = t.enrollments.c
            row = conn.execute(
                update(t.enrollments)
                .where(e.id == enrollment_id, e.completed_at.is_(None), e.expires_at > now)
                .values(completed_at=now)
                .returning(e.node, e.ek_fingerprint, e.ak_public, e.ak_name, e.secret_hash)
            ).first()
            if row is None:
                raise _enrollment_refusal(conn, enrollment_id)
            # From here on the challenge is spent, whatever the outcome: an answer gets one try,
            # and a refused one is committed (with its audit record) before it is raised.
            about = {
                "enrollment": enrollment_id,
                "ek": row.ek_fingerprint,
                "ak_name": bytes(row.ak_name).hex(),
            }
            if not hmac.compare_digest(_sha256(secret), bytes(row.secret_hash)):
                refusal = Conflict(
                    "the credential secret is wrong: the AK is not in the TPM of that EK",
                    code=Reason.CREDENTIAL_INVALID,
                )
            else:
                refusal = _binding_refusal(conn, row.node, row.ek_fingerprint)
            if refusal is None:
                log.append("enroll", row.node, {**_bind(conn, row, now), **about})
                node = _node(conn.execute(_node_query().where(t.nodes.c.name == row.node)).one())
            else:
                log.append("enroll", row.node, {"outcome": str(refusal.code), **about})
        if refusal is not None:
            raise refusal
        return node

    # --- nodes ------------------------------------------------------------------------------

    def get_node(self, name: str) -> NodeRecord | None:
        with self._tx() as conn:
            row = conn.execute(_NODE, {"b_name": name}).first()
        return None if row is None else _node(row)

    def list_nodes(self, after: str | None = None, limit: int | None = None) -> list[NodeRecord]:
        query = _node_query().order_by(t.nodes.c.name).limit(limit)
        if after is not None:
            query = query.where(t.nodes.c.name > after)
        with self._tx() as conn:
            return [_node(row) for row in conn.execute(query)]

    def node_state_counts(self, now: dt.datetime) -> dict[str, int]:
        with self._tx() as conn:
            rows = conn.execute(_STATE_COUNTS, {"b_now": now, "b_ahead": now + CLOCK_SKEW}).all()
        return {str(state): int(count) for state, count in rows}

    def revoke_node(self, name: str, reason: str) -> NodeRecord:
        with self._tx(write=True) as conn:
            log = _Chain(conn)
            row = conn.execute(_node_query().where(t.nodes.c.name == name)).first()
            if row is None:
                raise NotFound(f"no node named {name}")
            if row.revoked_at is not None:
                return _node(row)
            now = _utcnow()
            _revoke_node(conn, name, reason, now)
            log.append("revoke", name, {"target": "node", "reason": reason, "ek": row.ek_fingerprint})
            return dataclasses.replace(_node(row), revoked_at=now, revoke_reason=reason)

    # --- nonces -----------------------------------------------------------------------------

    def issue_nonce(self, record: NonceRecord) -> None:
        values = {
            "digest": _sha256(record.nonce),
            "node": record.node,
            "selection": record.selection,
            "binding": record.binding,
            "issued_at": record.issued_at,
            "expires_at": record.expires_at,
        }
        # A nonce issued before violates the primary key: _tx raises Conflict.
        with self._tx(write=True) as conn:
            conn.execute(_NONCE_INSERT, values)
            self._maybe_purge(conn)

    def consume_nonce(self, node: str, nonce: bytes, now: dt.datetime) -> NonceRecord:
        digest = _sha256(nonce)
        with self._tx(write=True) as conn:
            row = conn.execute(_CONSUME, {"b_digest": digest, "b_node": node, "b_now": now}).first()
            if row is None:
                raise _nonce_refusal(conn, digest, node)
        return _nonce(node, nonce, row)

    def round_state(
        self, node: str, policy: str, nonce: bytes | None = None, now: dt.datetime | None = None
    ) -> RoundState:
        with self._tx() as conn:
            row = conn.execute(_NODE, {"b_name": node}).first()
            latest = conn.execute(_LATEST_POLICY, {"b_name": policy}).first()
            issued = None if nonce is None else conn.execute(_NONCE, {"b_digest": _sha256(nonce)}).first()
        record = None
        if nonce is not None:
            record = _nonce(node, nonce, _usable_nonce(issued, node, now or _utcnow()))
        return RoundState(
            node=None if row is None else _node(row),
            policy=None if latest is None else (latest.version, latest.digest),
            nonce=record,
        )

    # --- verdicts ---------------------------------------------------------------------------

    def record_verdict(
        self,
        verdict: VerdictRecord,
        clock: dict[str, Any] | None,
        ima_state: dict[str, Any] | None,
        nonce: bytes | None = None,
    ) -> None:
        node = verdict.node
        with self._tx(write=True) as conn:
            log = _Chain(conn)
            if nonce is not None:
                digest = _sha256(nonce)
                consumed = {"b_digest": digest, "b_node": node, "b_now": verdict.appraised_at}
                if conn.execute(_CONSUME, consumed).first() is None:
                    raise _nonce_refusal(conn, digest, node)
            # Updating the state (NULL keeps what is stored) is also the check that the node is
            # enrolled and not revoked: one statement where a SELECT and an UPDATE were.
            state = {"b_name": node, "b_clock": clock, "b_ima_state": ima_state}
            if conn.execute(_NODE_STATE, state).rowcount == 0:
                revoked = conn.execute(select(t.nodes.c.revoked_at).where(t.nodes.c.name == node)).first()
                if revoked is None:
                    raise NotFound(f"node {node} is not enrolled", code=Reason.AK_NOT_BOUND)
                raise Conflict(f"node {node} was revoked", code=Reason.NODE_REVOKED)
            conn.execute(
                self._upsert_verdict,
                {
                    "node": node,
                    "trusted": verdict.trusted,
                    "appraised_at": verdict.appraised_at,
                    "expires_at": verdict.expires_at,
                    "reasons": verdict.reasons,
                    "detail": verdict.detail,
                    "policy": verdict.policy,
                },
            )
            log.append("verdict", node, _verdict_audit(verdict))

    # --- policies ---------------------------------------------------------------------------

    def put_policy(self, name: str, text: str) -> PolicyRecord:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        with self._tx(write=True) as conn:
            log = _Chain(conn)
            latest = conn.execute(
                select(t.policies)
                .where(t.policies.c.name == name)
                .order_by(t.policies.c.version.desc())
                .limit(1)
            ).first()
            if latest is not None and latest.digest == digest:
                return _policy(latest)
            record = PolicyRecord(name, (latest.version if latest else 0) + 1, digest, text, _utcnow())
            conn.execute(insert(t.policies).values(vars(record)))
            log.append("policy", name, {"version": record.version, "digest": digest})
            return record

    def get_policy(self, name: str, version: int | None = None) -> PolicyRecord | None:
        p = t.policies.c
        query = select(t.policies).where(p.name == name)
        query = (
            query.order_by(p.version.desc()).limit(1)
            if version is None
            else query.where(p.version == version)
        )
        with self._tx() as conn:
            row = conn.execute(query).first()
        return None if row is None else _policy(row)

    def list_policies(self) -> list[PolicyRecord]:
        p = t.policies.c
        latest = select(p.name, func.max(p.version).label("version")).group_by(p.name).subquery()
        query = (
            select(t.policies)
            .join(latest, (p.name == latest.c.name) & (p.version == latest.c.version))
            .order_by(p.name)
        )
        with self._tx() as conn:
            return [_policy(row) for row in conn.execute(query)]

    # --- audit ------------------------------------------------------------------------------

    def append_audit(self, kind: str, subject: str, data: dict[str, Any]) -> AuditRecord:
        if not _KIND.fullmatch(kind):
            raise ValueError(
                f"audit kind must be 1-32 of a-z, 0-9, '_', '-', starting with a letter: {kind!r}"
            )
        with self._tx(write=True) as conn:
            return _Chain(conn).append(kind, subject, data)

    def audit_records(self, after_seq: int = 0, limit: int = 10_000) -> list[AuditRecord]:
        a = t.audit.c
        query = select(t.audit).where(a.seq > after_seq).order_by(a.seq).limit(max(limit, 0))
        with self._tx() as conn:
            rows = conn.execute(query).all()
        return [_audit_record(row) for row in rows]


# --- engines -------------------------------------------------------------------------------


def _sqlite_engine(url: URL, lock_timeout: float) -> Engine:
    database = url.database
    if not database or database == ":memory:" or url.query.get("mode") == "memory":
        raise ValueError("the SQLite store needs a file: sqlite:///path/to/attest.db")
    if not url.query.get("uri"):
        _create_private(database)
    engine = create_engine(url, connect_args={"timeout": lock_timeout, "check_same_thread": False})
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _create_private(path: str) -> None:
    """Create the database file 0600 before SQLite does (it would use the umask); SQLite gives
    its -wal and -shm files the database file's mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as e:
        raise StoreUnavailable(f"cannot create the SQLite database {path}: {e.strerror}") from e
    os.close(fd)


def _sqlite_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # The sqlite3 module's own transaction handling would BEGIN lazily and deferred; SQLAlchemy's
    # "begin" event (_sqlite_begin) issues the BEGIN instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # WAL: readers never block the writer. FULL: a commit is on disk (WAL fsynced) before
        # it is acknowledged, so no verdict, nonce consumption or audit record is lost to a
        # power cut. foreign_keys: SQLite ignores REFERENCES without it.
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock up front and waits for it on the busy timeout; a deferred
    # transaction that reads, then writes, can fail at once with SQLITE_BUSY instead.
    mode = "IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


def _postgresql_engine(url: URL, lock_timeout: float) -> Engine:
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return create_engine(
        url,
        # No pool_pre_ping (a round trip per checkout, ~10% of an attestation's CPU). After a
        # server restart or failover the pool's connections are dead: the first statement on one
        # fails (StoreUnavailable: that request answers 503) and SQLAlchemy, seeing a disconnect,
        # invalidates every connection of the pool at once, so the next checkout reconnects.
        connect_args={
            "connect_timeout": max(2, math.ceil(lock_timeout)),
            "options": f"-c lock_timeout={round(lock_timeout * 1000)}",
        },
    )


# --- transactions' parts -------------------------------------------------------------------


class _Chain:
    """The audit chain's head, locked for the rest of this transaction."""

    def __init__(self, conn: Connection) -> None:
        head = conn.execute(_HEAD).one()
        self._conn = conn
        self._seq: int = head.seq
        self._hash: str = head.hash

    def append(self, kind: str, subject: str, data: Mapping[str, Any]) -> AuditRecord:
        record = chain.make_record(self._seq + 1, _utcnow(), kind, subject, data, self._hash)
        self._conn.execute(_AUDIT_INSERT, vars(record) | {"data": chain.canonical_json(record.data)})
        self._conn.execute(_HEAD_UPDATE, {"b_seq": record.seq, "b_hash": record.hash})
        self._seq, self._hash = record.seq, record.hash
        return record


def _purge(conn: Connection, now: dt.datetime) -> int:
    cutoff = now - PURGE_GRACE
    removed = 0
    for table, key in ((t.nonces, t.nonces.c.digest), (t.enrollments, t.enrollments.c.id)):
        batch = select(key).where(table.c.expires_at < cutoff).limit(PURGE_BATCH)
        removed = max(removed, conn.execute(delete(table).where(key.in_(batch))).rowcount)
    return removed


def _nonce_refusal(conn: Connection, digest: bytes, node: str) -> NonceRejected:
    """Why the conditional UPDATE consumed nothing."""
    try:
        _usable_nonce(conn.execute(_NONCE, {"b_digest": digest}).first(), node, None)
    except NonceRejected as e:
        return e
    raise AssertionError("_usable_nonce accepts no nonce without a time")


def _usable_nonce(row: Row[Any] | None, node: str, now: dt.datetime | None) -> Row[Any]:
    """The nonce's row (of _NONCE) if consume_nonce would consume it at `now`, else the refusal
    it would raise, checked in its order. now=None: it was refused, so what is left is expired."""
    if row is None:
        raise NonceRejected(
            "this verifier never issued that nonce (or it expired long ago)", Reason.NONCE_UNKNOWN
        )
    if row.node != node:
        raise NonceRejected(f"the nonce was issued to another node, not {node}", Reason.NONCE_WRONG_NODE)
    if row.consumed_at is not None:
        raise NonceRejected("the nonce was already used", Reason.NONCE_REUSED)
    if now is None or row.expires_at <= now:
        raise NonceRejected("the nonce expired", Reason.NONCE_EXPIRED)
    return row


def _nonce(node: str, nonce: bytes, row: Row[Any]) -> NonceRecord:
    binding = None if row.binding is None else bytes(row.binding)
    return NonceRecord(node, nonce, row.selection, row.issued_at, row.expires_at, binding)


def _enrollment_refusal(conn: Connection, enrollment_id: str) -> StoreError:
    row = conn.execute(
        select(t.enrollments.c.completed_at).where(t.enrollments.c.id == enrollment_id)
    ).first()
    if row is None:
        return NotFound(f"no enrollment {enrollment_id}", code=Reason.ENROLLMENT_UNKNOWN)
    if row.completed_at is not None:
        return Conflict(f"enrollment {enrollment_id} was already answered", code=Reason.ENROLLMENT_USED)
    return Conflict(f"enrollment {enrollment_id} expired", code=Reason.ENROLLMENT_EXPIRED)


def _binding_refusal(conn: Connection, node: str, fingerprint: str) -> StoreError | None:
    n = t.nodes.c
    bound = conn.execute(select(n.ek_fingerprint, n.revoked_at).where(n.name == node)).first()
    if bound is not None and bound.revoked_at is None and bound.ek_fingerprint != fingerprint:
        return Conflict(
            f"node {node} is bound to another TPM's EK: an operator must revoke it first",
            code=Reason.EK_NODE_CONFLICT,
        )
    other = conn.execute(
        select(n.name).where(n.ek_fingerprint == fingerprint, n.revoked_at.is_(None), n.name != node)
    ).first()
    if other is not None:
        return Conflict(f"this TPM is bound to node {other.name}", code=Reason.EK_NODE_CONFLICT)
    eks = conn.execute(select(t.eks.c.revoked_at).where(t.eks.c.fingerprint == fingerprint)).all()
    if eks and all(ek.revoked_at is not None for ek in eks):
        return Conflict("an operator revoked this EK", code=Reason.EK_NOT_ENROLLED)
    return None


def _bind(conn: Connection, enrollment: Row[Any], now: dt.datetime) -> dict[str, Any]:
    """Bind the enrollment's AK to its node, fresh: no carried clock, IMA state or verdict."""
    node = enrollment.node
    previous = conn.execute(
        select(t.nodes.c.ak_name, t.nodes.c.revoked_at).where(t.nodes.c.name == node)
    ).first()
    values = {
        "ek_fingerprint": enrollment.ek_fingerprint,
        "ak_public": enrollment.ak_public,
        "ak_name": enrollment.ak_name,
        "enrolled_at": now,
        "revoked_at": None,
        "revoke_reason": None,
        "clock": None,
        "ima_state": None,
    }
    if previous is None:
        conn.execute(insert(t.nodes).values({**values, "name": node}))
        return {"outcome": "enrolled"}
    conn.execute(delete(t.verdicts).where(t.verdicts.c.node == node))
    conn.execute(update(t.nodes).where(t.nodes.c.name == node).values(values))
    return {
        "outcome": "re-enrolled",
        "previous_ak_name": bytes(previous.ak_name).hex(),
        "was_revoked": previous.revoked_at is not None,
    }


def _revoke_node(conn: Connection, name: str, reason: str, now: dt.datetime) -> None:
    conn.execute(update(t.nodes).where(t.nodes.c.name == name).values(revoked_at=now, revoke_reason=reason))


def _verdict_audit(verdict: VerdictRecord) -> dict[str, Any]:
    reasons = verdict.reasons
    return {
        "trusted": verdict.trusted,
        "appraised_at": chain.timestamp(verdict.appraised_at),
        "expires_at": None if verdict.expires_at is None else chain.timestamp(verdict.expires_at),
        "policy": verdict.policy,
        "reasons": reasons[:_AUDIT_REASONS],
        "reasons_total": len(reasons),
        # Binds what the record does not spell out: every finding, and the appraisal's detail.
        "reasons_sha256": hashlib.sha256(chain.canonical_json(reasons).encode("ascii")).hexdigest(),
        "detail_sha256": hashlib.sha256(chain.canonical_json(verdict.detail).encode("ascii")).hexdigest(),
    }


# --- rows to records -----------------------------------------------------------------------


def _node_query() -> Select[Any]:
    v = t.verdicts.c
    return select(
        t.nodes,
        v.node.label("v_node"),
        v.trusted.label("v_trusted"),
        v.appraised_at.label("v_appraised_at"),
        v.expires_at.label("v_expires_at"),
        v.reasons.label("v_reasons"),
        v.detail.label("v_detail"),
        v.policy.label("v_policy"),
    ).select_from(t.nodes.outerjoin(t.verdicts, v.node == t.nodes.c.name))


def _node(row: Row[Any]) -> NodeRecord:
    verdict = None
    if row.v_node is not None:
        verdict = VerdictRecord(
            row.name,
            row.v_trusted,
            row.v_appraised_at,
            row.v_expires_at,
            row.v_reasons,
            row.v_detail,
            row.v_policy,
        )
    return NodeRecord(
        name=row.name,
        ek_fingerprint=row.ek_fingerprint,
        ak_public=bytes(row.ak_public),
        ak_name=bytes(row.ak_name),
        enrolled_at=row.enrolled_at,
        revoked_at=row.revoked_at,
        clock=row.clock,
        ima_state=row.ima_state,
        last_verdict=verdict,
        revoke_reason=row.revoke_reason,
    )


def _ek(row: Row[Any]) -> EkRecord:
    certificate = None if row.certificate is None else bytes(row.certificate)
    return EkRecord(
        row.id,
        row.node,
        row.fingerprint,
        row.public_pem,
        certificate,
        row.source,
        row.created_at,
        row.revoked_at,
    )


def _policy(row: Row[Any]) -> PolicyRecord:
    return PolicyRecord(row.name, row.version, row.digest, row.text, row.created_at)


def _audit_record(row: Row[Any]) -> AuditRecord:
    return AuditRecord(row.seq, row.at, row.kind, row.subject, json.loads(row.data), row.prev, row.hash)


def _verdict_upsert(backend: str) -> Insert:
    """INSERT of a node's verdict that replaces the one stored: one statement, either backend."""
    dialect_insert = sqlite.insert if backend == "sqlite" else postgresql.insert
    stmt = dialect_insert(t.verdicts)
    columns = ("trusted", "appraised_at", "expires_at", "reasons", "detail", "policy")
    return stmt.on_conflict_do_update(
        index_elements=[t.verdicts.c.node], set_={c: stmt.excluded[c] for c in columns}
    )


# --- the attestation round's statements, built once (bind parameter names start with b_) ------

_NODE: Final = _node_query().where(t.nodes.c.name == bindparam("b_name"))
_LATEST_POLICY: Final = (
    select(t.policies.c.version, t.policies.c.digest)
    .where(t.policies.c.name == bindparam("b_name"))
    .order_by(t.policies.c.version.desc())
    .limit(1)
)
_NONCE: Final[Select[Any]] = select(
    t.nonces.c.node,
    t.nonces.c.selection,
    t.nonces.c.binding,
    t.nonces.c.issued_at,
    t.nonces.c.expires_at,
    t.nonces.c.consumed_at,
).where(t.nonces.c.digest == bindparam("b_digest"))
_NONCE_INSERT: Final = insert(t.nonces)
_CONSUME: Final = (
    update(t.nonces)
    .where(
        t.nonces.c.digest == bindparam("b_digest"),
        t.nonces.c.node == bindparam("b_node"),
        t.nonces.c.consumed_at.is_(None),
        t.nonces.c.expires_at > bindparam("b_now"),
    )
    .values(consumed_at=bindparam("b_now"))
    .returning(t.nonces.c.selection, t.nonces.c.binding, t.nonces.c.issued_at, t.nonces.c.expires_at)
)
_NODE_STATE: Final = (
    update(t.nodes)
    .where(t.nodes.c.name == bindparam("b_name"), t.nodes.c.revoked_at.is_(None))
    .values(
        clock=func.coalesce(bindparam("b_clock", type_=t.nodes.c.clock.type), t.nodes.c.clock),
        ima_state=func.coalesce(
            bindparam("b_ima_state", type_=t.nodes.c.ima_state.type), t.nodes.c.ima_state
        ),
    )
)
_HEAD: Final = select(t.audit_head.c.seq, t.audit_head.c.hash).where(t.audit_head.c.id == 1).with_for_update()
_HEAD_UPDATE: Final = (
    update(t.audit_head)
    .where(t.audit_head.c.id == 1)
    .values(seq=bindparam("b_seq"), hash=bindparam("b_hash"))
)
_AUDIT_INSERT: Final = insert(t.audit)

# Node states as webhook.admin.node_state names them (VerdictRecord.fresh_at's rule), decided by
# the database: a /metrics scrape counts 100,000 nodes without loading them.
_STATE: Final = case(
    (t.nodes.c.revoked_at.is_not(None), "revoked"),
    (t.verdicts.c.node.is_(None), "enrolled"),
    (t.verdicts.c.trusted.is_(False), "untrusted"),
    (
        t.verdicts.c.expires_at.is_(None)
        | (t.verdicts.c.expires_at <= bindparam("b_now"))
        | (t.verdicts.c.appraised_at > bindparam("b_ahead")),
        "stale",
    ),
    else_="trusted",
).label("state")
_STATE_COUNTS: Final = (
    select(_STATE, func.count().label("count"))
    .select_from(t.nodes.outerjoin(t.verdicts, t.verdicts.c.node == t.nodes.c.name))
    .group_by(_STATE)
)
