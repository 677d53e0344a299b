"""The search API on a real index built from generated images: views through the app's test client
(`client`), and over real HTTP (waitress, gunicorn) where the server matters: body limits while
streaming, raw request lines, concurrent requests meeting in the batcher, a reload, production settings."""

from __future__ import annotations

import http.client
import io
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from PIL import Image

from tests.support import SMALL_BODY_LIMIT, free_port

ERROR_KEYS = {"error", "message"}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declared_bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A 100-byte PNG whose header declares 10 gigapixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def real_bomb_png(side: int = 6000) -> bytes:
    """A genuine 36-megapixel PNG that compresses to a few tens of KB."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 255).save(buf, "PNG", optimize=False)
    return buf.getvalue()


def png_bytes(color=(200, 60, 50), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def upload(data: bytes, name: str = "image", content_type: str = "application/octet-stream") -> tuple:
    """A file field for the test client's multipart `data=` (as requests' `files=` sends it)."""
    return io.BytesIO(data), name, content_type


def assert_error(response, status: int) -> dict:
    """The JSON error of a test-client or a requests response."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.get_json() if hasattr(response, "get_json") else response.json()
    assert set(body) >= ERROR_KEYS, body
    assert isinstance(body["message"], str) and body["message"]
    return body


def assert_index_identity(body: dict, catalog=None) -> None:
    ix = body["index"]
    assert {"generation", "model_fingerprint", "created_at", "item_count", "metric", "score_kind"} <= set(ix)
    assert ix["score_kind"] == body.get("score_kind", ix["score_kind"]) in ("similarity", "distance")


# --- endpoints that succeed ----------------------------------------------------------------


def test_health_ready_and_page(client):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["status"] == "ready"
    page = client.get("/")
    assert page.status_code == 200 and "<form" in page.text and "app.js" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        with client.get(asset) as r:  # a file response: closed by the `with`
            assert r.status_code == 200


def test_search_multipart_finds_the_same_image_first(client, catalog):
    path = sorted((catalog.inventory / "mugs").glob("*.jpg"))[3]
    r = client.post(
        "/v1/search",
        query_string={"k": 5},
        data={"image": upload(path.read_bytes(), path.name, "image/jpeg")},
    )
    assert r.status_code == 200, r.text
    body = r.json
    assert_index_identity(body)
    assert body["k"] == 5 and len(body["results"]) == 5
    top = body["results"][0]
    assert top["label"] == "mugs" and top["rank"] == 1
    assert client.get(top["item_url"]).json["path"] == "mugs/" + path.name
    assert body["score_kind"] == "similarity" and top["score"] == pytest.approx(1.0, abs=1e-3)
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert body["query"] == {"filename": path.name, "width": 96, "height": 96}
    assert set(body["timings"]) == {"decode_ms", "embed_ms", "search_ms", "total_ms"}
    assert all(v >= 0 for v in body["timings"].values())
    assert "novelty_percentile" in body


def test_search_raw_body_and_default_k(client, catalog):
    r = client.post("/v1/search", data=catalog.query_bytes(), content_type="image/jpeg")
    assert r.status_code == 200, r.text
    assert len(r.json["results"]) == 10 and r.json["k"] == 10


def test_search_png_raw(client):
    r = client.post("/v1/search", data=png_bytes(), content_type="image/png", query_string={"k": 3})
    assert r.status_code == 200 and len(r.json["results"]) == 3


def test_search_label_filter(client, catalog):
    r = client.post(
        "/v1/search", query_string={"k": 20, "label": "rings"}, data={"image": upload(catalog.query_bytes())}
    )
    labels = {h["label"] for h in r.json["results"]}
    assert labels == {"rings"} and len(r.json["results"]) == 8
    none = client.post(
        "/v1/search", query_string={"label": "no-such-label"}, data={"image": upload(catalog.query_bytes())}
    )
    assert none.status_code == 200 and none.json["results"] == []


def test_search_puts_queries_near_their_class(client, catalog):
    hits = []
    for path in catalog.query_paths():
        body = client.post(
            "/v1/search", query_string={"k": 1}, data={"image": upload(path.read_bytes())}
        ).json
        hits.append(body["results"][0]["label"] == path.parent.name)
    assert sum(hits) >= len(hits) // 2  # chance is 1/6; two training epochs are enough for this


def test_batch_mixes_good_and_bad_images(client, catalog):
    good = catalog.query_bytes(0)
    files = [
        ("good.jpg", good, "image/jpeg"),
        ("notes.txt", b"not an image at all\n", "text/plain"),
        ("truncated.jpg", good[: len(good) // 2], "image/jpeg"),
        ("bomb.png", declared_bomb_png(), "image/png"),
        ("empty.jpg", b"", "image/jpeg"),
        ("red.png", png_bytes(), "image/png"),
    ]
    images = [upload(data, name, kind) for name, data, kind in files]
    r = client.post("/v1/search/batch", query_string={"k": 4}, data={"images": images})
    assert r.status_code == 200, r.text
    body = r.json
    assert_index_identity(body)
    assert [a["status"] for a in body["answers"]] == [200, 415, 415, 422, 400, 200]
    assert [a["query"]["filename"] for a in body["answers"]] == [f[0] for f in files]
    for a in body["answers"]:
        if a["status"] == 200:
            assert len(a["results"]) == 4 and set(a["timings"]) >= {"decode_ms", "embed_ms", "search_ms"}
        else:
            assert a["error"] and a["message"] and "results" not in a
    single = client.post("/v1/search", query_string={"k": 4}, data={"image": upload(good)}).json
    assert [h["id"] for h in body["answers"][0]["results"]] == [h["id"] for h in single["results"]]


def test_item_image_thumbnail(client, catalog):
    item = client.get("/v1/items/1").json
    assert item["id"] == 1 and item["label"] and item["path"].endswith(".jpg")
    assert_index_identity(item)
    with client.get(item["image_url"]) as image:
        assert image.status_code == 200 and image.headers["Content-Type"] == "image/jpeg"
        assert image.data == (catalog.inventory / item["path"]).read_bytes()
    thumb = client.get(item["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.data)).size == (96, 96)  # never enlarged beyond the original
    again = client.get(item["thumbnail_url"], headers={"If-None-Match": thumb.headers["ETag"]})
    assert again.status_code == 304


def test_similar_uses_the_stored_vector_and_leaves_the_item_out(client):
    item = client.get("/v1/items/5").json
    r = client.get("/v1/items/5/similar", query_string={"k": 6})
    assert r.status_code == 200, r.text
    body = r.json
    assert body["item"]["id"] == 5 and len(body["results"]) == 6
    assert 5 not in [h["id"] for h in body["results"]]
    assert [h["rank"] for h in body["results"]] == list(range(1, 7))
    assert body["timings"]["decode_ms"] == 0
    same = client.get("/v1/items/5/similar", query_string={"k": 6, "label": item["label"]}).json
    assert {h["label"] for h in same["results"]} == {item["label"]}


def test_stats(client):
    r = client.get("/v1/stats")
    assert r.status_code == 200
    s = r.json
    assert s["items"] == 48 and sum(s["labels"].values()) == 48 and len(s["labels"]) == 6
    assert s["dim"] > 0 and s["metric"] == "cosine" and s["score_kind"] == "similarity"
    assert s["model"]["fingerprint"] == s["index"]["model_fingerprint"] and s["model"]["arch"] == "conv-ae"
    assert s["generation"] == s["index"]["generation"] and s["index_age_seconds"] >= 0
    assert "eval_figures" in s
    assert s["limits"]["max_content_length"] == SMALL_BODY_LIMIT and s["limits"]["max_k"] == 100


def test_metrics(client, catalog):
    client.post("/v1/search", data={"image": upload(catalog.query_bytes())})
    client.post("/v1/search", data={"image": upload(b"hello", "x.txt")})
    client.get("/no/such/page")
    text = client.get("/metrics").text
    assert 'imgrec_http_requests_total{endpoint="/v1/search",method="POST",status="200"}' in text
    assert 'imgrec_http_requests_total{endpoint="/v1/search",method="POST",status="415"}' in text
    assert 'imgrec_http_requests_total{endpoint="unmatched",method="GET",status="404"}' in text
    assert 'imgrec_http_request_duration_seconds_bucket{endpoint="/v1/search",le="0.1",status="200"}' in text
    assert "imgrec_index_items 48.0" in text
    assert "imgrec_index_generation 1.0" in text


def test_docs_are_served_locally(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "docs/assets/swagger-ui-bundle.js" in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"):
        with client.get(f"/docs/assets/{asset}") as r:
            assert r.status_code == 200


def test_default_body_limit_is_20_mb():
    from search_api import DEFAULTS

    assert DEFAULTS["MAX_CONTENT_LENGTH"] == 20 * 1024 * 1024


# --- every error, from a real bad input ----------------------------------------------------


@pytest.mark.parametrize(
    ("request_kwargs", "status"),
    [
        ({}, 400),  # no body
        ({"data": {"photo": (b"...", "photo")}}, 400),  # multipart without `image`
        ({"data": {"image": (b"", "empty.jpg")}}, 400),
        ({"query_string": {"k": 0}, "data": {"image": (png_bytes(), "image")}}, 400),
        ({"query_string": {"k": 101}, "data": {"image": (png_bytes(), "image")}}, 400),
        ({"query_string": {"k": "ten"}, "data": {"image": (png_bytes(), "image")}}, 400),
        ({"query_string": {"k": "-3"}, "data": {"image": (png_bytes(), "image")}}, 400),
        ({"data": {"image": (b"just some text\n", "notes.txt", "text/plain")}}, 415),
        ({"data": b"just some text\n", "content_type": "text/plain"}, 415),
        ({"data": b'{"image": 1}', "content_type": "application/json"}, 415),
        ({"data": b"GIF89a-not-really", "content_type": "image/gif"}, 415),
        ({"data": {"image": (declared_bomb_png(), "bomb.png")}}, 422),
        ({"data": declared_bomb_png(), "content_type": "image/png"}, 422),
    ],
    ids=[
        "no-body", "no-image-field", "empty-image", "k-zero", "k-too-big", "k-not-int", "k-negative",
        "text-file", "text-body", "json-body", "fake-gif", "declared-bomb", "declared-bomb-raw",
    ],
)  # fmt: skip
def test_search_rejects_bad_input(client, request_kwargs, status):
    if isinstance(request_kwargs.get("data"), dict):  # (bytes, name[, type]): fresh file objects each run
        request_kwargs = {
            **request_kwargs,
            "data": {k: upload(*v) for k, v in request_kwargs["data"].items()},
        }
    assert_error(client.post("/v1/search", **request_kwargs), status)


def test_truncated_jpeg_is_415(client, catalog):
    data = catalog.query_bytes()
    body = assert_error(
        client.post("/v1/search", data={"image": upload(data[: len(data) // 2], "cut.jpg")}), 415
    )
    assert body["error"] == "unsupported_media_type"


def test_real_decompression_bomb_is_422(client):
    data = real_bomb_png()
    assert len(data) < SMALL_BODY_LIMIT
    body = assert_error(client.post("/v1/search", data={"image": upload(data, "bomb.png")}), 422)
    assert "pixels" in body["message"] and body["error"] == "unprocessable_entity"


def test_oversized_body_is_413(api):
    big = b"\xff\xd8" + b"\0" * SMALL_BODY_LIMIT
    assert_error(api.post("/v1/search", files={"image": ("big.jpg", big)}), 413)
    body = assert_error(api.post("/v1/search", data=big, headers={"Content-Type": "image/jpeg"}), 413)
    assert f"{SMALL_BODY_LIMIT:,}" in body["message"]
    assert_error(api.post("/v1/search/batch", files=[("images", ("big.jpg", big))]), 413)


def test_batch_rejects_empty_and_too_many(client, app):
    assert_error(client.post("/v1/search/batch"), 400)
    assert_error(client.post("/v1/search/batch", data={"other": upload(b"x", "other")}), 400)
    too_many = [upload(png_bytes(), f"{i}.png") for i in range(app.config["MAX_BATCH_IMAGES"] + 1)]
    assert_error(client.post("/v1/search/batch", data={"images": too_many}), 400)
    zero_k = client.post(
        "/v1/search/batch", query_string={"k": 0}, data={"images": upload(png_bytes(), "images")}
    )
    assert_error(zero_k, 400)


@pytest.mark.parametrize("url", ["/v1/items/999999", "/v1/items/9223372036854775808", "/v1/items/0"])
@pytest.mark.parametrize("suffix", ["", "/image", "/thumbnail", "/similar"])
def test_unknown_item_is_404(client, url, suffix):
    body = assert_error(client.get(url + suffix), 404)
    assert body["error"] == "not_found"


def test_similar_bad_k_is_400(client):
    assert_error(client.get("/v1/items/1/similar", query_string={"k": 0}), 400)
    assert_error(client.get("/v1/items/1/similar", query_string={"k": 1000}), 400)


def test_wrong_method_is_json_405(client):
    assert_error(client.get("/v1/search"), 405)
    assert_error(client.put("/v1/items/1"), 405)  # DELETE is a write now (tests/test_live.py)


def test_no_index_is_503_until_one_is_published(make_app, serve, catalog, tmp_path):
    from tests.support import Api, build_index

    app = make_app(INDEX=str(tmp_path / "index"), RELOAD_INTERVAL=0.1)
    with Api(serve(app)) as api:
        assert api.get("/healthz").status_code == 200
        for method, url in [("GET", "/readyz"), ("GET", "/v1/stats"), ("GET", "/v1/items/1"),
                            ("GET", "/v1/items/1/similar"), ("GET", "/v1/items/1/thumbnail")]:  # fmt: skip
            body = assert_error(api.request(method, url), 503)
            assert "no index" in body["message"]
        assert_error(api.post("/v1/search", files={"image": catalog.query_bytes()}), 503)
        build_index(catalog.inventory, catalog.model, tmp_path / "index")
        for _ in range(100):
            if api.get("/readyz").status_code == 200:
                break
            threading.Event().wait(0.1)
        assert api.get("/readyz").status_code == 200
        assert api.post("/v1/search", files={"image": catalog.query_bytes()}).status_code == 200


# --- path traversal: a client never names a file -------------------------------------------

TRAVERSALS = [
    "..", "../../../../etc/passwd", "%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2Fetc%2Fpasswd", "/etc/passwd", "1/../../../../etc/passwd", "1%2F..%2F..%2Fpyproject.toml",
    "..%5c..%5cwindows", "-1", "1.5", "0x10", "%00", "1%00",
]  # fmt: skip
ITEM_URLS = ["/v1/items/{}", "/v1/items/{}/image", "/v1/items/{}/thumbnail", "/v1/items/{}/similar"]
OTHER_URLS = [
    "/static/../../pyproject.toml", "/static/..%2f..%2fpyproject.toml", "/static/%2e%2e/__init__.py",
    "/static//etc/passwd", "/static/%2Fetc%2Fpasswd", "/docs/assets/../../__init__.py",
    "/docs/assets/..%2f..%2f..%2fsearch_api%2f__init__.py", "/docs/assets//etc/passwd",
    "/etc/passwd", "//etc/passwd", "/v1/search/../../etc/passwd", "/v1/items/1/image/../../../etc/passwd",
    "/v1/items/1/image/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/..%2f..%2f..%2fetc%2fpasswd",
]  # fmt: skip


def raw_get(base_url: str, path: str) -> tuple[int, str, bytes]:
    """GET exactly `path`, as sent (no client-side normalisation of `..` or `%2e`)."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("path", [u.format(t) for u in ITEM_URLS for t in TRAVERSALS] + OTHER_URLS)
def test_path_traversal_is_404(base_url, path):
    status, content_type, body = raw_get(base_url, path)
    assert status == 404, (path, status, body[:200])
    assert content_type.startswith("application/json") and b'"error"' in body
    assert b"root:" not in body and b"import" not in body


def test_catalog_path_outside_the_inventory_is_404(app, catalog):
    """Even a tampered catalog row cannot make the API read outside the inventory."""
    from apiflask import HTTPError

    from indexer import ItemInfo
    from search_api.items import open_image_or_404

    with app.test_request_context(), app.extensions["imgrec"].snapshot() as snap:
        for bad in ("../../../../etc/passwd", "/etc/passwd", "mugs/../../model/config.json"):
            info = ItemInfo(1, bad, "x", 1, 1, "0" * 64, False)
            with pytest.raises(HTTPError) as e:
                open_image_or_404(snap, info)
            assert e.value.status_code == 404


def test_query_filename_is_never_used_as_a_path(client, catalog):
    r = client.post("/v1/search", data={"image": upload(catalog.query_bytes(), "../../../../etc/passwd")})
    assert r.status_code == 200 and r.json["query"]["filename"] == "../../../../etc/passwd"


# --- concurrency: micro-batching returns each answer to its own request ---------------------


def test_concurrent_requests_get_their_own_answers(make_app, serve, catalog):
    app = make_app(INDEX=str(catalog.index), RELOAD_INTERVAL=0, BATCH_WINDOW_MS=20, MAX_BATCH=8)
    paths = catalog.query_paths()
    from tests.support import Api

    with Api(serve(app, threads=12)) as api:
        expected = {
            p: [h["id"] for h in api.post("/v1/search", files={"image": p.read_bytes()}).json()["results"]]
            for p in paths
        }

        def ask(p: Path) -> tuple[Path, list[int], int]:
            with Api(api.base_url) as own:
                body = own.post("/v1/search", files={"image": p.read_bytes()}).json()
            return p, [h["id"] for h in body["results"]], body["batch_size"]

        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(ask, paths * 3))
    assert all(ids == expected[p] for p, ids, _ in got)
    stats = app.extensions["imgrec"].batcher.stats
    assert stats.items == len(paths) * 4 and stats.batches <= stats.items


# --- the CLI entry point -------------------------------------------------------------------


def test_serve_command_help():
    from imgrec.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0 and "--index" in result.output and "--port" in result.output


# --- approximate indexes: per-request search knobs -----------------------------------------


def test_search_knobs_of_other_index_types_are_ignored(client, catalog):
    def image() -> dict:
        return {"image": upload(catalog.query_bytes())}

    plain = client.post("/v1/search", data=image()).json
    tuned = client.post("/v1/search", query_string={"nprobe": 4, "ef_search": 16}, data=image()).json
    assert [h["id"] for h in tuned["results"]] == [h["id"] for h in plain["results"]]
    assert tuned["index"]["index_type"] == "flat"
    assert client.get("/v1/items/1/similar", query_string={"ef_search": 16}).status_code == 200
    assert_error(client.post("/v1/search", query_string={"ef_search": 0}, data=image()), 400)
    assert_error(client.get("/v1/items/1/similar", query_string={"nprobe": -1}), 400)


def test_ivf_index_takes_nprobe(make_app, catalog, tmp_path):
    from indexer import IndexOptions, run_index

    def image() -> dict:
        return {"image": upload(catalog.query_bytes())}

    run_index(catalog.inventory, catalog.model, tmp_path / "ivf", IndexOptions(index_type="ivf"))
    client = make_app(INDEX=str(tmp_path / "ivf"), RELOAD_INTERVAL=0).test_client()
    assert client.get("/v1/stats").json["index_type"] == "ivf"
    plain = client.post("/v1/search", query_string={"k": 5}, data=image()).json
    probed = client.post("/v1/search", query_string={"k": 5, "nprobe": 8}, data=image()).json
    assert len(plain["results"]) == len(probed["results"]) == 5
    similar = client.get("/v1/items/3/similar", query_string={"k": 4, "nprobe": 8})
    assert similar.status_code == 200 and len(similar.json["results"]) == 4
    assert client.post("/v1/search", query_string={"ef_search": 8}, data=image()).status_code == 200


# --- production server -------------------------------------------------------------------


def test_gunicorn_serves_the_app_with_its_settings(catalog, tmp_path):
    """gunicorn + gunicorn_conf (2 gthread workers, no preload); /metrics adds up both workers."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import requests

    port = free_port()
    (tmp_path / "prom").mkdir()
    env = {
        **os.environ,
        "IMGREC_INDEX": str(catalog.index),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }
    cmd = [sys.executable, "-m", "gunicorn", "-c", "python:search_api.gunicorn_conf", "--workers", "2",
           "--bind", f"127.0.0.1:{port}", "--access-logfile", "-", "search_api:create_app()"]  # fmt: skip
    log = (tmp_path / "gunicorn.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()[-3000:]
            try:
                if requests.get(base + "/readyz", timeout=10).status_code == 200:
                    break
            except requests.RequestException:  # refused, or accepted while the workers still load
                pass
            assert time.monotonic() < deadline, "gunicorn never became ready"
            time.sleep(0.2)
        with requests.Session() as s:
            for _ in range(12):  # new connections: spread over both workers
                r = requests.post(base + "/v1/search", files={"image": catalog.query_bytes()}, timeout=30)
                assert r.status_code == 200
            assert_error(s.post(base + "/v1/search", files={"image": ("x.txt", b"text")}), 415)
            text = s.get(base + "/metrics").text
        assert 'imgrec_http_requests_total{endpoint="/v1/search",method="POST",status="200"} 12.0' in text
        assert "imgrec_index_items 48.0" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
