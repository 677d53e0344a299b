"""Hot reload: a newly published generation is served without a restart and without failing a request."""

from __future__ import annotations

import io
import threading
import time

from tests.support import Api, add_images, build_index


def test_new_generation_is_served_while_requests_run(make_app, serve, fresh_index, catalog):
    app = make_app(INDEX=str(fresh_index.index), RELOAD_INTERVAL=0.05)
    base_url = serve(app)
    with Api(base_url) as api:
        first = api.get("/readyz").json()["index"]
    image = catalog.query_bytes(3)
    seen: list[tuple[int, int]] = []  # (generation, item_count) per answer, in order, per client
    failures: list[str] = []
    stop = threading.Event()

    def client(n: int) -> None:
        with Api(base_url) as api:
            while not stop.is_set():
                if n % 2:
                    r = api.post("/v1/search", params={"k": 3}, files={"image": image})
                else:
                    r = api.get("/v1/items/2/similar", params={"k": 3})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                ix = r.json()["index"]
                seen.append((n, ix["generation"], ix["item_count"]))

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in clients:
        t.start()
    try:
        while len(seen) < 20:  # requests are flowing on the first generation
            time.sleep(0.01)
        added = add_images(catalog, fresh_index.inventory)
        second = build_index(fresh_index.inventory, catalog.model, fresh_index.index)
        assert second != first["generation"]
        deadline = time.monotonic() + 60
        while not any(g == second for _, g, _ in seen[-8:]):
            assert time.monotonic() < deadline, "the new generation was never served"
            time.sleep(0.02)
        after = len(seen)
        while len(seen) < after + 20:  # and answers keep coming from it
            time.sleep(0.01)
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=30)

    assert failures == []
    for n in range(4):  # every client switched once, forwards, and never went back
        gens = [g for c, g, _ in seen if c == n]
        assert gens[0] == first["generation"] and gens[-1] == second
        assert gens == sorted(gens)
    counts = {g: c for _, g, c in seen}
    assert counts == {first["generation"]: first["item_count"], second: first["item_count"] + added}
    with Api(base_url) as api:
        stats = api.get("/v1/stats").json()
        assert stats["generation"] == second and stats["engine"]["reloads"] == 2
        assert f"imgrec_index_generation {float(second)}" in api.get("/metrics").text


def test_rollback_is_served_too(make_app, serve, fresh_index, catalog):
    from indexer.db import open_database
    from indexer.generations import index_lock, rollback

    app = make_app(INDEX=str(fresh_index.index), RELOAD_INTERVAL=0.05)
    with Api(serve(app)) as api:
        first = api.get("/readyz").json()["index"]["generation"]
        add_images(catalog, fresh_index.inventory)
        second = build_index(fresh_index.inventory, catalog.model, fresh_index.index)
        wait_for_generation(api, second)
        with index_lock(fresh_index.index):
            rollback(fresh_index.index, open_database(fresh_index.index))
        wait_for_generation(api, first)
        assert (
            api.post("/v1/search", files={"image": catalog.query_bytes()}).json()["index"]["generation"]
            == first
        )


def wait_for_generation(api: Api, generation: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while api.get("/readyz").json()["index"]["generation"] != generation:
        assert time.monotonic() < deadline, f"generation {generation} never served"
        time.sleep(0.05)


def test_a_request_keeps_its_snapshot_across_a_swap(fresh_index, catalog):
    from search_api.engine import SearchEngine

    eng = SearchEngine(fresh_index.index, reload_interval=0)
    eng.start()
    try:
        with eng.snapshot() as old:
            add_images(catalog, fresh_index.inventory)
            build_index(fresh_index.inventory, catalog.model, fresh_index.index)
            assert eng.reload()
            with eng.snapshot() as new:
                assert new.generation.id != old.generation.id
                assert new.generation.item_count > old.generation.item_count
            # the old snapshot still answers (FAISS and catalog) until this request is done
            (hits,) = old.search_vectors(old.vector(1)[None], k=3)
            assert hits[0].id == 1 and old.item(1) is not None
            assert not eng.reload()  # nothing newer: no swap
        assert eng.status().generation_id == new.generation.id
    finally:
        eng.close()


def corrupt_current_faiss(index_dir) -> None:
    """Replace the current generation's newest segment file by an empty index: segments and catalog
    now disagree. (A new file renamed over it: a process mapping the old one keeps its copy.)"""
    import os

    import faiss

    from indexer import open_snapshot

    snap = open_snapshot(index_dir, mmap=False, verify=False)
    newest = max(snap.segments, key=lambda s: s.id)
    snap.close()
    path = index_dir / newest.file
    faiss.write_index(faiss.IndexIDMap2(faiss.IndexFlatIP(newest.dim)), str(path) + ".bad")
    os.replace(str(path) + ".bad", path)


def test_an_inconsistent_index_is_not_served(make_app, fresh_index, catalog):
    corrupt_current_faiss(fresh_index.index)
    client = make_app(INDEX=str(fresh_index.index), RELOAD_INTERVAL=0).test_client()
    r = client.get("/readyz")
    assert r.status_code == 503 and "refused: generation 1: segment segments/" in r.json["message"]
    image = (io.BytesIO(catalog.query_bytes()), "image")
    assert client.post("/v1/search", data={"image": image}).status_code == 503
    assert client.get("/healthz").status_code == 200


def test_an_inconsistent_new_generation_keeps_the_old_one_serving(make_app, serve, fresh_index, catalog):
    app = make_app(INDEX=str(fresh_index.index), RELOAD_INTERVAL=0)
    eng = app.extensions["imgrec"]
    with Api(serve(app)) as api:
        first = api.get("/readyz").json()["index"]["generation"]
        add_images(catalog, fresh_index.inventory)
        build_index(fresh_index.inventory, catalog.model, fresh_index.index)
        corrupt_current_faiss(fresh_index.index)
        assert not eng.reload()
        ready = api.get("/readyz")
        assert ready.status_code == 200 and ready.json()["index"]["generation"] == first
        assert "the catalog records" in ready.json()["reload_error"]  # its size
        body = api.post("/v1/search", files={"image": catalog.query_bytes()}).json()
        assert body["index"]["generation"] == first


def test_an_item_of_a_newer_generation_is_found_before_the_next_poll(make_app, fresh_index, catalog):
    """Another worker may already serve a generation this one has not polled for yet: an item id
    from it (a search there returned it) is looked for in the newest generation, not answered 404."""
    app = make_app(INDEX=str(fresh_index.index), RELOAD_INTERVAL=0)  # no poller: only requests reload
    client = app.test_client()
    first = client.get("/readyz").get_json()["index"]["generation"]
    add_images(catalog, fresh_index.inventory)
    build_index(fresh_index.inventory, catalog.model, fresh_index.index)
    from indexer import open_snapshot

    snap = open_snapshot(fresh_index.index)
    try:
        new_id = int(snap.live_ids().max())  # an item only the new generation holds
        newest = snap.generation.id
    finally:
        snap.close()
    assert newest != first
    assert client.get("/readyz").get_json()["index"]["generation"] == first  # not reloaded yet
    r = client.get(f"/v1/items/{new_id}")
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["index"]["generation"] == newest
    assert client.get(f"/v1/items/{new_id}/thumbnail").status_code == 200
    missing = client.get("/v1/items/999999")
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"
