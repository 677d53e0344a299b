"""Catalog databases with products for tests: the real migrations (Alembic, to head) on a real SQLite
file, then rows inserted in bulk."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from indexer.db import VALUE_COLUMNS, AttributeType, Item, Product, ProductAttribute, open_database

ITEMS = Item.__table__


def products_database(path: Path) -> Engine:
    """A catalog at the migrations' head (`path` names the catalog file; its folder is the index dir)."""
    assert path.name == "catalog.sqlite", path
    return open_database(path.parent)


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
    now = dt.datetime(2026, 1, 1)
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
            sa.insert(ITEMS),
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
