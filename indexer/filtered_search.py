"""Search restricted to a set of items (a filter's matches), planned by how many match.

    D, I, exact = search_allowed(snap, xq, k, allowed)     # allowed: sorted int64 item ids

- no match: empty results;
- few matches (at most `DIRECT_MAX`, or a small share of the generation): their stored vectors are
  gathered (`Snapshot.vectors`) and scored directly, one matrix product: exact for every index type;
- many: each segment is searched by FAISS with an `IDSelectorBitmap` over item ids (one bitmap per
  query batch; a segment's deletion set is cleared from its copy), so the scan skips the others.
  Flat segments stay exact; IVF and HNSW segments filter while they search and may miss matches
  (`exact` is False; the answer says so).

The top-k of each part are merged as storage merges unfiltered results (`merge_topk`).
"""

from __future__ import annotations

import faiss
import numpy as np

from indexer import faiss_index
from indexer.segment_search import merge_topk, segment_params

DIRECT_MAX = 5_000  # at most this many matches: score their vectors directly (bench/filtered_search.py)
DIRECT_SHARE = 0.005  # ... or at most this share of the generation's items


def search_allowed(
    snap,  # noqa: ANN001 - indexer.store.Snapshot
    xq: np.ndarray,
    k: int,
    allowed: np.ndarray,
    params: faiss.SearchParameters | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The k nearest of `allowed` (sorted item ids of the snapshot) for each query: (D, I, exact)."""
    metric = snap.generation.metric
    xq = faiss_index.prepare(xq, metric)
    allowed = np.asarray(allowed, np.int64)
    if not len(allowed):
        return merge_topk([], [], k, metric, len(xq)) + (True,)
    if len(allowed) <= max(DIRECT_MAX, DIRECT_SHARE * snap.generation.item_count) or len(allowed) <= k:
        return (*score_directly(snap.vectors(allowed), allowed, xq, k, metric), True)
    return selector_search(snap.parts, allowed, xq, k, metric, params)


def score_directly(
    xb: np.ndarray, ids: np.ndarray, xq: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of `xq` among the vectors `xb` (rows of `ids`)."""
    k_sub = min(k, len(ids))
    D, I = faiss.knn(xq, np.ascontiguousarray(xb), k_sub, metric=faiss_index.faiss_metric(metric))  # noqa: E741
    I = np.where(I >= 0, ids[np.maximum(I, 0)], -1)  # noqa: E741
    return merge_topk([D], [I], k, metric, len(xq))


def id_bitmap(ids: np.ndarray) -> np.ndarray:
    """A little-endian bitmap (uint8) with the bits of `ids` set: faiss.IDSelectorBitmap's layout."""
    mask = np.zeros(int(ids[-1]) + 1, bool)
    mask[ids] = True
    return np.packbits(mask, bitorder="little")


def selector_search(
    parts: list,
    allowed: np.ndarray,
    xq: np.ndarray,
    k: int,
    metric: str,
    params: faiss.SearchParameters | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Every segment searched by FAISS with only `allowed` (minus its deletion set) selectable."""
    bitmap = id_bitmap(allowed)
    Ds, Is = [], []
    exact = True
    for part in parts:
        if not part.live_count:
            continue
        bits = bitmap
        if len(part.deleted):
            bits = bitmap.copy()
            gone = part.deleted[part.deleted < len(bitmap) * 8]
            np.bitwise_and.at(bits, gone >> 3, ~(np.uint8(1) << (gone & 7).astype(np.uint8)))
        selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
        p = segment_params(part.segment, params, selector)
        D, I = part.segment.index.search(xq, min(k, part.segment.ntotal), params=p)  # noqa: E741
        Ds.append(D)
        Is.append(I)
        exact &= part.segment.info.index_type == "flat"
    return (*merge_topk(Ds, Is, k, metric, len(xq)), exact)
