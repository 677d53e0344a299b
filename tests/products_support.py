"""Catalog databases with products for tests: the real migrations on a real SQLite file, rows inserted.

Until migration 0002 exists on this branch, 0003 (migrations/pending/) cannot run through Alembic's
script directory; `products_database` then applies its `upgrade()` with Alembic's own operations on
top of the head, exactly what `alembic upgrade` would run.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from indexer.db import make_engine, utcnow
from indexer.migrate import upgrade
from indexer.products_db import VALUE_COLUMNS, AttributeType, Product, ProductAttribute, items_table

ROOT = Path(__file__).resolve().parents[1]
MIGRATION_0003 = next(
    p for p in (ROOT / "migrations" / d / "0003_products.py" for d in ("versions", "pending")) if p.exists()
)


def migration_0003() -> ModuleType:
    spec = importlib.util.spec_from_file_location("migration_0003_products", MIGRATION_0003)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_migration(engine: Engine, step: str = "upgrade") -> None:
    """Run 0003's `upgrade` or `downgrade` inside one SQLite BEGIN ... COMMIT.

    pysqlite commits before DDL on its own unless the transaction is begun explicitly (the
    documented SQLAlchemy recipe: driver autocommit, then BEGIN on every SQLAlchemy begin).
    """
    module = migration_0003()
    tx_engine = sa.create_engine(engine.url, connect_args={"isolation_level": None})

    @sa.event.listens_for(tx_engine, "begin")
    def _begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN")

    try:
        with tx_engine.begin() as conn:
            ctx = MigrationContext.configure(conn, opts={"render_as_batch": True})
            with Operations.context(ctx):
                getattr(module, step)()
    finally:
        tx_engine.dispose()


def products_database(path: Path) -> Engine:
    """A catalog at the migrations' head plus 0003 (when Alembic has not applied it already)."""
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = make_engine(url)
    if "products" not in sa.inspect(engine).get_table_names():
        run_migration(engine)
    return engine


@dataclass
class ProductRow:
    key: str
    title: str | None = None
    url: str | None = None
    price: float | None = None
    attributes: dict[str, str | float | bool] = field(default_factory=dict)


@dataclass
class ItemRow:
    id: int
    label: str
    product: str | None = None  # a ProductRow key
    deleted: bool = False


def clear(session: Session) -> None:
    for table in ("product_attributes", "attribute_types", "items", "products"):
        session.execute(sa.text(f"DELETE FROM {table}"))


def insert_catalog(
    session: Session, attribute_types: dict[str, str], products: list[ProductRow], items: list[ItemRow]
) -> dict[str, int]:
    """Insert the rows (bulk); returns products.id by key."""
    now = utcnow()
    if attribute_types:
        session.execute(
            sa.insert(AttributeType), [{"name": n, "type": t} for n, t in attribute_types.items()]
        )
    ids: dict[str, int] = {}
    if products:
        session.execute(
            sa.insert(Product),
            [
                dict(
                    id=i,
                    product_key=p.key,
                    title=p.title,
                    url=p.url,
                    price=p.price,
                    metadata_sha256="0" * 64,
                    added_generation=1,
                    deleted_generation=None,
                    created_at=now,
                    updated_at=now,
                )  # fmt: skip
                for i, p in enumerate(products, 1)
            ],
        )
        ids = {p.key: i for i, p in enumerate(products, 1)}
    rows = [
        {
            "product_id": ids[p.key],
            "name": name,
            **{c: None for c in VALUE_COLUMNS.values()},
            VALUE_COLUMNS[attribute_types[name]]: value,
        }  # fmt: skip
        for p in products
        for name, value in p.attributes.items()
    ]
    if rows:
        session.execute(sa.insert(ProductAttribute), rows)
    if items:
        session.execute(
            sa.insert(items_table),
            [
                dict(
                    id=it.id,
                    path=f"{it.label}/{it.id}.jpg",
                    label=it.label,
                    sha256="0" * 64,
                    size=1,
                    mtime_ns=0,
                    width=1,
                    height=1,
                    added_generation=1,
                    deleted_generation=2 if it.deleted else None,
                    created_at=now,
                    updated_at=now,
                    product_id=ids[it.product] if it.product is not None else None,
                )  # fmt: skip
                for it in items
            ],
        )
    return ids
