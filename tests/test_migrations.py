"""Alembic owns the schema: upgrade/downgrade on a real SQLite file; ORM and migrations agree."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

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


def test_0006_marks_existing_products_and_attribute_types_as_the_catalog_files(tmp_path):
    """A catalog with products written at 0005 upgrades in place: every product and attribute type
    it has came from a catalog file (`origin` "catalog"); uploads' rows are `api`."""
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    upgrade(url, "0005")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO products (product_key, title, metadata_sha256, added_generation, created_at,"
                " updated_at) VALUES ('SKU-1', 'Shirt', 'abc', 1, '2026-01-01', '2026-01-01')"
            )
        )
        conn.execute(text("INSERT INTO attribute_types (name, type) VALUES ('color', 'string')"))
    upgrade(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT product_key, title, origin FROM products")).all() == [
            ("SKU-1", "Shirt", "catalog")
        ]
        assert conn.execute(text("SELECT name, origin FROM attribute_types")).all() == [("color", "catalog")]
    engine.dispose()
