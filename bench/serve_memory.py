"""Serving memory and start-up: 4 gunicorn workers on a 1M x 128 flat index, mmap against plain loading.

    python bench/serve_memory.py [--n 1000000] [--workers 4] [--rounds 2] [--out bench/results/serve_memory.json]

Starts the API with the project's gunicorn config (`search_api.gunicorn_conf`) and reports:

- seconds from start to the first `/readyz` 200, and until every worker has loaded the index
  (each worker reports its own `engine.loaded_at` in /v1/stats);
- PSS (proportional set size: shared pages divided among the processes sharing them) summed over
  the master and workers, after queries have touched every vector; also USS (private pages);
- the same for a 1,000-item index with the same model: the memory that is not the index (Python,
  FAISS, onnxruntime, Flask per worker), subtracted to get what the index costs.

Target: index memory <= 1.5x one copy of the vectors with mmap (against about 4x without), ready
in under 2 s. IMGREC_MMAP=1/0 selects the mode (the API's own config switch).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    compile_bytecode,
    machine,
    median,
    query_jpeg,
    results_path,
    synthetic_index_dir,
    table,
    write_json,
)
from search_throughput import run_clients, start_api, stop_api, wait_ready

MB = 1024 * 1024


def memory(proc: subprocess.Popen) -> dict:
    """PSS and USS (MB) of the gunicorn master and its workers."""
    import psutil

    master = psutil.Process(proc.pid)
    procs = [master, *master.children(recursive=True)]
    infos = [p.memory_full_info() for p in procs]
    return {
        "processes": len(procs),
        "pss_mb": sum(i.pss for i in infos) / MB,
        "uss_mb": sum(i.uss for i in infos) / MB,
        "rss_mb": sum(i.rss for i in infos) / MB,
        "per_worker_pss_mb": [round(i.pss / MB, 1) for i in infos[1:]],
    }


# The project's gunicorn config, plus the heavy imports done once in the master (nothing runs: no
# OpenMP pool exists before the fork); workers fork with them loaded instead of importing each.
PRELOAD_CONF = """from search_api.gunicorn_conf import *  # noqa: F403
import numpy, faiss, onnxruntime, flask, apiflask, sqlalchemy, PIL.Image  # noqa: E401, F401
import encoder, indexer, search_api, search_api.engine, search_api.search  # noqa: E401, F401
"""


def cpu_seconds(proc: subprocess.Popen) -> dict:
    """CPU seconds (user + system) the master and each worker have used so far."""
    import psutil

    master = psutil.Process(proc.pid)
    workers = [sum(p.cpu_times()[:2]) for p in master.children(recursive=True)]
    return {
        "cpu_master_s": sum(master.cpu_times()[:2]),
        "cpu_per_worker_s": sum(workers) / max(1, len(workers)),
    }


def measure(index_dir: Path, mmap: bool, workers: int, log: Path, preload_dir: Path | None = None) -> dict:
    import requests

    extra = {"conf": "python:bench_preload_conf", "PYTHONPATH": str(preload_dir)} if preload_dir else {}
    proc, url = start_api(index_dir, log, workers, IMGREC_MMAP="1" if mmap else "0", **extra)
    try:
        first, all_ready = wait_ready(proc, url, workers)
        cpu = cpu_seconds(proc)  # load-independent: CPU the start-up cost, whatever the wall clock
        body = query_jpeg()

        def post(j: int) -> None:
            requests.post(
                f"{url}/v1/search?k=10", data=body, headers={"Content-Type": "image/jpeg"}
            ).raise_for_status()

        run_clients(workers * 2, post, 2.0)  # every worker answers, every vector page is touched
        time.sleep(0.5)
        return {
            "mmap": mmap,
            "preload_imports": bool(preload_dir),
            "ready_first_s": first,
            "ready_all_s": all_ready,
            **cpu,
            **memory(proc),
        }
    finally:
        stop_api(proc)


def startup_breakdown(index_dir: Path) -> dict:
    """Where one worker's start-up goes, measured in a fresh process (imports, open, verify, encoder)."""
    code = f"""
import json, time
t0 = time.perf_counter()
import numpy, faiss, onnxruntime, flask, apiflask, sqlalchemy  # noqa
import search_api, search_api.engine  # noqa
t1 = time.perf_counter()
from indexer import open_snapshot
out = {{"imports_s": t1 - t0}}
for mmap in (True, False):
    for verify in (False, True):
        t = time.perf_counter(); s = open_snapshot({str(index_dir)!r}, mmap=mmap, verify=verify)
        out[f"open_{{'mmap' if mmap else 'plain'}}{{'_verify' if verify else ''}}_s"] = time.perf_counter() - t
        if mmap and verify:
            t = time.perf_counter(); enc = s.encoder; s_ = enc.preprocess.image_size
            enc.embed(numpy.zeros((1, 3, s_, s_), numpy.float32)); out["encoder_load_warmup_s"] = time.perf_counter() - t
        s.close()
print(json.dumps(out))
"""
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import json

    return json.loads(cp.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(results_path("serve_memory")))
    args = ap.parse_args()

    big, small = synthetic_index_dir(args.n), synthetic_index_dir(1000)
    compile_bytecode()
    one_copy_mb = args.n * 128 * 4 / MB
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "imgrec-bench-api.log"
    results: dict = {
        "machine_before": machine(),
        "n": args.n,
        "workers": args.workers,
        "one_copy_mb": one_copy_mb,
    }
    preload_dir = Path(tempfile.mkdtemp(prefix="imgrec-bench-conf-"))
    (preload_dir / "bench_preload_conf.py").write_text(PRELOAD_CONF)
    configs = [
        ("baseline", small, True, None),
        ("mmap", big, True, None),
        ("plain", big, False, None),
        ("mmap + preloaded imports", big, True, preload_dir),
    ]
    runs: dict[str, list[dict]] = {name: [] for name, *_ in configs}
    for r in range(args.rounds):
        for name, index_dir, mmap, preload in configs:
            runs[name].append(measure(index_dir, mmap, args.workers, log, preload))
            m = runs[name][-1]
            print(
                f"[round {r + 1}] {name}: ready {m['ready_first_s']:.2f} s (all {m['ready_all_s']:.2f} s), "
                f"PSS {m['pss_mb']:.0f} MB, USS {m['uss_mb']:.0f} MB, workers {m['per_worker_pss_mb']}",
                flush=True,
            )
    results["runs"] = runs
    base = median([m["pss_mb"] for m in runs["baseline"]])
    rows = []
    for name in runs:
        ms = runs[name]
        pss = median([m["pss_mb"] for m in ms])
        rows.append(
            {
                "mode": name if name != "baseline" else "1k items (baseline)",
                "pss": pss,
                "uss": median([m["uss_mb"] for m in ms]),
                "index_mb": pss - base,
                "copies": (pss - base) / one_copy_mb if name != "baseline" else None,
                "ready_first": median([m["ready_first_s"] for m in ms]),
                "ready_all": median([m["ready_all_s"] for m in ms]),
                "cpu_master": median([m["cpu_master_s"] for m in ms]),
                "cpu_worker": median([m["cpu_per_worker_s"] for m in ms]),
            }
        )
    results["summary"] = rows
    results["breakdown"] = startup_breakdown(big)
    results["machine_after"] = machine()
    print(f"\nmachine: {results['machine_before']}")
    print(f"{args.workers} workers, {args.n:,} x 128 vectors = {one_copy_mb:.0f} MB per copy")
    print(
        table(
            rows,
            [
                ("mode", "mode", "s"),
                ("pss", "PSS total MB", ".0f"),
                ("uss", "USS total MB", ".0f"),
                ("index_mb", "index MB (PSS - baseline)", ".0f"),
                ("copies", "copies of vectors", ".2f"),
                ("ready_first", "first /readyz s", ".2f"),
                ("ready_all", "all workers s", ".2f"),
                ("cpu_master", "master CPU s", ".2f"),
                ("cpu_worker", "CPU s per worker", ".2f"),
            ],
        )  # fmt: skip
    )
    print("one worker's start-up (s):", {k: round(v, 3) for k, v in results["breakdown"].items()})
    mm = rows[1]
    pre = rows[3]
    results["targets"] = {
        "mmap_copies_le_1.5": mm["copies"] <= 1.5,
        "ready_lt_2s": mm["ready_first"] < 2.0,
        "ready_lt_2s_with_preloaded_imports": pre["ready_first"] < 2.0,
    }
    print("targets:", results["targets"])
    write_json(args.out, results)


if __name__ == "__main__":
    main()
