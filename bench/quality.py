"""The clothing quality table: every encoder trained, indexed and evaluated through imgrec itself.

    python bench/quality.py                      # all models, into bench-out/quality/
    python bench/quality.py --models effnet-lite0-pca --report docs-report

Inventory = clothing-small/train/ (3,068 images), queries = clothing-small/validation/ (341), labels =
folder names, cosine. Raw pixels are scored in the same eval run as the first model. Skips (exit 0)
when ../shared/datasets/ is absent, as on a user's machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLOTHING = ROOT.parent / "shared" / "datasets" / "clothing-small"
MODELS = ["simple-ae", "conv-ae", "res-ae", "effnet-lite0", "effnet-lite0-pca", "effnet-lite02-pca"]
NOVELTY_ONLY_FIT = 400  # the pooled model's reducer only serves novelty: fitted on a sample

sys.path.insert(0, str(ROOT))


def run_model(name: str, out: Path, baseline_size: int | None, threads: int, reuse: bool) -> dict:
    """Train (or fit), index and evaluate one model; its row of the table."""
    import torch

    from encoder.train import TrainConfig, train
    from indexer import run_index
    from indexer.evaluation import evaluate_index, save_eval_figures

    torch.set_num_threads(threads)
    model_dir, index_dir = out / "models" / name, out / f"index-{name}"
    row: dict = {"model": name}
    if not (reuse and (model_dir / "FINGERPRINT").is_file()):
        cfg = TrainConfig(arch=name, max_images=NOVELTY_ONLY_FIT if name == "effnet-lite0" else None)
        t = time.perf_counter()
        result = train(CLOTHING / "train", model_dir, cfg)
        row["train_seconds"] = round(time.perf_counter() - t, 1)
        row["best_epoch"] = result.best_epoch
    if not (reuse and (index_dir / "catalog.sqlite").is_file()):
        summary = run_index(CLOTHING / "train", model_dir, index_dir)
        row["index_seconds"] = round(summary.seconds, 1)
        row["index_images_per_second"] = round(summary.added / summary.seconds, 1)
    run = evaluate_index(index_dir, CLOTHING / "validation", k=10, baseline_size=baseline_size)
    save_eval_figures(index_dir, run.figures)
    f = run.figures
    row.update(
        dim=f["encoder"]["dim"],
        index_bytes=f["index_bytes"],
        query_ms=f["latency_ms"]["total_median"],
        embed_ms=f["latency_ms"]["embed_median"],
        **f["metrics"],
    )
    if "baseline" in f:
        row["baseline"] = {"model": f["baseline"]["name"], **f["baseline"]["metrics"]}
    row["chance"] = f["chance"]
    return row


def markdown(rows: list[dict]) -> str:
    metrics = ["P@1", "P@5", "P@10", "mAP@10"]
    head = "| encoder | dim | " + " | ".join(metrics) + " | train s | index s (img/s) | index MB | query ms |"
    lines = [head, "|---|---:|" + "---:|" * (len(metrics) + 4)]
    for r in rows:
        train_s = r.get("train_seconds", "")
        index_s = f"{r['index_seconds']} ({r['index_images_per_second']})" if "index_seconds" in r else ""
        mb = f"{r['index_bytes'] / 1e6:.2f}" if r.get("index_bytes") else ""
        lines.append(
            f"| {r['model']} | {r.get('dim', '')} | " + " | ".join(f"{r[m]:.3f}" for m in metrics)
            + f" | {train_s} | {index_s} | {mb} | {r.get('query_ms', '')} |"
        )  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS, help="models to run, in order")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "quality")
    ap.add_argument(
        "--baseline-size", type=int, default=64, help="raw-pixel baseline side (first model's run)"
    )
    ap.add_argument("--threads", type=int, default=int(os.environ.get("IMGREC_THREADS", "2")))
    ap.add_argument("--reuse", action="store_true", help="keep model dirs and indexes already in --out")
    ap.add_argument("--report", type=Path, default=None, help="write the last model's HTML report here")
    args = ap.parse_args()
    if not (CLOTHING / "train").is_dir() or not (CLOTHING / "validation").is_dir():
        print(f"skipped: clothing dataset not found at {CLOTHING} (see ../shared/datasets/README.md)")
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for n, name in enumerate(args.models):
        print(f"== {name}", flush=True)
        row = run_model(name, args.out, args.baseline_size if n == 0 else None, args.threads, args.reuse)
        if "baseline" in row:
            rows.append({**row.pop("baseline"), "dim": 3 * args.baseline_size**2})
        rows.append(row)
        print(json.dumps(row), flush=True)
        (args.out / "quality.json").write_text(json.dumps(rows, indent=2) + "\n")
    chance = rows[-1]["chance"]
    rows.append({"model": "chance (class prior)", **{m: chance for m in ("P@1", "P@5", "P@10", "mAP@10")}})
    table = markdown(rows)
    (args.out / "quality.md").write_text(table + "\n")
    print(table)
    if args.report:
        from indexer.evaluation import evaluate_index
        from indexer.report import write_report

        index_dir = args.out / f"index-{args.models[-1]}"
        run = evaluate_index(index_dir, CLOTHING / "validation", k=10, baseline_size=args.baseline_size)
        print("report:", write_report(args.report, run, index_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
