"""Alembic owns the schema: upgrade/downgrade on a real SQLite file; ORM and migrations agree."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from indexer.db import Base
from indexer.migrate import current_revision, downgrade, head_revision, upgrade


def test_upgrade_head_and_downgrade_base(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    upgrade(url)
    assert current_revision(url) == head_revision()
    engine = create_engine(url)
    assert {"items", "generations", "generation_changes", "ledger", "index_state"} <= set(
        inspect(engine).get_table_names()
    )
    downgrade(url, "base")
    assert current_revision(url) is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()


def test_orm_matches_migrated_schema(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
