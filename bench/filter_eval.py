"""Filter evaluation at 1M items: the numpy columns against SQLite, at 0.1%, 1%, 10% and 50% selectivity.

    python bench/filter_eval.py [--n 1000000] [--images-per-product 5] [--repeats 15]
                                [--out bench/results/filter_eval.json]

A synthetic catalog in a real SQLite file (the product schema of migration 0003; cached under
$IMGREC_BENCH_CACHE): n items, n / images-per-product products with a colour (20 values), a brand
(1,000 values), a size, an `organic` flag and a uniform `pop` number that sets the selectivity;
items carry one of 10 labels, a few have no product. Two filter shapes per selectivity:

- product: `pop < t AND color IN (10 of 20 colours)`            (product fields only)
- mixed:   `NOT label = "class0" AND pop < t AND (organic OR size >= 0)`  (item + product fields)

Both back-ends must return the same ids (checked). Figures: the numpy evaluator's median time for
the mask and for the ids (`filter_columns.evaluate`, `matching_ids`), SQLite's median time to list
the matching ids (`filter_sql.item_condition`, the reference), their ratio in this run, and the
one-off cost of reading the columns (`read_item_columns`) and their memory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import _common  # noqa: F401 - puts the project on sys.path
import numpy as np
from _common import CACHE, machine, median, table, write_json

SELECTIVITIES = (0.001, 0.01, 0.1, 0.5)
COLORS = [f"color{i:02d}" for i in range(20)]
LABELS = [f"class{i}" for i in range(10)]


def build_catalog(path: Path, n: int, per_product: int, seed: int = 0) -> None:
    """Items, products and attributes, bulk-inserted in one transaction (the schema from the models)."""
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from indexer.db import AttributeType, Base, Item, Product, ProductAttribute, make_engine, utcnow

    ITEMS = Item.__table__

    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    engine = make_engine(f"sqlite:///{tmp}")
    Base.metadata.create_all(engine)
    p = n // per_product
    now = utcnow()
    color = rng.integers(0, len(COLORS), p)
    brand = rng.integers(0, 1000, p)
    size = rng.normal(40, 5, p).round(1)
    organic = rng.random(p) < 0.3
    pop = rng.random(p)
    price = rng.uniform(1, 200, p).round(2)
    t = time.perf_counter()
    with Session(engine) as session, session.begin():
        session.execute(
            sa.insert(AttributeType),
            [{"name": a, "type": k} for a, k in
             [("color", "string"), ("brand", "string"), ("size", "number"), ("organic", "boolean"), ("pop", "number")]],
        )  # fmt: skip
        for lo in range(0, p, 100_000):
            hi = min(p, lo + 100_000)
            session.execute(
                sa.insert(Product),
                [dict(id=i + 1, product_key=f"SKU-{i:07d}", title=f"Product {i}", url=None, price=float(price[i]),
                      metadata_sha256="0" * 64, added_generation=1, deleted_generation=None,
                      created_at=now, updated_at=now) for i in range(lo, hi)],
            )  # fmt: skip
            rows = []
            for i in range(lo, hi):
                rows += [
                    dict(product_id=i + 1, name="color", string_value=COLORS[color[i]], number_value=None, bool_value=None),
                    dict(product_id=i + 1, name="brand", string_value=f"brand{brand[i]:04d}", number_value=None, bool_value=None),
                    dict(product_id=i + 1, name="size", string_value=None, number_value=float(size[i]), bool_value=None),
                    dict(product_id=i + 1, name="organic", string_value=None, number_value=None, bool_value=bool(organic[i])),
                    dict(product_id=i + 1, name="pop", string_value=None, number_value=float(pop[i]), bool_value=None),
                ]  # fmt: skip
            session.execute(sa.insert(ProductAttribute), rows)
        labels = rng.integers(0, len(LABELS), n)
        for lo in range(0, n, 100_000):
            hi = min(n, lo + 100_000)
            session.execute(
                sa.insert(ITEMS),
                [dict(id=i + 1, path=f"img/{i:07d}.jpg", label=LABELS[labels[i]], sha256="0" * 64, size=1, mtime_ns=0,
                      width=1, height=1, added_generation=1, deleted_generation=None, created_at=now, updated_at=now,
                      product_id=None if i % 1000 == 999 else i // per_product + 1) for i in range(lo, hi)],
            )  # fmt: skip
    engine.dispose()
    tmp.rename(path)
    print(f"built {path} ({n} items, {p} products) in {time.perf_counter() - t:.0f} s")


def filters(selectivity: float) -> dict[str, str]:
    ten_colors = ", ".join(f'"{c}"' for c in COLORS[:10])
    product = f"pop < {min(1.0, 2 * selectivity)!r} AND color IN ({ten_colors})"
    # NOT label (0.9) x organic-or-any-size (~1): pop < t / 0.9
    mixed = f'NOT label = "class0" AND pop < {min(1.0, selectivity / 0.9)!r} AND (organic OR size >= 0)'
    return {"product": product, "mixed": mixed}


def timed(fn, repeats: int) -> tuple[float, object]:  # noqa: ANN001
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--images-per-product", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=15, help="numpy timings (SQL: a third of it, at least 3)")
    ap.add_argument("--out", default="bench/results/filter_eval.json")
    args = ap.parse_args()

    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from indexer.db import Item, make_engine
    from indexer.filter_columns import evaluate, matching_ids, read_item_columns
    from indexer.filter_sql import attribute_types_of, item_condition
    from indexer.filters import parse_filter

    path = CACHE / f"filter-eval-v2-{args.n}x{args.images_per_product}.sqlite"  # v2: covering indexes
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        build_catalog(path, args.n, args.images_per_product)
    engine = make_engine(f"sqlite:///{path}")
    ITEMS = Item.__table__
    live = ITEMS.c.deleted_generation.is_(None)
    with Session(engine) as session:
        types = attribute_types_of(session)
        ids = np.asarray(session.scalars(sa.select(ITEMS.c.id).where(live)).all(), np.int64)
        t = time.perf_counter()
        cols = read_item_columns(session, ids)
        read_s = time.perf_counter() - t
        print(f"read_item_columns: {read_s:.2f} s, {cols.nbytes / 1e6:.1f} MB of arrays")
        rows = []
        for s in SELECTIVITIES:
            for shape, text in filters(s).items():
                expr = parse_filter(text, types)
                query = sa.select(ITEMS.c.id).where(live, item_condition(expr, types)).order_by(ITEMS.c.id)
                numpy_mask_s, mask = timed(lambda e=expr: evaluate(e, cols), args.repeats)
                numpy_ids_s, got = timed(lambda e=expr: matching_ids(e, cols), args.repeats)
                sql_s, want = timed(lambda q=query: session.scalars(q).all(), max(3, args.repeats // 3))
                if got.tolist() != list(want):
                    sys.exit(f"the back-ends disagree on {text!r}: {len(got)} vs {len(want)} items")
                rows.append(
                    {
                        "target": s,
                        "shape": shape,
                        "filter": text,
                        "matches": int(mask.sum()),
                        "selectivity": round(float(mask.mean()), 5),
                        "numpy_mask_ms": round(numpy_mask_s * 1e3, 3),
                        "numpy_ids_ms": round(numpy_ids_s * 1e3, 3),
                        "sql_ms": round(sql_s * 1e3, 1),
                        "sql_over_numpy": round(sql_s / numpy_ids_s, 1),
                    }
                )
    engine.dispose()
    print(
        table(
            rows,
            [
                ("target", "target", ".3%"),
                ("shape", "shape", "s"),
                ("selectivity", "measured", ".3%"),
                ("numpy_mask_ms", "numpy mask ms", ".2f"),
                ("numpy_ids_ms", "numpy ids ms", ".2f"),
                ("sql_ms", "SQLite ms", ".0f"),
                ("sql_over_numpy", "SQLite / numpy", ".0f"),
            ],
        )  # fmt: skip
    )
    write_json(
        args.out,
        {
            "benchmark": "filter_eval",
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "command": "python " + " ".join(sys.argv),
            "items": int(len(cols)),
            "products": int(len(cols.product_ids)),
            "images_per_product": args.images_per_product,
            "read_item_columns_s": round(read_s, 2),
            "columns_mb": round(cols.nbytes / 1e6, 1),
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
