"""`imgrec demo`: the whole recipe on a generated catalog, in about a minute on 2 CPU cores."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoder.train import DEMO_PRESET, train
from imgrec.synthetic import CLASSES, make_catalog
from indexer import IndexOptions, open_snapshot, run_index
from indexer.evaluation import evaluate_index
from indexer.querying import SearchOptions, answer_queries, expand_queries


@dataclass
class DemoResult:
    p_at_1: float
    p_at_5: float
    chance: float
    n_queries: int
    seconds: float
    grid_dir: Path


COLOR_NAMES = {
    "mugs": "red",
    "boxes": "blue",
    "tents": "green",
    "scarves": "yellow",
    "rugs": "purple",
    "rings": "black",
}
PHOTOS_PER_PRODUCT = 4
DEMO_FILTER = "price < 30"


def write_demo_catalog(inventory: Path, path: Path, seed: int = 0) -> Path:
    """A product catalog for the generated inventory: 4 photos per product, a title, a price and a colour."""
    rng = np.random.default_rng(seed)
    rows = []
    for folder in sorted(p for p in inventory.iterdir() if p.is_dir()):
        for n, image in enumerate(sorted(folder.iterdir())):
            number = n // PHOTOS_PER_PRODUCT
            rows.append(
                {
                    "product_id": f"{folder.name[:4].upper()}-{number:03d}",
                    "image": image.relative_to(inventory).as_posix(),
                    "title": f"{COLOR_NAMES.get(folder.name, 'grey').title()} {folder.name} #{number}",
                    "price": f"{rng.integers(5, 60) + 0.99:.2f}" if n % PHOTOS_PER_PRODUCT == 0 else "",
                    "color": COLOR_NAMES.get(folder.name, "grey"),
                }
            )
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def run_demo(out: Path, seed: int = 0, echo: Callable[[str], None] = print) -> DemoResult:
    """Generate a catalog with products, train conv-ae, index it, score the held-back queries with the
    evaluation module, and draw result grids of products (one filtered)."""
    t0 = time.perf_counter()
    inventory, queries = make_catalog(out / "catalog", per_class=40, queries_per_class=4, seed=seed)
    products = write_demo_catalog(inventory, out / "catalog" / "products.csv", seed)
    echo(
        f"catalog: {len(CLASSES)} classes x 40 inventory images ({PHOTOS_PER_PRODUCT} photos per product, "
        f"{products}), 4 held-back queries each -> {out / 'catalog'}"
    )

    result = train(inventory, out / "model", DEMO_PRESET)
    echo(f"trained conv-ae: best epoch {result.best_epoch}, validation MSE {min(result.val_losses):.4f}")

    summary = run_index(inventory, out / "model", out / "index", IndexOptions(catalog=products))
    echo(f"indexed {summary.added} images into {out / 'index'} (generation {summary.generation_id})")

    run = evaluate_index(out / "index", queries, k=5, baseline_size=None)
    metrics = run.figures["metrics"]
    grid_dir = out / "grids"
    firsts = list({p.parent.name: p for p in reversed(expand_queries([str(queries)]))}.values())
    snap = open_snapshot(out / "index")
    try:
        answer_queries(snap, firsts, SearchOptions(k=5), out_dir=grid_dir)
        answer_queries(
            snap, firsts[:1], SearchOptions(k=5, filter=DEMO_FILTER), out_dir=grid_dir / "filtered"
        )
    finally:
        snap.close()
    return DemoResult(
        metrics["P@1"], metrics["P@5"], run.figures["chance"], run.figures["n_queries"],
        time.perf_counter() - t0, grid_dir,
    )  # fmt: skip
