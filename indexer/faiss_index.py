"""FAISS core: plain functions on arrays (no database, no files but the explicit read/write).

Every index is an `IndexIDMap2` whose ids are the SQLite primary keys of the items. `cosine` is
inner product on L2-normalised vectors; `l2` is squared Euclidean distance.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import faiss
import numpy as np

from indexer.durable import fsync_path as fsync_dir  # tests kill at indexer.faiss_index:fsync_dir

METRICS = ("l2", "cosine")
INDEX_TYPES = ("flat", "ivf", "hnsw")  # flat is exact; ivf and hnsw are built by indexer/ann.py
BLAS_MIN_QUERIES = 4  # from this many queries per call, exhaustive search uses a BLAS matrix product


def sanitize(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 matrix (faiss contrib `sanitize`)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise TypeError(f"expected a matrix of vectors, got an array of shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as the index stores them: L2-normalised for cosine, unchanged for l2."""
    x = sanitize(x).copy()
    if metric == "cosine":
        faiss.normalize_L2(x)
    elif metric != "l2":
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    return x


def faiss_metric(metric: str) -> int:
    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def use_blas_from(d: int) -> None:
    """Let exhaustive searches of `d`-dimensional vectors take FAISS's BLAS path from
    BLAS_MIN_QUERIES queries per call.

    FAISS scans query by query while nq * d < distance_compute_blas_threshold (128000 by default:
    1000 queries at d=128), else runs one BLAS product per block of vectors. From about 4 queries
    the product is faster (1M x 128, one thread, 32 queries: ~5x the queries/s of the scan), which
    is what makes micro-batched queries pay (docs/performance.md). The threshold is one
    process-wide value that depends on the dimension, so it is set when an index is built or
    opened (`build_index`, `read_index`, `segment_search.OpenSegment.open`), never per search.
    """
    value = BLAS_MIN_QUERIES * int(d)
    if faiss.cvar.distance_compute_blas_threshold != value:
        faiss.cvar.distance_compute_blas_threshold = value


def build_index(
    d: int, metric: str, index_type: str = "flat", xt: np.ndarray | None = None, n_train: int | None = None
) -> faiss.Index:
    """An empty `IndexIDMap2` of the given type; approximate types are trained on `xt` (a sample
    of `n_train` vectors when given: ivf sizes its lists for the whole set)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    if index_type == "flat":
        inner = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
    else:
        from indexer.ann import build_ann

        inner = build_ann(d, metric, index_type, xt, n_total=n_train)
    use_blas_from(d)
    return faiss.IndexIDMap2(inner)


def add(index: faiss.Index, ids: np.ndarray, xb: np.ndarray, metric: str) -> None:
    """Add vectors (prepared for `metric`) under `ids`."""
    xb = prepare(xb, metric)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if len(ids) != len(xb):
        raise ValueError(f"{len(ids)} ids for {len(xb)} vectors")
    if len(ids):
        index.add_with_ids(xb, ids)


def search(
    index: faiss.Index,
    xq: np.ndarray,
    k: int,
    metric: str,
    allowed_ids: np.ndarray | None = None,
    params: faiss.SearchParameters | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours: (D, I) of shape (nq, k); missing results have id -1.

    With `allowed_ids`, only those ids can be returned.
    """
    xq = prepare(xq, metric)
    k = min(k, index.ntotal) if index.ntotal else k
    if allowed_ids is not None:
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
        params = params or faiss.SearchParameters()
        params.sel = selector
    if params is not None:
        return index.search(xq, k, params=params)
    return index.search(xq, k)


def ids_of(index: faiss.Index) -> np.ndarray:
    """The ids an `IndexIDMap2` holds, in storage order."""
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def ids_sha256(ids: np.ndarray) -> str:
    """An order-independent fingerprint of a set of ids."""
    return hashlib.sha256(np.sort(np.asarray(ids, dtype=np.int64)).tobytes()).hexdigest()


def write_index_atomic(index: faiss.Index, path: str | Path) -> tuple[int, str]:
    """Write to a temporary name, fsync, rename into place, fsync the directory; every step checked.

    FAISS writes through `faiss.PyCallbackIOWriter` into a Python file object, so a failed write
    (ENOSPC, EIO) raises OSError here instead of being printed by FAISS and ignored. Returns the
    file's size and the sha256 of its bytes (hashed while writing). On failure the temporary file
    is removed and the error raised.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    h = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as f:

            def write(chunk: bytes) -> int:
                nonlocal size
                f.write(chunk)
                h.update(chunk)
                size += len(chunk)
                return len(chunk)

            faiss.write_index(index, faiss.PyCallbackIOWriter(write))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size, h.hexdigest()


def read_index(path: str | Path, mmap: bool = False) -> faiss.Index:
    """Read an index; with `mmap`, flat indexes are memory-mapped read-only (never add/remove on them)."""
    flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0
    index = faiss.read_index(str(path), flags)
    use_blas_from(index.d)
    return index
