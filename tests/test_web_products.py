"""The web page on an index built with a product catalog (real Chromium, real server): product cards, filter
controls built from /v1/attributes, the filter in the URL, Back. Each step waits for a condition; every
answer the page shows is checked against the API's own answer to the same search."""

from __future__ import annotations

import csv

import pytest

from indexer import IndexOptions, run_index
from tests.support import CHROMIUM, PHONE, Api, url_params

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (Debian package `chromium`)"
)

ODD = 'say "hi" \\ blue'  # a colour that needs escaping in the filter language
JS_PRODUCT = "SKU-01"  # its url is a javascript: one


def colour(folder_index: int) -> str:
    return ["red", ODD, "green"][folder_index % 3]


@pytest.fixture(scope="module")
def shop(catalog, tmp_path_factory):
    """The session's inventory with a catalog: 4 photos a product (12 products), prices 9.5, 19.5, ...,
    a colour per folder, `on_sale` on every third product, a `fit type` (a name that needs backticks)."""
    root = tmp_path_factory.mktemp("web-shop")
    images = sorted(p.relative_to(catalog.inventory).as_posix() for p in catalog.inventory.rglob("*.jpg"))
    folders = sorted({i.split("/")[0] for i in images})
    with open(root / "products.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "image", "title", "url", "price", "color", "on_sale", "fit type"])
        for n, image in enumerate(images):
            p = n // 4
            sku = f"SKU-{p:02d}"
            url = "javascript:alert(1)" if sku == JS_PRODUCT else f"https://shop.example/p/{p}"
            w.writerow([sku, image, f"Thing {p}", url, 9.5 + 10 * p, colour(folders.index(image.split("/")[0])),
                        "true" if p % 3 == 0 else "false", "slim" if p % 2 else "loose"])  # fmt: skip
    run_index(catalog.inventory, catalog.model, root / "index", IndexOptions(catalog=root / "products.csv"))
    return root / "index"


@pytest.fixture(scope="module")
def shop_url(shop, make_app, serve) -> str:
    return serve(make_app(INDEX=str(shop), RELOAD_INTERVAL=0))


def api_search(shop_url, catalog, n, **params) -> list[dict]:
    with Api(shop_url) as api:
        files = {"image": ("q.jpg", catalog.query_bytes(n), "image/jpeg")}
        r = api.post("/v1/search", params={"k": 12, **params}, files=files)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def wait_for_ids(page, results: list[dict]) -> None:
    """Wait until the grid shows exactly these results, in this order."""
    ids = [str(r["id"]) for r in results]
    page.wait_for_function(
        "(ids) => JSON.stringify(Array.from(document.querySelectorAll('#grid li.result'), li => li.dataset.id))"
        " === JSON.stringify(ids)",
        arg=ids,
    )


def test_product_cards_show_title_price_sku_link_and_other_photos(open_page, shop_url, catalog):  # noqa: F811
    page = open_page(shop_url + "/")
    page.set_input_files("#file", str(catalog.query_paths()[0]))
    expected = api_search(shop_url, catalog, 0)
    assert len(expected) == 12 and any(r["product"]["id"] == JS_PRODUCT for r in expected)  # every product
    wait_for_ids(page, expected)

    for card, result in zip(page.locator("#grid li.result").all(), expected, strict=True):
        product = result["product"]
        assert card.locator(".title").inner_text() == product["title"]
        assert card.locator(".price").inner_text() == f"{product['price']:.2f}"
        assert card.locator(".sku").inner_text() == f"SKU {product['id']}"
        others = card.locator(".others img")
        assert others.count() == len(result["images"]) == 3
        assert sorted(card.locator(".others button").evaluate_all("bs => bs.map(b => b.title)")) == sorted(
            f"More like item {im['id']}" for im in result["images"]
        )
        link = card.locator("a")
        if product["id"] == JS_PRODUCT:  # javascript: is no link at all
            assert link.count() == 0
            continue
        assert link.get_attribute("href") == product["url"]
        assert link.get_attribute("rel") == "noopener noreferrer" and link.get_attribute("target") == "_blank"
    assert page.locator("a[href^='javascript']").count() == 0

    # another photo of a product: more like that photo
    other = page.locator("#grid li.result").first.locator(".others button").first
    item = other.get_attribute("title").removeprefix("More like item ")
    other.click()
    page.wait_for_function(
        "(t) => document.getElementById('results-title').textContent === t", arg=f"More like item {item}"
    )


def test_filters_change_the_results_live_in_the_url_and_back_restores_them(open_page, shop_url, catalog):  # noqa: F811
    from playwright.sync_api import expect

    page = open_page(shop_url + "/")
    expect(page.locator("#filters")).to_be_visible()
    colours = page.locator("select[name='f.color'] option").all_inner_texts()
    assert colours[0] == "any" and f"{ODD} (4)" in colours  # values with their counts
    expect(page.locator("input[name='min.price']")).to_have_attribute("min", "9.5")
    expect(page.locator("input[name='max.price']")).to_have_attribute("max", "119.5")
    expect(page.locator("input[name='f.on_sale'][type=checkbox]")).to_have_count(1)

    page.set_input_files("#file", str(catalog.query_paths()[1]))
    everything = api_search(shop_url, catalog, 1)
    wait_for_ids(page, everything)
    odd_filter = 'color = "say \\"hi\\" \\\\ blue"'
    odd = api_search(shop_url, catalog, 1, filter=odd_filter)
    assert 0 < len(odd) < len(everything) and all(r["product"]["attributes"]["color"] == ODD for r in odd)

    entries = page.evaluate("history.length")
    page.select_option("select[name='f.color']", ODD)
    wait_for_ids(page, odd)
    assert url_params(page) == {"f.color": ODD}
    assert page.evaluate("history.length") == entries + 1  # a history entry for the person's change

    page.fill("input[name='min.price']", "30")
    page.press("input[name='min.price']", "Tab")
    dear = api_search(shop_url, catalog, 1, filter=f"{odd_filter} AND price >= 30")
    assert len(dear) < len(odd)
    wait_for_ids(page, dear)
    assert url_params(page) == {"f.color": ODD, "min.price": "30"}

    page.go_back()  # the colour only
    wait_for_ids(page, odd)
    expect(page.locator("input[name='min.price']")).to_have_value("")
    expect(page.locator("select[name='f.color']")).to_have_value(ODD)
    page.go_back()  # no filter
    wait_for_ids(page, everything)
    expect(page.locator("select[name='f.color']")).to_have_value("")
    page.go_forward()
    wait_for_ids(page, odd)

    page.check("input[name='f.on_sale']")
    wait_for_ids(page, api_search(shop_url, catalog, 1, filter=f"{odd_filter} AND on_sale = true"))
    assert url_params(page) == {"f.color": ODD, "f.on_sale": "true"}

    # a shared link: the controls show its filter
    shared = open_page(page.url)
    expect(shared.locator("select[name='f.color']")).to_have_value(ODD)
    expect(shared.locator("input[name='f.on_sale']")).to_be_checked()


def test_a_page_without_a_catalog_shows_no_filter_controls(open_page, base_url):  # noqa: F811
    from playwright.sync_api import expect

    page = open_page(base_url + "/")
    expect(page.locator("#filters")).to_be_hidden()
    assert page.locator("#filters input, #filters select").count() == 0


def test_a_refused_filter_shows_its_message_and_keeps_the_query(open_page, shop_url, catalog):  # noqa: F811
    """A filter the server refuses (here a control for a name the catalog no longer has, as after a catalog
    change under an open page) shows the server's message; the query stays, so a changed filter searches again."""
    from playwright.sync_api import expect

    page = open_page(shop_url + "/")
    page.expected_errors.append("the server responded with a status of 400")
    page.set_input_files("#file", str(catalog.query_paths()[2]))
    wait_for_ids(page, api_search(shop_url, catalog, 2))
    page.evaluate(
        """() => {
            const box = Object.assign(document.createElement("input"), {type: "checkbox", name: "f.colour"});
            box.dataset.attribute = "colour";
            document.getElementById("filters").append(box);
            box.click();
        }"""
    )
    expect(page.locator("#error")).to_contain_text("The filter was refused: ")
    expect(page.locator("#error")).to_contain_text("did you mean 'color'?")
    expect(page.locator("#grid li.result")).to_have_count(0)
    page.uncheck("input[name='f.colour']")
    wait_for_ids(page, api_search(shop_url, catalog, 2))
    expect(page.locator("#error")).to_be_hidden()


def test_an_unknown_filter_value_in_the_url_is_reported_and_dropped(open_page, shop_url):  # noqa: F811
    from playwright.sync_api import expect

    page = open_page(shop_url + "/?f.color=purple&max.price=50")
    expect(page.locator("#error")).to_contain_text('no color "purple"')
    expect(page.locator("select[name='f.color']")).to_have_value("")
    expect(page.locator("input[name='max.price']")).to_have_value("50")
    assert url_params(page) == {"max.price": "50"}


def test_the_first_product_shows_on_a_phone_without_scrolling(open_page, shop_url, catalog):  # noqa: F811
    page = open_page(shop_url + "/", viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page.set_input_files("#file", str(catalog.query_paths()[3]))
    wait_for_ids(page, api_search(shop_url, catalog, 3))
    box = page.locator("#grid li.result").first.bounding_box()
    assert box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"], box
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scrolling


def test_a_name_that_is_not_an_identifier_goes_in_backticks(open_page, shop_url, catalog):  # noqa: F811
    page = open_page(shop_url + "/")
    page.set_input_files("#file", str(catalog.query_paths()[4]))
    wait_for_ids(page, api_search(shop_url, catalog, 4))
    page.select_option("select[name='f.fit type']", "slim")
    slim = api_search(shop_url, catalog, 4, filter='`fit type` = "slim"')
    assert slim and all(r["product"]["attributes"]["fit type"] == "slim" for r in slim)
    wait_for_ids(page, slim)
    assert page.evaluate("filterExpression()") == '`fit type` = "slim"'
    assert page.evaluate("['in', 'True', 'a1', '1a'].map(filterName)") == ["`in`", "`True`", "a1", "`1a`"]
