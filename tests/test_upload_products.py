"""An upload's product fields (`POST /v1/items` with product_id, title, url, price, attributes) create
or update its product, in the publish that adds the item: a real server and a real watcher
(`imgrec index --watch --catalog`); the catalog file's next sync and rollback run in-process on a
real index (`apply_batch`, `run_index`, `imgrec rollback`)."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.orm import Session

from imgrec.cli import cli
from indexer import IndexOptions, run_index
from indexer import jobs as queue
from indexer.db import DATABASE_FILE, open_database
from indexer.filter_sql import attribute_types_of
from indexer.live import apply_batch
from indexer.uploads import product_fields
from tests.support import (
    Api,
    Catalog,
    job_when_done,
    post_item,
    wait_for,
    watched_copy,
    write_shop,
)


@pytest.fixture(scope="module")
def shop(catalog: Catalog, tmp_path_factory, make_app, serve) -> Iterator[tuple[Catalog, Api]]:
    """An index built with a catalog file, served, and watched with the same `--catalog`."""
    with watched_copy(
        catalog, tmp_path_factory.mktemp("upload-shop"), make_app, serve, with_shop=True
    ) as watched:
        yield watched


def served(api: Api, generation: int, path: str) -> dict:
    """GET `path` once the server serves `generation` or a newer one."""

    def probe() -> dict | None:
        body = api.get(path).json()
        return body if body.get("index", {}).get("generation", 0) >= generation else None

    return wait_for(f"generation {generation} served", probe)


def search(api: Api, data: bytes, **params) -> dict:
    r = api.post("/v1/search", params={"k": 10, **params}, files={"image": ("q.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    return r.json()


def indexed(api: Api, r) -> dict:  # noqa: ANN001 - a requests.Response
    assert r.status_code == 202, r.text
    job = job_when_done(api, r.json()["job"]["url"])
    assert job["state"] == "indexed", job
    return job


def test_an_upload_creates_its_product_and_a_second_image_updates_it(shop):
    cat, api = shop
    data = cat.query_bytes(3)
    job = indexed(
        api,
        post_item(
            api,
            data,
            product_id="API-1",
            title="Wool rug",
            url="https://shop.example/api-1",
            price="77.5",
            color="green",
            attributes='{"material": "wool", "size": 42}',
        ),  # fmt: skip
    )
    product = served(api, job["generation"], "/v1/products/API-1")
    assert product["title"] == "Wool rug" and product["price"] == 77.5
    assert product["url"] == "https://shop.example/api-1"
    assert product["attributes"] == {"color": "green", "material": "wool", "size": 42}
    assert [im["id"] for im in product["images"]] == [job["item_id"]]

    top = search(api, data)["results"][0]
    assert top["id"] == job["item_id"] and top["product"]["id"] == "API-1"
    assert top["product"]["title"] == "Wool rug" and top["product"]["attributes"]["material"] == "wool"
    for expr in ('material = "wool" AND price > 70', "size = 42", 'color = "green"'):
        hits = search(api, data, filter=expr)["results"]
        assert [h["product"]["id"] for h in hits] == ["API-1"], expr
    facets = {f["name"]: f for f in api.get("/v1/attributes").json()["attributes"]}
    assert facets["size"]["type"] == "number" and facets["material"]["values"] == [
        {"value": "wool", "count": 1}
    ]

    second = indexed(api, post_item(api, cat.query_bytes(4), product_id="API-1", price="80"))
    after = served(api, second["generation"], "/v1/products/API-1")
    assert [im["id"] for im in after["images"]] == [job["item_id"], second["item_id"]]
    assert after["price"] == 80 and after["title"] == "Wool rug"  # only the fields given change
    grouped = search(api, cat.query_bytes(4))["results"]
    assert grouped[0]["product"]["id"] == "API-1" and grouped[0]["id"] == second["item_id"]
    assert [im["id"] for im in grouped[0]["images"]] == [job["item_id"]]  # its other image

    same = post_item(api, cat.query_bytes(4), product_id="API-1", price="80")  # a retry: the same job
    assert same.json()["job"]["id"] == second["id"]
    fixed = indexed(api, post_item(api, cat.query_bytes(4), product_id="API-1", title="Wool rug, large"))
    assert fixed["id"] != second["id"] and fixed["item_id"] == second["item_id"]  # still one item
    now = served(api, fixed["generation"], "/v1/products/API-1")
    assert now["title"] == "Wool rug, large" and len(now["images"]) == 2

    r = api.patch("/v1/products/API-1", json={"price": 70, "attributes": {"material": "felt", "size": None}})
    patched = indexed(api, r)  # an upload's product takes PATCHes, its new attributes included
    now = served(api, patched["generation"], "/v1/products/API-1")
    assert now["price"] == 70 and now["attributes"] == {"color": "green", "material": "felt"}

    extra = indexed(api, post_item(api, cat.query_bytes(5), product_id="SKU-0"))  # a catalog product
    sku0 = served(api, extra["generation"], "/v1/products/SKU-0")
    assert extra["item_id"] in [im["id"] for im in sku0["images"]] and sku0["title"] == "Thing 0"
    assert len(sku0["images"]) == 3


def test_bad_product_fields_are_400_and_nothing_is_queued(shop):
    cat, api = shop
    with sqlite3.connect(cat.index / DATABASE_FILE) as db:
        before = db.execute("SELECT count(*) FROM jobs").fetchone()
    data = cat.query_bytes(6)
    for fields in (
        {"product_id": "API-2", "price": "cheap"},
        {"product_id": "API-2", "price": "nan"},
        {"product_id": "API-2", "on_sale": "maybe"},  # a boolean attribute of the catalog
        {"product_id": "API-2", "attributes": '{"color": 3}'},  # a string attribute
        {"product_id": "API-2", "attributes": '{"tags": ["a"]}'},
        {"product_id": "API-2", "attributes": '{"price": 3}'},  # a field, not an attribute
        {"product_id": "API-2", "attributes": '{"a`b": "x"}'},  # not a name a filter can say
        {"title": "No product"},  # product fields need a product_id
        {"color": "red"},
    ):
        r = post_item(api, data, **fields)
        assert r.status_code == 400, (fields, r.text)
        assert r.json()["message"], fields
    with sqlite3.connect(cat.index / DATABASE_FILE) as db:
        assert db.execute("SELECT count(*) FROM jobs").fetchone() == before


# --- in-process: the catalog file's next sync, rollback, an upload a scan indexed first -----------


def upload(
    engine,  # noqa: ANN001
    inventory: Path,
    data: bytes,
    attributes_json: dict | None = None,
    **form: str,
) -> queue.JobRecord:
    """What `POST /v1/items` does: the file saved under `_uploads/`, an add job queued."""
    with Session(engine) as session:
        payload = product_fields(form, attributes_json or {}, attribute_types_of(session))
    payload["label"] = queue.DEFAULT_LABEL
    sha = hashlib.sha256(data).hexdigest()
    path = queue.upload_path(sha, ".jpg", payload["label"], payload.get("product_id"))
    queue.save_upload(inventory, path, data)
    job, _ = queue.enqueue_add(engine, path=path, sha256=sha, payload=payload, key=None)
    return job


def current_generation(index: Path) -> int:
    with sqlite3.connect(index / DATABASE_FILE) as db:
        return db.execute("SELECT current_generation_id FROM index_state").fetchone()[0]


def product_row(index: Path, key: str) -> tuple | None:
    with sqlite3.connect(index / DATABASE_FILE) as db:
        return db.execute(
            "SELECT title, price, origin, deleted_generation IS NULL, "
            "(SELECT count(*) FROM items i WHERE i.product_id = p.id AND i.deleted_generation IS NULL) "
            "FROM products p WHERE product_key = ?",
            (key,),
        ).fetchone()


def test_catalog_syncs_keep_api_products_until_the_file_lists_them_and_rollback_restores(catalog, tmp_path):
    inventory = tmp_path / "inventory"
    shutil.copytree(catalog.inventory, inventory)
    images = sorted(p.relative_to(inventory).as_posix() for p in inventory.rglob("*.jpg"))
    products = write_shop(tmp_path / "products.csv", images)
    index, opts = tmp_path / "index", IndexOptions(catalog=products, keep_generations=10)
    run_index(inventory, catalog.model, index, opts)
    engine = open_database(index)
    try:
        made = upload(engine, inventory, catalog.query_bytes(0), product_id="API-9", title="Mat", price="5")
        extra = upload(engine, inventory, catalog.query_bytes(1), product_id="SKU-1")
        result = apply_batch(inventory, catalog.model, index, {}, options=opts, engine=engine)
        assert result.states == {made.id: "indexed", extra.id: "indexed"}
        first = queue.get_job(engine, made.id).generation_id
        assert product_row(index, "API-9") == ("Mat", 5.0, "api", 1, 1)
        assert product_row(index, "SKU-1")[2:] == ("catalog", 1, 3)

        write_shop(products, images, **{"SKU-2": {"title": "Other"}})  # the file changes, not for API-9
        s = run_index(inventory, catalog.model, index, opts)
        assert s.published
        assert product_row(index, "API-9") == ("Mat", 5.0, "api", 1, 1)  # kept, image linked
        assert product_row(index, "SKU-1")[2:] == ("catalog", 1, 3)  # the uploaded image stays linked

        changed = upload(engine, inventory, catalog.query_bytes(2), product_id="API-9", price="6")
        apply_batch(inventory, catalog.model, index, {}, options=opts, engine=engine)
        assert queue.get_job(engine, changed.id).state == "indexed"
        assert product_row(index, "API-9") == ("Mat", 6.0, "api", 1, 2)
    finally:
        engine.dispose()

    out = CliRunner().invoke(cli, ["rollback", str(index)])  # undoes the second upload
    assert out.exit_code == 0, out.output
    assert product_row(index, "API-9") == ("Mat", 5.0, "api", 1, 1)
    while current_generation(index) >= first:  # back to before any upload
        out = CliRunner().invoke(cli, ["rollback", str(index)])
        assert out.exit_code == 0, out.output
    assert product_row(index, "API-9")[3:] == (0, 0)
    assert product_row(index, "SKU-1")[2:] == ("catalog", 1, 2)

    run_index(
        inventory, catalog.model, index, opts
    )  # the uploads' files are found again: so are their products
    assert product_row(index, "API-9") == ("Mat", 6.0, "api", 1, 2)
    assert product_row(index, "SKU-1")[2:] == ("catalog", 1, 3)


def test_the_file_owns_a_product_id_it_lists(catalog, tmp_path):
    inventory = tmp_path / "inventory"
    shutil.copytree(catalog.inventory, inventory)
    images = sorted(p.relative_to(inventory).as_posix() for p in inventory.rglob("*.jpg"))
    products = write_shop(tmp_path / "products.csv", images[:-2])
    index, opts = tmp_path / "index", IndexOptions(catalog=products)
    run_index(inventory, catalog.model, index, opts)
    engine = open_database(index)
    try:
        upload(engine, inventory, catalog.query_bytes(0), product_id="NEW", title="From the API", price="3")
        apply_batch(inventory, catalog.model, index, {}, options=opts, engine=engine)
    finally:
        engine.dispose()
    assert product_row(index, "NEW") == ("From the API", 3.0, "api", 1, 1)
    with open(products, "a") as f:  # the feed now lists NEW, with one of the shop's photos
        f.write(f"NEW,{images[-1]},From the feed,4,red,false\n")
    run_index(inventory, catalog.model, index, opts)
    assert product_row(index, "NEW") == ("From the feed", 4.0, "catalog", 1, 2)  # the upload stays linked


def test_an_upload_a_scan_indexed_first_still_gets_its_product(catalog, tmp_path):
    """The watcher may index the uploaded file (a folder event) before its job is committed."""
    inventory = tmp_path / "inventory"
    shutil.copytree(catalog.inventory, inventory)
    index = tmp_path / "index"
    run_index(inventory, catalog.model, index)
    engine = open_database(index)
    try:
        job = upload(engine, inventory, catalog.query_bytes(0), product_id="P-1", title="Early", shade="dark")
        run_index(inventory, catalog.model, index)  # a plain scan: the file is an item, no product
        assert product_row(index, "P-1") is None
        result = apply_batch(inventory, catalog.model, index, {}, engine=engine)
        assert result.states == {job.id: "indexed"}
    finally:
        engine.dispose()
    assert product_row(index, "P-1") == ("Early", None, "api", 1, 1)


def attributes_of(index: Path, key: str) -> dict:
    with sqlite3.connect(index / DATABASE_FILE) as db:
        rows = db.execute(
            "SELECT a.name, coalesce(a.string_value, a.number_value, a.bool_value) FROM product_attributes a"
            " JOIN products p ON p.id = a.product_id WHERE p.product_key = ? ORDER BY a.name",
            (key,),
        )
        return dict(rows.fetchall())


def test_a_file_column_that_retypes_an_uploads_attribute_wins_and_rollback_restores(catalog, tmp_path):
    inventory = tmp_path / "inventory"
    shutil.copytree(catalog.inventory, inventory)
    images = sorted(p.relative_to(inventory).as_posix() for p in inventory.rglob("*.jpg"))
    products = tmp_path / "products.csv"
    products.write_text(
        "product_id,image,title\n" + "".join(f"F-{i},{im},Thing\n" for i, im in enumerate(images))
    )
    index, opts = tmp_path / "index", IndexOptions(catalog=products, keep_generations=10)
    run_index(inventory, catalog.model, index, opts)
    engine = open_database(index)
    try:
        upload(engine, inventory, catalog.query_bytes(0), product_id="API-S", size="L", shade="dark")
        apply_batch(inventory, catalog.model, index, {}, options=opts, engine=engine)
    finally:
        engine.dispose()
    assert attributes_of(index, "API-S") == {"shade": "dark", "size": "L"}

    rows = "".join(f"F-{i},{im},Thing,{40 + i}\n" for i, im in enumerate(images))
    products.write_text("product_id,image,title,size\n" + rows)  # the file's own size: a number
    run_index(inventory, catalog.model, index, opts)
    assert attributes_of(index, "API-S") == {"shade": "dark"}  # the file's type wins; the rest stays
    assert attributes_of(index, "F-0") == {"size": 40.0}
    with sqlite3.connect(index / DATABASE_FILE) as db:
        types = dict(db.execute("SELECT name, type || ':' || origin FROM attribute_types").fetchall())
    assert types == {"size": "number:catalog", "shade": "string:api"}

    out = CliRunner().invoke(cli, ["rollback", str(index)])
    assert out.exit_code == 0, out.output
    assert attributes_of(index, "API-S") == {"shade": "dark", "size": "L"}
    with sqlite3.connect(index / DATABASE_FILE) as db:
        types = dict(db.execute("SELECT name, type || ':' || origin FROM attribute_types").fetchall())
    assert types == {"size": "string:api", "shade": "string:api"}


def test_an_upload_whose_fields_no_longer_fit_fails_alone_and_nothing_of_it_is_indexed(catalog, tmp_path):
    """Both accepted at POST (`size` was new to both); the batch applies the first, so the second's
    number no longer fits: its job fails with the reason, its file and item never appear."""
    inventory = tmp_path / "inventory"
    shutil.copytree(catalog.inventory, inventory)
    index = tmp_path / "index"
    run_index(inventory, catalog.model, index)
    engine = open_database(index)
    try:
        first = upload(engine, inventory, catalog.query_bytes(0), product_id="A", size="L")
        with Session(engine) as session:
            payload = product_fields({"product_id": "B"}, {"size": 3}, attribute_types_of(session))
        assert payload["attributes"] == {"size": 3.0}
        second = upload(
            engine, inventory, catalog.query_bytes(1), product_id="B", attributes_json={"size": 3}
        )
        result = apply_batch(inventory, catalog.model, index, {}, engine=engine)
        assert result.states == {first.id: "indexed", second.id: "failed"}
        reason = queue.get_job(engine, second.id).reason
        assert "size" in reason and "string" in reason

        other = upload(engine, inventory, catalog.query_bytes(2), product_id="C", grade="x")
        again = upload(
            engine, inventory, catalog.query_bytes(0), product_id="A", attributes_json={"grade": 5}
        )
        assert again.path == first.path  # the same file, other fields
        result = apply_batch(inventory, catalog.model, index, {}, engine=engine)
        assert result.states == {other.id: "indexed", again.id: "failed"}
        assert (inventory / first.path).exists()  # the first upload's file and item stay
    finally:
        engine.dispose()
    assert product_row(index, "A") == (None, None, "api", 1, 1)
    assert attributes_of(index, "A") == {"size": "L"}
    assert product_row(index, "B") is None
    assert not (inventory / second.path).exists()
    with sqlite3.connect(index / DATABASE_FILE) as db:
        assert db.execute("SELECT count(*) FROM items WHERE path = ?", (second.path,)).fetchone() == (0,)
