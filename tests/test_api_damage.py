"""The API refuses a damaged generation and keeps serving the old one (issue 10, item 6).

Real servers (waitress, `serve`), real index files damaged in real ways (`tests/damaging.py`).
The engine's poller is off (RELOAD_INTERVAL=0): each test calls `reload()` itself, as the poller
would, once the new generation has been damaged.
"""

from __future__ import annotations

import pytest

from tests.conftest import Api, build_index
from tests.damaging import KINDS, damage
from tests.indexing_fixtures import copy_index
from tests.test_api_reload import add_images

REFUSED = 'imgrec_index_generations_refused_total{damage="%s"} 1.0'


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("segment-bytes", "does not match the sha256 recorded when it was written"),
        ("segment-truncated", "bytes, the catalog records"),
    ],
)
def test_a_damaged_new_generation_is_refused(kind, problem, make_app, serve, fresh_index, catalog):
    app = make_app(INDEX=str(fresh_index.index), RELOAD_INTERVAL=0)
    eng = app.extensions["imgrec"]
    with Api(serve(app)) as api:
        first = api.get("/readyz").json()["index"]["generation"]
        add_images(catalog, fresh_index.inventory)
        second = build_index(fresh_index.inventory, catalog.model, fresh_index.index)
        damaged = damage(fresh_index.index, kind)  # the segment only the new generation lists

        assert not eng.reload()
        ready = api.get("/readyz")
        assert ready.status_code == 200 and ready.json()["index"]["generation"] == first
        reason = ready.json()["reload_error"]
        assert f"generation {second} refused: generation {second}: segment segments/{damaged.name}" in reason
        assert problem in reason
        assert "imgrec verify --repair INDEX" in reason and f"still serving generation {first}" in reason
        assert str(fresh_index.index) not in reason  # no server paths in answers

        body = api.post("/v1/search", files={"image": catalog.query_bytes()}).json()
        assert body["index"]["generation"] == first and body["results"]
        assert all(abs(hit["score"]) <= 1.0001 for hit in body["results"])  # cosine: no absurd scores
        assert REFUSED % "DamagedGenerationError" in api.get("/metrics").text
        assert not eng.reload()  # not retried at once, and counted once
        assert api.get("/metrics").text.count(REFUSED % "DamagedGenerationError") == 1


def test_a_damaged_catalog_while_serving(make_app, serve, fresh_index, catalog):
    app = make_app(INDEX=str(fresh_index.index), RELOAD_INTERVAL=0)
    eng = app.extensions["imgrec"]
    with Api(serve(app)) as api:
        first = api.get("/readyz").json()["index"]["generation"]
        damage(fresh_index.index, "catalog")
        assert not eng.reload()
        ready = api.get("/readyz")
        assert ready.status_code == 200 and ready.json()["index"]["generation"] == first
        reason = ready.json()["reload_error"]
        assert reason.startswith("refused: catalog.sqlite is damaged") and "imgrec verify INDEX" in reason
        assert REFUSED % "CatalogDamagedError" in api.get("/metrics").text
        r = api.post("/v1/search", files={"image": catalog.query_bytes()})
        assert r.status_code in (200, 503), r.text  # 200: the rows it needs were still in SQLite's cache
        if r.status_code == 503:
            assert r.json()["message"].startswith("the index is damaged: catalog.sqlite is damaged")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("segment-bytes", "does not match the sha256 recorded when it was written"),
        ("segment-truncated", "bytes, the catalog records"),
        ("catalog", "catalog.sqlite is damaged"),
        ("model-missing", "the index's model copy models/"),
    ],
)
def test_a_server_started_on_a_damaged_index_says_why(kind, reason, make_app, serve, catalog, tmp_path):
    assert kind in KINDS
    copy_index(catalog.index, tmp_path / "index")
    damage(tmp_path / "index", kind)
    app = make_app(INDEX=str(tmp_path / "index"), RELOAD_INTERVAL=0)
    with Api(serve(app)) as api:
        ready = api.get("/readyz")
        assert ready.status_code == 503, ready.text
        message = ready.json()["message"]
        assert message.startswith("no index loaded: ") and reason in message and "imgrec verify" in message
        stats = api.get("/v1/stats")
        assert stats.status_code == 503 and stats.json()["message"] == message
        assert api.post("/v1/search", files={"image": catalog.query_bytes()}).status_code == 503
        assert api.get("/healthz").status_code == 200
        assert "imgrec_index_generations_refused_total" in api.get("/metrics").text
