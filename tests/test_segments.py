"""Searching a generation made of several segments is exact: the same top-k as one flat index of the
live vectors. Vectors are seeded (the files' bytes name them); the job, SQLite and FAISS run for real."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer import IndexOptions, open_snapshot, run_index
from indexer import segment_search as ss
from indexer.ann import search_params
from indexer.compaction import MergePolicy
from indexer.faiss_index import prepare
from tests.support import (
    seed_embedder,
    seed_vector,
    write_seed_file,
)

pytestmark = pytest.mark.usefixtures("low_sql_variable_limit")

LABELS = ("red", "green", "blue")
NO_MERGES = IndexOptions(batch_size=16, checkpoint_every=40, compact=False)


class Inventory:
    """Seed files in label folders; `truth()` is what the index must hold (path -> seed)."""

    def __init__(self, root: Path, dim: int):
        self.root, self.dim, self.seeds, self.next_seed = root, dim, {}, 0

    def add(self, n: int) -> None:
        for _ in range(n):
            rel = f"{LABELS[self.next_seed % 3]}/item-{self.next_seed:05d}.jpg"
            self.write(rel)

    def write(self, rel: str) -> None:
        write_seed_file(self.root / rel, self.next_seed)
        self.seeds[rel] = self.next_seed
        self.next_seed += 1

    def change(self, rng: np.random.Generator, n: int) -> None:
        for rel in rng.choice(sorted(self.seeds), n, replace=False):
            self.write(str(rel))

    def delete(self, rng: np.random.Generator, n: int) -> None:
        for rel in rng.choice(sorted(self.seeds), n, replace=False):
            (self.root / rel).unlink()
            del self.seeds[rel]


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, model):
    """An index of several segments with deletion sets: 3 rounds of adds, changes and deletes."""
    tmp = tmp_path_factory.mktemp("segmented")
    dim = open_snapshot_dim(model)
    inv, index = Inventory(tmp / "inventory", dim), tmp / "index"
    rng = np.random.default_rng(7)
    inv.add(200)
    run_index(inv.root, model, index, NO_MERGES, embedder=seed_embedder)
    for _ in range(3):
        inv.change(rng, 25)
        inv.delete(rng, 15)
        inv.add(30)
        run_index(inv.root, model, index, NO_MERGES, embedder=seed_embedder)
    return inv, index


def open_snapshot_dim(model: Path) -> int:
    from encoder import load_encoder

    return load_encoder(model).dim


def reference(snap, inv: Inventory) -> tuple[np.ndarray, np.ndarray]:
    """(ids, prepared vectors) of the live items, from the seeds the files hold."""
    by_path = {info.path: i for i, info in snap.items(snap.live_ids().tolist()).items()}
    assert set(by_path) == set(inv.seeds)
    ids = np.array(sorted(by_path.values()), np.int64)
    path_of = {i: p for p, i in by_path.items()}
    xb = np.stack([seed_vector(inv.seeds[path_of[int(i)]], inv.dim) for i in ids])
    return ids, prepare(xb, snap.generation.metric)


def flat_search(ids: np.ndarray, xb: np.ndarray, xq: np.ndarray, k: int, metric: str):
    """The answer of one flat index holding `xb` under `ids`."""
    index = faiss.IndexIDMap2(
        faiss.IndexFlatIP(xb.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(xb.shape[1])
    )
    index.add_with_ids(xb, ids)
    return index.search(prepare(xq, metric), k)


def assert_same_top_k(got, want) -> None:
    """Same ids in the same order (ties aside), same scores."""
    (D, I), (D0, I0) = got, want  # noqa: E741
    assert (I[:, I0.shape[1] :] == -1).all()  # asked for more than there are: padded with -1
    D, I = D[:, : I0.shape[1]], I[:, : I0.shape[1]]  # noqa: E741
    np.testing.assert_allclose(D[I >= 0], D0[I0 >= 0], rtol=1e-4, atol=1e-5)
    assert (I >= 0).sum() == (I0 >= 0).sum()
    differ = I != I0
    if differ.any():  # only where two results score the same
        np.testing.assert_allclose(D[differ], D0[differ], rtol=1e-5, atol=1e-6)


def test_the_index_has_several_segments_and_deletion_sets(segmented):
    _, index = segmented
    snap = open_snapshot(index, verify="full")
    try:
        assert len(snap.parts) >= 6
        assert sum(len(p.deleted) for p in snap.parts) >= 40
        assert all(s.index_type == "flat" for s in snap.segments)
    finally:
        snap.close()


@pytest.mark.parametrize("k", [1, 10, 57, 1000])
def test_search_equals_one_flat_index(segmented, k):
    inv, index = segmented
    snap = open_snapshot(index)
    try:
        ids, xb = reference(snap, inv)
        xq = np.random.default_rng(k).standard_normal((20, inv.dim)).astype(np.float32)
        got = snap.search(xq, k)
        assert_same_top_k(got, flat_search(ids, xb, xq, min(k, len(ids)), "cosine"))
        hits = snap.search_vectors(xq, k)
        assert [len(h) for h in hits] == [min(k, len(ids))] * len(xq)
    finally:
        snap.close()


def test_search_widens_when_many_results_are_masked(segmented, monkeypatch):
    inv, index = segmented
    monkeypatch.setattr(ss, "OVERSAMPLE_EXACT_MAX", 0)  # always guess the width, then widen
    snap = open_snapshot(index)
    try:
        ids, xb = reference(snap, inv)
        xq = np.stack([xb[i] for i in range(0, len(xb), 7)])  # queries near live items
        assert_same_top_k(snap.search(xq, 25), flat_search(ids, xb, xq, 25, "cosine"))
    finally:
        snap.close()


@pytest.mark.parametrize("gather_share", [1.0, 0.0])  # gathered rows + faiss.knn, or an IDSelector
def test_allowed_ids_and_labels_are_exact(segmented, monkeypatch, gather_share):
    inv, index = segmented
    monkeypatch.setattr(ss, "GATHER_MAX_SHARE", gather_share)
    snap = open_snapshot(index)
    try:
        ids, xb = reference(snap, inv)
        rng = np.random.default_rng(3)
        xq = rng.standard_normal((10, inv.dim)).astype(np.float32)
        allowed = np.sort(rng.choice(ids, 60, replace=False))
        keep = np.isin(ids, allowed)
        allowed_with_gone = np.union1d(allowed, [10_000_000, 1])  # unknown or masked ids change nothing
        assert_same_top_k(
            snap.search(xq, 10, allowed=allowed_with_gone), flat_search(ids[keep], xb[keep], xq, 10, "cosine")
        )
        mask = np.zeros(ids.max() + 1, bool)
        mask[allowed] = True
        assert_same_top_k(
            snap.search(xq, 10, allowed=mask), flat_search(ids[keep], xb[keep], xq, 10, "cosine")
        )

        infos = snap.items(ids.tolist())
        red = np.array([infos[int(i)].label == "red" for i in ids])
        assert_same_top_k(snap.search(xq, 10, label="red"), flat_search(ids[red], xb[red], xq, 10, "cosine"))
        assert snap.label_ids("red").tolist() == ids[red].tolist()
        assert snap.labels() == {lb: sum(1 for i in ids if infos[int(i)].label == lb) for lb in LABELS}
        for hits in snap.search_vectors(xq, 10, label="blue", allowed=allowed):
            assert all(h.item.label == "blue" and h.id in allowed for h in hits)
    finally:
        snap.close()


def test_stored_vectors_and_ids(segmented):
    inv, index = segmented
    snap = open_snapshot(index)
    try:
        ids, xb = reference(snap, inv)
        assert snap.live_ids().tolist() == ids.tolist()
        np.testing.assert_allclose(snap.vectors(ids), xb, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(snap.vector(int(ids[5])), xb[5], rtol=1e-5, atol=1e-6)
        masked = next(int(p.deleted[0]) for p in snap.parts if len(p.deleted) and p.deleted[0] not in ids)
        assert not snap.contains(masked) and snap.item(masked) is None
        with pytest.raises(KeyError, match="not in generation"):
            snap.vector(masked)
    finally:
        snap.close()


def test_items_never_drops_a_hit_at_any_cache_size(segmented):
    """Issue 10.5: with the cache lowered to a few entries, every answer still has k hits."""
    inv, index = segmented
    snap = open_snapshot(index)
    snap.item_cache_size = 3
    try:
        rng = np.random.default_rng(11)
        for _ in range(30):
            xq = rng.standard_normal((8, inv.dim)).astype(np.float32)
            assert [len(h) for h in snap.search_vectors(xq, 20)] == [20] * 8
        ids = snap.live_ids()[:120].tolist()
        assert sorted(snap.items(ids)) == ids  # more ids than the cache holds, and than SQLite params
        assert len(snap._item_cache) <= 3
    finally:
        snap.close()


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_merged_segments_get_the_configured_type(tmp_path, model, index_type):
    """Small segments are flat; a merge large enough is ivf/hnsw; search stays right."""
    inv, index = Inventory(tmp_path / "inventory", open_snapshot_dim(model)), tmp_path / "index"
    inv.add(400)
    policy = MergePolicy(factor=4, floor=10, ann_min_items=150)
    opts = IndexOptions(index_type=index_type, batch_size=16, checkpoint_every=50, merge_policy=policy)
    summary = run_index(inv.root, model, index, opts, embedder=seed_embedder)
    assert summary.merged >= 1
    snap = open_snapshot(index, verify="full")
    try:
        kinds = {s.index_type for s in snap.segments}
        assert index_type in kinds and snap.generation.index_type == index_type
        ids, xb = reference(snap, inv)
        xq = xb[::10]
        knobs = {"nprobe": 10_000} if index_type == "ivf" else {"ef_search": 400}
        _, I = snap.search(xq, 10, params=search_params(index_type, **knobs))  # noqa: E741
        _, I0 = flat_search(ids, xb, xq, 10, "cosine")
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, I0, strict=True)])
        assert recall >= 0.95
        assert (I[:, 0] == ids[::10]).mean() >= 0.95  # each item finds itself
    finally:
        snap.close()


def test_merge_topk_orders_and_pads():
    D = [np.array([[0.9, 0.1]], np.float32), np.array([[0.5, -1.0]], np.float32)]
    I = [np.array([[4, 2]]), np.array([[7, -1]])]  # noqa: E741
    Dm, Im = ss.merge_topk(D, I, 4, "cosine", 1)
    assert Im.tolist() == [[4, 7, 2, -1]] and Dm[0, :3].tolist() == pytest.approx([0.9, 0.5, 0.1])
    Dm, Im = ss.merge_topk([np.array([[3.0, 1.0]], np.float32)], [np.array([[5, 6]])], 1, "l2", 1)
    assert Im.tolist() == [[6]] and Dm.tolist() == [[1.0]]
