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

# As the `imgrec` CLI does before torch/FAISS load OpenMP: waiting threads sleep, never spin.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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


def compile_bytecode() -> None:
    """Byte-compile imgrec's own modules, as an install has them (pip compiles at install; a first
    import writes them) unless PYTHONDONTWRITEBYTECODE is set, as on our CI machines: every process
    timed would compile them again, about 0.2 s of each start-up here."""
    import compileall

    for package in ("encoder", "indexer", "search_api", "migrations", "imgrec"):
        compileall.compile_dir(ROOT / package, quiet=1)


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
        from encoder.fit import fit_pretrained
        from encoder.images import find_images
        from encoder.pretrained import PRESETS

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


RESULTS = ROOT / "bench" / "results"


def results_path(name: str) -> Path:
    """Where benchmark `name` writes its figures by default: bench/results/<name>.json."""
    return RESULTS / f"{name}.json"


def command() -> str:
    """The command that is running, as a reader would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    return " ".join(["python", str(shown), *sys.argv[1:]])


def write_json(path: str | Path | None, results: dict) -> None:
    """Write `results`, with when (`date`, UTC), where (`machine`) and how (`command`) if not set yet.

    bench/report.py renders the docs' tables from these files (`make docs`).
    """
    if path:
        import datetime as dt

        head = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": results.get("machine_before") or machine(),
            "command": command(),
        }
        results = {**head, **results}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2, default=str) + "\n")
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


# -- a synthetic index dir (for the search and serving benchmarks) ---------------------------------

CACHE = Path(os.environ.get("IMGREC_BENCH_CACHE", "/tmp/imgrec-bench-cache"))
SYNTHETIC_IMAGE_SIZE = 32  # a conv-ae at 32 px has 8 x 4 x 4 = 128-d codes


def synthetic_vectors(n: int, d: int = 128, seed: int = 0):  # noqa: ANN201
    """`n` random unit vectors (float32 (n, d)), made in chunks (contrib `SyntheticDataset` style)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    xb = np.empty((n, d), np.float32)
    for i in range(0, n, 1 << 18):
        chunk = rng.standard_normal((min(1 << 18, n - i), d), dtype=np.float32)
        xb[i : i + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return xb


def random_model_dir(out: Path, seed: int = 0, code_channels: int = 8) -> Path:
    """An untrained conv-ae model dir with 16 * `code_channels`-d codes (128-d by default; search
    speed does not depend on weights), with its graph exported as `imgrec train` does."""
    import torch

    from encoder.export import export_autoencoder
    from encoder.model_dir import read_fingerprint, save_model_dir
    from encoder.models import EncoderConfig, build_model, code_dim
    from encoder.preprocess import Preprocess

    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    cfg = EncoderConfig(arch="conv-ae", image_size=SYNTHETIC_IMAGE_SIZE, filters=(16, 8, code_channels))
    model = build_model(cfg).eval()
    config = {
        "kind": "autoencoder",
        "model": cfg.to_dict(),
        "preprocess": Preprocess(image_size=SYNTHETIC_IMAGE_SIZE).to_dict(),
        "code_dim": code_dim(model, SYNTHETIC_IMAGE_SIZE),
        "training": {"note": "random weights, for benchmarks"},
    }
    config["graph"], config["graph_sha256"] = export_autoencoder(model, out, SYNTHETIC_IMAGE_SIZE)  # as train
    save_model_dir(out, model.state_dict(), config)
    assert read_fingerprint(out)
    return out


def synthetic_index_dir(n: int, d: int = 128, cache: Path = CACHE) -> Path:
    """An index dir of `n` synthetic items and vectors, published as a real generation (cached).

    Uses the indexer's own pieces: the migrated catalog, one segment written by
    `segments.write_checked`, the model copy and `make_current`; only the items are bulk-inserted
    (the job's per-file path would take minutes for a million rows).
    """
    import numpy as np
    from sqlalchemy import insert
    from sqlalchemy.orm import Session

    from encoder import load_encoder
    from encoder.model_dir import copy_model_dir
    from indexer.db import Item, open_database, utcnow
    from indexer.generations import make_current
    from indexer.job import MODELS_DIR

    index_dir = cache / f"synthetic-v2-{n}x{d}"
    if (index_dir / "READY").exists():
        return index_dir
    if index_dir.exists():
        shutil.rmtree(index_dir)
    t = time.perf_counter()
    model_dir = random_model_dir(cache / "model-conv32")
    encoder = load_encoder(model_dir)
    assert encoder.dim == d, f"the synthetic model has {encoder.dim}-d codes, not {d}"
    labels = [f"class{i}" for i in range(10)]
    index_dir.mkdir(parents=True)
    engine = open_database(index_dir)
    copy_model_dir(model_dir, index_dir / MODELS_DIR / encoder.fingerprint)
    now = utcnow()
    ids = np.arange(1, n + 1, dtype=np.int64)
    with Session(engine) as session, session.begin():
        labels_summary = dict(zip(labels, np.bincount(ids % 10, minlength=10).tolist(), strict=True))
        gen, seg = add_flat_generation(session, index_dir, encoder, ids, d, {"labels": labels_summary})
        for start in range(0, n, 100_000):
            rows = [
                dict(
                    id=i,
                    path=f"{labels[i % 10]}/item-{i:07d}.jpg",
                    label=labels[i % 10],
                    sha256="0" * 64,
                    size=0,
                    mtime_ns=0,
                    width=400,
                    height=533,
                    added_generation=gen.id,
                    deleted_generation=None,
                    segment_id=seg.id,
                    created_at=now,
                    updated_at=now,
                )  # fmt: skip
                for i in range(start + 1, min(n, start + 100_000) + 1)
            ]
            session.execute(insert(Item), rows)
        make_current(session, gen)
    engine.dispose()
    (index_dir / "READY").write_text("ok\n")
    print(f"built synthetic index {index_dir} in {time.perf_counter() - t:.0f} s")
    return index_dir


def add_flat_generation(session, index_dir: Path, encoder, ids, d: int, summary: dict):  # noqa: ANN001, ANN201
    """In the caller's transaction: a building generation holding one flat cosine segment of
    `len(ids)` synthetic vectors (written by `segments.write_checked`), no deletions.
    Returns (generation, segment); the caller adds the items and makes it current."""
    from indexer import faiss_index
    from indexer.db import Generation, GenerationSegment, Segment
    from indexer.segments import build_segment, ids_checksum, segment_file, write_checked

    n = len(ids)
    gen = Generation(
        status="building", faiss_file="", item_count=n, ids_sha256="", ids_checksum=ids_checksum(ids),
        model_fingerprint=encoder.fingerprint, model_config=encoder.config, dim=d, metric="cosine",
        index_type="flat", inventory_root=str(index_dir / "inventory"), parent_id=None, run_summary={},
        summary=summary,
    )  # fmt: skip
    seg = Segment(
        file="", item_count=n, dim=d, metric="cosine", index_type="flat", byte_size=0, sha256="",
        ids_sha256=faiss_index.ids_sha256(ids),
    )  # fmt: skip
    session.add_all([gen, seg])
    session.flush()
    seg.file = segment_file(seg.id)
    (index_dir / seg.file).parent.mkdir(parents=True, exist_ok=True)
    written = write_checked(build_segment(synthetic_vectors(n, d), ids, "cosine"), index_dir / seg.file)
    seg.byte_size, seg.sha256 = written.byte_size, written.sha256
    session.add(GenerationSegment(generation_id=gen.id, segment_id=seg.id, deleted=b"", n_deleted=0))
    return gen, seg


def query_jpeg(seed: int = 0) -> bytes:
    """A small JPEG to query with."""
    import io

    import numpy as np

    from imgrec.synthetic import CLASSES, draw_item

    shape, color = list(CLASSES.values())[seed % len(CLASSES)]
    buf = io.BytesIO()
    draw_item(shape, color, np.random.default_rng(seed), 96).save(buf, "JPEG", quality=90)
    return buf.getvalue()
