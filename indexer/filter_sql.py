"""The filter language compiled to SQLAlchemy expressions (every literal a bound parameter).

    cond = item_condition(expr)                        # over `items` (+ products, attributes)
    ids = session.scalars(select(items.c.id).where(live, cond))
    cond = product_condition(expr, live)               # over `products`: listing products

The reference semantics of `indexer.filters` (the numpy evaluator in `filter_columns` must select
exactly the same items): every comparison and membership is TRUE or FALSE, never NULL, and FALSE when
the value is missing; NOT, AND, OR are then two-valued.

Product fields (`product_id`, `title`, `price`, attributes) are compiled at the product level and
lifted to items once per largest product-only sub-expression: `items.product_id IN (SELECT id FROM
products WHERE ...)`. An item without a product sees every product field missing, so the lifted
sub-expression's value for it is a constant, `value_without_product(expr)`.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from indexer.db import VALUE_COLUMNS, AttributeType, Item, Product, ProductAttribute
from indexer.filters import ITEM_FIELDS, NUMBER, STRING, And, Compare, Expr, In, Not, Or, Value, names_in

ITEMS = Item.__table__

products = Product.__table__
attributes = ProductAttribute.__table__
PRODUCT_COLUMNS = {"product_id": "product_key", "title": "title", "price": "price"}  # filter name -> column
SQL_TYPES = {STRING: sa.Text(), NUMBER: sa.Float(), "boolean": sa.Boolean()}


def item_condition(expr: Expr, attribute_types: dict[str, str], items: sa.Table = ITEMS) -> ColumnElement:
    """A WHERE condition over `items` selecting the images that match `expr` (checked beforehand)."""
    if not names_in(expr) & ITEM_FIELDS:
        return _lift(expr, attribute_types, items)
    if isinstance(expr, Compare | In):
        return _compare(items.c[expr.name], expr, STRING)  # item fields: `label`, never NULL
    if isinstance(expr, Not):
        return sa.not_(item_condition(expr.expr, attribute_types, items))
    join = sa.and_ if isinstance(expr, And) else sa.or_
    return join(*(item_condition(p, attribute_types, items) for p in expr.parts))


def product_condition(
    expr: Expr,
    attribute_types: dict[str, str],
    live_items: ColumnElement,
    items: sa.Table = ITEMS,
) -> ColumnElement:
    """A WHERE condition over `products`: products with at least one live image that matches.

    `live_items` is the condition for the items of the generation (e.g. `deleted_generation IS NULL`).
    """
    if names_in(expr) & ITEM_FIELDS:
        matching = sa.select(items.c.id).where(
            items.c.product_id == products.c.id, live_items, item_condition(expr, attribute_types, items)
        )
        return matching.exists()
    has_live = sa.select(items.c.id).where(items.c.product_id == products.c.id, live_items).exists()
    return sa.and_(_product_level(expr, attribute_types), has_live)


def value_without_product(expr: Expr) -> bool:
    """The value of a product-only expression for an image that has no product (all fields missing)."""
    if isinstance(expr, Compare | In):
        return False
    if isinstance(expr, Not):
        return not value_without_product(expr.expr)
    values = (value_without_product(p) for p in expr.parts)
    return all(values) if isinstance(expr, And) else any(values)


def _lift(expr: Expr, attribute_types: dict[str, str], items: sa.Table) -> ColumnElement:
    """A product-only expression as a condition on items, through their `product_id`."""
    matching = sa.select(products.c.id).where(_product_level(expr, attribute_types)).correlate(None)
    among = items.c.product_id.in_(matching)
    if value_without_product(expr):
        return sa.or_(items.c.product_id.is_(None), among)
    return sa.and_(items.c.product_id.is_not(None), among)


def _product_level(expr: Expr, attribute_types: dict[str, str]) -> ColumnElement:
    """A product-only expression as a condition on `products` rows."""
    if isinstance(expr, Not):
        return sa.not_(_product_level(expr.expr, attribute_types))
    if isinstance(expr, And | Or):
        join = sa.and_ if isinstance(expr, And) else sa.or_
        return join(*(_product_level(p, attribute_types) for p in expr.parts))
    if expr.name in PRODUCT_COLUMNS:
        kind = NUMBER if expr.name == "price" else STRING
        return _compare(products.c[PRODUCT_COLUMNS[expr.name]], expr, kind)
    kind = attribute_types[expr.name]
    value_column = attributes.c[VALUE_COLUMNS[kind]]
    having = sa.select(attributes.c.product_id).where(
        attributes.c.name == sa.literal(expr.name, sa.Text()), _compare(value_column, expr, kind)
    )
    return products.c.id.in_(having)


def _compare(column: ColumnElement, atom: Compare | In, kind: str) -> ColumnElement:
    """`column <op> value` (or IN), FALSE where the column is NULL: never NULL itself."""
    if isinstance(atom, In):
        test = column.in_(sa.bindparam(None, [_bound(v, kind) for v in atom.values], expanding=True))
    else:
        value = sa.literal(_bound(atom.value, kind), SQL_TYPES[kind])
        test = column.operate(_OPERATORS[atom.op], value)
    return sa.and_(column.is_not(None), test)


def _bound(value: Value, kind: str) -> Value:
    return float(value) if kind == NUMBER else value


_OPERATORS = {
    "=": sa.sql.operators.eq,
    "!=": sa.sql.operators.ne,
    "<": sa.sql.operators.lt,
    "<=": sa.sql.operators.le,
    ">": sa.sql.operators.gt,
    ">=": sa.sql.operators.ge,
}


def attribute_types_of(session: Session) -> dict[str, str]:
    """The catalog's attribute types (name -> string | number | boolean)."""
    return dict(session.execute(sa.select(AttributeType.name, AttributeType.type)).all())
