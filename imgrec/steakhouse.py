"""The original recipe's example: 36 food photos, 6 classes, 3 query photos.

Train conv-ae on `train/`, index `train/`, query with `test/`; a hit shares the query's food class
(the file-name prefix: `burger3_resized.jpeg` is a burger). Used by a test and by
`bench/steakhouse.py`, which also draws the README picture.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from encoder.train import TrainConfig, train
from indexer import IndexOptions, run_index
from indexer.querying import QueryAnswer, SearchOptions, run_queries

# The recipe as measured best here: 64 px conv-ae (16-8-8), exact L2 search (cosine loses on this set).
STEAKHOUSE_TRAIN = TrainConfig(arch="conv-ae", image_size=64, epochs=50, batch_size=8, patience=50)


def food_class(path: str | Path) -> str:
    """`asparagus3_resized.jpg` -> `asparagus`."""
    match = re.match(r"[a-z]+", Path(path).name.lower())
    return match.group(0) if match else ""


@dataclass
class SteakhouseResult:
    p_at_5: float
    per_query: dict[str, float]
    answers: list[QueryAnswer]


def run_steakhouse(dataset: Path, out: Path, seed: int = 0, grids: bool = False) -> SteakhouseResult:
    """Run the example end to end under `out`; with `grids`, write one result PNG per query."""
    cfg = TrainConfig(**{**STEAKHOUSE_TRAIN.__dict__, "seed": seed})
    train(dataset / "train", out / "model", cfg)
    run_index(dataset / "train", out / "model", out / "index", IndexOptions(metric="l2"))
    opts = SearchOptions(k=5, group_by="none")
    answers = run_queries(
        [str(dataset / "test")], out / "index", opts, out_dir=out / "grids" if grids else None
    )
    per_query = {
        Path(a.query).name: float(np.mean([food_class(h.item.path) == food_class(a.query) for h in a.hits]))
        for a in answers
    }
    return SteakhouseResult(float(np.mean(list(per_query.values()))), per_query, answers)


def stack_grids(paths: list[Path], out: Path, width: int = 900) -> None:
    """One small PNG: the grids one above the other, scaled to `width`."""
    images = [Image.open(p).convert("RGB") for p in paths]
    scale = width / max(im.width for im in images)
    images = [
        im.resize((int(im.width * scale), int(im.height * scale)), Image.Resampling.LANCZOS) for im in images
    ]
    canvas = Image.new("RGB", (width, sum(im.height for im in images)), "white")
    y = 0
    for im in images:
        canvas.paste(im, (0, y))
        y += im.height
    canvas.quantize(64).save(out, optimize=True)
