"""The initial schema: EKs, nodes and their latest verdicts, enrollments, nonces, policies, audit.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Spelled out rather than imported from attest.store.schema: a migration must keep producing
# the schema of its revision after schema.py has moved on.
_TIME = sa.DateTime(timezone=True)
_ACTIVE = sa.text("revoked_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "eks",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("node", sa.String(253), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("public_pem", sa.Text, nullable=False),
        sa.Column("certificate", sa.LargeBinary, nullable=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("revoked_at", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_eks"),
    )
    op.create_index(
        "ix_eks_active_fingerprint",
        "eks",
        ["fingerprint"],
        unique=True,
        sqlite_where=_ACTIVE,
        postgresql_where=_ACTIVE,
    )
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("ek_fingerprint", sa.String(64), nullable=False),
        sa.Column("ak_public", sa.LargeBinary, nullable=False),
        sa.Column("ak_name", sa.LargeBinary, nullable=False),
        sa.Column("enrolled_at", _TIME, nullable=False),
        sa.Column("revoked_at", _TIME, nullable=True),
        sa.Column("revoke_reason", sa.Text, nullable=True),
        sa.Column("clock", sa.JSON, nullable=True),
        sa.Column("ima_state", sa.JSON, nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_nodes"),
    )
    op.create_index(
        "ix_nodes_active_ek",
        "nodes",
        ["ek_fingerprint"],
        unique=True,
        sqlite_where=_ACTIVE,
        postgresql_where=_ACTIVE,
    )
    op.create_table(
        "verdicts",
        sa.Column("node", sa.String(253), nullable=False),
        sa.Column("trusted", sa.Boolean, nullable=False),
        sa.Column("appraised_at", _TIME, nullable=False),
        sa.Column("expires_at", _TIME, nullable=True),
        sa.Column("reasons", sa.JSON, nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("policy", sa.String(277), nullable=True),
        sa.PrimaryKeyConstraint("node", name="pk_verdicts"),
        sa.ForeignKeyConstraint(["node"], ["nodes.name"], name="fk_verdicts_node_nodes", ondelete="CASCADE"),
    )
    op.create_table(
        "enrollments",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("node", sa.String(253), nullable=False),
        sa.Column("ek_fingerprint", sa.String(64), nullable=False),
        sa.Column("ak_public", sa.LargeBinary, nullable=False),
        sa.Column("ak_name", sa.LargeBinary, nullable=False),
        sa.Column("secret_hash", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.Column("completed_at", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_enrollments"),
    )
    op.create_index("ix_enrollments_expires_at", "enrollments", ["expires_at"])
    op.create_table(
        "nonces",
        sa.Column("digest", sa.LargeBinary, nullable=False),
        sa.Column("node", sa.String(253), nullable=False),
        sa.Column("selection", sa.Text, nullable=False),
        sa.Column("binding", sa.LargeBinary, nullable=True),
        sa.Column("issued_at", _TIME, nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.Column("consumed_at", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("digest", name="pk_nonces"),
    )
    op.create_index("ix_nonces_expires_at", "nonces", ["expires_at"])
    op.create_table(
        "policies",
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("name", "version", name="pk_policies"),
    )
    op.create_table(
        "audit",
        sa.Column("seq", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("prev", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit"),
    )
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_head"),
        sa.CheckConstraint("id = 1", name="ck_audit_head_single_row"),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": ""}])
