"""`run_index` end to end: FAISS and SQLite agree, labels and paths round-trip, bad files are skipped."""

import shutil

import numpy as np
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from encoder.preprocess import Preprocess
from indexer import InconsistentIndexError, open_snapshot, run_index
from indexer.db import Item, LedgerEntry, open_database


@pytest.fixture()
def inventory(tmp_path, catalog):
    src = catalog.inventory
    dst = tmp_path / "inventory"
    shutil.copytree(src, dst)
    return dst


def test_every_faiss_id_is_a_row_and_every_row_is_in_faiss(inventory, tmp_path, catalog):
    summary = run_index(inventory, catalog.model, tmp_path / "index")
    n_files = len(list(inventory.rglob("*.jpg")))
    assert summary.added == n_files and summary.skipped == 0

    snap = open_snapshot(tmp_path / "index")
    engine = open_database(tmp_path / "index")
    with Session(engine) as session:
        rows = session.scalars(select(Item)).all()
    engine.dispose()
    faiss_ids = set(snap.live_ids().tolist())
    assert faiss_ids == {r.id for r in rows}
    assert snap.generation.item_count == n_files
    for r in rows:  # labels and paths round-trip
        path = inventory / r.path
        assert path.is_file() and r.label == path.parent.name
        assert snap.image_path(snap.item(r.id)) == path.resolve()
    snap.close()


def test_nearest_neighbour_of_an_inventory_image_is_itself(inventory, tmp_path, catalog):
    run_index(
        inventory,
        catalog.model,
        tmp_path / "index",
    )
    snap = open_snapshot(tmp_path / "index")
    some = sorted(inventory.rglob("*.jpg"))[:5]
    from encoder import load_image

    batch = np.stack([snap.encoder.preprocess.to_array(load_image(p)) for p in some])
    hits = snap.search_images(batch, k=3)
    assert [h[0].item.path for h in hits] == [str(p.relative_to(inventory)) for p in some]
    assert snap.generation.score_kind == "similarity"
    assert all(h[0].score >= h[1].score for h in hits)
    snap.close()


def test_bad_files_are_skipped_with_reasons(inventory, tmp_path, catalog):
    (inventory / "mugs" / "zero.jpg").write_bytes(b"")
    (inventory / "mugs" / "notes.jpg").write_text("this is not an image\n")
    good = (inventory / "mugs" / "mugs-000.jpg").read_bytes()
    (inventory / "mugs" / "truncated.jpg").write_bytes(good[: len(good) // 2])

    summary = run_index(inventory, catalog.model, tmp_path / "index")
    reasons = dict(summary.problems)
    assert set(reasons) == {"mugs/zero.jpg", "mugs/notes.jpg", "mugs/truncated.jpg"}
    assert "empty" in reasons["mugs/zero.jpg"]
    assert "not a recognised image" in reasons["mugs/notes.jpg"]
    assert "decode" in reasons["mugs/truncated.jpg"] or "truncated" in reasons["mugs/truncated.jpg"]
    n_good = len(list(inventory.rglob("*.jpg"))) - 3
    assert summary.added == n_good

    engine = open_database(tmp_path / "index")
    with Session(engine) as session:
        skipped = {
            e.path: e.reason
            for e in session.scalars(select(LedgerEntry).where(LedgerEntry.state == "skipped"))
        }
    engine.dispose()
    assert skipped == reasons
    assert open_snapshot(tmp_path / "index").generation.item_count == n_good


def test_l2_metric_reports_distances(inventory, tmp_path, catalog):
    run_index(inventory, catalog.model, tmp_path / "index", options=None)
    from indexer import IndexOptions

    run_index(inventory, catalog.model, tmp_path / "l2", IndexOptions(metric="l2"))
    snap = open_snapshot(tmp_path / "l2")
    assert snap.generation.metric == "l2" and snap.generation.score_kind == "distance"
    x = snap.vector(snap.item(1).id)[None]
    hits = snap.search_vectors(x, k=3)[0]
    assert hits[0].id == 1 and hits[0].score == pytest.approx(0.0, abs=1e-5)
    assert hits[0].score <= hits[1].score <= hits[2].score
    snap.close()


def test_inconsistent_generation_is_refused(inventory, tmp_path, catalog):
    run_index(inventory, catalog.model, tmp_path / "index")
    engine = open_database(tmp_path / "index")
    with engine.begin() as conn:  # the catalog drifts from the segments: item 1 deleted behind their back
        conn.execute(update(Item).where(Item.id == 1).values(deleted_generation=99))
    engine.dispose()
    with pytest.raises(InconsistentIndexError, match="1 catalog items not in|not live in the catalog"):
        open_snapshot(tmp_path / "index", mmap=False)


def test_preprocess_is_shared(tmp_path):
    assert Preprocess.from_dict(Preprocess(image_size=48).to_dict()) == Preprocess(image_size=48)
