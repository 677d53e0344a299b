"""The web page in real headless Chromium (Playwright): upload, results, more like this, bad files."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "web-page.png"
SCREENSHOT_MAX_BYTES = 150_000
K = 8

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (Debian package `chromium`; see DEVELOPERS.md)"
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, base_url):
    """A fresh page on the app; records every URL it requests."""
    context = browser.new_context(viewport={"width": 860, "height": 640}, device_scale_factor=1)
    page = context.new_page()
    page.requested = []
    page.on("request", lambda r: page.requested.append(r.url))
    page.goto(base_url + "/")
    page.wait_for_function("document.querySelectorAll('#label option').length > 1")  # stats loaded
    yield page
    context.close()


def wait_for_thumbnails(page, n: int) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#grid li.result")).to_have_count(n)
    page.wait_for_function(
        "Array.from(document.querySelectorAll('#grid img')).every(i => i.complete && i.naturalWidth > 0)"
    )


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
    save_screenshot(page)

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


@pytest.mark.parametrize(
    ("name", "mime", "content", "message"),
    [
        ("notes.txt", "text/plain", b"this is not a picture\n", "not a recognised image format"),
        ("broken.jpg", "image/jpeg", None, "cannot decode image"),
    ],
)
def test_a_bad_file_shows_a_clear_message(page, catalog, name, mime, content, message):
    from playwright.sync_api import expect

    if content is None:
        content = catalog.query_bytes()[:400]  # a truncated JPEG
    page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": content}])
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(f"Could not search with {name}")
    expect(error).to_contain_text(message)
    expect(page.locator("#grid li.result")).to_have_count(0)


def save_screenshot(page) -> None:
    """docs/img/web-page.png: written when absent, or when IMGREC_UPDATE_SCREENSHOT=1 (keeps the tree clean)."""
    if SCREENSHOT.exists() and os.environ.get("IMGREC_UPDATE_SCREENSHOT") != "1":
        return
    from PIL import Image

    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    for colors in (128, 64, 32):
        buf = io.BytesIO()
        shot.quantize(colors, dither=Image.Dither.NONE).save(buf, "PNG", optimize=True)
        if buf.tell() < SCREENSHOT_MAX_BYTES:
            break
    assert buf.tell() < SCREENSHOT_MAX_BYTES, buf.tell()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.write_bytes(buf.getvalue())
