"""Writes over HTTP and the watching indexer (issue 14): a real server, real watcher processes.

The API runs on waitress (`serve`), the watcher is the installed `imgrec index --watch` command
on the same index. Waits poll with a generous deadline (they never assert how fast anything is).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator

import pytest
from PIL import Image

from indexer.db import DATABASE_FILE
from tests.support import (
    Api,
    Catalog,
    job_when_done,
    jobs_in,
    post_item,
    start_watcher,
    stop_watcher,
    wait_for,
    watched_copy,
    writer,
)


@pytest.fixture
def live(fresh_index: Catalog, make_app, serve) -> Iterator[tuple[Catalog, Api]]:
    """A private index served by a real server that reloads new generations quickly (no watcher)."""
    app = make_app(INDEX=str(fresh_index.index), RELOAD_INTERVAL=0.2)
    with Api(serve(app)) as api:
        writer(api, fresh_index.index)
        yield fresh_index, api


@pytest.fixture(scope="module")
def watched(catalog: Catalog, tmp_path_factory, make_app, serve) -> Iterator[tuple[Catalog, Api]]:
    """One private index for this module's watcher tests: served, and watched by `imgrec index
    --watch` (started once: a watcher's start-up is most of a test's time)."""
    with watched_copy(catalog, tmp_path_factory.mktemp("watched"), make_app, serve) as live_copy:
        yield live_copy


def top_hit(api: Api, data: bytes) -> dict:
    r = api.post("/v1/search", files={"image": ("q.jpg", data, "image/jpeg")}, params={"k": 5})
    assert r.status_code == 200, r.text
    return r.json()


def found_ids(api: Api, data: bytes) -> list[int]:
    return [hit["id"] for hit in top_hit(api, data)["results"]]


def test_upload_is_found_by_the_next_search_and_a_delete_never_again(watched):
    cat, api = watched
    data = cat.query_bytes(3)  # not in the inventory
    r = post_item(api, data, product_id="sku-1", title="Red rug", price="12.5", colour="red")
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    assert job["state"] == "queued" and r.headers["Location"].endswith(job["url"])
    done = job_when_done(api, job["url"])
    assert done["state"] == "indexed", done
    item_id = done["item_id"]
    wait_for("the new generation served", lambda: item_id in found_ids(api, data))
    answer = top_hit(api, data)
    assert answer["results"][0]["id"] == item_id and answer["results"][0]["score"] > 0.99
    product = answer["results"][0]["product"]  # the upload's fields made its product
    assert product["id"] == "sku-1" and product["title"] == "Red rug" and product["price"] == 12.5
    assert product["attributes"] == {"colour": "red"}
    item = api.get(f"/v1/items/{item_id}").json()
    assert item["path"].startswith("_uploads/") and item["label"] == "uploads"
    assert api.get(f"/v1/items/{item_id}/image").content == data

    r = api.delete(f"/v1/items/{item_id}")
    assert r.status_code == 202, r.text
    deleted = job_when_done(api, r.json()["job"]["url"])
    assert deleted["state"] == "indexed" and deleted["generation"] > done["generation"]
    wait_for("the deletion served", lambda: api.get(f"/v1/items/{item_id}").status_code == 404)
    assert item_id not in found_ids(api, data)
    assert not (cat.inventory / item["path"]).exists()  # an upload is the API's to remove
    assert api.delete(f"/v1/items/{item_id}").status_code == 404


def test_delete_of_an_inventory_file_keeps_it_out(watched):
    cat, api = watched
    path = sorted((cat.inventory / "rugs").glob("*.jpg"))[0]
    data = path.read_bytes()
    item_id = top_hit(api, data)["results"][0]["id"]
    r = api.delete(f"/v1/items/{item_id}")
    assert r.status_code == 202
    assert job_when_done(api, r.json()["job"]["url"])["state"] == "indexed"
    wait_for("the deletion served", lambda: item_id not in found_ids(api, data))
    assert path.exists()  # the shop's file stays; its item is gone
    path.touch()  # an event in its folder: the watcher plans it again and still leaves it out
    (cat.inventory / "rugs" / "other.jpg").write_bytes(cat.query_bytes(7))
    wait_for("the new file indexed", lambda: top_hit(api, cat.query_bytes(7))["results"][0]["score"] > 0.99)
    assert item_id not in found_ids(api, data)


def test_idempotency_never_makes_a_second_item(watched):
    cat, api = watched
    before = len(jobs_in(cat.index))
    data = cat.query_bytes(1)
    first = post_item(api, data, product_id="sku-9")
    again = post_item(api, data, product_id="sku-9")
    assert first.status_code == again.status_code == 202
    assert first.json()["job"]["id"] == again.json()["job"]["id"]
    other = post_item(api, data, product_id="sku-10")  # same photo, another product: its own item
    assert other.json()["job"]["id"] != first.json()["job"]["id"]
    keyed = post_item(api, cat.query_bytes(2), key="k-1")
    assert (
        post_item(api, cat.query_bytes(2), key="k-1", label="retry").json()["job"]["id"]
        == keyed.json()["job"]["id"]
    )
    conflict = post_item(api, cat.query_bytes(4), key="k-1")
    assert conflict.status_code == 409 and conflict.json()["error"] == "conflict"
    states = [job_when_done(api, r.json()["job"]["url"]) for r in (first, other, keyed)]
    assert [s["state"] for s in states] == ["indexed"] * 3
    assert len({s["item_id"] for s in states}) == 3
    after = post_item(api, data, product_id="sku-9")  # indexed already: the same job
    assert after.json()["job"]["id"] == first.json()["job"]["id"]
    assert len(jobs_in(cat.index)) == before + 3


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buf, "PNG")
    return buf.getvalue()


def _bomb() -> bytes:
    """A PNG whose header declares 100,000 x 100,000 pixels (the image data is tiny)."""
    import struct
    import zlib

    png = bytearray(_png(8, 8))
    ihdr = png[16:29]
    ihdr[0:8] = struct.pack(">II", 100_000, 100_000)
    png[16:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(png)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"just some text, not an image", 415),
        (b"\xff\xd8\xff\xe0" + b"\0" * 40, 415),  # a JPEG that stops after its first marker
        ("bomb", 422),
    ],
)
def test_bad_uploads_are_4xx_and_nothing_is_queued(live, body, status):
    cat, api = live
    data = _bomb() if body == "bomb" else body
    r = post_item(api, data, product_id="x")
    assert r.status_code == status, r.text
    assert set(r.json()) >= {"error", "message"}
    assert jobs_in(cat.index) == []
    assert not (cat.inventory / "_uploads").exists()


def test_bad_fields_and_unknown_ids(live):
    cat, api = live
    assert post_item(api, cat.query_bytes(0), label="../up").status_code == 400
    assert post_item(api, cat.query_bytes(0), price="cheap").status_code == 400
    assert post_item(api, cat.query_bytes(0), attributes="[1]").status_code == 400
    assert api.post("/v1/items", data=b"raw", headers={"Content-Type": "image/jpeg"}).status_code == 415
    assert api.delete("/v1/items/999999").status_code == 404
    assert api.get("/v1/jobs/999999").status_code == 404
    assert jobs_in(cat.index) == []


def test_a_job_whose_file_turns_bad_fails_with_the_reason(live):
    from indexer.live import apply_batch

    cat, api = live
    good = post_item(api, cat.query_bytes(5), label="mats").json()["job"]
    spoiled = post_item(api, cat.query_bytes(6)).json()["job"]
    (path,) = [j[3] for j in jobs_in(cat.index) if j[0] == spoiled["id"]]
    (cat.inventory / path).write_bytes(b"not an image any more")
    result = apply_batch(cat.inventory, cat.model, cat.index, {})
    assert result.states == {good["id"]: "indexed", spoiled["id"]: "failed"}
    failed = api.get(spoiled["url"]).json()["job"]
    assert failed["state"] == "failed" and "image" in failed["reason"].lower()
    indexed = api.get(good["url"]).json()["job"]
    assert indexed["state"] == "indexed" and indexed["item_id"] is not None


def copied_in_and_removed(cat: Catalog, api: Api) -> None:
    """Copy a new image into a new folder, then remove an inventory image: both served."""
    new = cat.query_paths()[8]
    target = cat.inventory / "new-arrivals" / new.name
    target.parent.mkdir()
    shutil.copy(new, target)
    data = new.read_bytes()

    def found() -> bool:
        hit = top_hit(api, data)["results"][0]
        path = api.get(f"/v1/items/{hit['id']}").json().get("path")
        return hit["score"] > 0.99 and path == f"new-arrivals/{new.name}"

    wait_for("the copied-in file found", found)
    removed = sorted(cat.inventory.glob("rugs/*.jpg"))[-1]
    gone = removed.read_bytes()
    item_id = top_hit(api, gone)["results"][0]["id"]
    removed.unlink()
    wait_for("the removed file gone", lambda: item_id not in found_ids(api, gone))


def test_watcher_picks_up_a_copied_in_file_and_a_removed_one(watched):
    copied_in_and_removed(*watched)


@pytest.mark.slow
def test_polling_watcher_picks_up_a_copied_in_file_and_a_removed_one(live, tmp_path):
    cat, api = live
    log = tmp_path / "watcher.log"
    proc = start_watcher(cat, log, "--poll", "0.5")
    try:
        copied_in_and_removed(cat, api)
    finally:
        code = stop_watcher(proc, log)
    assert code == 0, log.read_text()[-3000:]


def test_a_partial_plan_reads_only_the_dirty_folders(fresh_index):
    from indexer.live import plan_live

    cat = fresh_index
    folders = sorted(p for p in cat.inventory.iterdir() if p.is_dir())
    a, b = folders[0], folders[1]
    shutil.copy(next(cat.queries.rglob("*.jpg")), a / "added.jpg")
    sorted(b.glob("*.jpg"))[0].unlink()
    catalog = cat.index / DATABASE_FILE
    only_a = plan_live(cat.inventory, catalog, {f"{a.name}/": False})
    assert [f.rel_path for f in only_a.embed] == [f"{a.name}/added.jpg"] and only_a.delete == []
    both = plan_live(cat.inventory, catalog, {f"{a.name}/": False, f"{b.name}/": False})
    assert len(both.embed) == 1 and len(both.delete) == 1
    shutil.rmtree(b)
    gone = plan_live(cat.inventory, catalog, {f"{b.name}/": True})
    assert len(gone.delete) == len(list(folders[2].glob("*.jpg")))  # every class has the same count


def test_events_mark_their_folders_and_a_burst_is_one_batch(tmp_path):
    from watchdog.events import DirDeletedEvent, DirMovedEvent, FileCreatedEvent, FileModifiedEvent

    from indexer.live import normalized
    from indexer.watch import DirtyFolders

    root = str(tmp_path)
    dirty = DirtyFolders(root)
    for i in range(50):  # a burst of copies into one folder
        dirty.dispatch(FileCreatedEvent(f"{root}/rugs/new-{i}.jpg"))
    dirty.dispatch(FileModifiedEvent(f"{root}/top.jpg"))
    dirty.dispatch(DirMovedEvent(f"{root}/old", f"{root}/mats/new"))
    dirty.dispatch(DirDeletedEvent(f"{root}/mats/new/sub"))
    dirty.dispatch(FileCreatedEvent("/elsewhere/x.jpg"))  # outside the inventory: ignored
    assert dirty.take(debounce=3600, max_delay=3600) is None  # not quiet yet: keep collecting
    taken = dirty.take(debounce=0, max_delay=0)
    assert taken == {
        "rugs/": False,
        "": False,
        "old/": True,
        "mats/new/": True,
        "mats/": False,
        "mats/new/sub/": True,
    }
    assert dirty.take(debounce=0, max_delay=0) is None  # taken once
    assert normalized(taken) == {"": False, "mats/": False, "mats/new/": True, "old/": True, "rugs/": False}
