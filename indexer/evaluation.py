"""Retrieval quality of a published index: metrics, an eval run, and storing its figures.

    run = evaluate_index(INDEX_DIR, QUERIES_DIR, k=10)   # labels = parent folder names
    save_eval_figures(INDEX_DIR, run.figures)            # into the generation's record

A retrieved item is relevant when its label equals the query's. With `rel` the (nq, k) boolean
relevance of the ranked results and `n_rel` the number of inventory items of the query's class:

    P@j        share of relevant items among the first j results (j <= k; missing results count as wrong)
    mAP@k      mean over queries of AP@k = sum_{i<=k} P@i * rel_i / min(k, n_rel)
    recall@k   relevant items in the top k / min(k, n_rel): the share of what could have been found
               in k results that was found (equals P@k when the class holds at least k items)
    chance     the class prior n_rel / N averaged over queries: the expected P@j of a random ranking

The raw-pixel baseline is computed in the same run on the same images: each image squashed to
`baseline_size` px, its pixels as a vector, exact cosine search.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from encoder import Encoder, ImageDecodeError, ImageTooLargeError, Preprocess, load_image
from encoder.images import find_images
from indexer import faiss_index, querying
from indexer.db import Generation, Item, open_database
from indexer.store import Snapshot, open_snapshot

logger = logging.getLogger(__name__)

UNREADABLE = (ImageDecodeError, ImageTooLargeError, OSError)


# -- metric functions on arrays ------------------------------------------------------------------


def relevance(
    query_labels: Sequence[str], retrieved_labels: Sequence[Sequence[str | None]], k: int
) -> np.ndarray:
    """(nq, k) bool: result i of query q has q's label (rows shorter than k are padded with misses)."""
    rel = np.zeros((len(query_labels), k), bool)
    for q, (label, row) in enumerate(zip(query_labels, retrieved_labels, strict=True)):
        for i, other in enumerate(row[:k]):
            rel[q, i] = other is not None and other == label
    return rel


def precision_at(rel: np.ndarray, j: int) -> np.ndarray:
    """P@j per query (nq,)."""
    if j < 1 or j > rel.shape[1]:
        raise ValueError(f"P@{j} needs 1 <= j <= k = {rel.shape[1]}")
    return rel[:, :j].sum(1) / j


def average_precision_at(rel: np.ndarray, n_rel: np.ndarray) -> np.ndarray:
    """AP@k per query (nq,): sum_i P@i * rel_i / min(k, n_rel); 0 when the class is empty."""
    k = rel.shape[1]
    hits = rel.cumsum(1)
    prec = hits / np.arange(1, k + 1)
    denom = np.minimum(k, np.asarray(n_rel))
    return np.where(denom > 0, (prec * rel).sum(1) / np.maximum(denom, 1), 0.0)


def recall_at(rel: np.ndarray, n_rel: np.ndarray) -> np.ndarray:
    """recall@k per query (nq,): relevant in the top k / min(k, n_rel); 0 when the class is empty."""
    denom = np.minimum(rel.shape[1], np.asarray(n_rel))
    return np.where(denom > 0, rel.sum(1) / np.maximum(denom, 1), 0.0)


def metric_names(k: int) -> list[str]:
    """The metrics reported for depth k: P@1, P@5, P@k, mAP@k, recall@k (no duplicates)."""
    ps = [f"P@{j}" for j in dict.fromkeys(j for j in (1, 5, k) if j <= k)]
    return [*ps, f"mAP@{k}", f"recall@{k}"]


def per_query_metrics(rel: np.ndarray, n_rel: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of `metric_names(k)`, per query."""
    k = rel.shape[1]
    out = {name: precision_at(rel, int(name[2:])) for name in metric_names(k) if name.startswith("P@")}
    out[f"mAP@{k}"] = average_precision_at(rel, n_rel)
    out[f"recall@{k}"] = recall_at(rel, n_rel)
    return out


def mean_metrics(per_query: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, float]:
    return {
        name: round(float(v[mask].mean() if mask is not None else v.mean()), 4)
        for name, v in per_query.items()
    }


def chance_precision(query_labels: Sequence[str], class_sizes: dict[str, int]) -> float:
    """Expected P@j of a random ranking: the class prior n_rel / N, averaged over queries."""
    n = sum(class_sizes.values())
    if not n or not len(query_labels):
        return 0.0
    return float(np.mean([class_sizes.get(label, 0) / n for label in query_labels]))


# -- raw-pixel baseline ----------------------------------------------------------------------------


def raw_pixels(paths: Sequence[Path], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each readable image squashed to size x size, flattened to float32; returns (X, ok mask)."""
    pre = Preprocess(image_size=size)
    X = np.zeros((len(paths), 3 * size * size), np.float32)
    ok = np.zeros(len(paths), bool)
    for i, p in enumerate(paths):
        try:
            X[i] = pre.to_uint8(load_image(p, draft_size=size)).reshape(-1) / 255.0
            ok[i] = True
        except UNREADABLE as e:
            logger.warning("raw-pixel baseline: skipping %s: %s", p, e)
    return X, ok


def exact_cosine_search(xb: np.ndarray, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine kNN with faiss: (D, I) with row indices into `xb`."""
    xb, xq = faiss_index.prepare(xb, "cosine"), faiss_index.prepare(xq, "cosine")
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    return index.search(xq, min(k, len(xb)))


# -- an eval run over a query folder -------------------------------------------------------------


@dataclass
class QueryResult:
    path: Path
    label: str
    hit_ids: list[int]
    hit_scores: list[float]
    hit_labels: list[str]
    metrics: dict[str, float]  # this query's P@j, mAP@k, recall@k


@dataclass
class EvalRun:
    figures: dict  # JSON-able summary (what `save_eval_figures` stores)
    queries: list[QueryResult]
    inventory_ids: np.ndarray  # (N,) ids of the live items
    inventory_labels: list[str]  # (N,)
    baseline_per_class: dict[str, dict[str, float]] = field(default_factory=dict)


def inventory_items(snapshot: Snapshot) -> list[Item]:
    """The live items of the snapshot's catalog, by id."""
    with Session(snapshot.engine) as session:
        rows = session.scalars(select(Item).where(Item.deleted_generation.is_(None)).order_by(Item.id)).all()
        session.expunge_all()
    return list(rows)


def evaluate_index(
    index_dir: str | Path,
    queries_dir: str | Path,
    k: int = 10,
    *,
    baseline_size: int | None = 32,
    progress: Callable[[int], None] | None = None,
    expand: bool = True,
) -> EvalRun:
    """Query the index with every image under `queries_dir` (label = parent folder) and score it.

    Queries are answered through `indexer.querying` as the CLI and the API answer them: with the
    model's query expansion unless `expand` is False; the figures record which.

    Each query is embedded and searched alone (batch of 1), as a client would, to time latency.
    `progress(n)` is called after each query. With `baseline_size`, raw pixels are scored too.

    :raise IndexNotFoundError: nothing published in `index_dir`.
    :raise ValueError: no readable query image, or queries without a matching inventory label.
    """
    t_start = time.perf_counter()
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    snap = open_snapshot(index_dir)
    try:
        return _evaluate(snap, Path(queries_dir), k, baseline_size, progress, t_start, expand)
    finally:
        snap.close()


def _evaluate(
    snap: Snapshot,
    queries_dir: Path,
    k: int,
    baseline_size: int | None,
    progress: Callable[[int], None] | None,
    t_start: float,
    expand: bool = True,
) -> EvalRun:
    if not queries_dir.is_dir():
        raise ValueError(f"query folder not found: {queries_dir}")
    items = inventory_items(snap)
    label_of = {it.id: it.label for it in items}
    class_sizes = Counter(label_of.values())
    encoder = snap.encoder
    pre = encoder.preprocess
    opts = querying.SearchOptions(k=k, group_by="none", expand=expand)  # images, as labelled
    plan = querying.plan_search(snap, opts)

    paths, labels, vectors, hits, novelty = [], [], [], [], []
    t_decode, t_embed, t_search = [], [], []
    skipped = 0
    for p in find_images(queries_dir):
        t0 = time.perf_counter()
        try:
            x = pre.to_uint8(load_image(p, draft_size=pre.image_size))  # (H, W, 3)
        except UNREADABLE as e:
            logger.warning("skipping query %s: %s", p, e)
            skipped += 1
            continue
        t1 = time.perf_counter()
        xq, _ = querying.embed(
            snap, [x], novelty=False
        )  # (1, d); novelty apart, so embed_ms stays comparable
        t2 = time.perf_counter()
        found = querying.search(snap, xq, plan)[0].hits
        t3 = time.perf_counter()
        t_decode.append(t1 - t0)
        t_embed.append(t2 - t1)
        t_search.append(t3 - t2)
        novelty.append(_novelty_percentile(encoder, pre.normalize(x[None])))
        paths.append(p)
        labels.append(p.parent.name)
        vectors.append(xq[0])
        hits.append(found)
        if progress:
            progress(1)
    if not paths:
        raise ValueError(f"no readable query images under {queries_dir}")
    unknown = sorted(set(labels) - set(class_sizes))
    if len(unknown) == len(set(labels)):
        raise ValueError(
            f"none of the query labels ({', '.join(sorted(set(labels))[:5])}) is an inventory label: "
            "put queries in folders named like the inventory's classes"
        )
    if unknown:
        logger.warning("query labels not in the inventory (always wrong): %s", ", ".join(unknown))

    n_rel = np.array([class_sizes.get(label, 0) for label in labels])
    rel = relevance(labels, [[h.item.label for h in row] for row in hits], k)
    per_query = per_query_metrics(rel, n_rel)
    queries = [
        QueryResult(
            p,
            label,
            [h.id for h in row],
            [h.score for h in row],
            [h.item.label for h in row],
            {name: float(v[i]) for name, v in per_query.items()},
        )  # fmt: skip
        for i, (p, label, row) in enumerate(zip(paths, labels, hits, strict=True))
    ]

    figures: dict = {
        "k": k,
        "queries_dir": str(queries_dir.resolve()),
        "n_queries": len(paths),
        "n_queries_skipped": skipped,
        "n_inventory": len(items),
        "n_classes": len(class_sizes),
        "metric": snap.generation.metric,
        "query_expansion": plan.expansion.neighbours,  # 0: queries searched as embedded
        "encoder": {
            "fingerprint": encoder.fingerprint,
            "kind": encoder.model_config.kind,
            "name": encoder.model_config.name,
            "arch": encoder.model_config.arch,
            "dim": encoder.dim,
        },
        "metrics": mean_metrics(per_query),
        "chance": round(chance_precision(labels, class_sizes), 4),
        "per_class": _per_class(labels, per_query, class_sizes),
        "latency_ms": {
            "decode_median": _ms(np.median(t_decode)),
            "embed_median": _ms(np.median(t_embed)),
            "search_median": _ms(np.median(t_search)),
            "total_median": _ms(np.median(np.add(np.add(t_decode, t_embed), t_search))),
            "total_p95": _ms(np.percentile(np.add(np.add(t_decode, t_embed), t_search), 95)),
        },
        "index_bytes": _index_bytes(snap),
    }
    if any(v is not None for v in novelty):
        vals = np.array([v for v in novelty if v is not None])
        figures["novelty_percentile_median"] = round(float(np.median(vals)), 1)

    baseline_per_class: dict = {}
    if baseline_size:
        t0 = time.perf_counter()
        base, baseline_per_class = _raw_pixel_baseline(
            snap, items, paths, labels, class_sizes, k, baseline_size
        )
        base["seconds"] = round(time.perf_counter() - t0, 2)
        figures["baseline"] = base
        for label, row in baseline_per_class.items():
            figures["per_class"][label]["baseline"] = row
    figures["evaluated_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    figures["generation_id"] = snap.generation.id
    figures["seconds"] = round(time.perf_counter() - t_start, 2)
    ids = np.array([it.id for it in items], np.int64)
    return EvalRun(figures, queries, ids, [it.label for it in items], baseline_per_class)


def _raw_pixel_baseline(
    snap: Snapshot,
    items: list[Item],
    query_paths: list[Path],
    query_labels: list[str],
    class_sizes: dict[str, int],
    k: int,
    size: int,
) -> tuple[dict, dict]:
    """Raw pixels of the same inventory and queries, exact cosine: overall and per-class metrics."""
    xb, ok_b = raw_pixels([snap.image_path(it) for it in items], size)
    xq, ok_q = raw_pixels(query_paths, size)
    inv_labels = np.array([it.label for it in items], dtype=object)[ok_b]
    _, I = exact_cosine_search(xb[ok_b], xq, k)  # noqa: E741
    retrieved = [[inv_labels[i] if i >= 0 else None for i in row] for row in I]
    rel = relevance(query_labels, retrieved, k)
    rel[~ok_q] = False
    per_query = per_query_metrics(rel, np.array([class_sizes.get(label, 0) for label in query_labels]))
    per_class = {
        label: mean_metrics(per_query, np.array(query_labels) == label) for label in sorted(set(query_labels))
    }
    return {"name": f"raw pixels {size}px, cosine", "metrics": mean_metrics(per_query)}, per_class


def _per_class(labels: list[str], per_query: dict[str, np.ndarray], class_sizes: dict[str, int]) -> dict:
    n = sum(class_sizes.values())
    arr = np.array(labels)
    return {
        label: {
            "queries": int((arr == label).sum()),
            "inventory": int(class_sizes.get(label, 0)),
            "chance": round(class_sizes.get(label, 0) / n, 4) if n else 0.0,
            **mean_metrics(per_query, arr == label),
        }
        for label in sorted(set(labels))
    }


def _novelty_percentile(encoder: Encoder, x: np.ndarray) -> float | None:
    """The query's novelty percentile, or None when the model dir has no reference errors."""
    values = encoder.novelty_percentile(x)
    return None if values is None else float(values[0])


def _index_bytes(snap: Snapshot) -> int | None:
    return snap.index_bytes


def _ms(seconds: float) -> float:
    return round(float(seconds) * 1000, 2)


# -- storing figures with the index ----------------------------------------------------------------


def save_eval_figures(index_dir: str | Path, figures: dict, generation_id: int | None = None) -> int:
    """Store `figures` in the record of the evaluated generation (`figures["generation_id"]`).

    :raise LookupError: that generation is not in the catalog.
    """
    gen_id = generation_id if generation_id is not None else figures.get("generation_id")
    engine = open_database(index_dir)
    try:
        with Session(engine) as session, session.begin():
            gen = session.get(Generation, gen_id) if gen_id is not None else None
            if gen is None:
                raise LookupError(f"generation {gen_id} not found in {index_dir}")
            gen.eval_figures = dict(figures)
        return int(gen_id)
    finally:
        engine.dispose()
