"""Answering query images from the shell: embed with the index's own model, search, draw grids."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from encoder import ImageDecodeError, ImageTooLargeError, load_image
from encoder.images import find_images
from indexer import Hit, Snapshot, open_snapshot


@dataclass
class QueryAnswer:
    query: str
    hits: list[Hit] = field(default_factory=list)
    score_kind: str = "similarity"
    novelty: float | None = None  # percentile of the inventory's own reconstruction errors
    grid_path: str | None = None
    error: str | None = None

    @property
    def novelty_text(self) -> str:
        return "n/a" if self.novelty is None else f"{self.novelty:.0f}th percentile"

    def as_dict(self) -> dict:
        return {
            "query": self.query,
            "error": self.error,
            "score_kind": self.score_kind,
            "novelty_percentile": self.novelty,
            "grid": self.grid_path,
            "results": [
                {"rank": h.rank, "id": h.id, "score": h.score, "label": h.item.label, "path": h.item.path}
                for h in self.hits
            ],
        }


def expand_queries(sources: tuple[str, ...] | list[str]) -> list[Path]:
    """Files as given; folders expanded to the images they hold (recursively)."""
    out: list[Path] = []
    for s in sources:
        p = Path(s)
        out.extend(find_images(p) if p.is_dir() else [p])
    return out


def answer_queries(
    snap: Snapshot, paths: list[Path], k: int = 5, label: str | None = None, out_dir: str | Path | None = None
) -> list[QueryAnswer]:
    """Search every query path in one snapshot; unreadable queries get an error, not an exception."""
    pre = snap.encoder.preprocess
    answers = [QueryAnswer(str(p), score_kind=snap.generation.score_kind) for p in paths]
    images, ok = [], []
    for a, p in zip(answers, paths, strict=True):
        try:
            images.append(load_image(p))
            ok.append(a)
        except (ImageDecodeError, ImageTooLargeError, OSError) as e:
            a.error = str(e)
    if not ok:
        return answers
    batch = np.stack([pre.to_array(im) for im in images])
    hits = snap.search_images(batch, k=k, label=label)
    novelty = _novelty(snap, batch)
    for i, a in enumerate(ok):
        a.hits = hits[i]
        a.novelty = None if novelty is None else float(novelty[i])
    if out_dir is not None:
        from indexer.grids import save_result_grid

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for n, (a, im) in enumerate(zip(ok, images, strict=True), 1):
            path = Path(out_dir) / f"{n:03d}-{Path(a.query).stem}.png"
            save_result_grid(path, im, a.hits, snap, query_caption=f"query: {Path(a.query).name}")
            a.grid_path = str(path)
    return answers


def _novelty(snap: Snapshot, batch: np.ndarray) -> np.ndarray | None:
    """Novelty percentiles when the model provides them."""
    fn = getattr(snap.encoder, "novelty_percentile", None)
    return fn(batch) if fn is not None else None


def run_queries(
    sources: tuple[str, ...] | list[str],
    index_dir: str | Path,
    k: int = 5,
    label: str | None = None,
    out_dir: str | Path | None = None,
) -> list[QueryAnswer]:
    """Open the published index and answer every query image under `sources`."""
    paths = expand_queries(sources)
    if not paths:
        raise ValueError("no query images found")
    snap = open_snapshot(index_dir)
    try:
        return answer_queries(snap, paths, k=k, label=label, out_dir=out_dir)
    finally:
        snap.close()
