"""Storing a catalog file's products in a real SQLite catalog, linking images, listing and facets."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image
from sqlalchemy.orm import Session

from indexer.catalog_file import read_catalog
from indexer.db import Item, ProductChange
from indexer.filter_sql import attribute_types_of
from indexer.filters import parse_filter
from indexer.products import (
    BadCursorError,
    attribute_facets,
    link_items,
    list_products,
    product_id_of,
    product_images,
    product_records,
    sync_products,
)
from tests.support import ItemRow, insert_catalog, products_database

ITEMS = Item.__table__

IMAGES = [f"img/{i}.png" for i in range(1, 9)]


@pytest.fixture
def shop(tmp_path: Path):
    """An inventory of 8 images, a catalog database whose 8 items are those images, and a CSV writer."""
    inventory = tmp_path / "inventory"
    (inventory / "img").mkdir(parents=True)
    for rel in IMAGES:
        Image.new("RGB", (2, 2)).save(inventory / rel)
    engine = products_database(tmp_path / "catalog.sqlite")
    with Session(engine) as session, session.begin():
        insert_catalog(session, {}, [], [ItemRow(i, "img") for i in range(1, 9)])
        session.execute(sa.update(ITEMS).values(path=sa.func.printf("img/%d.png", ITEMS.c.id)))
        session.execute(sa.update(ITEMS).where(ITEMS.c.id == 8).values(deleted_generation=1))
        session.execute(
            sa.text(
                "INSERT INTO generations (id, status, faiss_file, item_count, ids_sha256, model_fingerprint, "
                "model_config, dim, metric, index_type, inventory_root, run_summary, created_at) "
                "SELECT value, 'kept', '', 0, '', '', '{}', 1, 'l2', 'flat', '', '{}', '2026-01-01' "
                "FROM json_each('[1,2,3,4]')"
            )
        )

    def catalog(text: str, name: str = "catalog.csv"):
        (tmp_path / name).write_text("product_id,image,title,price,color,organic,size\n" + text)
        return read_catalog(tmp_path / name, inventory)

    yield engine, catalog
    engine.dispose()


FIRST = (
    "A,img/1.png,Shirt,10,red,true,40\n"
    "A,img/2.png,,,,,\n"
    "B,img/3.png,Hat,25,blue,false,57.5\n"
    "C,img/4.png,Scarf,,red,,\n"
    "D,img/5.png,Sock,3,green,true,\n"
    "E,img/8.png,Gone,1,red,true,99\n"  # its only image is deleted: not live
)


def test_sync_stores_products_attributes_and_links(shop):
    engine, catalog = shop
    first = catalog(FIRST)
    with Session(engine) as session, session.begin():
        sync = sync_products(session, first, generation_id=1)
        links = link_items(session, first.image_products, sync.ids)
    assert sorted(sync.ids) == ["A", "B", "C", "D", "E"] and len(sync.added) == 5 and sync.types_changed
    assert links == {1: None, 2: None, 3: None, 4: None, 5: None}  # item 8 is not live: not linked
    with Session(engine) as session:
        assert attribute_types_of(session) == {"color": "string", "organic": "boolean", "size": "number"}
        a = product_records(session, [sync.ids["A"]])[sync.ids["A"]]
        assert a.as_dict() == {
            "id": "A", "title": "Shirt", "url": None, "price": 10.0, "attributes": {"color": "red", "organic": True, "size": 40.0},
        }  # fmt: skip
        assert product_records(session, [sync.ids["C"]])[sync.ids["C"]].attributes == {"color": "red"}
        assert product_images(session, [sync.ids["A"]]) == {
            sync.ids["A"]: [(1, "img/1.png"), (2, "img/2.png")]
        }
        assert product_id_of(session, "B") == sync.ids["B"] and product_id_of(session, "Z") is None
        changes = session.scalars(sa.select(ProductChange.change)).all()
    assert changes == ["added"] * 5


def test_a_second_catalog_changes_only_what_changed(shop):
    engine, catalog = shop
    first = catalog(FIRST)
    with Session(engine) as session, session.begin():
        ids = sync_products(session, first, 1).ids
        link_items(session, first.image_products, ids)
    second = catalog(
        "A,img/1.png,Shirt,10,red,true,40\n"  # unchanged, but img/2 moved to B
        "B,img/3.png,Hat,30,blue,false,57.5\n"  # price changed
        "B,img/2.png,,,,,\n"
        "C,img/4.png,Scarf,,red,,\n"  # unchanged
        "F,img/6.png,New,5,red,false,\n",  # new; D and E gone
        "second.csv",
    )
    with Session(engine) as session, session.begin():
        sync = sync_products(session, second, 2)
        links = link_items(session, second.image_products, sync.ids)
    assert (sync.unchanged, sync.updated, sync.deleted) == (2, [ids["B"]], [ids["D"], ids["E"]])
    assert sync.added == [sync.ids["F"]] and not sync.types_changed
    assert links == {2: ids["A"], 5: ids["D"], 6: None}  # moved, unlinked (D gone), linked
    with Session(engine) as session:
        previous = session.execute(
            sa.select(ProductChange.change, ProductChange.previous).where(ProductChange.generation_id == 2)
        ).all()
        assert ("updated", {"title": "Hat", "url": None, "price": 25.0, "attributes": {"color": "blue", "organic": False, "size": 57.5},
                            "metadata_sha256": first.products["B"].metadata_sha256, "deleted_generation": None,
                                "origin": "catalog"}) in previous  # fmt: skip
        assert sorted(c for c, _ in previous) == ["added", "deleted", "deleted", "updated"]
        assert product_id_of(session, "D") is None
    f = sync.ids["F"]
    third = catalog(FIRST, "third.csv")  # D and E come back under their old ids
    with Session(engine) as session, session.begin():
        sync = sync_products(session, third, 3)
    assert sync.ids["D"] == ids["D"] and ids["D"] in sync.updated and sync.deleted == [f]


def test_listing_with_filters_and_cursor(shop):
    engine, catalog = shop
    first = catalog(FIRST)
    with Session(engine) as session, session.begin():
        ids = sync_products(session, first, 1).ids
        link_items(session, first.image_products, ids)
    with Session(engine) as session:
        types = attribute_types_of(session)

        def keys(text: str | None, limit: int = 10) -> list[list[str]]:
            expr = parse_filter(text, types) if text else None
            pages, cursor = [], None
            while True:
                page = list_products(session, expr, types, limit=limit, cursor=cursor)
                pages.append([p.product_id for p in page.products])
                if page.next_cursor is None:
                    return pages
                cursor = page.next_cursor

        assert keys(None) == [["A", "B", "C", "D"]]  # E has no live image
        assert keys(None, limit=3) == [["A", "B", "C"], ["D"]]
        assert keys(None, limit=2) == [["A", "B"], ["C", "D"]]
        assert keys('color = "red"', limit=1) == [["A"], ["C"]]
        assert keys("NOT organic") == [["B", "C"]]
        assert keys('label = "img" AND price < 20') == [["A", "D"]]
        for bad in ("nope", "eyJhZnRlciI6IC0xfQ", "e30"):  # not base64 json, after -1, {}
            with pytest.raises(BadCursorError):
                list_products(session, None, types, limit=1, cursor=bad)


def test_facets(shop):
    engine, catalog = shop
    first = catalog(FIRST)
    with Session(engine) as session, session.begin():
        ids = sync_products(session, first, 1).ids
        link_items(session, first.image_products, ids)
    with Session(engine) as session:
        facets = attribute_facets(session)
    assert facets == [
        {"name": "price", "type": "number", "min": 3.0, "max": 25.0, "count": 3},  # C has no price
        {"name": "color", "type": "string", "more_values": False,
         "values": [{"value": "red", "count": 2}, {"value": "blue", "count": 1}, {"value": "green", "count": 1}]},
        {"name": "organic", "type": "boolean", "more_values": False,
         "values": [{"value": True, "count": 2}, {"value": False, "count": 1}]},
        {"name": "size", "type": "number", "min": 40.0, "max": 57.5, "count": 2},  # E's 99 is not live
    ]  # fmt: skip
