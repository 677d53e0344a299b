"""The one query path: decode -> embed -> novelty -> search (filter, group) -> catalog look-up.

    opts = SearchOptions(k=5, filter='color = "red"', group_by=None)    # None: by product with a catalog
    plan = plan_search(snap, opts)                       # parses the filter (FilterError), once per request
    answers = search(snap, xq, plan)                     # vectors -> one SearchAnswer per query
    answers, novelty = answer_images(snap, images, opts) # PIL images (the CLI, eval, the demo)

The CLI (`imgrec query`), the API (`search_api.engine`, which batches the embedding across requests
and then calls `search`), eval (`indexer.evaluation`) and the demo all answer through here.

Grouping by product: k distinct products ranked by their best-matching image. The search asks for
3k images, keeps the first hit of each product (an image without a product is a group of its own),
and asks again for twice as many while a query has fewer than k groups and more images could match.
The first k distinct products of an exact ranked list are exactly the k best products.

Query-time steps of the model (`indexer.query_expansion`: alpha-QE when the model's config asks for
it) run first, inside `search`, under the same label, filter and exclusion: every caller answers
alike. `SearchOptions(expand=False)` searches with the query's own vector (`--no-query-expansion`,
the API's `IMGREC_QUERY_EXPANSION=false`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from encoder.preprocess import batches_by_shape
from indexer.filtered_search import search_allowed
from indexer.filters import Expr
from indexer.products import ProductRecord
from indexer.query_expansion import QueryExpansion
from indexer.query_expansion import expand as alpha_qe
from indexer.segment_search import member
from indexer.store import Hit, Snapshot

GROUP_BY = ("product", "none")
GROUP_FETCH = 3  # images fetched per wanted product at first (doubled while short)


@dataclass(frozen=True)
class SearchOptions:
    k: int = 10
    label: str | None = None  # only items with this label (the image's folder)
    filter: str | None = None  # the filter language (docs/products.md)
    group_by: str | None = None  # product | none; None: product when the generation has a catalog
    params: faiss.SearchParameters | None = None  # approximate indexes' knobs (indexer.ann)
    exclude: int | None = None  # an item never returned (similar-item search)
    expand: bool = True  # apply the model's query expansion (if it has one)


@dataclass(frozen=True)
class SearchPlan:
    """A request's options resolved against one snapshot (the filter parsed and matched)."""

    k: int
    allowed: np.ndarray | None  # sorted item ids that may be returned; None: all
    grouped: bool
    params: faiss.SearchParameters | None
    exclude: int | None
    filter: Expr | None = None
    expansion: QueryExpansion = QueryExpansion()  # what `search` applies first (neighbours 0: nothing)


@dataclass(frozen=True)
class ImageRef:
    id: int
    path: str


@dataclass(frozen=True)
class Result:
    """One result: an image hit, its product, and (grouped) the product's other images."""

    hit: Hit  # grouped: the product's best-matching image
    product: ProductRecord | None
    images: list[ImageRef] | None = None  # grouped only: its other images in this generation

    @property
    def rank(self) -> int:
        return self.hit.rank


@dataclass
class SearchAnswer:
    results: list[Result] = field(default_factory=list)
    grouped: bool = False
    exact: bool = True  # False: an approximate index answered (results may miss closer items)

    @property
    def hits(self) -> list[Hit]:
        return [r.hit for r in self.results]


def plan_search(snap: Snapshot, opts: SearchOptions) -> SearchPlan:
    """Resolve `opts` on `snap`.

    :raise FilterError: a bad filter (where, why, the known names).
    :raise ValueError: a bad `group_by` or `k`.
    """
    if opts.k < 1:
        raise ValueError(f"k must be at least 1, got {opts.k}")
    if opts.group_by not in (None, *GROUP_BY):
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}, got {opts.group_by!r}")
    view = snap.catalog_view()
    expr = view.parse(opts.filter) if opts.filter is not None and opts.filter.strip() else None
    allowed = snap.filter_ids(expr) if expr is not None else None
    if opts.label is not None:
        labelled = snap.label_ids(opts.label)
        allowed = labelled if allowed is None else allowed[member(allowed, labelled)]
    grouped = opts.group_by == "product" or (opts.group_by is None and view.has_catalog)
    qe = QueryExpansion.of(snap.generation.model_config) if opts.expand else QueryExpansion()
    if snap.generation.metric != "cosine":  # alpha-QE needs unit-norm stored vectors
        qe = QueryExpansion()
    return SearchPlan(opts.k, allowed, grouped, opts.params, opts.exclude, expr, qe)


def search(snap: Snapshot, xq: np.ndarray, plan: SearchPlan) -> list[SearchAnswer]:
    """Results for each query vector (as the index's model embeds), best first."""
    xq = np.atleast_2d(np.asarray(xq, np.float32))
    if plan.expansion.enabled and len(xq):
        xq = _expand(snap, xq, plan)
    n_candidates = len(plan.allowed) if plan.allowed is not None else snap.generation.item_count
    extra = 1 if plan.exclude is not None else 0
    if not plan.grouped:
        D, I, exact = _raw(snap, xq, plan.k + extra, plan)  # noqa: E741
        hits = _hits(snap, D, I, plan.exclude)
        products = snap.catalog_view().products_of([h.id for row in hits for h in row])
        return [
            SearchAnswer([Result(h, products.get(h.id)) for h in row[: plan.k]], False, exact) for row in hits
        ]
    answers: list[SearchAnswer | None] = [None] * len(xq)
    todo = np.arange(len(xq))
    width = min(n_candidates, GROUP_FETCH * plan.k) + extra
    while len(todo):
        D, I, exact = _raw(snap, xq[todo], max(1, width), plan)  # noqa: E741
        exhausted = width >= n_candidates + extra
        short = []
        for row, q in enumerate(todo):
            ranked = [
                (int(i), float(d))
                for d, i in zip(D[row], I[row], strict=True)
                if i >= 0 and i != plan.exclude
            ]
            answer = _group(snap, ranked, plan.k, exact)
            if len(answer.results) < plan.k and not exhausted:
                short.append(q)
            else:
                answers[q] = answer
        todo = np.asarray(short, np.int64)
        width = min(n_candidates + extra, width * 2)
    return answers  # type: ignore[return-value]


def embed(
    snap: Snapshot, pixels: Sequence[np.ndarray], novelty: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Embed resized uint8 query images (H, W, 3) with the index's model, one forward pass per input
    shape; the novelty percentiles too when the model offers them (and `novelty`)."""
    enc = snap.encoder
    xq = np.zeros((len(pixels), enc.dim), np.float32)
    values: np.ndarray | None = np.zeros(len(pixels), np.float64) if novelty else None
    for positions, stack in batches_by_shape(pixels):
        batch = enc.preprocess.normalize(stack)
        xq[positions] = enc.embed(batch)
        if values is not None:
            found = enc.novelty_percentile(batch)
            if found is None:
                values = None
            else:
                values[positions] = found
    return xq, values


def answer_images(
    snap: Snapshot, images: list, opts: SearchOptions, novelty: bool = True
) -> tuple[list[SearchAnswer], np.ndarray | None]:
    """Decoded query images (PIL) -> answers and novelty percentiles (the CLI, eval, the demo).

    :raise FilterError: a bad filter.
    """
    plan = plan_search(snap, opts)
    if not images:
        return [], None
    pre = snap.encoder.preprocess
    xq, nov = embed(snap, [pre.to_uint8(im) for im in images], novelty)
    return search(snap, xq, plan), nov


# --- steps -------------------------------------------------------------------------------------


def _raw(snap: Snapshot, xq: np.ndarray, k: int, plan: SearchPlan) -> tuple[np.ndarray, np.ndarray, bool]:
    if plan.allowed is not None:
        return search_allowed(snap, xq, k, plan.allowed, plan.params)
    D, I = snap.search(xq, k, params=plan.params)  # noqa: E741
    return D, I, all(s.index_type == "flat" for s in snap.segments)


def _expand(snap: Snapshot, xq: np.ndarray, plan: SearchPlan) -> np.ndarray:
    """alpha-QE: each query moved towards its n nearest stored vectors that the plan may return."""
    n, extra = plan.expansion.neighbours, 1 if plan.exclude is not None else 0
    D, I, _ = _raw(snap, xq, n + extra, plan)  # noqa: E741
    sims = np.zeros((len(xq), n), np.float32)
    ids = np.full((len(xq), n), -1, np.int64)
    for row in range(len(xq)):
        kept = [(d, i) for d, i in zip(D[row], I[row], strict=True) if i >= 0 and i != plan.exclude][:n]
        for j, (d, i) in enumerate(kept):
            sims[row, j], ids[row, j] = d, i
    found = ids >= 0
    V = np.zeros((*ids.shape, snap.generation.dim), np.float32)
    if found.any():
        V[found] = snap.vectors(ids[found])
    return alpha_qe(xq, np.where(found, sims, 0.0), V, plan.expansion.alpha)


def _hits(snap: Snapshot, D: np.ndarray, I: np.ndarray, exclude: int | None) -> list[list[Hit]]:  # noqa: E741
    items = snap.items(np.unique(I[I >= 0]).tolist())
    out = []
    for drow, irow in zip(D, I, strict=True):
        kept = [(float(d), int(i)) for d, i in zip(drow, irow, strict=True) if i >= 0 and i != exclude]
        out.append(
            [Hit(r, i, d, items[i]) for r, (d, i) in enumerate(((d, i) for d, i in kept if i in items), 1)]
        )
    return out


def _group(snap: Snapshot, ranked: list[tuple[int, float]], k: int, exact: bool) -> SearchAnswer:
    """The first hit of each product in `ranked` ((item id, score), best first), at most k; with each
    product's other images. Only the chosen hits' items and products are looked up."""
    view = snap.catalog_view()
    links = view.product_ids_of([i for i, _ in ranked])
    best: list[tuple[int, float, int | None]] = []
    seen: set = set()
    for i, score in ranked:
        pid = links.get(i)
        key = ("product", pid) if pid is not None else ("item", i)
        if key in seen:
            continue
        seen.add(key)
        best.append((i, score, pid))
        if len(best) == k:
            break
    items = snap.items([i for i, _, _ in best])
    best = [b for b in best if b[0] in items]
    pids = [p for _, _, p in best if p is not None]
    records, images = view.records(pids), view.images_of(pids)
    results = [
        Result(
            Hit(rank, i, score, items[i]),
            records.get(p) if p is not None else None,
            [ImageRef(j, path) for j, path in images.get(p, []) if j != i] if p is not None else [],
        )
        for rank, (i, score, p) in enumerate(best, 1)
    ]
    return SearchAnswer(results, True, exact)


# --- query files (the CLI, the demo) -----------------------------------------------------------


@dataclass
class QueryAnswer:
    """One query file's answer (or its error)."""

    query: str
    answer: SearchAnswer = field(default_factory=SearchAnswer)
    score_kind: str = "similarity"
    novelty: float | None = None  # percentile of the inventory's own reconstruction errors
    grid_path: str | None = None
    error: str | None = None

    @property
    def hits(self) -> list[Hit]:
        return self.answer.hits

    @property
    def novelty_text(self) -> str:
        return "n/a" if self.novelty is None else f"{self.novelty:.0f}th percentile"

    def as_dict(self) -> dict:
        """The JSON the CLI prints: the API's result fields (product, grouped images) per result."""
        return {
            "query": self.query,
            "error": self.error,
            "score_kind": self.score_kind,
            "novelty_percentile": self.novelty,
            "grid": self.grid_path,
            "group_by": "product" if self.answer.grouped else "none",
            "exact": self.answer.exact,
            "results": [_result_dict(r, self.answer.grouped) for r in self.answer.results],
        }


def _result_dict(r: Result, grouped: bool) -> dict:
    h = r.hit
    body = {
        "rank": h.rank, "id": h.id, "score": h.score, "label": h.item.label, "path": h.item.path,
        "product": r.product.as_dict() if r.product is not None else None,
    }  # fmt: skip
    if grouped:
        body["images"] = [{"id": im.id, "path": im.path} for im in r.images or []]
    return body


def expand_queries(sources: tuple[str, ...] | list[str]) -> list[Path]:
    """Files as given; folders expanded to the images they hold (recursively)."""
    from encoder.images import find_images

    out: list[Path] = []
    for s in sources:
        p = Path(s)
        out.extend(find_images(p) if p.is_dir() else [p])
    return out


def answer_queries(
    snap: Snapshot, paths: list[Path], opts: SearchOptions, out_dir: str | Path | None = None
) -> list[QueryAnswer]:
    """Search every query file in one snapshot; unreadable queries get an error, not an exception.

    :raise FilterError: a bad filter.
    """
    from encoder import ImageDecodeError, ImageTooLargeError, load_image

    plan_search(snap, opts)  # a bad filter fails before any image is read
    answers = [QueryAnswer(str(p), score_kind=snap.generation.score_kind) for p in paths]
    images, ok = [], []
    for a, p in zip(answers, paths, strict=True):
        try:
            images.append(load_image(p))
            ok.append(a)
        except (ImageDecodeError, ImageTooLargeError, OSError) as e:
            a.error = str(e)
    found, novelty = answer_images(snap, images, opts)
    for i, a in enumerate(ok):
        a.answer = found[i]
        a.novelty = None if novelty is None else float(novelty[i])
    if out_dir is not None:
        from indexer.grids import save_result_grid

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for n, (a, im) in enumerate(zip(ok, images, strict=True), 1):
            path = Path(out_dir) / f"{n:03d}-{Path(a.query).stem}.png"
            save_result_grid(path, im, a.answer.results, snap, query_caption=f"query: {Path(a.query).name}")
            a.grid_path = str(path)
    return answers


def run_queries(
    sources: tuple[str, ...] | list[str],
    index_dir: str | Path,
    opts: SearchOptions,
    out_dir: str | Path | None = None,
) -> list[QueryAnswer]:
    """Open the published index and answer every query image under `sources`.

    :raise FilterError: a bad filter.
    """
    from indexer.store import open_snapshot

    paths = expand_queries(sources)
    if not paths:
        raise ValueError("no query images found")
    snap = open_snapshot(index_dir)
    try:
        return answer_queries(snap, paths, opts, out_dir=out_dir)
    finally:
        snap.close()
