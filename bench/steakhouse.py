"""Reproduce the original example over several seeds and draw the README picture.

python bench/steakhouse.py [--seeds 3] [--picture docs/img/steakhouse.png] [--out bench/results/steakhouse.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import results_path, write_json

from imgrec.steakhouse import run_steakhouse, stack_grids

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "steakhouse"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--picture", type=Path, default=None, help="write the seed-0 grids as one PNG")
    ap.add_argument("--out", default=str(results_path("steakhouse")), help="write the figures as JSON")
    args = ap.parse_args()
    if not DATASET.is_dir():
        print(f"skipped: the steakhouse dataset is not at {DATASET}")
        return 0
    scores = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            result = run_steakhouse(
                DATASET, Path(tmp), seed=seed, grids=seed == 0 and args.picture is not None
            )
            scores.append(result.p_at_5)
            print(f"seed {seed}: P@5 {result.p_at_5:.2f}  per query {result.per_query}")
            if seed == 0 and args.picture is not None:
                stack_grids(sorted((Path(tmp) / "grids").glob("*.png")), args.picture)
    print(f"mean P@5 over {len(scores)} seeds: {sum(scores) / len(scores):.2f} (min {min(scores):.2f})")
    summary = {"mean": sum(scores) / len(scores), "min": min(scores), "max": max(scores)}
    write_json(
        args.out, {"seeds": args.seeds, "p_at_5": scores, **{f"p_at_5_{k}": v for k, v in summary.items()}}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
