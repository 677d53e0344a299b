"""Searching a generation's segments exactly: per-segment top-k with deletions masked, then merged.

    seg = OpenSegment.open(index_dir, info, mmap=True)     # shared by every snapshot that has it
    D, I = search_parts([Part(seg, deleted), ...], xq, k, metric, allowed=None, params=None)

The result equals one index holding the live vectors of all segments (for flat segments: the
same top-k as one flat index, up to ties): the k best of a union are among the k best of each
part. Deleted (masked) ids are left out without a FAISS selector when possible, because FAISS's
selector path gives up the BLAS matrix product for batches (8x slower on 200k x 128, 32 queries):
each segment is searched for k plus enough extra results to cover its masked ids, and masked ids
are dropped afterwards; a query left with fewer than k live results is searched again wider.
An `allowed` set is applied per segment: a few allowed rows of a flat segment are gathered and
searched directly (`faiss.knn`), otherwise an `IDSelectorBatch` restricts the search.

Flat segments are memory-mapped read-only (`IO_FLAG_MMAP_IFC`): processes share one copy, and
nothing may ever add to or remove from them.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from indexer import faiss_index
from indexer.damage import SegmentDamagedError, file_digest
from indexer.segments import SegmentInfo, ids_sum

OVERSAMPLE_EXACT_MAX = 4096  # search k + all masked ids when that is at most this many results
GATHER_MAX_SHARE = 0.25  # an allowed set up to this share of a flat segment is searched directly


class SegmentFileError(SegmentDamagedError, RuntimeError):
    """A segment file is not the file the catalog describes (size, sha256, contents)."""


def check_segment_file(
    index_dir: str | Path, info: SegmentInfo, checksum: bool = True, *, trust_stamp: bool = False
) -> None:
    """The segment file has the size the catalog records and, with `checksum`, its sha256 (hashed
    once per process, or trusting a stamp left by an earlier hash with `trust_stamp`:
    `indexer.damage.file_digest`). Nothing is mapped: a truncated file is refused
    here instead of killing its reader with SIGBUS later.

    :raise FileNotFoundError: the file is gone.
    :raise SegmentFileError: wrong size or checksum.
    """
    path = Path(index_dir) / info.file
    size = path.stat().st_size
    if size != info.byte_size:
        raise SegmentFileError(
            f"segment {info.file} is {size:,} bytes, the catalog records {info.byte_size:,} (truncated or "
            "overwritten)",
            index_dir,
            info.file,
        )
    if checksum and info.sha256 and file_digest(path, trust_stamp=trust_stamp) != info.sha256:
        raise SegmentFileError(
            f"segment {info.file} does not match the sha256 recorded when it was written (damaged at rest)",
            index_dir,
            info.file,
        )


@dataclass(eq=False)
class OpenSegment:
    """A segment file opened for searching (read-only), with its ids sorted for lookups."""

    info: SegmentInfo
    index: faiss.Index
    ids: np.ndarray  # storage order (the IDMap's table)
    sorted_ids: np.ndarray
    rows: np.ndarray | None  # storage row of each of sorted_ids; None when storage order is sorted
    ids_sum: int  # segments.ids_sum of all its ids (for the generation checksum)
    xb: np.ndarray | None  # flat segments: the stored vectors, (n, d), a view (never written)
    _labels: dict[str, np.ndarray] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(
        cls, index_dir: str | Path, info: SegmentInfo, mmap: bool = True, checksum: bool = False
    ) -> OpenSegment:
        """Open and check a segment file: size (always) and, with `checksum`, sha256 before FAISS
        reads or maps a byte of it; then count, dimension and ids.

        :raise FileNotFoundError: the file is gone (e.g. pruned after a newer generation).
        :raise SegmentFileError: the file is not what the catalog records.
        """
        path = Path(index_dir) / info.file
        check_segment_file(index_dir, info, checksum)  # FileNotFoundError passes: the caller may retry
        flags = faiss.IO_FLAG_MMAP_IFC if mmap and info.index_type == "flat" else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SegmentFileError(
                f"segment {info.file} cannot be read by FAISS ({first})", index_dir, info.file
            ) from e
        ids = faiss_index.ids_of(index)
        faiss_index.use_blas_from(index.d)
        if index.ntotal != info.item_count or index.d != info.dim:
            raise SegmentFileError(
                f"segment {info.file} holds {index.ntotal} vectors of dimension {index.d}, the catalog "
                f"records {info.item_count} of dimension {info.dim}",
                index_dir,
                info.file,
            )
        in_order = len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1]))
        rows = None if in_order else np.argsort(ids, kind="stable")
        sorted_ids = ids if rows is None else ids[rows]
        if hashlib.sha256(sorted_ids.tobytes()).hexdigest() != info.ids_sha256:
            raise SegmentFileError(
                f"the ids in segment {info.file} differ from those the catalog records", index_dir, info.file
            )
        xb = None
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexFlat) and index.ntotal:
            xb = faiss.rev_swig_ptr(inner.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
        return cls(info, index, ids, sorted_ids, rows, ids_sum(ids), xb)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Storage row of each id (-1 where the segment does not hold it)."""
        ids = np.asarray(ids, np.int64)
        n = len(self.sorted_ids)
        if not n or not len(ids):
            return np.full(len(ids), -1, np.int64)
        pos = np.searchsorted(self.sorted_ids, ids)
        pos[pos >= n] = n - 1
        found = self.sorted_ids[pos] == ids
        rows = pos if self.rows is None else self.rows[pos]
        return np.where(found, rows, -1)

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors at storage `rows` (float32 (n, d)); numpy gathers for flat segments."""
        rows = np.asarray(rows, np.int64)
        if self.xb is not None:
            return np.array(self.xb[rows], np.float32)
        inner = faiss.downcast_index(self.index.index)
        out = np.empty((len(rows), self.index.d), np.float32)
        for n, r in enumerate(rows.tolist()):
            out[n] = inner.reconstruct(r)
        return out

    def all_vectors(self) -> np.ndarray:
        """Every stored vector in storage order (a copy)."""
        if self.xb is not None:
            return np.array(self.xb, np.float32)
        if not self.ntotal:
            return np.zeros((0, self.index.d), np.float32)
        return faiss.downcast_index(self.index.index).reconstruct_n(0, self.ntotal)

    def label_ids(self, label: str, fetch) -> np.ndarray:  # noqa: ANN001 - fetch(label, lo, hi) -> ids
        """Sorted ids in this segment whose item has `label` (cached: an item's label never changes).

        `fetch(label, lo, hi)` returns the catalog's ids with that label between lo and hi.
        """
        with self._lock:
            if label not in self._labels:
                if not len(self.sorted_ids):
                    self._labels[label] = np.zeros(0, np.int64)
                else:
                    cand = np.asarray(
                        fetch(label, int(self.sorted_ids[0]), int(self.sorted_ids[-1])), np.int64
                    )
                    self._labels[label] = np.sort(cand[self.rows_of(cand) >= 0])
            return self._labels[label]


@dataclass(frozen=True)
class Part:
    """A segment as one generation has it: the segment and the sorted ids masked in it."""

    segment: OpenSegment
    deleted: np.ndarray

    @property
    def live_count(self) -> int:
        return self.segment.ntotal - len(self.deleted)

    def live_ids(self) -> np.ndarray:
        """Sorted ids live in this part."""
        ids = self.segment.sorted_ids
        if not len(self.deleted):
            return ids
        return ids[~member(ids, self.deleted)]


def member(a: np.ndarray, sorted_b: np.ndarray) -> np.ndarray:
    """Boolean mask: which of `a` are in the sorted array `sorted_b`."""
    if not len(sorted_b) or not len(a):
        return np.zeros(len(a), bool)
    pos = np.searchsorted(sorted_b, a)
    pos[pos >= len(sorted_b)] = len(sorted_b) - 1
    return sorted_b[pos] == a


def search_parts(
    parts: list[Part],
    xq: np.ndarray,
    k: int,
    metric: str,
    allowed: np.ndarray | None = None,
    params: faiss.SearchParameters | None = None,
    restrict: list[np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest live items over `parts`: (D, I) of shape (nq, k), missing results -1.

    `allowed`: sorted item ids, the only ones that may be returned. `restrict`: per part, sorted ids
    already known to be in that segment (e.g. a label's), intersected with `allowed`.
    `params`: per-query knobs (`ann.search_params`); they apply to segments of their type only.
    """
    xq = faiss_index.prepare(xq, metric)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    Ds, Is = [], []
    for n, part in enumerate(parts):
        if not part.live_count:
            continue
        subset = restrict[n] if restrict is not None else None
        if allowed is not None:
            subset = _intersect(subset if subset is not None else part.segment.sorted_ids, allowed)
        if subset is not None:
            subset = subset[~member(subset, part.deleted)] if len(part.deleted) else subset
            if not len(subset):
                continue
            D, I = _search_subset(part.segment, xq, k, metric, subset, params)  # noqa: E741
        else:
            D, I = _search_masked(part, xq, k, params)  # noqa: E741
        Ds.append(D)
        Is.append(I)
    return merge_topk(Ds, Is, k, metric, len(xq))


def _intersect(sorted_a: np.ndarray, sorted_b: np.ndarray) -> np.ndarray:
    """Sorted intersection of two sorted id arrays (searching the shorter in the longer)."""
    if len(sorted_a) > len(sorted_b):
        sorted_a, sorted_b = sorted_b, sorted_a
    return sorted_a[member(sorted_a, sorted_b)]


def _search_masked(part: Part, xq: np.ndarray, k: int, params) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """Top-k of a segment with its masked ids left out, by searching wider and dropping them."""
    seg, deleted = part.segment, part.deleted
    n_total = seg.ntotal
    if not len(deleted):
        return _raw_search(seg, xq, min(k, n_total), params)
    enough = min(n_total, k + len(deleted))  # always holds k live results when there are k
    if enough <= OVERSAMPLE_EXACT_MAX:
        width = enough
    else:  # expect the masked share among the results; widen again for queries left short
        share = len(deleted) / n_total
        width = min(enough, math.ceil(k / max(1e-3, 1.0 - share) * 1.5) + 16)
    nq = len(xq)
    D_out = np.full((nq, k), np.nan, np.float32)
    I_out = np.full((nq, k), -1, np.int64)
    todo = np.arange(nq)
    while len(todo):
        D, I = _raw_search(seg, xq[todo], width, params)  # noqa: E741
        live = (I >= 0) & ~member(I.ravel(), deleted).reshape(I.shape)
        n_live = live.sum(axis=1)
        exhausted = (I < 0).any(axis=1) | (width >= enough)  # nothing more to find by widening
        done = (n_live >= k) | exhausted
        for row in np.flatnonzero(done):
            keep = np.flatnonzero(live[row])[:k]
            q = todo[row]
            D_out[q, : len(keep)] = D[row, keep]
            I_out[q, : len(keep)] = I[row, keep]
        todo = todo[~done]
        width = min(enough, width * 4)
    return D_out, I_out


def _search_subset(
    seg: OpenSegment,
    xq: np.ndarray,
    k: int,
    metric: str,
    subset: np.ndarray,
    params,  # noqa: ANN001
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k among the sorted ids `subset` of a segment (all live)."""
    k_sub = min(k, len(subset))
    if seg.xb is not None and len(subset) <= GATHER_MAX_SHARE * seg.ntotal:
        rows = seg.rows_of(subset)
        xb = np.ascontiguousarray(seg.xb[rows])
        D, I = faiss.knn(xq, xb, k_sub, metric=faiss_index.faiss_metric(metric))  # noqa: E741
        return D, np.where(I >= 0, subset[np.maximum(I, 0)], -1)
    selector = faiss.IDSelectorBatch(np.ascontiguousarray(subset, np.int64))
    return _raw_search(seg, xq, k_sub, params, selector)


def _raw_search(
    seg: OpenSegment,
    xq: np.ndarray,
    k: int,
    params,
    selector=None,  # noqa: ANN001
) -> tuple[np.ndarray, np.ndarray]:
    p = segment_params(seg, params, selector)
    if p is None:
        return seg.index.search(xq, k)
    return seg.index.search(xq, k, params=p)


def segment_params(seg: OpenSegment, params, selector=None):  # noqa: ANN001, ANN201
    """Search parameters for one segment: the caller's knobs where they apply to its type, the
    segment's own defaults otherwise, and the selector (None when nothing needs setting)."""
    kind = seg.info.index_type
    inner = faiss.downcast_index(seg.index.index)
    if kind == "ivf" and isinstance(inner, faiss.IndexIVF):
        if selector is None and not isinstance(params, faiss.SearchParametersIVF):
            return None
        p = faiss.SearchParametersIVF()
        p.nprobe = params.nprobe if isinstance(params, faiss.SearchParametersIVF) else inner.nprobe
    elif kind == "hnsw" and isinstance(inner, faiss.IndexHNSW):
        if selector is None and not isinstance(params, faiss.SearchParametersHNSW):
            return None
        p = faiss.SearchParametersHNSW()
        hnsw_params = isinstance(params, faiss.SearchParametersHNSW)
        p.efSearch = params.efSearch if hnsw_params else inner.hnsw.efSearch
    else:
        if selector is None:
            return None
        p = faiss.SearchParameters()
    if selector is not None:
        p.sel = selector
    return p


def merge_topk(
    Ds: list[np.ndarray], Is: list[np.ndarray], k: int, metric: str, nq: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of per-part results (best first); missing results are -1 with a worst distance."""
    worst = -np.inf if metric == "cosine" else np.inf
    if not Ds:
        return np.full((nq, k), worst, np.float32), np.full((nq, k), -1, np.int64)
    D = np.concatenate([np.asarray(d, np.float32) for d in Ds], axis=1)
    I = np.concatenate([np.asarray(i, np.int64) for i in Is], axis=1)  # noqa: E741
    key = -D if metric == "cosine" else D.copy()
    key[(I < 0) | np.isnan(key)] = np.inf
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    D = np.take_along_axis(D, order, axis=1)
    I = np.take_along_axis(I, order, axis=1)  # noqa: E741
    missing = np.take_along_axis(key, order, axis=1) == np.inf
    D[missing], I[missing] = worst, -1
    if D.shape[1] < k:
        pad = k - D.shape[1]
        D = np.pad(D, ((0, 0), (0, pad)), constant_values=worst)
        I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)  # noqa: E741
    return D, I
