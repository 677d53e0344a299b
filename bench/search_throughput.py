"""Search under concurrency: queries/s and p50/p99 latency, micro-batching on and off.

    python bench/search_throughput.py [--sizes 100000,1000000] [--clients 1,4,16,64] [--out bench/results/search_throughput.json]

Two layers, each on synthetic flat indexes of 128-d unit vectors (cosine), k=10:

- FAISS: client threads call `indexer.faiss_index.search` with one query each, directly (off) or
  through the API's `Batcher` (`search_api.batching`, window 2 ms, max 32; on). As in the served
  API, there is one batching lane and one FAISS thread per core (the API runs one worker per core,
  one compute thread each).
- HTTP: the real API under gunicorn (`search_api.gunicorn_conf`: gthread, one worker per core,
  one compute thread each, mmap), over a real index dir (a published generation of the synthetic
  vectors), clients POSTing a JPEG to /v1/search; two servers, IMGREC_BATCH_WINDOW_MS=2 and 0,
  measured alternately.

Targets on 1M x 128: batched >= 3x unbatched queries/s at 16+ clients (FAISS layer), and
single-client p50 with batching <= 1.2x without. Rounds alternate on/off to share the machine's load.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from _common import (
    ROOT,
    machine,
    median,
    query_jpeg,
    results_path,
    synthetic_index_dir,
    synthetic_vectors,
    table,
    write_json,
)

K = 10


def run_clients(n_clients: int, call, duration: float, setup=None) -> dict:  # noqa: ANN001
    """`n_clients` threads calling `call(i)` in a loop for `duration` s: queries/s, p50, p99 (ms)."""
    latencies: list[list[float]] = [[] for _ in range(n_clients)]
    start = threading.Barrier(n_clients + 1)
    deadline = [0.0]

    def client(i: int) -> None:
        if setup:
            setup()
        lat = latencies[i]
        start.wait()
        j = i
        while time.perf_counter() < deadline[0]:
            t = time.perf_counter()
            call(j)
            lat.append(time.perf_counter() - t)
            j += n_clients

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n_clients)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + duration
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    all_lat = np.concatenate([np.asarray(x) for x in latencies]) * 1000
    return {
        "queries": len(all_lat),
        "qps": len(all_lat) / wall,
        "p50_ms": float(np.percentile(all_lat, 50)),
        "p99_ms": float(np.percentile(all_lat, 99)),
    }


# -- FAISS layer ---------------------------------------------------------------------------------


def faiss_layer(
    sizes: list[int], clients: list[int], rounds: int, duration: float, lanes: int, batch_threads: int = 1
) -> list[dict]:
    import faiss

    from indexer import faiss_index
    from search_api.batching import Batcher, stacking

    rows = []
    queries = synthetic_vectors(4096, seed=99)
    for n in sizes:
        index = faiss_index.build_index(128, "cosine", "flat")
        faiss_index.add(index, np.arange(n, dtype=np.int64), synthetic_vectors(n), "cosine")

        def one_thread() -> None:
            faiss.omp_set_num_threads(1)  # per thread: OpenMP ICVs are per calling thread

        def batch_thread_count() -> None:
            faiss.omp_set_num_threads(batch_threads)  # for the leader of a batch

        def search(xq: np.ndarray, index=index) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
            return faiss_index.search(index, xq, K, "cosine")

        search(queries[:64])  # warm-up
        for c in clients:
            results: dict[str, list[dict]] = {"off": [], "on": []}
            for _ in range(rounds):
                for mode in ("off", "on"):
                    if mode == "off":
                        call = lambda j: search(queries[j % len(queries)][None])  # noqa: E731
                        results[mode].append(run_clients(c, call, duration, one_thread))
                    else:
                        batchers = [
                            Batcher(stacking(search), window_ms=2.0, max_batch=32) for _ in range(lanes)
                        ]

                        def call(j: int, b: list = batchers, c: int = c) -> object:
                            return b[j % c % len(b)].submit(queries[j % len(queries)][None])

                        r = run_clients(c, call, duration, batch_thread_count)
                        r["mean_batch"] = float(
                            np.mean([b.stats.mean_items() for b in batchers if b.stats.batches])
                        )
                        results[mode].append(r)
            rows.append(summarise("faiss", n, c, results))
            print_row(rows[-1])
        del index
    return rows


def summarise(layer: str, n: int, c: int, results: dict) -> dict:
    row: dict = {"layer": layer, "n": n, "clients": c}
    for mode, runs in results.items():
        for key in ("qps", "p50_ms", "p99_ms", "mean_batch"):
            vals = [r[key] for r in runs if key in r]
            if vals:
                row[f"{key}_{mode}"] = median(vals)
    # ratios per round (same load), then the median
    row["qps_ratio"] = median(
        [on["qps"] / off["qps"] for on, off in zip(results["on"], results["off"], strict=True)]
    )
    row["p50_ratio"] = median(
        [on["p50_ms"] / off["p50_ms"] for on, off in zip(results["on"], results["off"], strict=True)]
    )
    row["rounds"] = results
    return row


def print_row(r: dict) -> None:
    print(
        f"[{r['layer']} n={r['n']:,} clients={r['clients']}] off {r['qps_off']:.1f} q/s p50 {r['p50_ms_off']:.1f} ms"
        f" | on {r['qps_on']:.1f} q/s p50 {r['p50_ms_on']:.1f} ms | on/off q/s {r['qps_ratio']:.2f}"
        f" p50 {r['p50_ratio']:.2f}",
        flush=True,
    )


# -- HTTP layer ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(
    index_dir: Path,
    log: Path,
    workers: int,
    threads: int | None = None,
    conf: str = "python:search_api.gunicorn_conf",
    **env: str,
) -> tuple:
    """Start the API under gunicorn with the project's config; returns (process, base url)."""
    port = free_port()
    environ = {
        **os.environ,
        "IMGREC_INDEX": str(index_dir),
        "IMGREC_BIND": f"127.0.0.1:{port}",
        "IMGREC_RELOAD_INTERVAL": "0",
        "WEB_CONCURRENCY": str(workers),
        **env,
    }
    if threads:
        environ["GUNICORN_CMD_ARGS"] = f"--threads {threads}"
    cmd = [sys.executable, "-m", "gunicorn", "-c", conf, "--access-logfile", "/dev/null"]
    cmd.append("search_api:create_app()")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, workers: int, timeout: float = 300) -> tuple[float, float]:
    """Seconds until /readyz answers 200, and until every worker has finished loading.

    A worker that is still loading does not accept connections, so /readyz answers as soon as the
    first worker is ready. "All ready" is when every worker's main thread has been idle (sleeping
    in its accept loop, not running or runnable) for 4 checks in a row after that.
    """
    import psutil
    import requests

    t0 = time.perf_counter()
    first = None
    idle_since, streak = None, 0
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.returncode}")
        if first is None:
            try:
                if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                    first = time.perf_counter() - t0
            except (requests.ConnectionError, requests.Timeout):
                pass  # accepted by the master's socket, but no worker is serving yet
        else:
            try:
                kids = psutil.Process(proc.pid).children()
                idle = len(kids) == workers and all(k.status() == psutil.STATUS_SLEEPING for k in kids)
            except psutil.NoSuchProcess:
                idle = False
            if idle:
                idle_since = idle_since or time.perf_counter() - t0
                streak += 1
                if streak >= 4:
                    return first, max(first, idle_since)
            else:
                idle_since, streak = None, 0
        time.sleep(0.025)
    raise TimeoutError(f"API not ready after {timeout} s")


def stop_api(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def http_layer(
    sizes: list[int],
    clients: list[int],
    rounds: int,
    duration: float,
    workers: int,
    log: Path,
    threads: int | None,
) -> list[dict]:
    import requests

    rows = []
    body = query_jpeg()
    for n in sizes:
        index_dir = synthetic_index_dir(n)
        servers = {}
        try:
            for mode, window in (("off", "0"), ("on", "2")):
                proc, url = start_api(index_dir, log, workers, threads, IMGREC_BATCH_WINDOW_MS=window)
                servers[mode] = (proc, url)
            for proc, url in servers.values():
                wait_ready(proc, url, workers)

            def post(url: str, sessions: threading.local = threading.local()) -> None:  # noqa: B008
                s = getattr(sessions, "s", None) or requests.Session()  # one connection per client
                sessions.s = s
                r = s.post(
                    f"{url}/v1/search?k={K}", data=body, headers={"Content-Type": "image/jpeg"}, timeout=120
                )
                r.raise_for_status()

            for _, url in servers.values():  # warm-up: every worker touches the vectors
                run_clients(workers * 2, lambda j, url=url: post(url), 1.0)
            for c in clients:
                results: dict[str, list[dict]] = {"off": [], "on": []}
                for _ in range(rounds):
                    for mode in ("off", "on"):
                        url = servers[mode][1]
                        results[mode].append(run_clients(c, lambda j, url=url: post(url), duration))
                rows.append(summarise("http", n, c, results))
                print_row(rows[-1])
        finally:
            for proc, _ in servers.values():
                stop_api(proc)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--http-sizes", default="100000,1000000")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    ap.add_argument("--workers", type=int, default=None, help="API workers / batching lanes (default: cores)")
    ap.add_argument(
        "--lanes", type=int, default=None, help="FAISS layer: batching lanes (default: --workers)"
    )
    ap.add_argument(
        "--batch-threads", type=int, default=1, help="FAISS layer: FAISS threads per batched call"
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="gunicorn threads per worker (default: its config)"
    )
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--out", default=str(results_path("search_throughput")))
    args = ap.parse_args()

    cores = len(os.sched_getaffinity(0))
    workers = args.workers or cores
    lanes = args.lanes or workers
    clients = [int(c) for c in args.clients.split(",")]
    results: dict = {
        "machine_before": machine(), "workers": workers, "lanes": lanes, "batch_threads": args.batch_threads, "k": K,
    }  # fmt: skip
    sizes = [int(s) for s in args.sizes.split(",")]
    results["faiss"] = faiss_layer(sizes, clients, args.rounds, args.duration, lanes, args.batch_threads)
    if not args.skip_http:
        log = Path(os.environ.get("TMPDIR", "/tmp")) / "imgrec-bench-api.log"
        results["http"] = http_layer(
            [int(s) for s in args.http_sizes.split(",")], clients, args.rounds, args.duration, workers, log, args.threads
        )  # fmt: skip
    results["machine_after"] = machine()

    rows = results["faiss"] + results.get("http", [])
    print(f"\nmachine: {results['machine_before']}")
    print(
        table(
            rows,
            [
                ("layer", "layer", "s"),
                ("n", "vectors", ","),
                ("clients", "clients", "d"),
                ("qps_off", "q/s off", ".1f"),
                ("p50_ms_off", "p50 off", ".1f"),
                ("p99_ms_off", "p99 off", ".1f"),
                ("qps_on", "q/s on", ".1f"),
                ("p50_ms_on", "p50 on", ".1f"),
                ("p99_ms_on", "p99 on", ".1f"),
                ("mean_batch_on", "batch", ".1f"),
                ("qps_ratio", "q/s on/off", ".2f"),
                ("p50_ratio", "p50 on/off", ".2f"),
            ],
        )  # fmt: skip
    )
    big = [r for r in results["faiss"] if r["n"] == max(r["n"] for r in results["faiss"])]
    t1 = all(r["qps_ratio"] >= 3 for r in big if r["clients"] >= 16)
    t2 = all(r["p50_ratio"] <= 1.2 for r in big if r["clients"] == 1)
    results["targets"] = {"batched_qps_3x_at_16plus": t1, "single_client_p50_within_1.2x": t2}
    print(
        f"\ntargets (FAISS layer, n={big[0]['n']:,}): batched >= 3x at 16+ clients: {t1}; 1-client p50 <= 1.2x: {t2}"
    )
    write_json(args.out, results)


if __name__ == "__main__":
    main()
