"""The product tables of the index's catalog (issue 12): a shop's products, their typed attributes.

Tables (migration 0003)
    products            one row per catalog product; `product_key` is the catalog's `product_id`
    product_attributes  one row per (product, attribute) that has a value: typed value columns
    attribute_types     one row per attribute name: string | number | boolean
    product_changes     what each generation did to a product, with what rollback restores
    items.product_id    the product an image belongs to (NULL: no catalog, or not in it)

Attributes are an entity-attribute-value table, not a JSON column: a filter atom compiles to
`product_id IN (SELECT product_id FROM product_attributes WHERE name = ? AND number_value < ?)` with
every literal a bound parameter and a real typed column (SQLite's JSON functions return 1 for true
and would compare "1" with 1 by its own casting rules); each atom is TRUE or FALSE, never NULL, so
the "missing never matches" semantics needs no COALESCE; (name, value) indexes serve selective
filters and facet counts (GROUP BY name, string_value) without per-attribute DDL.

Until integration these models live on their own `ProductsBase`, whose metadata also holds copies of
`generations` and of `items` with the new `product_id` column: `ProductsBase.metadata` is the whole
schema after 0003, while `indexer.db.Base.metadata` stays the migrations' head (0001/0002), so the
suite's ORM-versus-migrations check keeps holding. Integration: declare these classes on `Base`,
add `product_id` to `Item`, and drop `ProductsBase` and the two copies.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, Column, Float, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from indexer.db import NAMING_CONVENTION, Generation, Item, utcnow

VALUE_COLUMNS = {"string": "string_value", "number": "number_value", "boolean": "bool_value"}


class ProductsBase(DeclarativeBase):
    """The product tables' metadata until integration (then: `indexer.db.Base`)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


generations_table = Generation.__table__.to_metadata(ProductsBase.metadata)
items_table = Item.__table__.to_metadata(ProductsBase.metadata)  # + product_id, below


class Product(ProductsBase):
    """A catalog product: the unit a shop sells; its images are items with `product_id` = `id`."""

    __tablename__ = "products"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_key: Mapped[str] = mapped_column(String, unique=True)  # the catalog's product_id (SKU)
    title: Mapped[str | None] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(Text)
    price: Mapped[float | None] = mapped_column(Float, index=True)
    metadata_sha256: Mapped[str] = mapped_column(String(64))  # catalog_file.CatalogProduct.metadata_sha256
    added_generation: Mapped[int] = mapped_column(Integer)
    deleted_generation: Mapped[int | None] = mapped_column(Integer, index=True)  # None while in the catalog
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ProductAttribute(ProductsBase):
    """One attribute value of a product; exactly the value column of the attribute's type is set."""

    __tablename__ = "product_attributes"
    # one covering index per value type: a filter atom (`name = ? AND value op ?` -> product ids) and
    # the columns reader (all values of one name) are index-only range scans
    __table_args__ = (
        Index("ix_product_attributes_string", "name", "string_value", "product_id"),
        Index("ix_product_attributes_number", "name", "number_value", "product_id"),
        Index("ix_product_attributes_bool", "name", "bool_value", "product_id"),
    )

    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String, primary_key=True)
    string_value: Mapped[str | None] = mapped_column(Text)
    number_value: Mapped[float | None] = mapped_column(Float)
    bool_value: Mapped[bool | None] = mapped_column(Boolean)


class AttributeType(ProductsBase):
    """The type inferred for an attribute column of the catalog."""

    __tablename__ = "attribute_types"

    name: Mapped[str] = mapped_column(String, primary_key=True)
    type: Mapped[str] = mapped_column(String(8))  # string | number | boolean


class ProductChange(ProductsBase):
    """One product's change in one generation; `previous` holds what rollback restores."""

    __tablename__ = "product_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    change: Mapped[str] = mapped_column(String(16))  # added | updated | deleted
    # the product's fields and attributes before the change ({"title": ..., "attributes": {...}})
    previous: Mapped[dict[str, Any] | None] = mapped_column(JSON)


# `items.product_id` (migration 0003): at integration, `Item.product_id` in indexer.db
items_table.append_column(Column("product_id", Integer, ForeignKey("products.id"), nullable=True, index=True))
