"""Helpers shared by the benchmarks: the machine, the images, model dirs, timing and results.

Benchmarks here run on shared, noisy machines: every figure is compared with a baseline measured in
the same run, in interleaved rounds, and the machine's load is recorded next to it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
CLOTHING = SHARED_DATASETS / "clothing-small" / "train"

sys.path.insert(0, str(ROOT))  # run as `python bench/x.py` from anywhere


def machine() -> dict:
    """Where the figures were measured: cores, load, versions (so a reader can judge the noise)."""
    import faiss
    import numpy as np
    import torch

    return {
        "cores": len(os.sched_getaffinity(0)),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def rate(n: int, fn: Callable[[], object]) -> float:
    """Items per second of one call of `fn` that processes `n` items."""
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def inventory_images(out: Path, limit: int | None, images: Path | None = None) -> tuple[Path, str]:
    """A folder of JPEGs to index: a copy of (the first `limit` of) the real images, else generated ones.

    Returns the folder and a description of its source.
    """
    src = images or CLOTHING
    out.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg"))
        # every class, not the first folders only: take an even spread
        if limit and len(files) > limit:
            step = len(files) / limit
            files = [files[int(i * step)] for i in range(limit)]
        for p in files:
            dest = out / p.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)
        return out, f"{src} ({len(files)} JPEGs)"
    print(f"NOTE: {src} not found: using generated JPEGs (400x533) instead of the real images")
    return _generated(out, limit or 1000), f"generated ({limit or 1000} JPEGs, 400x533)"


def _generated(out: Path, n: int) -> Path:
    """`n` synthetic photos of the size of the real ones (400x533 JPEG), in class folders."""
    import numpy as np

    from imgrec.synthetic import CLASSES, draw_item

    rng = np.random.default_rng(0)
    names = list(CLASSES)
    for i in range(n):
        name = names[i % len(names)]
        shape, color = CLASSES[name]
        img = draw_item(shape, color, rng, 400).resize((400, 533))
        (out / name).mkdir(parents=True, exist_ok=True)
        img.save(out / name / f"{name}-{i:05d}.jpg", quality=90)
    return out


def build_model_dir(name: str, images: Path, out: Path, image_size: int = 64) -> Path:
    """A model dir of encoder `name` (weights quality does not matter for speed: trained briefly)."""
    if name in _pretrained_presets():
        from encoder.pretrained import PRESETS, fit_pretrained
        from encoder.train import find_images

        paths = find_images(images)
        paths = paths[:: max(1, len(paths) // 160)][:160]  # the PCA needs >= 128 images
        fit_pretrained(paths, out, PRESETS[name], name)
        return out
    import dataclasses

    from encoder.train import DEMO_PRESET, train

    cfg = dataclasses.replace(DEMO_PRESET, arch=name, image_size=image_size, epochs=1, max_images=200)
    train(images, out, cfg)
    return out


def _pretrained_presets() -> dict:
    try:
        from encoder.pretrained import PRESETS
    except ModuleNotFoundError:
        return {}
    return PRESETS


def default_model_name() -> str:
    """The project's default encoder (`encoder.DEFAULT_MODEL`), else the original conv-ae."""
    import encoder

    return getattr(encoder, "DEFAULT_MODEL", "conv-ae")


def write_json(path: str | Path | None, results: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2, default=str))
        print(f"results -> {path}")


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table: columns are (key, header, format)."""
    cells = [[h for _, h, _ in columns]] + [
        [format(r[k], f) if r.get(k) is not None else "-" for k, _, f in columns] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
