"""`PATCH /v1/products/{id}` (issue 14): a product's metadata changed over the API, applied by a real
watcher (`imgrec index --watch --catalog`) behind a real server, published without a new segment,
undone by `imgrec rollback`; and what the next sync of the catalog file does to a patched product."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from imgrec.cli import cli
from indexer import IndexOptions, run_index
from indexer import jobs as queue
from indexer.db import DATABASE_FILE, open_database
from indexer.live import apply_batch
from tests.support import (
    Api,
    Catalog,
    job_when_done,
    wait_for,
    watched_copy,
    write_shop,
)


def segments_of(index: Path, generation: int) -> list[int]:
    with sqlite3.connect(index / DATABASE_FILE) as db:
        rows = db.execute(
            "SELECT segment_id FROM generation_segments WHERE generation_id = ? ORDER BY segment_id",
            (generation,),
        )
        return [r[0] for r in rows]


def parent_of(index: Path, generation: int) -> int:
    with sqlite3.connect(index / DATABASE_FILE) as db:
        return db.execute("SELECT parent_id FROM generations WHERE id = ?", (generation,)).fetchone()[0]


@pytest.fixture(scope="module")
def patched_shop(catalog: Catalog, tmp_path_factory, make_app, serve) -> Iterator[tuple[Catalog, Api]]:
    """An index built with a catalog file, served, and watched with the same `--catalog`."""
    with watched_copy(catalog, tmp_path_factory.mktemp("patch"), make_app, serve, with_shop=True) as watched:
        yield watched


def _search(api: Api, cat: Catalog, **params) -> dict:
    r = api.post("/v1/search", params=params, files={"image": ("q.jpg", cat.query_bytes(0), "image/jpeg")})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_patch_is_published_without_a_new_segment_and_rollback_restores_it(patched_shop):
    cat, api = patched_shop
    before = api.get("/v1/products/SKU-1").json()
    assert before["title"] == "Thing 1" and before["price"] == 20
    assert before["attributes"] == {"color": "blue", "on_sale": False}
    served = before["index"]["generation"]

    r = api.patch(
        "/v1/products/SKU-1",
        json={
            "title": "Blue thing, reduced",
            "price": 987.5,
            "attributes": {"color": "teal", "on_sale": None},
        },
    )
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    assert job["kind"] == "patch" and job["state"] == "queued" and r.headers["Location"].endswith(job["url"])
    done = job_when_done(api, job["url"])
    assert done["state"] == "indexed" and done["item_id"] is None, done
    gen = done["generation"]
    assert gen > served
    assert segments_of(cat.index, gen) == segments_of(
        cat.index, parent_of(cat.index, gen)
    )  # nothing embedded

    def patched() -> dict | None:
        p = api.get("/v1/products/SKU-1").json()
        return p if p["index"]["generation"] >= gen else None

    now = wait_for("the patched generation served", patched)
    assert now["title"] == "Blue thing, reduced" and now["price"] == 987.5
    assert now["attributes"] == {"color": "teal"}
    assert [im["id"] for im in now["images"]] == [im["id"] for im in before["images"]]  # same items
    hits = _search(api, cat, k=10, filter="price > 900")["results"]
    assert hits and {h["product"]["id"] for h in hits} == {"SKU-1"}
    assert hits[0]["product"]["title"] == "Blue thing, reduced"
    assert _search(api, cat, k=10, filter='color = "teal"')["results"]
    facets = {a["name"]: a for a in api.get("/v1/attributes").json()["attributes"]}
    assert facets["price"]["max"] == 987.5

    out = CliRunner().invoke(cli, ["rollback", str(cat.index)])
    assert out.exit_code == 0, out.output

    def restored() -> dict | None:
        p = api.get("/v1/products/SKU-1").json()
        return p if p["index"]["generation"] < gen else None

    back = wait_for("the rolled-back generation served", restored)
    assert back["title"] == "Thing 1" and back["price"] == 20
    assert back["attributes"] == {"color": "blue", "on_sale": False}
    assert _search(api, cat, k=10, filter="price > 900")["results"] == []


def test_idempotency_and_refusals(patched_shop):
    cat, api = patched_shop
    key = {"Idempotency-Key": "patch-sku-2-once"}
    first = api.patch("/v1/products/SKU-2", json={"price": 31}, headers=key)
    again = api.patch("/v1/products/SKU-2", json={"price": 31}, headers=key)
    assert first.status_code == again.status_code == 202, first.text
    assert first.json()["job"]["id"] == again.json()["job"]["id"]
    other = api.patch("/v1/products/SKU-2", json={"price": 32}, headers=key)
    assert other.status_code == 409, other.text
    form = api.patch("/v1/products/SKU-2", data={"title": "Form-made", "attributes": '{"on_sale": true}'})
    assert form.status_code == 202, form.text
    assert job_when_done(api, form.json()["job"]["url"])["state"] == "indexed"
    assert job_when_done(api, first.json()["job"]["url"])["state"] == "indexed"
    wait_for("both patches served", lambda: api.get("/v1/products/SKU-2").json()["title"] == "Form-made")
    product = api.get("/v1/products/SKU-2").json()
    assert product["price"] == 31 and product["attributes"]["on_sale"] is True

    assert api.patch("/v1/products/SKU-999", json={"price": 1}).status_code == 404
    for body in (
        {"price": "cheap"},  # wrong type
        {"price": True},
        {"title": 5},
        {"colour": "red"},  # unknown top-level field
        {"attributes": {"on_sale": "yes"}},  # conflicts with the attribute's type
        {"attributes": {"color": 3}},
        {"attributes": {"size": "XL"}},  # not an attribute of the catalog
        {"attributes": ["color"]},
        {},
        [1, 2],
    ):
        r = api.patch("/v1/products/SKU-2", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["message"]
    assert (
        api.patch("/v1/products/SKU-2", data=b"price=1", headers={"Content-Type": "text/plain"}).status_code
        == 400
    )
    assert api.patch("/v1/products/SKU-2", data={"price": "x"}).status_code == 400
    bad_json = api.patch("/v1/products/SKU-2", data=b"{nope", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400, bad_json.text
    assert (
        api.patch("/v1/products/SKU-2", json={"price": 1}, headers={"Authorization": None}).status_code == 401
    )
    documented = api.get("/openapi.json").json()["paths"]["/v1/products/{product_id}"]["patch"]
    assert "requestBody" in documented and {"202", "400", "404", "409"} <= set(documented["responses"])
    kinds = {k for (k,) in sqlite3.connect(cat.index / DATABASE_FILE).execute("SELECT kind FROM jobs")}
    assert kinds == {"patch"}  # the refused requests queued nothing


def test_the_file_wins_only_when_its_row_for_the_product_changes(catalog, tmp_path):
    """Last writer wins, per product: a re-sync of the file leaves a patch alone unless the file's
    own row for that product changed since it was last stored."""
    inventory = tmp_path / "inventory"
    shutil.copytree(catalog.inventory, inventory)
    images = sorted(p.relative_to(inventory).as_posix() for p in inventory.rglob("*.jpg"))
    shop = write_shop(tmp_path / "products.csv", images)
    index, opts = tmp_path / "index", IndexOptions(catalog=shop)
    run_index(inventory, catalog.model, index, opts)

    def price(sku: str) -> float:
        with sqlite3.connect(index / DATABASE_FILE) as db:
            return db.execute("SELECT price FROM products WHERE product_key = ?", (sku,)).fetchone()[0]

    engine = open_database(index)
    try:
        job, _ = queue.enqueue_patch(engine, "SKU-0", {"price": 5.0}, None)
        gone, _ = queue.enqueue_patch(engine, "SKU-1", {"price": 6.0}, None)
        with sqlite3.connect(index / DATABASE_FILE) as db:  # the product leaves before the batch
            db.execute("UPDATE products SET deleted_generation = 1 WHERE product_key = 'SKU-1'")
        result = apply_batch(inventory, catalog.model, index, {}, options=opts, engine=engine)
        assert result.states == {job.id: "indexed", gone.id: "failed"}
        assert "no longer in the catalog" in queue.get_job(engine, gone.id).reason
    finally:
        engine.dispose()
        with sqlite3.connect(index / DATABASE_FILE) as db:
            db.execute("UPDATE products SET deleted_generation = NULL WHERE product_key = 'SKU-1'")
    assert price("SKU-0") == 5.0 and result.summary.products_patched == 1

    run_index(inventory, catalog.model, index, opts)  # the same file again
    write_shop(shop, images, **{"SKU-2": {"title": "Other"}})  # the file changes, not SKU-0's row
    s = run_index(inventory, catalog.model, index, opts)
    assert s.published and price("SKU-0") == 5.0
    write_shop(shop, images, **{"SKU-2": {"title": "Other"}, "SKU-0": {"price": 11}})  # SKU-0's row changes
    run_index(inventory, catalog.model, index, opts)
    assert price("SKU-0") == 11.0
