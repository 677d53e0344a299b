"""Re-indexing cost: a full build of the clothing inventory against a re-run with nothing changed.

    python bench/reindex.py [--model conv-ae|default|MODEL_DIR] [--repeats 3] [--out bench/results/reindex.json]

Indexes ../shared/datasets/clothing-small/train in place (read only, nothing is copied) into a
temporary index dir:

- full build: `run_index` into an empty index dir (what a first `imgrec index` does);
- no-change re-run: `run_index` again on the same folder: one `stat` per file against the ledger,
  no decode, no new generation (median of `--repeats`);
- the same re-run as the `imgrec index` command, start-up (imports) included.

Skips with a message when the dataset is absent.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import CLOTHING, build_model_dir, default_model_name, machine, median, results_path, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=CLOTHING)
    ap.add_argument("--model", default="conv-ae", help="conv-ae, default (the project's), or a model dir")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(results_path("reindex")), help="write the figures as JSON")
    args = ap.parse_args()
    if not args.images.is_dir():
        print(f"SKIP: {args.images} not found; this benchmark needs the clothing inventory")
        return

    from indexer import IndexOptions, run_index

    work = Path(tempfile.mkdtemp(prefix="imgrec-reindex-"))
    model = Path(args.model)
    model_name = model.name
    if not model.is_dir():
        name = default_model_name() if args.model == "default" else args.model
        print(f"preparing a {name} model dir (briefly trained/fitted: speed does not depend on quality)")
        model = build_model_dir(name, args.images, work / "model")
        model_name = name
    index = work / "index"

    full = run_index(args.images, model, index, IndexOptions())
    print(f"full build: {full.added} added, {full.skipped} skipped in {full.seconds:.1f} s")
    reruns = []
    for _ in range(args.repeats):
        s = run_index(args.images, model, index)
        assert s.decoded == 0 and not s.published, s
        reruns.append(s.seconds)
    cmd = [str(Path(sys.executable).parent / "imgrec"), "index", "--inventory", str(args.images)]
    cmd += ["--model", str(model), "--index", str(index)]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    command_seconds = time.perf_counter() - t
    print(f"no-change re-run: {median(reruns):.2f} s (median of {args.repeats}; {s.unchanged} unchanged)")
    print(
        f"no-change `imgrec index` command, start-up included: {command_seconds:.1f} s: {out.splitlines()[0]}"
    )
    print(f"full build / no-change re-run: {full.seconds / median(reruns):.0f}x")
    write_json(
        args.out,
        {
            "machine": machine(),
            "images": str(args.images),
            "model": str(model),
            "encoder": model_name,
            "files": full.added + full.skipped,
            "full_build_seconds": full.seconds,
            "no_change_rerun_seconds": reruns,
            "no_change_command_seconds": command_seconds,
        },
    )


if __name__ == "__main__":
    main()
