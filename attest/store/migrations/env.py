"""Alembic's entry point: runs the migrations on the connection SqlStore.open hands over.

There is no offline (SQL script) mode and no URL in a config file: SqlStore.open has already
opened the transaction and taken the migration lock, and the migrations must run inside both.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from attest.store.schema import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "run the store's migrations through attest.store.sql.SqlStore.open, not the alembic CLI"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things: autogenerate must write batch (copy-and-move) operations.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
