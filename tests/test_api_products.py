"""The API on an index built with a product catalog (real index, the app's test client): product fields in
results, grouping, filters (and bad ones), product pages, the listing's cursor, attributes."""

from __future__ import annotations

import csv
import io

import pytest

from indexer import IndexOptions, run_index

COLORS = {"boxes": "red", "mugs": "blue", "rings": "green"}


@pytest.fixture(scope="module")
def shop(catalog, tmp_path_factory):
    """The session's inventory with a catalog: 4 images per product, prices 10, 20, ...; images of
    the last folder are not in the catalog."""
    root = tmp_path_factory.mktemp("shop")
    images = sorted(p.relative_to(catalog.inventory).as_posix() for p in catalog.inventory.rglob("*.jpg"))
    folders = sorted({i.split("/")[0] for i in images})
    listed = [i for i in images if not i.startswith(folders[-1] + "/")]
    with open(root / "products.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "image", "title", "url", "price", "color", "on_sale"])
        for n, image in enumerate(listed):
            p = n // 4
            folder = image.split("/")[0]
            color = next((c for shape, c in COLORS.items() if shape in folder), "black")
            w.writerow([f"SKU-{p:02d}", image, f"Thing {p}", f"https://shop.example/{p}", 10 * (p + 1), color,
                        "true" if p % 3 == 0 else "false"])  # fmt: skip
    run_index(catalog.inventory, catalog.model, root / "index", IndexOptions(catalog=root / "products.csv"))
    return root / "index", len(listed) // 4, len(images) - len(listed)


@pytest.fixture(scope="module")
def shop_client(shop, make_app):
    """The API on the shop's index, through its test client."""
    return make_app(INDEX=str(shop[0]), RELOAD_INTERVAL=0).test_client()


def _search(client, catalog, **params):
    image = (io.BytesIO(catalog.query_bytes(0)), "q.jpg", "image/jpeg")
    return client.post("/v1/search", query_string=params, data={"image": image})


def test_results_are_products_by_default(shop_client, catalog):
    r = _search(shop_client, catalog, k=5)
    assert r.status_code == 200, r.text
    body = r.json
    assert body["group_by"] == "product" and body["exact"] is True
    keys = [res["product"]["id"] if res["product"] else f"item{res['id']}" for res in body["results"]]
    assert len(keys) == 5 and len(set(keys)) == 5  # distinct products
    scores = [res["score"] for res in body["results"]]
    assert scores == sorted(scores, reverse=True)
    with_product = next(res for res in body["results"] if res["product"])
    assert set(with_product["product"]) == {"id", "title", "url", "price", "attributes"}
    assert with_product["matched_image"]["id"] == with_product["id"]
    assert len(with_product["images"]) == 3 and all(im["thumbnail_url"] for im in with_product["images"])

    flat = _search(shop_client, catalog, k=8, group_by="none").json
    assert flat["group_by"] == "none" and "images" not in flat["results"][0]
    assert flat["results"][0]["id"] == body["results"][0]["id"]  # the best image leads both


def test_filter_selects_and_a_bad_filter_says_where(shop_client, catalog):
    body = _search(shop_client, catalog, k=50, filter='price < 40 AND color != "black"').json
    assert body["results"] and body["filter"] == 'price < 40 AND color != "black"'
    assert all(res["product"]["price"] < 40 for res in body["results"])
    assert _search(shop_client, catalog, k=5, filter="price > 100000").json["results"] == []

    bad = _search(shop_client, catalog, filter='colour = "red"')
    assert bad.status_code == 400
    err = bad.json
    assert err["error"] == "bad_filter" and err["column"] == 1 and "color" in err["known_names"]
    assert "^" in err["caret"]
    typed = shop_client.get("/v1/products", query_string={"filter": 'price > "x"'}).json
    assert typed["error"] == "bad_filter" and typed["column"] == 9


def test_batch_and_similar_take_filter_and_group_by(shop_client, catalog):
    images = [(io.BytesIO(catalog.query_bytes(n)), f"{n}.jpg", "image/jpeg") for n in range(2)]
    r = shop_client.post(
        "/v1/search/batch", query_string={"k": 3, "filter": "on_sale"}, data={"images": images}
    )
    assert r.status_code == 200, r.text
    for entry in r.json["answers"]:
        assert all(res["product"]["attributes"]["on_sale"] is True for res in entry["results"])
    first = _search(shop_client, catalog, k=1, group_by="none").json["results"][0]["id"]
    sim = shop_client.get(
        f"/v1/items/{first}/similar", query_string={"k": 4, "group_by": "none", "filter": "price >= 20"}
    )
    assert sim.status_code == 200, sim.text
    assert all(res["id"] != first and res["product"]["price"] >= 20 for res in sim.json["results"])


def test_product_pages_listing_and_attributes(shop, shop_client):
    _, n_products, _ = shop
    one = shop_client.get("/v1/products/SKU-01").json
    assert one["id"] == "SKU-01" and one["price"] == 20 and len(one["images"]) == 4
    assert shop_client.get("/v1/products/SKU-999").status_code == 404

    seen, cursor = [], None
    while True:
        page = shop_client.get(
            "/v1/products", query_string={"limit": 3, **({"cursor": cursor} if cursor else {})}
        ).json
        seen += [p["id"] for p in page["products"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"SKU-{p:02d}" for p in range(n_products)] and len(seen) == len(set(seen))
    cheap = shop_client.get("/v1/products", query_string={"filter": "price <= 30"}).json["products"]
    assert [p["id"] for p in cheap] == ["SKU-00", "SKU-01", "SKU-02"]
    assert shop_client.get("/v1/products", query_string={"cursor": "nope"}).json["error"] == "bad_cursor"

    attrs = {a["name"]: a for a in shop_client.get("/v1/attributes").json["attributes"]}
    assert attrs["price"]["min"] == 10 and attrs["price"]["max"] == 10 * n_products
    assert attrs["on_sale"]["type"] == "boolean"
    assert sum(v["count"] for v in attrs["color"]["values"]) == n_products
