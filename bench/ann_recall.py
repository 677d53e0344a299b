"""Approximate search: recall@10 against exact flat search, and queries/s, per index type and setting.

    python bench/ann_recall.py [--n 1000000] [--d 128] [--nq 1000] [--out bench-results/ann.json]
                               [--clothing-model MODEL_DIR | --no-clothing]

Two data sets, one run:

- synthetic: `--n` clustered vectors (a Gaussian mixture: 1,000 centres of uneven weight, noise
  about half the distance between centres, so clusters overlap) and `--nq` queries from the same
  mixture;
- clothing: the embeddings of ../shared/datasets/clothing-small (train = the index, validation = the
  queries) by the default encoder (or `--clothing-model`); skipped with a message when absent.

Every index is what `imgrec index --index-type T` builds (`faiss_index.build_index`: an IDMap2
around `indexer.ann.build_ann`), searched through `faiss_index.search` with per-query parameters
(`indexer.ann.search_params`). Ground truth is the flat index's answer. Queries/s is the best of
`--repeats` timed passes over all queries in one batch (faiss spreads a batch over all cores).
Target (issue 7): a setting with recall@10 >= 0.95 at >= 10x flat's queries/s on 1M x 128.
"""

from __future__ import annotations

import argparse
import gc
import time
from functools import partial
from pathlib import Path

import _common  # noqa: F401 - puts the project on sys.path
import numpy as np
from _common import CLOTHING, machine, table, write_json

K = 10
IVF_NPROBES = (1, 4, 8, 16, 32, 64, 128)
HNSW_EFS = (16, 32, 64, 128, 256)


def clustered(
    n: int, d: int, nq: int, seed: int = 0, centres: int = 1000, spread: float = 0.7
) -> tuple[np.ndarray, np.ndarray]:
    """(xb, xq): a Gaussian mixture with uneven cluster weights; queries from the same mixture.

    Centres are ~sqrt(2d) apart; with `spread` s, points of one cluster are ~s*sqrt(2d) apart, so at
    s = 0.7 neighbouring clusters overlap (s -> 1 tends to structureless, worst-case data).
    """
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, d)).astype(np.float32)
    weights = rng.lognormal(0.0, 1.0, centres)
    weights /= weights.sum()

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, d), np.float32)
        for i in range(0, m, 100_000):
            j = min(m, i + 100_000)
            which = rng.choice(centres, j - i, p=weights)
            out[i:j] = means[which] + spread * rng.standard_normal((j - i, d), dtype=np.float32)
        return out

    return draw(n), draw(nq)


def recall_at_k(I: np.ndarray, gt: np.ndarray, k: int = K) -> float:  # noqa: E741
    return float(np.mean([len(np.intersect1d(a[:k], b[:k])) / k for a, b in zip(I, gt, strict=True)]))


def timed_search(index, xq, metric, params_fn, repeats: int) -> tuple[np.ndarray, float]:  # noqa: ANN001
    """(I, queries/s): the best of `repeats` passes, a fresh params object each pass."""
    from indexer import faiss_index as fi

    best, I = 0.0, None  # noqa: E741
    for _ in range(repeats):
        params = params_fn()
        t = time.perf_counter()
        _, I = fi.search(index, xq, K, metric, params=params)  # noqa: E741
        best = max(best, len(xq) / (time.perf_counter() - t))
    return I, best


def bench_set(name: str, xb: np.ndarray, xq: np.ndarray, metric: str, repeats: int) -> list[dict]:
    """Rows for flat, ivf (nprobe sweep) and hnsw (efSearch sweep) on one data set."""
    from indexer import faiss_index as fi
    from indexer.ann import inner_index, search_params

    ids = np.arange(len(xb), dtype=np.int64) + 1  # like SQLite ids: not positions
    rows: list[dict] = []
    print(f"\n[{name}] {len(xb):,} x {xb.shape[1]} vectors, {len(xq):,} queries, metric {metric}", flush=True)

    t = time.perf_counter()
    flat = fi.build_index(xb.shape[1], metric, "flat")
    fi.add(flat, ids, xb, metric)
    build = time.perf_counter() - t
    gt, flat_qps = timed_search(flat, xq, metric, lambda: None, repeats)
    rows.append(
        dict(data=name, type="flat", setting="exact", recall=1.0, qps=flat_qps, speedup=1.0, build_s=build)
    )
    print(f"  flat: {flat_qps:,.0f} q/s (build {build:.1f} s)", flush=True)
    del flat
    gc.collect()

    for index_type, knob, values in (("ivf", "nprobe", IVF_NPROBES), ("hnsw", "ef_search", HNSW_EFS)):
        t = time.perf_counter()
        index = fi.build_index(xb.shape[1], metric, index_type, xt=xb)
        fi.add(index, ids, xb, metric)
        build = time.perf_counter() - t
        inner = inner_index(index)
        shape = f"nlist {inner.nlist}" if index_type == "ivf" else f"M {inner.hnsw.nb_neighbors(1)}"
        print(f"  {index_type} ({shape}): built in {build:.1f} s", flush=True)
        for v in values:
            if index_type == "ivf" and v > inner.nlist:
                continue
            params = partial(search_params, index_type, **{knob: v})
            found, qps = timed_search(index, xq, metric, params, repeats)
            r = recall_at_k(found, gt)
            rows.append(
                dict(data=name, type=index_type, setting=f"{knob}={v} ({shape})", recall=r, qps=qps,
                     speedup=qps / flat_qps, build_s=build)
            )  # fmt: skip
            print(
                f"    {knob}={v}: recall@10 {r:.3f}, {qps:,.0f} q/s ({qps / flat_qps:.1f}x flat)", flush=True
            )
        del index, inner
        gc.collect()
    return rows


def clothing_vectors(model_dir: Path | None, work: Path) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(xb, xq, model name) embedded from clothing-small, or None (with a message) when unavailable."""
    val = CLOTHING.parent / "validation"
    if not CLOTHING.is_dir() or not val.is_dir():
        print(f"SKIP clothing: {CLOTHING} (and validation/) not found")
        return None
    from _common import build_model_dir, default_model_name

    from encoder import load_encoder
    from indexer.ingest import embed_files
    from indexer.scan import scan_inventory

    if model_dir is None:
        name = default_model_name()
        print(f"[clothing] fitting a model dir for {name} (no --clothing-model given)", flush=True)
        model_dir = build_model_dir(name, CLOTHING, work / "model")
    encoder = load_encoder(model_dir)

    def embed(root: Path) -> np.ndarray:
        files = [f for f in scan_inventory(root) if f.usable]
        return np.concatenate([b.vectors for b in embed_files(files, encoder) if len(b.ok)])

    t = time.perf_counter()
    xb, xq = embed(CLOTHING), embed(val)
    print(f"[clothing] embedded {len(xb)} + {len(xq)} images in {time.perf_counter() - t:.0f} s", flush=True)
    return xb, xq, encoder.model_config.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="synthetic database vectors")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--nq", type=int, default=1000, help="synthetic queries")
    ap.add_argument("--spread", type=float, default=0.7, help="cluster noise (see `clustered`)")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per setting (best kept)")
    ap.add_argument("--clothing-model", type=Path, default=None, help="model dir for the clothing embeddings")
    ap.add_argument("--no-clothing", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("bench-results/ann-work"))
    ap.add_argument("--out", default="bench-results/ann_recall.json")
    args = ap.parse_args()

    info = machine()
    print(f"machine: {info}", flush=True)
    t0 = time.perf_counter()
    xb, xq = clustered(args.n, args.d, args.nq, spread=args.spread)
    rows = bench_set(f"synthetic {args.n:,}x{args.d}", xb, xq, "l2", args.repeats)
    del xb, xq
    gc.collect()
    if not args.no_clothing:
        got = clothing_vectors(args.clothing_model, args.work)
        if got is not None:
            cb, cq, model = got
            rows += bench_set(f"clothing ({model})", cb, cq, "cosine", args.repeats)

    print()
    print(table(rows, [("data", "data", ""), ("type", "type", ""), ("setting", "setting", ""),
                       ("recall", "recall@10", ".3f"), ("qps", "queries/s", ",.0f"),
                       ("speedup", "x flat", ".1f"), ("build_s", "build s", ".1f")]))  # fmt: skip
    synthetic = [r for r in rows if r["data"].startswith("synthetic") and r["type"] != "flat"]
    hits = [r for r in synthetic if r["recall"] >= 0.95 and r["speedup"] >= 10]
    best = max(hits, key=lambda r: r["speedup"]) if hits else None
    verdict = (
        f"TARGET MET: {best['type']} {best['setting']}: recall@10 {best['recall']:.3f} at {best['speedup']:.1f}x flat"
        if best
        else "TARGET NOT MET: no setting with recall@10 >= 0.95 at >= 10x flat queries/s"
    )
    info_after = machine()["load_average"]
    print(f"\n{verdict}\nload average before {info['load_average']}, after {info_after}; "
          f"{time.perf_counter() - t0:.0f} s in all")  # fmt: skip
    write_json(args.out, {"machine": info, "load_after": info_after, "rows": rows, "verdict": verdict})


if __name__ == "__main__":
    main()
