"""`imgrec index --catalog`: products stored with the generation, metadata-only changes, row problems,
rollback of products and links (real SQLite and FAISS files, the real CLI)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from imgrec.cli import cli
from indexer import IndexOptions, open_snapshot, run_index
from indexer.db import open_database
from indexer.products import attribute_facets
from tests.support import make_inventory, write_image

FIELDS = ["product_id", "image", "title", "price", "color"]


def write_catalog(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(rows)
    return path


def shop_rows(images: list[str]) -> list[dict]:
    """Two images per product; colours alternate red / blue; prices 10, 20, ..."""
    rows = []
    for i, image in enumerate(images):
        p = i // 2
        rows.append(
            {"product_id": f"SKU-{p}", "image": image, "title": f"Item {p}", "price": 10 * (p + 1),
             "color": "red" if p % 2 == 0 else "blue"}
        )  # fmt: skip
    return rows


@pytest.fixture
def shop(tmp_path, model):
    inventory, index = tmp_path / "inventory", tmp_path / "index"
    images = sorted(p.relative_to(inventory).as_posix() for p in make_inventory(inventory, 8))
    return inventory, model, index, images


def _links(index: Path) -> dict[str, str | None]:
    engine = open_database(index, migrate=False)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT i.path, p.product_key FROM items i LEFT JOIN products p ON p.id = i.product_id "
                    "WHERE i.deleted_generation IS NULL"
                )
            ).all()
        return dict(rows)
    finally:
        engine.dispose()


def _titles(index: Path) -> dict[str, tuple]:
    engine = open_database(index, migrate=False)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT product_key, title, price, deleted_generation IS NULL FROM products")
            ).all()
        return {k: (t, p, bool(live)) for k, t, p, live in rows}
    finally:
        engine.dispose()


def test_catalog_links_images_and_reports_bad_rows(shop, tmp_path):
    inventory, model, index, images = shop
    rows = shop_rows(images[:6])  # images 6 and 7 are not in the catalog
    rows += [
        {"product_id": "", "image": images[6], "title": "x", "price": 1, "color": "red"},
        {"product_id": "SKU-9", "image": "missing/nope.jpg", "title": "y", "price": 2, "color": "red"},
        {"product_id": "SKU-8", "image": images[7], "title": "z", "price": "€3", "color": "red"},
    ]
    cat = write_catalog(tmp_path / "shop.csv", rows)
    args = ["index", "--inventory", str(inventory), "--model", str(model), "--index", str(index)]
    out = CliRunner().invoke(cli, [*args, "--catalog", str(cat)])
    assert out.exit_code == 0, out.output
    assert "catalog shop.csv: 9 rows, 3 products, 6 images" in out.output
    assert "3 rows left out" in out.output and "line 8:" in out.output and "line 10:" in out.output

    links = _links(index)
    assert len(links) == 8  # images outside the catalog are indexed, without a product
    assert {links[i] for i in images[:6]} == {"SKU-0", "SKU-1", "SKU-2"}
    assert links[images[6]] is None and links[images[7]] is None
    snap = open_snapshot(index)
    try:
        summary = snap.generation.summary
        assert summary["catalog"]["n_problems"] == 3
        engine = open_database(index, migrate=False)
        with engine.connect() as conn, sa.orm.Session(bind=conn) as session:
            assert summary["facets"] == attribute_facets(session)
        engine.dispose()
    finally:
        snap.close()
    status = CliRunner().invoke(cli, ["status", str(index)])
    assert status.exit_code == 0 and "3 rows left out" in status.output and "line 9:" in status.output


def test_metadata_only_change_publishes_without_embedding_and_rolls_back(shop, tmp_path):
    inventory, model, index, images = shop
    cat = write_catalog(tmp_path / "shop.csv", shop_rows(images))
    first = run_index(inventory, model, index, IndexOptions(catalog=cat))
    assert first.added == 8 and _titles(index)["SKU-1"] == ("Item 1", 20.0, True)

    again = run_index(inventory, model, index, IndexOptions(catalog=cat))
    assert again.published == [] and again.generation_id == first.generation_id  # nothing changed

    rows = shop_rows(images)
    for r in rows:
        if r["product_id"] == "SKU-1":
            r["title"], r["price"] = "Item one", 25
        if r["product_id"] == "SKU-3":
            r["product_id"] = "SKU-0"  # its images join SKU-0; SKU-3 leaves the catalog
            r["title"], r["price"], r["color"] = "Item 0", 10, "red"
    write_catalog(cat, rows)
    before = sorted(p.name for p in (index / "segments").iterdir())
    meta = run_index(inventory, model, index, IndexOptions(catalog=cat))
    assert (meta.added, meta.updated, meta.deleted, meta.decoded) == (0, 0, 0, 0)
    assert len(meta.published) == 1 and meta.generation_id > first.generation_id
    assert sorted(p.name for p in (index / "segments").iterdir()) == before  # no new segment
    titles = _titles(index)
    assert titles["SKU-1"] == ("Item one", 25.0, True) and titles["SKU-3"][2] is False
    assert _links(index)[images[6]] == "SKU-0"

    write_image(inventory / images[0], seed=99)  # an image change embeds only that image
    one = run_index(inventory, model, index, IndexOptions(catalog=cat))
    assert (one.updated, one.decoded) == (1, 1)

    for _ in range(2):  # back to the first catalog: products, fields and links as they were
        out = CliRunner().invoke(cli, ["rollback", str(index)])
        assert out.exit_code == 0, out.output
    assert _titles(index)["SKU-1"] == ("Item 1", 20.0, True) and _titles(index)["SKU-3"][2] is True
    assert _links(index)[images[6]] == "SKU-3"


def test_without_a_catalog_nothing_changes(shop):
    inventory, model, index, _ = shop
    s = run_index(inventory, model, index)
    assert s.catalog is None and set(_links(index).values()) == {None}
    snap = open_snapshot(index)
    try:
        assert "catalog" not in snap.generation.summary
    finally:
        snap.close()


def test_nothing_indexable_exits_non_zero(tmp_path, model):
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "notes.txt").write_text("not an image")
    cat = tmp_path / "shop.jsonl"
    cat.write_text(json.dumps({"product_id": "A", "image": "notes.txt"}) + "\n")
    out = CliRunner().invoke(
        cli,
        ["index", "--inventory", str(inventory), "--model", str(model), "--index", str(tmp_path / "ix"),
         "--catalog", str(cat)],
    )  # fmt: skip
    assert out.exit_code == 1 and "nothing could be indexed" in out.output
    assert "line 1:" in out.output
