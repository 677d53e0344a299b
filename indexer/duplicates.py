"""Near-duplicate inventory images, found from the index's own vectors.

    groups = find_duplicates(snapshot, threshold=0.95)   # cosine similarity >= 0.95 (l2: distance <=)

Two items are near duplicates when their stored vectors are within `threshold`; groups are the
connected components of that relation (exact range search with FAISS, then union-find).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from indexer import faiss_index
from indexer.grids import draw_grid, open_thumbnail
from indexer.store import ItemInfo, Snapshot

logger = logging.getLogger(__name__)

DEFAULT_COSINE_THRESHOLD = 0.95


@dataclass(frozen=True)
class DuplicateGroup:
    items: list[ItemInfo]  # sorted by path
    min_score: float  # the weakest link inside the group (similarity, or largest distance for l2)


def stored_vectors(snapshot: Snapshot) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of every item of a snapshot, in id order."""
    ids = snapshot.live_ids()
    return ids, np.ascontiguousarray(snapshot.vectors(ids), np.float32)


def duplicate_pairs(
    xb: np.ndarray, metric: str, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, score) with i < j for every pair of rows of `xb` within `threshold` (exact)."""
    xb = faiss_index.sanitize(xb)
    index = faiss.IndexFlatIP(xb.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(xb.shape[1])
    index.add(xb)
    lims, D, I = index.range_search(xb, float(threshold))  # noqa: E741
    rows = np.repeat(np.arange(len(xb)), np.diff(lims.astype(np.int64)))
    keep = rows < I
    return rows[keep], I[keep].astype(np.int64), D[keep]


def connected_groups(n: int, i: np.ndarray, j: np.ndarray) -> list[np.ndarray]:
    """Connected components (size >= 2) of the graph with edges (i, j), as arrays of row numbers."""
    parent = np.arange(n)

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in zip(i.tolist(), j.tolist(), strict=True):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(a) for a in range(n)])
    _, inverse, counts = np.unique(roots, return_inverse=True, return_counts=True)
    return [np.flatnonzero(inverse == g) for g in np.flatnonzero(counts >= 2)]


def find_duplicates(snapshot: Snapshot, threshold: float | None = None) -> list[DuplicateGroup]:
    """Groups of near-duplicate items, largest first.

    `threshold`: cosine similarity at least this (default 0.95), or for an l2 index squared distance at
    most this (required).

    :raise ValueError: no threshold for an l2 index, or a cosine threshold outside [-1, 1].
    """
    metric = snapshot.generation.metric
    if threshold is None:
        if metric != "cosine":
            raise ValueError("an l2 index needs an explicit --threshold (squared distance)")
        threshold = DEFAULT_COSINE_THRESHOLD
    if metric == "cosine" and not -1.0 <= threshold <= 1.0:
        raise ValueError(f"a cosine threshold must be in [-1, 1], got {threshold}")
    ids, xb = stored_vectors(snapshot)
    if not len(ids):
        return []
    i, j, score = duplicate_pairs(xb, metric, threshold)
    groups = connected_groups(len(ids), i, j)
    items = snapshot.items(ids[np.concatenate(groups)].tolist()) if groups else {}
    out = []
    for rows in groups:
        inside = np.isin(i, rows) & np.isin(j, rows)
        weakest = float(score[inside].min() if metric == "cosine" else score[inside].max())
        out.append(
            DuplicateGroup(sorted((items[int(x)] for x in ids[rows]), key=lambda it: it.path), weakest)
        )
    out.sort(key=lambda g: (-len(g.items), g.items[0].path))
    return out


def save_group_picture(path: str | Path, group: DuplicateGroup, snapshot: Snapshot, thumb: int = 128) -> Path:
    """The group's first image on top, all members below captioned with label and file name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [open_thumbnail(snapshot.image_path(it), thumb) for it in group.items]
    tiles = [(img, f"{it.label}\n{Path(it.path).name}") for img, it in zip(images, group.items, strict=True)]
    caption = f"{len(group.items)} near duplicates\nweakest {group.min_score:.3f}"
    draw_grid(images[0], caption, tiles, thumb=thumb, columns=min(len(tiles), 6)).save(path)
    return path
