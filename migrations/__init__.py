"""Alembic migrations of the index catalog (applied automatically by `indexer.migrate`)."""
