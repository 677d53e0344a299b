"""The pipelined `embed_files`: same vectors, same order as a serial loop; thread settings applied.

No timings are asserted here (benchmarks live in bench/).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from encoder import load_encoder
from indexer.ingest import ThreadTuner, decode_file, embed_files
from indexer.scan import scan_inventory
from tests.support import make_inventory


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, model: Path) -> tuple[list, object]:
    root = tmp_path_factory.mktemp("perf")
    inventory = root / "inventory"
    make_inventory(inventory, 45)
    (inventory / "bad").mkdir()
    (inventory / "bad" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (inventory / "bad" / "empty.png").write_bytes(b"")
    (inventory / "bad" / "notes.txt").write_text("hello")
    encoder = load_encoder(model)
    return list(scan_inventory(inventory)), encoder


def serial(files: list, encoder) -> tuple[list[str], np.ndarray, list[str]]:  # noqa: ANN001
    """The reference: decode one file at a time, embed one image at a time."""
    decoded = [decode_file(f, encoder.preprocess) for f in files]
    ok = [d for d in decoded if d.outcome == "ok"]
    vectors = np.concatenate([encoder.embed_uint8(d.pixels[None]) for d in ok])
    return [d.file.rel_path for d in ok], vectors, [d.file.rel_path for d in decoded if d.outcome != "ok"]


@pytest.mark.parametrize(("batch_size", "workers", "threads"), [(1, 1, 1), (8, 2, None), (64, 3, 2)])
def test_same_vectors_same_order_as_serial(setup, batch_size: int, workers: int, threads: int | None) -> None:
    files, encoder = setup
    want_ok, want_vectors, want_rejected = serial(files, encoder)
    seen: list[str] = []
    batches = list(
        embed_files(
            files,
            encoder,
            batch_size=batch_size,
            workers=workers,
            threads=threads,
            on_decoded=lambda d: seen.append(d.file.rel_path),
        )
    )
    assert [d.file.rel_path for b in batches for d in b.ok] == want_ok
    assert [d.file.rel_path for b in batches for d in b.rejected] == want_rejected
    np.testing.assert_allclose(
        np.concatenate([b.vectors for b in batches]), want_vectors, rtol=1e-5, atol=1e-6
    )
    assert seen == [f.rel_path for f in files]  # every file, in input order
    for b in batches:
        assert len(b.vectors) == len(b.ok) <= batch_size
        assert b.vectors.dtype == np.float32 and b.vectors.shape[1:] == (encoder.dim,)
        assert all(d.pixels is None for d in b.ok)  # pixels freed once batched


def test_empty_input(setup) -> None:
    _, encoder = setup
    assert list(embed_files([], encoder)) == []


class RecordingEncoder:
    """Wraps an encoder and records its compute thread count at each forward pass."""

    def __init__(self, inner):  # noqa: ANN001
        self.inner, self.threads = inner, []

    def __getattr__(self, name: str):  # noqa: ANN204 - everything else is the inner encoder's
        return getattr(self.inner, name)

    def embed(self, x: np.ndarray) -> np.ndarray:
        self.threads.append(self.inner.get_threads())
        return self.inner.embed(x)


def test_the_thread_count_given_is_used_for_every_batch(setup) -> None:
    files, encoder = setup
    rec = RecordingEncoder(encoder)
    list(embed_files(files, rec, batch_size=4, threads=1))
    assert rec.threads and set(rec.threads) == {1}


def test_closing_early_stops_the_producer(setup) -> None:
    files, encoder = setup
    gen = embed_files(files, encoder, batch_size=2, workers=2, prefetch=1)
    next(gen)
    gen.close()
    assert not [t for t in threading.enumerate() if t.name.startswith(("embed-producer", "decode"))]


def test_errors_reach_the_caller(setup) -> None:
    files, encoder = setup

    def files_then_error():
        yield from files[:5]
        raise OSError("inventory went away")

    with pytest.raises(OSError, match="inventory went away"):
        list(embed_files(files_then_error(), encoder, batch_size=2))
    assert not [t for t in threading.enumerate() if t.name.startswith("embed-producer")]


def test_tuner_picks_the_faster_thread_count() -> None:
    tuner = ThreadTuner([1, 2], window=2, every=100)
    cost = {1: 1.0, 2: 3.0}  # seconds per batch of 10 images: one thread is faster here
    used = []
    for _ in range(20):
        n = tuner.next()
        used.append(n)
        tuner.record(n, 10, cost[n])
    assert used[0] == 1  # warm-up batch
    assert sorted(used[1:5]) == [1, 1, 2, 2]  # both measured, interleaved
    assert set(used[5:]) == {1}
    assert tuner.history == [{1: 0.1, 2: 0.3}]


def test_tuner_with_one_candidate_never_explores() -> None:
    tuner = ThreadTuner([3])
    for _ in range(200):
        assert tuner.next() == 3
        tuner.record(3, 8, 1.0)
    assert tuner.history == []


def test_pipeline_vectors_match_under_run_index(setup, tmp_path: Path, model: Path) -> None:
    """The job's index holds exactly the serial vectors (through the pipelined default path)."""
    from indexer import open_snapshot, run_index

    files, encoder = setup
    inventory = Path(files[0].abs_path).parents[1]
    run_index(inventory, model, tmp_path / "index")
    snap = open_snapshot(tmp_path / "index")
    want_ok, want_vectors, _ = serial(files, encoder)
    items = {i.path: i.id for i in snap.items(list(range(1, 200))).values()}
    got = np.stack([snap.vector(items[p]) for p in want_ok])
    want = want_vectors / np.linalg.norm(want_vectors, axis=1, keepdims=True)  # cosine index
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    snap.close()


def test_live_ids_and_consistency_check(setup, tmp_path: Path, model: Path) -> None:
    """The fast live-id read equals the ORM query; a mismatch is still reported with counts."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from indexer import InconsistentIndexError, open_snapshot, run_index
    from indexer.db import Item
    from indexer.store import check_snapshot, live_item_ids

    files, _ = setup
    run_index(Path(files[0].abs_path).parents[1], model, tmp_path / "index")
    snap = open_snapshot(tmp_path / "index")
    with Session(snap.engine) as session:
        want = sorted(session.scalars(select(Item.id).where(Item.deleted_generation.is_(None))))
        got = live_item_ids(session)
    assert got.dtype == np.int64 and got.tolist() == want
    check_snapshot(snap, catalog_live=got[::-1].copy())  # any order
    with pytest.raises(
        InconsistentIndexError, match="1 catalog items not in the index, 2 ids in the index not live"
    ):
        check_snapshot(snap, catalog_live=np.append(got[2:], 10_000))
    snap.close()


def test_batched_flat_search_matches_one_query_at_a_time() -> None:
    """Batches of >= BLAS_MIN_QUERIES take faiss's BLAS path: same neighbours as single queries."""
    from indexer import faiss_index

    rng = np.random.default_rng(0)
    xb, xq = rng.standard_normal((5000, 32), np.float32), rng.standard_normal((16, 32), np.float32)
    for metric in ("cosine", "l2"):
        index = faiss_index.build_index(32, metric)
        faiss_index.add(index, np.arange(100, 5100), xb, metric)
        D, I = faiss_index.search(index, xq, 10, metric)  # noqa: E741
        for i in range(len(xq)):
            d1, i1 = faiss_index.search(index, xq[i : i + 1], 10, metric)
            assert I[i].tolist() == i1[0].tolist()
            np.testing.assert_allclose(D[i], d1[0], rtol=1e-4, atol=1e-4)
