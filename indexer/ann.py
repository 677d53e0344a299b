"""Approximate index types (IVF, HNSW): built with faiss's index factory, behind the same IDMap2.

    inner = build_ann(d, metric, "ivf", xt)            # trained on a sample of xt
    params = search_params("ivf", nprobe=32)            # per-query knobs for Snapshot.search_vectors

`faiss_index.build_index` wraps what `build_ann` returns in an `IndexIDMap2`, so ids are still the
SQLite item ids and every segment is still one `.faiss` file.

- `ivf`: IVF-Flat. `nlist = clamp(round(4 * sqrt(n)), 1, n // 39)` for n training vectors (faiss wants
  about 39 points per centroid); k-means runs on at most `TRAIN_POINTS_PER_LIST * nlist` sampled
  vectors. The default `nprobe` stored in the index is `ceil(sqrt(nlist))`. The centroids are fixed at
  build time: later additions go to the nearest list, so after the inventory has grown a lot, rebuild
  (`imgrec index --full`) to retrain. It keeps an array direct map, so `reconstruct(id)` works
  (`Snapshot.vector`, `contains`).
- `hnsw`: HNSW-Flat, `M = HNSW_M`, efConstruction `HNSW_EF_CONSTRUCTION`, default efSearch
  `HNSW_EF_SEARCH`. No training.

Nothing is ever removed from a segment's FAISS index (HNSW cannot remove at all, and IVF behind an
IDMap would map later results to the wrong items): deletions are the generation's deletion sets,
and compaction writes merged segments anew (indexer/compaction.py).
"""

from __future__ import annotations

import logging
import math

import faiss
import numpy as np

logger = logging.getLogger(__name__)

ANN_TYPES = ("ivf", "hnsw")
TRAIN_POINTS_PER_LIST = 40  # k-means sample size per IVF list (faiss wants >= 39; caps at 256)
MIN_POINTS_PER_LIST = 39  # below this faiss warns that k-means is poorly trained
HNSW_M = 32  # graph degree: more = better recall, more memory, slower build
HNSW_EF_CONSTRUCTION = 80  # candidate list while building
HNSW_EF_SEARCH = 64  # default candidate list while searching (per query: search_params)
SEED = 1234


def nlist_for(n: int) -> int:
    """Number of IVF lists for `n` training vectors: ~4*sqrt(n), at least 39 vectors per list."""
    if n <= 0:
        return 1
    return max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_LIST))


def default_nprobe(nlist: int) -> int:
    return max(1, min(nlist, math.ceil(math.sqrt(nlist))))


def build_ann(
    d: int, metric: str, index_type: str, xt: np.ndarray | None, n_total: int | None = None
) -> faiss.Index:
    """An empty approximate index of `index_type`, trained (if it needs it) on a sample of `xt`.

    `xt` holds raw vectors; they are prepared for `metric` (normalised for cosine) before training.
    `n_total`: how many vectors the index will hold, when `xt` is only a sample of them (the number
    of IVF lists follows it). With no training vectors at all, an IVF index gets a single list
    (exact, like flat).
    """
    from indexer.faiss_index import faiss_metric, prepare

    if index_type not in ANN_TYPES:
        raise ValueError(f"unknown index type {index_type!r}; choose flat or one of {ANN_TYPES}")
    if index_type == "hnsw":
        index = faiss.index_factory(d, f"HNSW{HNSW_M},Flat", faiss_metric(metric))
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return index

    xt = prepare(xt if xt is not None else np.zeros((0, d), np.float32), metric)
    if xt.shape[1] != d:
        raise ValueError(f"training vectors have dimension {xt.shape[1]}, the index {d}")
    if not len(xt):  # nothing to train on: one list holding everything, trained on the origin
        xt = np.zeros((1, d), np.float32)
    nlist = min(nlist_for(max(len(xt), n_total or 0)), max(1, len(xt) // MIN_POINTS_PER_LIST))
    index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss_metric(metric))
    sample = xt
    if len(xt) > TRAIN_POINTS_PER_LIST * nlist:
        rng = np.random.default_rng(SEED)
        sample = xt[np.sort(rng.choice(len(xt), TRAIN_POINTS_PER_LIST * nlist, replace=False))]
    index.cp.seed = SEED
    index.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
    index.train(sample)
    index.make_direct_map(True)  # an array: ids inside the IDMap are always 0..ntotal-1
    index.nprobe = default_nprobe(nlist)
    logger.info("trained IVF%d on %d of %d vectors (nprobe %d)", nlist, len(sample), len(xt), index.nprobe)
    return index


def inner_index(index: faiss.Index) -> faiss.Index:
    """The index inside an `IndexIDMap2` (downcast to its concrete type)."""
    inner = index.index if hasattr(index, "id_map") else index
    return faiss.downcast_index(inner)


def index_type_of(index: faiss.Index) -> str:
    """flat, ivf or hnsw: which kind of index this is (looking through the IDMap)."""
    inner = inner_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexIVF):
        return "ivf"
    return "flat"


def search_params(
    index_type: str, *, nprobe: int | None = None, ef_search: int | None = None
) -> faiss.SearchParameters | None:
    """Per-query search parameters for `Snapshot.search_vectors(..., params=)`; None: the index's defaults.

    Build a fresh object per query: `faiss_index.search` attaches a label filter to it.

    :raise ValueError: a knob that does not apply to `index_type`, or a value below 1.
    """
    for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if index_type == "ivf":
        if ef_search is not None:
            raise ValueError("ef_search applies to hnsw indexes, not ivf (use nprobe)")
        return faiss.SearchParametersIVF(nprobe=nprobe) if nprobe is not None else None
    if index_type == "hnsw":
        if nprobe is not None:
            raise ValueError("nprobe applies to ivf indexes, not hnsw (use ef_search)")
        return faiss.SearchParametersHNSW(efSearch=ef_search) if ef_search is not None else None
    if index_type == "flat":
        if nprobe is not None or ef_search is not None:
            raise ValueError("a flat index is exact: it takes neither nprobe nor ef_search")
        return None
    raise ValueError(f"unknown index type {index_type!r}")
