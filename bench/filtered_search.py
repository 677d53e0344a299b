"""Filtered and grouped search at 1M x 64 (flat), against unfiltered search in the same run.

    python bench/filtered_search.py [--n 1000000] [--d 64] [--queries 40]
                                    [--out bench/results/filtered_search.json]

A real index dir (cached under $IMGREC_BENCH_CACHE): one flat segment of n random unit vectors,
the migrated catalog with n items, n / 5 products (5 images each) and a uniform number attribute
`pop` per product, so `pop < s` selects a share s of the items. Every figure goes through the one
query path (`indexer.querying.plan_search` + `search`, as the API and CLI do), one query at a time
(nq = 1, k = 10), medians over `--queries` random query vectors:

- unfiltered, ungrouped: the baseline;
- filtered at 0.1%, 1%, 10%, 50%: the default plan, and each plan forced (direct scoring of the
  matches' stored vectors; FAISS IDSelectorBitmap), with the filter's ids cached per snapshot as
  the engine has them; plus the filter's first evaluation (the columns already read);
- grouped by product (k = 10 products, 5 images per product) against ungrouped k = 10 images.

Targets (issue 12): filtered p50 at most 1.5x unfiltered at every selectivity and below 1x at 1%
and under; grouping at most 1.3x.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import time
from pathlib import Path

import _common  # noqa: F401 - puts the project on sys.path
import numpy as np
from _common import (
    CACHE,
    add_flat_generation,
    machine,
    median,
    random_model_dir,
    synthetic_vectors,
    table,
    write_json,
)

SELECTIVITIES = (0.001, 0.01, 0.1, 0.5)
PER_PRODUCT = 5


def build_index(n: int, d: int, cache: Path = CACHE) -> Path:
    """The index dir (built once): a flat segment, items, products with `pop`, a catalog summary."""
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from encoder import load_encoder
    from encoder.model_dir import copy_model_dir
    from indexer.db import AttributeType, Item, Product, ProductAttribute, open_database, utcnow
    from indexer.generations import make_current
    from indexer.job import MODELS_DIR
    from indexer.products import attribute_facets

    index_dir = cache / f"filtered-v1-{n}x{d}"
    if (index_dir / "READY").exists():
        return index_dir
    shutil.rmtree(index_dir, ignore_errors=True)
    t = time.perf_counter()
    model_dir = random_model_dir(cache / f"model-conv32-{d}", code_channels=d // 16)
    encoder = load_encoder(model_dir)
    assert encoder.dim == d, encoder.dim
    index_dir.mkdir(parents=True)
    engine = open_database(index_dir)
    copy_model_dir(model_dir, index_dir / MODELS_DIR / encoder.fingerprint)
    now = utcnow()
    ids = np.arange(1, n + 1, dtype=np.int64)
    n_products = n // PER_PRODUCT
    pop = np.random.default_rng(1).random(n_products)
    with Session(engine) as session, session.begin():
        gen, seg = add_flat_generation(session, index_dir, encoder, ids, d, {"labels": {"all": n}})
        session.execute(sa.insert(AttributeType), [{"name": "pop", "type": "number"}])
        for start in range(0, n_products, 100_000):
            chunk = range(start + 1, min(n_products, start + 100_000) + 1)
            session.execute(
                sa.insert(Product),
                [dict(id=p, product_key=f"P{p:07d}", title=f"Product {p}", url=None, price=float(p % 100),
                      metadata_sha256="0" * 64, added_generation=gen.id, deleted_generation=None,
                      created_at=now, updated_at=now) for p in chunk],
            )  # fmt: skip
            session.execute(
                sa.insert(ProductAttribute),
                [dict(product_id=p, name="pop", string_value=None, number_value=float(pop[p - 1]), bool_value=None)
                 for p in chunk],
            )  # fmt: skip
        for start in range(0, n, 100_000):
            session.execute(
                sa.insert(Item),
                [dict(id=i, path=f"all/item-{i:07d}.jpg", label="all", sha256="0" * 64, size=0, mtime_ns=0,
                      width=400, height=533, added_generation=gen.id, deleted_generation=None, segment_id=seg.id,
                      product_id=(i - 1) // PER_PRODUCT + 1, created_at=now, updated_at=now)
                 for i in range(start + 1, min(n, start + 100_000) + 1)],
            )  # fmt: skip
        catalog = {"file": "synthetic", "sha256": "", "attribute_types": {"pop": "number"}, "problems": []}
        gen.summary = {**gen.summary, "catalog": catalog, "facets": attribute_facets(session)}
        make_current(session, gen)
    engine.dispose()
    (index_dir / "READY").write_text("ok\n")
    print(f"built {index_dir} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return index_dir


def p50_ms(fn, xqs: np.ndarray) -> float:  # noqa: ANN001
    fn(xqs[:1])  # warm
    times = []
    for x in xqs:
        t = time.perf_counter()
        fn(x[None])
        times.append(time.perf_counter() - t)
    return median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--out", default="bench/results/filtered_search.json")
    args = ap.parse_args()

    import faiss

    from indexer import filtered_search, open_snapshot
    from indexer.querying import SearchOptions, plan_search, search

    faiss.omp_set_num_threads(1)  # as the API's workers run (COMPUTE_THREADS=1)
    index_dir = build_index(args.n, args.d)
    snap = open_snapshot(index_dir)
    xqs = synthetic_vectors(args.queries, args.d, seed=7)
    k = args.k

    def run(opts: SearchOptions):  # noqa: ANN202
        plan = plan_search(snap, opts)
        return lambda x: search(snap, x, plan)

    t = time.perf_counter()
    snap.catalog_view().columns()
    columns_s = time.perf_counter() - t
    base = p50_ms(run(SearchOptions(k=k, group_by="none")), xqs)
    rows = []
    defaults = filtered_search.DIRECT_MAX, filtered_search.DIRECT_SHARE
    for s in SELECTIVITIES:
        text = f"pop < {s}"
        view = snap.catalog_view()
        expr = view.parse(text)
        t = time.perf_counter()
        n_match = len(view.filter_ids(expr))
        first_ms = (time.perf_counter() - t) * 1000
        row = {"selectivity": s, "matches": n_match, "filter_first_ms": first_ms}
        for plan, limits in (("direct", (10**12, 1.0)), ("selector", (0, 0.0)), ("default", defaults)):
            filtered_search.DIRECT_MAX, filtered_search.DIRECT_SHARE = limits
            row[f"{plan}_ms"] = p50_ms(run(SearchOptions(k=k, filter=text, group_by="none")), xqs)
        filtered_search.DIRECT_MAX, filtered_search.DIRECT_SHARE = defaults
        row["ratio"] = row["default_ms"] / base
        rows.append(row)
    grouped = p50_ms(run(SearchOptions(k=k, group_by="product")), xqs)
    snap.close()

    print(f"\nunfiltered p50 {base:.1f} ms (n={args.n:,}, d={args.d}, k={k}, flat, nq=1)")
    print(
        table(
            rows,
            [
                ("selectivity", "selectivity", ".1%"),
                ("matches", "matches", ","),
                ("filter_first_ms", "filter eval ms", ".1f"),
                ("direct_ms", "direct ms", ".1f"),
                ("selector_ms", "selector ms", ".1f"),
                ("default_ms", "default plan ms", ".1f"),
                ("ratio", "x unfiltered", ".2f"),
            ],
        )  # fmt: skip
    )
    print(f"grouped by product (k={k}, {PER_PRODUCT} images each): {grouped:.1f} ms, {grouped / base:.2f}x")
    print(f"filter columns read once per snapshot: {columns_s:.1f} s")
    write_json(
        args.out,
        {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "command": "python " + " ".join(sys.argv),
            "n": args.n,
            "d": args.d,
            "k": k,
            "queries": args.queries,
            "unfiltered_p50_ms": base,
            "filtered": rows,
            "grouped_p50_ms": grouped,
            "grouped_ratio": grouped / base,
            "columns_read_s": columns_s,
            "direct_max": defaults[0],
            "direct_share": defaults[1],
        },  # fmt: skip
    )


if __name__ == "__main__":
    main()
