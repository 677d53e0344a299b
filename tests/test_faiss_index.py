"""The FAISS core against numpy brute force, for both metrics."""

import numpy as np
import pytest

from indexer import faiss_index


def brute_force(xb: np.ndarray, xq: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    if metric == "cosine":
        xb = xb / np.linalg.norm(xb, axis=1, keepdims=True)
        xq = xq / np.linalg.norm(xq, axis=1, keepdims=True)
        scores = xq @ xb.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    else:
        scores = ((xq[:, None, :] - xb[None, :, :]) ** 2).sum(-1)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_search_equals_brute_force(metric):
    rng = np.random.default_rng(0)
    xb = rng.normal(size=(500, 24)).astype(np.float32)
    xq = rng.normal(size=(20, 24)).astype(np.float32)
    ids = rng.permutation(10_000)[:500].astype(np.int64) + 1  # ids are database keys, not positions
    index = faiss_index.build_index(24, metric)
    faiss_index.add(index, ids, xb, metric)

    D, I = faiss_index.search(index, xq, 10, metric)  # noqa: E741
    D_ref, order = brute_force(xb.astype(np.float64), xq.astype(np.float64), 10, metric)
    np.testing.assert_array_equal(I, ids[order])
    np.testing.assert_allclose(D, D_ref, rtol=1e-4, atol=1e-4)


def test_allowed_ids_restrict_results():
    rng = np.random.default_rng(1)
    xb = rng.normal(size=(100, 8)).astype(np.float32)
    index = faiss_index.build_index(8, "l2")
    faiss_index.add(index, np.arange(100), xb, "l2")
    allowed = np.arange(0, 100, 7)
    _, I = faiss_index.search(index, xb[:5], 5, "l2", allowed_ids=allowed)  # noqa: E741
    assert set(I.ravel()) <= set(allowed.tolist())


def test_ids_and_ids_sha():
    index = faiss_index.build_index(4, "cosine")
    faiss_index.add(index, np.array([5, 7]), np.eye(4, dtype=np.float32)[:2], "cosine")
    assert sorted(faiss_index.ids_of(index)) == [5, 7]
    assert faiss_index.ids_sha256(np.array([7, 5])) == faiss_index.ids_sha256(np.array([5, 7]))


def test_bad_input_raises():
    with pytest.raises(TypeError, match="matrix"):
        faiss_index.sanitize(np.zeros(3))
    with pytest.raises(ValueError, match="metric"):
        faiss_index.build_index(4, "manhattan")


def test_write_atomic_and_mmap_read(tmp_path):
    index = faiss_index.build_index(4, "l2")
    faiss_index.add(index, np.array([3, 9]), np.ones((2, 4), np.float32), "l2")
    path = tmp_path / "x.faiss"
    faiss_index.write_index_atomic(index, path)
    assert [p.name for p in tmp_path.iterdir()] == ["x.faiss"]  # no temporary left behind
    loaded = faiss_index.read_index(path, mmap=True)
    assert loaded.ntotal == 2 and sorted(faiss_index.ids_of(loaded)) == [3, 9]
