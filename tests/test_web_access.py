"""The web page when reads need a key (real Chromium): it says so, takes a read key for this tab
only, refuses a write key, and searches with the key (thumbnails too)."""

from __future__ import annotations

import pytest

from tests.support import CHROMIUM, wait_for_thumbnails

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (Debian package `chromium`)"
)


@pytest.fixture(scope="module")
def closed_url(make_app, serve, keys):  # noqa: F811
    return serve(
        make_app(INDEX=str(keys.index), RELOAD_INTERVAL=0, KEY_CACHE_SECONDS=0, REQUIRE_READ_KEY=True)
    )


@pytest.fixture
def page(browser, closed_url):  # noqa: F811
    context = browser.new_context(viewport={"width": 860, "height": 640})
    page = context.new_page()
    page.requested = []
    page.on("request", lambda r: page.requested.append(r.url))
    page.goto(closed_url + "/")
    yield page
    context.close()


def stored_key(page) -> str | None:
    return page.evaluate("sessionStorage.getItem('imgrec.readKey')")


def test_the_page_asks_for_a_read_key_and_searches_with_it(page, keys, catalog, closed_url):  # noqa: F811
    from playwright.sync_api import expect

    expect(page.locator("#key-form")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("needs a read key")

    page.fill("#key", keys.write)
    page.click("#key-form button")
    expect(page.locator("#error")).to_contain_text("never paste a write key")
    assert stored_key(page) is None
    assert not any(r.startswith(closed_url + "/v1/") for r in page.requested)  # the write key went nowhere

    page.fill("#key", keys.read)
    page.click("#key-form button")
    expect(page.locator("#key-form")).to_be_hidden()
    page.wait_for_function("document.querySelectorAll('#label option').length > 1")  # stats, with the key
    assert stored_key(page) == keys.read
    page.fill("#k", "6")
    page.set_input_files("#file", str(catalog.query_paths()[0]))
    wait_for_thumbnails(page, 6)  # fetched with the key, shown from blob: URLs
    expect(page.locator("#error")).to_be_hidden()
    assert all(u.startswith((closed_url, "blob:", "data:")) for u in page.requested), page.requested


def test_a_refused_key_brings_the_form_back(page, keys):  # noqa: F811
    from playwright.sync_api import expect

    page.evaluate("(k) => sessionStorage.setItem('imgrec.readKey', k)", keys.revoked.replace("_w_", "_r_", 1))
    page.reload()
    expect(page.locator("#key-form")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("refused")
    assert stored_key(page) is None


def test_with_open_reads_there_is_no_key_form(browser, base_url):  # noqa: F811
    from playwright.sync_api import expect

    context = browser.new_context()
    page = context.new_page()
    page.goto(base_url + "/")
    page.wait_for_function("document.querySelectorAll('#label option').length > 1")
    expect(page.locator("#key-form")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()
    context.close()
