"""The two filter back-ends on real SQLite files: SQL (the reference) and the numpy columns agree.

A small shop checks the semantics by hand (missing attributes, NOT, IN, string order, items without a
product); then random catalogs and random expressions check that SQL, numpy and a plain-Python
reading of the documented semantics select exactly the same items.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from indexer import filter_columns
from indexer.db import Item, Product
from indexer.filter_columns import (
    BoolColumn,
    NumberColumn,
    StringColumn,
    evaluate,
    matching_ids,
    read_item_columns,
)
from indexer.filter_sql import attribute_types_of, item_condition, product_condition
from indexer.filters import ITEM_FIELDS, And, Compare, Expr, In, Not, Or, parse_filter
from tests.support import ItemRow, ProductRow, clear, insert_catalog, products_database

ITEMS = Item.__table__

LIVE = ITEMS.c.deleted_generation.is_(None)

SHOP_TYPES = {"color": "string", "size": "number", "organic": "boolean"}
SHOP_PRODUCTS = [
    ProductRow("SKU-1", "Red shirt", "https://shop/1", 20.0, {"color": "red", "size": 40.0, "organic": True}),
    ProductRow("SKU-2", "Blue shirt", None, 35.5, {"color": "blue", "size": 42.0}),
    ProductRow("SKU-3", "Scarf", None, None, {"organic": False}),  # no colour, no size, no price
    ProductRow("SKU-4", "Émile hat", None, 12.0, {"color": "Red", "size": 56.0, "organic": True}),
]
SHOP_ITEMS = [
    ItemRow(1, "shirts", "SKU-1"),
    ItemRow(2, "shirts", "SKU-1"),
    ItemRow(3, "shirts", "SKU-2"),
    ItemRow(4, "scarves", "SKU-3"),
    ItemRow(5, "hats", "SKU-4"),
    ItemRow(6, "misc", None),  # an image without a product
    ItemRow(7, "shirts", "SKU-2", deleted=True),  # not in the generation
]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    engine = products_database(tmp_path_factory.mktemp("shop") / "catalog.sqlite")
    with Session(engine) as session, session.begin():
        insert_catalog(session, SHOP_TYPES, SHOP_PRODUCTS, SHOP_ITEMS)
    yield engine
    engine.dispose()


def sql_ids(session: Session, expr: Expr, types: dict[str, str]) -> list[int]:
    query = sa.select(ITEMS.c.id).where(LIVE, item_condition(expr, types)).order_by(ITEMS.c.id)
    return session.scalars(query).all()


def live_ids(session: Session) -> np.ndarray:
    return np.asarray(session.scalars(sa.select(ITEMS.c.id).where(LIVE)).all(), np.int64)


@pytest.mark.parametrize(
    "text, expected",
    [
        ('color = "red"', [1, 2]),  # exact, case-sensitive
        ('color != "red"', [3, 5]),  # SKU-3 has no colour, item 6 no product: not selected
        ('NOT color = "red"', [3, 4, 5, 6]),  # ... but NOT of a false comparison is true
        ('color IN ("red", "Red", "green")', [1, 2, 5]),
        ('color NOT IN ("red")', [3, 4, 5, 6]),
        ('color < "b"', [5]),  # "Red" < "b" < "blue" < "red" by code point
        ('color >= "blue"', [1, 2, 3]),
        ("size > 41", [3, 5]),
        ("size <= 40 OR size >= 56", [1, 2, 5]),
        ("price < 30", [1, 2, 5]),
        ("NOT price < 30", [3, 4, 6]),
        ("price != 20", [3, 5]),
        ("organic", [1, 2, 5]),
        ("organic = false", [4]),
        ("organic != true", [4]),
        ("NOT organic", [3, 4, 6]),
        ('label = "shirts"', [1, 2, 3]),
        ('label = "shirts" AND NOT color = "red"', [3]),
        ('label IN ("misc", "hats") OR price > 30', [3, 5, 6]),
        ('NOT (label = "misc" OR color = "red")', [3, 4, 5]),
        ('product_id = "SKU-2"', [3]),
        ('product_id >= "SKU-3"', [4, 5]),
        ('title = "Émile hat"', [5]),
        ('title < "C"', [3]),
        ('NOT product_id = "nope"', [1, 2, 3, 4, 5, 6]),
        ('color = "purple"', []),
    ],
)
def test_semantics_on_a_small_shop(shop, text, expected):
    with Session(shop) as session:
        types = attribute_types_of(session)
        expr = parse_filter(text, types)
        assert sql_ids(session, expr, types) == expected
        cols = read_item_columns(session, live_ids(session))
    assert matching_ids(expr, cols).tolist() == expected


def test_sql_binds_every_literal(shop):
    with Session(shop) as session:
        types = attribute_types_of(session)
    expr = parse_filter('color = "x\'; DROP TABLE items; --" OR size IN (1, 2) OR organic', types)
    compiled = sa.select(ITEMS.c.id).where(item_condition(expr, types)).compile(shop)
    assert "DROP" not in str(compiled) and "color" not in str(compiled)
    assert "x'; DROP TABLE items; --" in compiled.params.values()
    assert "color" in compiled.params.values()


def test_listing_products(shop):
    """A product matches when at least one of its live images does."""
    with Session(shop) as session:
        types = attribute_types_of(session)

        def keys(text: str) -> list[str]:
            cond = product_condition(parse_filter(text, types), types, LIVE)
            return session.scalars(sa.select(Product.product_key).where(cond).order_by(Product.id)).all()

        assert keys('color = "red" OR price > 30') == ["SKU-1", "SKU-2"]
        assert keys('NOT color = "red"') == ["SKU-2", "SKU-3", "SKU-4"]
        assert keys('label = "shirts"') == ["SKU-1", "SKU-2"]
        assert keys('label = "shirts" AND size > 41') == ["SKU-2"]
        assert keys('NOT label = "shirts"') == ["SKU-3", "SKU-4"]


def test_columns_are_typed_and_dictionary_encoded(shop):
    with Session(shop) as session:
        cols = read_item_columns(session, live_ids(session))
    assert cols.ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert cols.product_row.tolist() == [0, 0, 1, 2, 3, 4]  # 4 = "no product"
    assert cols.types == {"product_id": "string", "title": "string", "price": "number", "label": "string",
                          **SHOP_TYPES}  # fmt: skip
    color = cols.product_columns["color"]
    assert isinstance(color, StringColumn) and color.values == ("Red", "blue", "red")
    assert color.codes.tolist() == [2, 1, -1, 0, -1]
    price = cols.product_columns["price"]
    assert isinstance(price, NumberColumn) and np.isnan(price.values[[2, 4]]).all()
    organic = cols.product_columns["organic"]
    assert isinstance(organic, BoolColumn) and organic.present.tolist() == [True, False, True, True, False]
    assert cols.item_columns["label"].values == ("hats", "misc", "scarves", "shirts")
    assert cols.nbytes > 0


def test_columns_read_in_small_pages_are_the_same(shop, monkeypatch):
    with Session(shop) as session:
        ids = live_ids(session)
        whole = read_item_columns(session, ids)
        monkeypatch.setattr(filter_columns, "CHUNK", 2)
        paged = read_item_columns(session, ids)
        some = read_item_columns(session, ids[[1, 4]], names=["color"])
    assert paged.ids.tolist() == whole.ids.tolist()
    assert paged.product_row.tolist() == whole.product_row.tolist()
    for name, col in whole.product_columns.items():
        assert repr(paged.product_columns[name]) == repr(col)
    assert some.ids.tolist() == [2, 5] and set(some.product_columns) == {"color"} and not some.item_columns
    assert matching_ids(parse_filter('color = "Red"', SHOP_TYPES), some).tolist() == [5]
    with pytest.raises(KeyError, match="columns not read"):
        evaluate(parse_filter("size > 1", SHOP_TYPES), some)


def test_columns_refuse_unknown_ids_and_names(shop):
    with Session(shop) as session:
        with pytest.raises(LookupError, match="1 item ids are not in the catalog"):
            read_item_columns(session, np.array([1, 99]))
        with pytest.raises(KeyError, match="no such filterable names"):
            read_item_columns(session, np.array([1]), names=["colour"])


def test_an_empty_generation(shop):
    with Session(shop) as session:
        cols = read_item_columns(session, np.zeros(0, np.int64))
    assert evaluate(parse_filter('NOT color = "red"', SHOP_TYPES), cols).shape == (0,)


# -- property: random catalogs, random expressions -----------------------------------------------

STRINGS = ["", "a", "A", "ab", "b", "é", "e\u0301", "Z", "a b", "ä", "😀", "10", "9"]
NUMBERS = [-1.5, -0.0, 0.0, 0.1, 1.0, 2.0, 10.0, 1e15, float(2**53 + 1), 3.0000000000000004]
ATTRIBUTE_NAMES = ["color", "size", "organic", "Size (EU)", "tag"]

strings = st.one_of(
    st.sampled_from(STRINGS), st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=3)
)
numbers = st.one_of(st.sampled_from(NUMBERS), st.floats(-1e6, 1e6, allow_nan=False))
by_type = {"string": strings, "number": numbers, "boolean": st.booleans()}


@st.composite
def catalogs(draw):
    """(attribute types, products, items): some attributes missing, some items without a product."""
    names = draw(st.lists(st.sampled_from(ATTRIBUTE_NAMES), unique=True, max_size=4))
    types = {n: draw(st.sampled_from(["string", "number", "boolean"])) for n in names}
    products = []
    for i in range(draw(st.integers(0, 8))):
        attrs = {n: draw(by_type[t]) for n, t in types.items() if draw(st.booleans())}
        title = draw(st.none() | strings)
        price = draw(st.none() | numbers)
        products.append(ProductRow(f"P{draw(strings)}{i}", title, None, price, attrs))
    keys = [p.key for p in products]
    items = [
        ItemRow(
            i,
            draw(st.sampled_from(["a", "b", "B", "é"])),
            draw(st.none() | st.sampled_from(keys)) if keys else None,
            deleted=draw(st.booleans()) and i % 3 == 0,
        )  # fmt: skip
        for i in range(1, draw(st.integers(0, 14)) + 1)
    ]
    return types, products, items


def expressions(types: dict[str, str], keys: list[str]):
    fields = {"product_id": "string", "title": "string", "price": "number", "label": "string", **types}
    values = {**by_type, "string": st.one_of(strings, st.sampled_from(keys or ["P"]))}

    def atom(name: str):
        kind = fields[name]
        ops = ["=", "!="] if kind == "boolean" else ["=", "!=", "<", "<=", ">", ">="]
        return st.one_of(
            st.builds(Compare, st.just(name), st.sampled_from(ops), values[kind]),
            st.builds(In, st.just(name), st.lists(values[kind], min_size=1, max_size=10).map(tuple)),
        )

    atoms = st.sampled_from(sorted(fields)).flatmap(atom)
    return st.recursive(
        atoms,
        lambda inner: st.one_of(
            st.builds(Not, inner),
            st.lists(inner, min_size=2, max_size=3).map(lambda p: And(tuple(p))),
            st.lists(inner, min_size=2, max_size=3).map(lambda p: Or(tuple(p))),
        ),
        max_leaves=8,
    )


def reference(expr: Expr, item: ItemRow, product: ProductRow | None) -> bool:
    """The documented semantics, read literally: a missing value makes the comparison false."""
    if isinstance(expr, Not):
        return not reference(expr.expr, item, product)
    if isinstance(expr, And):
        return all(reference(p, item, product) for p in expr.parts)
    if isinstance(expr, Or):
        return any(reference(p, item, product) for p in expr.parts)
    if expr.name in ITEM_FIELDS:
        value = item.label
    elif product is None:
        return False
    else:
        fields = {"product_id": product.key, "title": product.title, "price": product.price}
        value = fields[expr.name] if expr.name in fields else product.attributes.get(expr.name)
    if value is None:
        return False
    if isinstance(expr, In):
        return value in expr.values
    target = expr.value
    return {
        "=": value == target, "!=": value != target, "<": value < target,
        "<=": value <= target, ">": value > target, ">=": value >= target,
    }[expr.op]  # fmt: skip


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One catalog file, emptied and refilled for every example (a copy of a migrated template)."""
    template = products_database(tmp_path_factory.mktemp("template") / "catalog.sqlite")
    template.dispose()
    path = tmp_path_factory.mktemp("scratch") / "catalog.sqlite"
    shutil.copy(template.url.database, path)
    from indexer.db import make_engine

    engine = make_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), catalog=catalogs())
def test_sql_numpy_and_the_semantics_select_the_same_items(scratch, data, catalog):
    types, products, items = catalog
    by_key = {p.key: p for p in products}
    if len(by_key) < len(products):  # keys drawn equal: not a catalog
        return
    with Session(scratch) as session, session.begin():
        clear(session)
        insert_catalog(session, types, products, items)
    live = [it for it in items if not it.deleted]
    with Session(scratch) as session:
        cols = read_item_columns(session, np.asarray([it.id for it in live], np.int64))
        for expr in data.draw(st.lists(expressions(types, list(by_key)), min_size=1, max_size=15)):
            expected = [it.id for it in live if reference(expr, it, by_key.get(it.product))]
            assert sql_ids(session, expr, types) == expected, expr
            assert matching_ids(expr, cols).tolist() == expected, expr
