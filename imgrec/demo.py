"""`imgrec demo`: the whole recipe on a generated catalog, in about a minute on 2 CPU cores."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoder.train import DEMO_PRESET, train
from imgrec.querying import answer_queries, expand_queries
from imgrec.synthetic import CLASSES, make_catalog
from indexer import open_snapshot, run_index


@dataclass
class DemoResult:
    p_at_1: float
    p_at_5: float
    chance: float
    n_queries: int
    seconds: float
    grid_dir: Path


def run_demo(out: Path, seed: int = 0, echo: Callable[[str], None] = print) -> DemoResult:
    """Generate a catalog, train conv-ae, index it, query with held-back images, score and draw."""
    t0 = time.perf_counter()
    inventory, queries = make_catalog(out / "catalog", per_class=40, queries_per_class=4, seed=seed)
    echo(
        f"catalog: {len(CLASSES)} classes x 40 inventory images, 4 held-back queries each -> {out / 'catalog'}"
    )

    result = train(inventory, out / "model", DEMO_PRESET)
    echo(f"trained conv-ae: best epoch {result.best_epoch}, validation MSE {min(result.val_losses):.4f}")

    summary = run_index(inventory, out / "model", out / "index")
    echo(f"indexed {summary.added} images into {out / 'index'} (generation {summary.generation_id})")

    paths = expand_queries([str(queries)])
    snap = open_snapshot(out / "index")
    try:
        answers = answer_queries(snap, paths, k=5)
        first_per_class = {Path(a.query).parent.name: a for a in reversed(answers)}
        grid_dir = out / "grids"
        answer_queries(snap, [Path(a.query) for a in first_per_class.values()], k=5, out_dir=grid_dir)
    finally:
        snap.close()
    p1 = float(np.mean([a.hits[0].item.label == Path(a.query).parent.name for a in answers]))
    p5 = float(
        np.mean([np.mean([h.item.label == Path(a.query).parent.name for h in a.hits]) for a in answers])
    )
    return DemoResult(p1, p5, 1 / len(CLASSES), len(answers), time.perf_counter() - t0, grid_dir)
