"""The verifier's tables, as SQLAlchemy Core metadata: what the migrations must produce.

Migrations (attest/store/migrations) are the source of truth for the database; this module is
what the code queries, and a test checks the two agree.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.types import TypeDecorator

# Named constraints, so a later migration can drop or alter them by name on every backend.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend.

    SQLite has no time zones: SQLAlchemy would store whatever wall-clock digits it is given
    and hand back naive values, so mixing zones would silently corrupt every expiry check.
    Naive input is refused; values are stored in UTC, which also keeps SQLite's text
    timestamps comparable as strings.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()}: the store needs time-zone-aware values")
        utc = value.astimezone(dt.UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# Kubernetes node names are DNS subdomains: at most 253 characters.
NAME = 253
FINGERPRINT = 64  # hex SHA-256

_ACTIVE = text("revoked_at IS NULL")

eks = Table(
    "eks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("node", String(NAME), nullable=False),
    Column("fingerprint", String(FINGERPRINT), nullable=False),
    Column("public_pem", Text, nullable=False),
    Column("certificate", LargeBinary, nullable=True),
    Column("source", String(32), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime, nullable=True),
    # One active record per EK: find_ek has a single answer. Revoked ones stay as history.
    Index(
        "ix_eks_active_fingerprint",
        "fingerprint",
        unique=True,
        sqlite_where=_ACTIVE,
        postgresql_where=_ACTIVE,
    ),
)

nodes = Table(
    "nodes",
    metadata,
    Column("name", String(NAME), primary_key=True),
    Column("ek_fingerprint", String(FINGERPRINT), nullable=False),
    Column("ak_public", LargeBinary, nullable=False),
    Column("ak_name", LargeBinary, nullable=False),
    Column("enrolled_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime, nullable=True),
    Column("revoke_reason", Text, nullable=True),
    Column("clock", JSON(none_as_null=True), nullable=True),
    Column("ima_state", JSON(none_as_null=True), nullable=True),
    # One TPM, one node identity: a second active binding of the same EK is refused by the database too.
    Index(
        "ix_nodes_active_ek", "ek_fingerprint", unique=True, sqlite_where=_ACTIVE, postgresql_where=_ACTIVE
    ),
)

# The latest verdict of each node. Every verdict is also in the audit log, which is the history:
# keeping a second copy of it here would double the fastest-growing data for no reader.
verdicts = Table(
    "verdicts",
    metadata,
    Column("node", String(NAME), ForeignKey("nodes.name", ondelete="CASCADE"), primary_key=True),
    Column("trusted", Boolean, nullable=False),
    Column("appraised_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=True),
    Column("reasons", JSON, nullable=False),
    Column("detail", JSON, nullable=False),
    Column("policy", String(NAME + 24), nullable=True),
)

enrollments = Table(
    "enrollments",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("node", String(NAME), nullable=False),
    Column("ek_fingerprint", String(FINGERPRINT), nullable=False),
    Column("ak_public", LargeBinary, nullable=False),
    Column("ak_name", LargeBinary, nullable=False),
    Column("secret_hash", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("completed_at", UtcDateTime, nullable=True),
    Index("ix_enrollments_expires_at", "expires_at"),
)

# Keyed by SHA-256 of the nonce, never the nonce: see docs/store.md ("Nonces").
nonces = Table(
    "nonces",
    metadata,
    Column("digest", LargeBinary, primary_key=True),
    Column("node", String(NAME), nullable=False),
    Column("selection", Text, nullable=False),
    Column("binding", LargeBinary, nullable=True),
    Column("issued_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("consumed_at", UtcDateTime, nullable=True),
    Index("ix_nonces_expires_at", "expires_at"),
)

policies = Table(
    "policies",
    metadata,
    Column("name", String(NAME), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("digest", String(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

# `data` is the canonical JSON text the hash was computed over, kept verbatim: a JSON column
# could re-encode numbers or keys and make an intact record look edited.
audit = Table(
    "audit",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", UtcDateTime, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("subject", Text, nullable=False),
    Column("data", Text, nullable=False),
    Column("prev", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# The chain's single head row: appenders lock it (SELECT ... FOR UPDATE on PostgreSQL), which
# serializes appends across replicas without locking the audit table itself.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    CheckConstraint("id = 1", name="single_row"),
)
