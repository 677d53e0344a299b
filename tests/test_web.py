"""The web page in real headless Chromium (Playwright) against the app on a real server (waitress).

Every page records its console errors and uncaught exceptions; a test fails if there are any it did not
expect. Nothing waits for a time: each step waits for a condition on the page.
"""

from __future__ import annotations

import base64
import re

import pytest

from tests.support import CHROMIUM, PHONE, url_params, wait_for_thumbnails

K = 8

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (Debian package `chromium`; see DEVELOPERS.md)"
)


@pytest.fixture
def page(open_page, base_url):
    """The page on the session's app, on a desktop-size screen."""
    return open_page(base_url + "/")


def searches(page) -> list[str]:
    """The search API calls the page made (uploads and "more like this")."""
    return [u for u in page.requested if "/v1/search" in u or u.split("?")[0].endswith("/similar")]


def mark_document(page) -> None:
    """Tag the loaded document: a reload or a navigation would drop the tag (see `assert_same_document`)."""
    page.evaluate("window.sameDocument = true")


def assert_same_document(page) -> None:
    assert page.evaluate("window.sameDocument === true"), "the page was reloaded or navigated away"


def test_upload_see_results_click_for_more_like_it(page, catalog, base_url):
    from playwright.sync_api import expect

    query = catalog.query_paths()[2]  # a mug
    page.fill("#k", str(K))
    page.set_input_files("#file", str(query))
    wait_for_thumbnails(page, K)
    expect(page.locator("#query-title")).to_have_text("Your image")
    expect(page.locator("#error")).to_be_hidden()
    captions = page.locator("#grid .caption .label").all_inner_texts()
    scores = page.locator("#grid .caption .score").all_inner_texts()
    assert len(captions) == K and captions[0] == query.parent.name
    assert all(s.startswith("sim ") for s in scores)
    expect(page.locator("#index-info")).to_contain_text("index generation 1")

    first = page.locator("#grid li.result").first
    clicked = first.get_attribute("data-id")
    first.locator("button").click()
    expect(page.locator("#results-title")).to_have_text(f"More like item {clicked}")
    wait_for_thumbnails(page, K)
    ids = [li.get_attribute("data-id") for li in page.locator("#grid li.result").all()]
    assert clicked not in ids
    expect(page.locator("#query-title")).to_have_text(f"More like item {clicked}")

    # nothing but the app itself was asked for: no CDN, no fonts, no analytics
    assert all(u.startswith((base_url, "blob:", "data:")) for u in page.requested), page.requested


def test_drop_an_image(page, catalog):
    data = base64.b64encode(catalog.query_bytes(5)).decode()
    page.evaluate(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        data,
    )
    wait_for_thumbnails(page, 12)  # the page's default k
    assert "dropped.jpg" in page.locator("#query-meta").inner_text()


def test_nothing_shows_before_a_query(page):
    """No empty query box, no broken-image icon, no empty results heading until there is a query."""
    from playwright.sync_api import expect

    for box in ("#query", "#results", "#error"):
        expect(page.locator(box)).to_be_hidden()
    expect(page.locator("img:visible")).to_have_count(0)
    assert page.locator("#query-image").get_attribute("src") is None


ALL_LABELS_ARE = """(label) => {
    const shown = Array.from(document.querySelectorAll('#grid .caption .label'), (e) => e.textContent);
    return shown.length > 0 && shown.every((x) => x === label);
}"""


def test_changing_a_setting_searches_again_with_the_held_image(page, catalog):
    from playwright.sync_api import expect

    mark_document(page)
    query = catalog.query_paths()[0]
    page.set_input_files("#file", str(query))
    wait_for_thumbnails(page, 12)
    assert len(searches(page)) == 1

    other = next(p.parent.name for p in catalog.query_paths() if p.parent.name != query.parent.name)
    page.select_option("#label", other)
    page.wait_for_function(ALL_LABELS_ARE, arg=other)
    assert len(searches(page)) == 2

    # Enter in "Results": the search runs again, the page is not reloaded
    page.fill("#k", "3")
    page.press("#k", "Enter")
    wait_for_thumbnails(page, 3)
    assert_same_document(page)
    assert len(searches(page)) == 3  # Enter's submit and the field's change run one search, not two
    assert "query.jpg" not in page.url and url_params(page) == {"k": "3", "label": other}
    expect(page.locator("#query-meta")).to_contain_text(query.name)

    # the same for "more like this": the held item is searched again
    first = page.locator("#grid li.result").first
    clicked = first.get_attribute("data-id")
    first.locator("button").click()
    expect(page.locator("#results-title")).to_have_text(f"More like item {clicked}")
    page.select_option("#label", "")
    page.fill("#k", "5")
    page.press("#k", "Tab")  # the field's change event, no Enter
    wait_for_thumbnails(page, 5)
    expect(page.locator("#query-title")).to_have_text(f"More like item {clicked}")
    assert searches(page)[-1].split("?")[0].endswith(f"/v1/items/{clicked}/similar")
    assert url_params(page) == {"k": "5"}
    assert_same_document(page)


def test_enter_before_any_upload_keeps_the_page(page):
    mark_document(page)
    page.fill("#k", "7")
    page.press("#k", "Enter")
    page.wait_for_function("new URL(location.href).searchParams.get('k') === '7'")
    assert_same_document(page)
    assert searches(page) == []


@pytest.mark.parametrize(
    ("name", "mime", "content", "message"),
    [
        ("notes.txt", "text/plain", b"this is not a picture\n", "not a recognised image format"),
        ("broken.jpg", "image/jpeg", None, "cannot decode image"),
    ],
)
def test_a_bad_file_shows_a_clear_message_and_clears_the_last_answer(
    page, catalog, name, mime, content, message
):
    from playwright.sync_api import expect

    page.expected_errors.append("Failed to load resource: the server responded with a status of 4")
    page.set_input_files("#file", str(catalog.query_paths()[1]))
    wait_for_thumbnails(page, 12)

    if content is None:
        content = catalog.query_bytes()[:400]  # a truncated JPEG
    page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": content}])
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(f"Could not search with {name}")
    expect(error).to_contain_text(message)
    assert error.get_attribute("aria-live") == "assertive" and error.get_attribute("role") == "alert"
    # the previous image and its results are gone: they are not the answer to this file
    expect(page.locator("#grid li.result")).to_have_count(0)
    for box in ("#query", "#results"):
        expect(page.locator(box)).to_be_hidden()
    expect(page.locator("img:visible")).to_have_count(0)

    # a setting changed now has nothing to search again; a good file clears the message
    page.select_option("#label", index=1)
    page.set_input_files("#file", str(catalog.query_paths()[1]))
    page.wait_for_function("document.querySelectorAll('#grid li.result').length > 0")
    expect(error).to_be_hidden()


def test_the_first_result_shows_on_a_phone_without_scrolling(open_page, base_url, catalog):
    page = open_page(base_url + "/", viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page.set_input_files("#file", str(catalog.query_paths()[3]))
    wait_for_thumbnails(page, 12)
    assert page.evaluate("window.scrollY") == 0
    box = page.locator("#grid li.result").first.bounding_box()
    assert box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"], box
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scrolling


@pytest.fixture(scope="module")
def small_thumbnails_url(make_app, serve, catalog) -> str:
    """The app with 40 px thumbnails: 1x and 2x (80 px) are both below the 96 px generated images."""
    return serve(make_app(INDEX=str(catalog.index), THUMBNAIL_SIZE=40, RELOAD_INTERVAL=0))


PIXEL_WIDTHS = """imgs => Promise.all(imgs.map(async (i) => {
    const bitmap = await createImageBitmap(await (await fetch(i.currentSrc)).blob());
    return bitmap.width;
}))"""


@pytest.mark.parametrize("dpr", [1, 2])
def test_thumbnails_match_the_screen_density(open_page, small_thumbnails_url, catalog, dpr):
    page = open_page(small_thumbnails_url + "/", device_scale_factor=dpr)
    page.set_input_files("#file", str(catalog.query_paths()[4]))
    wait_for_thumbnails(page, 12)
    # the pixels of the file each tile shows (naturalWidth is divided by the srcset density: 40 either way)
    widths = page.eval_on_selector_all("#grid img", PIXEL_WIDTHS)
    assert set(widths) == {40 * dpr}, widths
    sources = page.eval_on_selector_all("#grid img", "imgs => imgs.map(i => i.currentSrc)")
    assert all(("size=80" in s) == (dpr == 2) for s in sources), sources

    page.locator("#grid li.result button").first.click()  # the query box shows an item's thumbnail too
    page.wait_for_function(
        "() => { const i = document.getElementById('query-image');"
        " return i.complete && i.naturalWidth > 0 && i.currentSrc.includes('/thumbnail'); }"
    )
    assert page.eval_on_selector_all("#query-image", PIXEL_WIDTHS) == [40 * dpr]


def english_ordinal(n: int) -> str:
    """The reference: 11th, 12th, 13th (and 111th...), otherwise 1st, 2nd, 3rd by the last digit."""
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def test_ordinals(page):
    assert [english_ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 91, 100, 101, 111, 112, 1013)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "91st",
        "100th", "101st", "111th", "112th", "1013th",
    ]  # fmt: skip
    numbers = list(range(0, 1201))
    got = page.evaluate("(ns) => ns.map(ordinal)", numbers)
    assert got == [english_ordinal(n) for n in numbers]
    got = page.evaluate("(ps) => ps.map(noveltyText)", [90.6, 0.4, 2.2, 12.5, None])
    assert got == [", novelty 91st percentile", ", novelty 0th percentile", ", novelty 2nd percentile",
                   ", novelty 13th percentile", ""]  # fmt: skip


def test_the_novelty_percentile_reads_as_an_ordinal(page, catalog):
    page.set_input_files("#file", str(catalog.query_paths()[6]))
    wait_for_thumbnails(page, 12)
    meta = page.locator("#query-meta").inner_text()
    found = re.search(r"novelty (\d+)(\w\w) percentile", meta)
    if found is None:
        pytest.skip(f"this model reports no novelty percentile: {meta!r}")
    number, suffix = found.groups()
    assert number + suffix == english_ordinal(int(number))


def test_the_settings_live_in_the_url(open_page, base_url, catalog):
    from playwright.sync_api import expect

    label = catalog.query_paths()[0].parent.name
    page = open_page(f"{base_url}/?k=5&label={label}")
    expect(page.locator("#k")).to_have_value("5")
    expect(page.locator("#label")).to_have_value(label)
    page.set_input_files("#file", str(catalog.query_paths()[8]))
    wait_for_thumbnails(page, 5)
    page.wait_for_function(ALL_LABELS_ARE, arg=label)

    page.fill("#k", "6")
    page.press("#k", "Enter")
    wait_for_thumbnails(page, 6)
    page.reload()
    page.wait_for_selector("#label[data-loaded]", state="attached")
    expect(page.locator("#k")).to_have_value("6")
    expect(page.locator("#label")).to_have_value(label)
    assert url_params(page) == {"k": "6", "label": label}

    # out-of-range or unknown values become valid ones, and the page says so for a label
    page.goto(f"{base_url}/?k=5000&label=no-such-label")
    page.wait_for_selector("#label[data-loaded]", state="attached")
    expect(page.locator("#k")).to_have_value("100")
    expect(page.locator("#label")).to_have_value("")
    expect(page.locator("#error")).to_contain_text('no label "no-such-label"')
    assert url_params(page) == {"k": "100"}


def test_the_page_works_from_the_keyboard(page, catalog):
    from playwright.sync_api import expect

    choosers = []
    page.on("filechooser", lambda c: choosers.append(c))  # Playwright takes the file dialog from here on
    page.keyboard.press("Tab")  # API docs link
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "drop"
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(str(catalog.query_paths()[9]))
    wait_for_thumbnails(page, 12)

    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "k"
    page.keyboard.press("ArrowDown")  # 12 -> 11: a change, searched when the field is left
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "label"
    wait_for_thumbnails(page, 11)
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.closest('li.result')?.dataset.id")
    assert focused == page.locator("#grid li.result").first.get_attribute("data-id")
    page.keyboard.press("Enter")
    expect(page.locator("#results-title")).to_have_text(f"More like item {focused}")
