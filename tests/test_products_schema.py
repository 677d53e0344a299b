"""Migration 0003 (products) on real SQLite files: it matches the models, upgrades in place, rolls back."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from products_support import ItemRow, ProductRow, insert_catalog, run_migration
from sqlalchemy.orm import Session

from indexer.db import Base, make_engine
from indexer.migrate import upgrade
from indexer.products_db import ProductsBase

PRODUCT_TABLES = {"products", "product_attributes", "attribute_types", "product_changes"}


def _diff(engine, metadata) -> list:
    names = set(metadata.tables)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={"include_name": lambda name, kind, _: kind != "table" or name in names},
        )
        return compare_metadata(ctx, metadata)


def _without_sqlite_fk_names(diff: list) -> list:
    """SQLite reports the inline REFERENCES of `items.product_id` without a name: not a difference."""
    return [d for d in diff if not (d[0] in ("add_fk", "remove_fk") and d[1].parent.name == "items")]


@pytest.fixture
def head_catalog(tmp_path):
    """A catalog at the migrations' head before 0003, with one item already indexed."""
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    if "products" in sa.inspect(engine).get_table_names():
        pytest.skip("0003 already runs through Alembic: tests/test_migrations.py covers it")
    with Session(engine) as session, session.begin():
        session.execute(
            sa.text(
                "INSERT INTO items (id, path, label, sha256, size, mtime_ns, width, height, "
                "added_generation, created_at, updated_at) "
                "VALUES (7, 'shirts/a.jpg', 'shirts', :h, 1, 0, 2, 3, 1, '2026-01-01', '2026-01-01')"
            ),
            {"h": "0" * 64},
        )
    yield engine
    engine.dispose()


def test_upgrade_matches_the_models_and_keeps_items(head_catalog):
    run_migration(head_catalog)
    tables = set(sa.inspect(head_catalog).get_table_names())
    assert tables >= PRODUCT_TABLES
    assert _without_sqlite_fk_names(_diff(head_catalog, ProductsBase.metadata)) == []
    with Session(head_catalog) as session:
        assert session.execute(sa.text("SELECT id, label, product_id FROM items")).all() == [
            (7, "shirts", None)
        ]


def test_items_product_id_is_a_foreign_key(head_catalog):
    run_migration(head_catalog)
    with Session(head_catalog) as session, session.begin():
        ids = insert_catalog(
            session, {"color": "string"}, [ProductRow("SKU-1", attributes={"color": "red"})], []
        )
        session.execute(sa.text("UPDATE items SET product_id = :p WHERE id = 7"), {"p": ids["SKU-1"]})
    with Session(head_catalog) as session, pytest.raises(sa.exc.IntegrityError):
        session.execute(sa.text("UPDATE items SET product_id = 999 WHERE id = 7"))
        session.commit()


def test_downgrade_restores_the_previous_schema(head_catalog):
    run_migration(head_catalog)
    with Session(head_catalog) as session, session.begin():
        insert_catalog(session, {}, [ProductRow("SKU-1")], [ItemRow(8, "hats", "SKU-1")])
    run_migration(head_catalog, "downgrade")
    assert not PRODUCT_TABLES & set(sa.inspect(head_catalog).get_table_names())
    assert _diff(head_catalog, Base.metadata) == []
    with Session(head_catalog) as session:
        assert session.execute(sa.text("SELECT id FROM items ORDER BY id")).scalars().all() == [7, 8]


def test_a_failure_midway_leaves_the_catalog_as_it_was(head_catalog):
    """Every step of 0003 is transactional DDL: run in one BEGIN ... COMMIT, a failure undoes all."""
    with head_catalog.begin() as conn:  # makes the migration's 4th table fail, after 3 were made
        conn.exec_driver_sql("CREATE TABLE product_changes (x INTEGER)")
    before = sorted(sa.inspect(head_catalog).get_table_names())
    with pytest.raises(sa.exc.OperationalError, match="already exists"):
        run_migration(head_catalog)
    head_catalog.dispose()
    assert sorted(sa.inspect(head_catalog).get_table_names()) == before
    assert [c["name"] for c in sa.inspect(head_catalog).get_columns("items")][-1] != "product_id"
