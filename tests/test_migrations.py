"""Alembic owns the schema: upgrade/downgrade on a real SQLite file; ORM and migrations agree."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from indexer.db import SCHEMA_REVISION, Base, catalog_revision
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


def test_the_models_schema_revision_is_the_migrations_head():
    """Readers check a catalog against `SCHEMA_REVISION` without Alembic: a new migration must move it."""
    assert head_revision() == SCHEMA_REVISION


def test_catalog_revision_reads_what_alembic_reads_at_every_step(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    assert catalog_revision(url) is None  # no file: none made either
    assert not (tmp_path / "catalog.sqlite").exists()
    (tmp_path / "catalog.sqlite").write_bytes(b"")
    assert catalog_revision(url) is None  # not made by Alembic
    for rev in ("0001", "0003", "head"):
        upgrade(url, rev)
        assert catalog_revision(url) == current_revision(url) is not None
    downgrade(url, "0002")
    assert catalog_revision(url) == current_revision(url) == "0002"


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
