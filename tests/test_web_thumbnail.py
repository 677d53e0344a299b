"""The thumbnail endpoint's `size` (the page's `srcset` asks for 2x), through the test client: bounded, cached
per size, never upscaled."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from search_api.items import THUMBNAIL_MAX_SIZE, THUMBNAIL_MIN_SIZE, LRUCache


def first_item(client) -> dict:
    hit = client.get("/v1/items/1")
    assert hit.status_code == 200, hit.text
    return hit.json


def jpeg_size(content: bytes) -> tuple[int, int]:
    img = Image.open(io.BytesIO(content))
    assert img.format == "JPEG"
    return img.size


@pytest.mark.parametrize(
    ("size", "longest"), [(None, 96), (16, 16), (40, 40), (80, 80), (THUMBNAIL_MAX_SIZE, 96)]
)
def test_thumbnail_size(client, size, longest):
    """Default THUMBNAIL_SIZE (128) and sizes past the 96 px image give the image's own size: never upscaled."""
    url = first_item(client)["thumbnail_url"]
    r = client.get(url, query_string={} if size is None else {"size": size})
    assert r.status_code == 200, r.text
    assert max(jpeg_size(r.data)) == longest


def test_each_size_has_its_own_etag_and_is_cached(client):
    url = first_item(client)["thumbnail_url"]
    small, big = (client.get(url, query_string={"size": s}) for s in (40, 80))
    assert small.headers["ETag"] != big.headers["ETag"]
    again = client.get(url, query_string={"size": 80}, headers={"If-None-Match": big.headers["ETag"]})
    assert again.status_code == 304
    assert client.get(url, query_string={"size": 80}).data == big.data  # from the cache: the same bytes


@pytest.mark.parametrize("size", [0, THUMBNAIL_MIN_SIZE - 1, THUMBNAIL_MAX_SIZE + 1, 2**63, "big", ""])
def test_a_size_out_of_bounds_is_400(client, size):
    r = client.get(first_item(client)["thumbnail_url"], query_string={"size": size})
    assert r.status_code == 400, r.text
    assert r.json["error"] == "bad_request"
    assert "size" in r.text


def test_thumbnail_size_is_in_the_openapi_document(client):
    params = client.get("/openapi.json").json["paths"]["/v1/items/{item_id}/thumbnail"]["get"]["parameters"]
    size = next(p for p in params if p["name"] == "size")
    assert size["schema"]["minimum"] == THUMBNAIL_MIN_SIZE and size["schema"]["maximum"] == THUMBNAIL_MAX_SIZE


def test_the_cache_is_bounded_by_count_and_bytes():
    cache = LRUCache(maxsize=3, max_bytes=100)
    for i in range(5):
        cache.put(i, b"x" * 10)
    assert [cache.get(i) is not None for i in range(5)] == [False, False, True, True, True]
    cache.get(2)  # now the most recently used
    cache.put("big", b"y" * 85)  # 3 x 10 + 85 > 100: the least recently used go first
    assert cache.get(3) is None and cache.get(4) is None and cache.get(2) == b"x" * 10
    assert cache.nbytes == 95
    cache.put("huge", b"z" * 500)  # larger than the bound on its own: kept alone
    assert cache.get("huge") and cache.nbytes == 500 and cache.get("big") is None
