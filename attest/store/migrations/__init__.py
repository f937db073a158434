"""Alembic migrations of the store's schema, run by SqlStore.open (docs/store.md, "Migrations")."""
